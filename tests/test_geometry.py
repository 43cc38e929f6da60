"""Geometry: spec properties (section 6), direct-render comparisons, py360convert parity, jax."""

import jax
import jax.numpy as jnp
import numpy as np
import py360convert
import pytest

from viewpoint_jax import geometry as g
from viewpoint_jax.data import scenes
from viewpoint_jax.geometry import sampling, sphere
from viewpoint_jax.geometry import viewpoint_map as layout


def smooth_erp(height):
    return np.asarray(scenes.render_erp(height, 0.0, "smooth"))


def smooth_map(map_size):
    return np.asarray(scenes.render_viewpoint(map_size, 0.0, "smooth"))


def max_step(image, axes=(-3, -2)):
    """Largest change between neighbouring pixels: the scale of a one-pixel sampling shift."""
    return max(float(np.abs(np.diff(image, axis=a)).max()) for a in axes)


# Layout and directions ---------------------------------------------------------------------------


def test_directions_unit_and_orientation():
    d = np.asarray(g.viewpoint_directions(64))
    assert d.shape == (64, 64, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1, atol=1e-6)
    # Outer corners look near the U pole, the centre near the D pole (spec section 3).
    for corner in [(0, 0), (0, 63), (63, 0), (63, 63)]:
        assert d[corner][1] > 0.99
    for centre in [(31, 31), (31, 32), (32, 31), (32, 32)]:
        assert d[centre][1] < -0.99
    # Each subregion's centre looks at its face: F, R top-left/right; B, L bottom-right/left.
    centres = {"F": (16, 16), "R": (16, 48), "B": (48, 48), "L": (48, 16)}
    for face, (i, j) in centres.items():
        mean = d[i - 1 : i + 1, j - 1 : j + 1].mean(axis=(0, 1))
        np.testing.assert_allclose(
            mean / np.linalg.norm(mean), sphere.FACE_BASES[face][0], atol=1e-3
        )


def test_each_subregion_is_continuous_inside():
    """Neighbouring pixels of a subregion look in nearby directions: no seams inside (the fold
    and the U warp are continuous). A pixel step moves (s, t) by 2 sqrt(2) / r, that angle at a
    face centre; the U warp stretches it by up to sqrt(2) (measured max: 1.55x). A seam would
    jump by many pixels."""
    m = 64
    d = np.asarray(g.viewpoint_directions(m), np.float64)
    pixel = 2 * np.sqrt(2) / (m // 2)
    for rows, cols in g.subregion_slices(m).values():
        sub = d[rows, cols]
        for axis in (0, 1):
            cos = np.sum(
                np.take(sub, range(1, m // 2), axis) * np.take(sub, range(m // 2 - 1), axis), -1
            )
            assert np.arccos(np.clip(cos, -1, 1)).max() < 2 * pixel


def test_d_diamond_is_continuous_and_linear_across_the_centre():
    """The four D quarters form one D face, a diamond linear in global map coordinates."""
    m = 64
    d = np.asarray(g.viewpoint_directions(m), np.float64)
    rows, cols = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    u = (cols + 0.5 - m / 2) / (m / 4)
    v = (m / 2 - rows - 0.5) / (m / 4)
    in_d = np.abs(u) + np.abs(v) < 1
    assert in_d.sum() > 0.1 * m * m
    d = d[in_d]
    a_d, b_d = d[:, 0] / -d[:, 1], d[:, 2] / -d[:, 1]  # D face: right x, up z
    np.testing.assert_allclose(a_d, (u + v)[in_d], atol=1e-9)
    np.testing.assert_allclose(b_d, (v - u)[in_d], atol=1e-9)
    # Image level: across the subregion borders inside D, steps are like steps within.
    vp = smooth_map(m)
    across = np.abs(vp[m // 2 - 8 : m // 2 + 8, m // 2] - vp[m // 2 - 8 : m // 2 + 8, m // 2 - 1])
    within = np.abs(
        vp[m // 2 - 8 : m // 2 + 8, m // 2 - 1] - vp[m // 2 - 8 : m // 2 + 8, m // 2 - 2]
    )
    assert across.max() <= 2 * within.max() + 1e-6


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_overlapping_quarters_agree_after_quarter_turn(dtype):
    """Each subregion's quarter toward its right neighbour equals the neighbour's quarter
    toward it, turned clockwise by a quarter, pixel for pixel (ERP input is random noise)."""
    rng = np.random.default_rng(0)
    erp = rng.uniform(0, 255, (32, 64, 3)).astype(dtype)
    m, h = 64, 16
    vp = np.asarray(g.erp_to_viewpoint(erp, m))
    quarter = {  # (quarter toward right neighbour, quarter toward left neighbour)
        "F": (vp[:h, h : 2 * h], vp[h : 2 * h, :h]),
        "R": (vp[h : 2 * h, 3 * h :], vp[:h, 2 * h : 3 * h]),
        "B": (vp[3 * h :, 2 * h : 3 * h], vp[2 * h : 3 * h, 3 * h :]),
        "L": (vp[2 * h : 3 * h, :h], vp[3 * h :, h : 2 * h]),
    }
    for face, right in zip("FRBL", "RBLF"):
        np.testing.assert_array_equal(quarter[right][1], np.rot90(quarter[face][0], -1))
    # The other quarters do not repeat: the test would notice a wrong pairing.
    assert not np.array_equal(quarter["F"][1], np.rot90(quarter["R"][1], -1))


def test_coverage_and_weights():
    """Every direction has 1 or 2 copies (off measure-zero sets), weights sum to 1, and side
    copies weigh 1 - |s| / 2 (so a pair sums to 1 before any normalisation)."""
    rng = np.random.default_rng(1)
    d = sphere.normalize(rng.normal(size=(20000, 3)))
    d = np.concatenate([d, sphere.erp_directions(64, 128).reshape(-1, 3)])
    copies = layout.direction_to_copies(d, 64)
    count = copies.covered.sum(-1)
    assert count.min() >= 1 and count.max() <= 2
    np.testing.assert_allclose(copies.weight.sum(-1), 1, atol=1e-12)
    assert (copies.weight[~copies.covered] == 0).all()
    # Regions: D and top quarters of side faces have one copy; U and side quarters up to two.
    face, s, t = sphere.direction_to_cube(d)
    assert (count[face == 5] == 1).all()
    side = face < 4
    assert (count[side & (np.abs(t) > np.abs(s))] == 1).all()
    assert (count[side & (np.abs(s) > np.abs(t) + 1e-9)] == 2).all()
    # Raw side weights: for the copy in the face's own subregion 1 - |s| / 2.
    shared = side & (np.abs(s) > np.abs(t) + 1e-9)
    own = copies.weight[shared, face[shared]]
    np.testing.assert_allclose(own, 1 - np.abs(s[shared]) / 2, atol=1e-9)
    # U: the copy nearer its edge midpoint weighs more; at most 2 half-disks off the boundary.
    on_u = face == 4
    assert (count[on_u] >= 1).all()


def test_u_half_disk_warp_is_identity_on_shared_edge_and_fills_half_disk():
    s = np.linspace(-1, 1, 11)
    s_w, t_w = layout.warp_u_triangle(s, np.full_like(s, 1.0 + 1e-12))
    np.testing.assert_allclose(s_w, s, atol=1e-9)
    # Triangle legs |s| + (t - 1) = 1 land on the unit half circle about (0, 1).
    s = np.linspace(-0.99, 0.99, 21)
    s_w, t_w = layout.warp_u_triangle(s, 2 - np.abs(s))
    np.testing.assert_allclose(np.hypot(s_w, t_w - 1), 1, atol=1e-12)


@pytest.mark.parametrize("map_size", [64, 80])
def test_fuse_overlaps_idempotent_and_copies_agree(map_size):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, map_size, map_size, 4)).astype(np.float32)
    fused = np.asarray(g.fuse_overlaps(x))
    again = np.asarray(g.fuse_overlaps(fused))
    _, _, t = layout.unfolded_coords(map_size)
    off_u = t <= map_size // 2  # copies correspond pixel for pixel there (M / 2 even)
    np.testing.assert_allclose(again[:, off_u], fused[:, off_u], atol=2e-6)
    # Single-copy pixels are untouched; D quarters and top quarters of faces.
    copies = layout.direction_to_copies(layout.map_directions(map_size), map_size)
    single = copies.covered.sum(-1) == 1
    np.testing.assert_array_equal(fused[:, single], x[:, single])
    # After fusion both copies of a side-face point hold the same value (quarter turn).
    h = map_size // 4
    turned = np.rot90(fused[:, :h, h : 2 * h], -1, axes=(1, 2))  # F toward R, turned
    np.testing.assert_allclose(fused[:, :h, 2 * h : 3 * h], turned, atol=1e-6)
    # In U the other copy is a bilinear sample: idempotent up to interpolation on smooth maps.
    smooth = smooth_map(map_size)
    once = np.asarray(g.fuse_overlaps(smooth))
    np.testing.assert_allclose(
        np.asarray(g.fuse_overlaps(once)), once, atol=0.05 * max_step(smooth)
    )


def test_fuse_overlaps_at_latent_resolution_odd_half():
    """M = 10 (r = 5): copies fall between pixels; fusion of a resampled smooth scene stays
    within the interpolation error and is near-idempotent."""
    smooth = smooth_map(10)
    fused = np.asarray(g.fuse_overlaps(smooth))
    step = max_step(smooth)
    assert np.abs(fused - smooth).max() < 0.5 * step
    np.testing.assert_allclose(np.asarray(g.fuse_overlaps(fused)), fused, atol=0.25 * step)


# Direct rendering comparisons --------------------------------------------------------------------


def test_erp_to_viewpoint_matches_direct_rendering():
    erp = smooth_erp(256)
    vp = np.asarray(g.erp_to_viewpoint(erp, 128))
    truth = smooth_map(128)
    # Bilinear error: about h^2 / 8 |f''| with h = 1 ERP pixel: far below one pixel's step.
    assert np.abs(vp - truth).max() < 0.05 * max_step(erp)


def test_viewpoint_to_erp_matches_direct_rendering():
    truth = smooth_erp(128)
    vp = smooth_map(256)
    err = np.abs(np.asarray(g.viewpoint_to_erp(vp, 128)) - truth)
    # Bilinear (second-order) error in the bulk; copies read near a clamped subregion border
    # (the U half-disk rims) extrapolate by at most half a map pixel: half a map step.
    assert np.median(err) < 0.01 * max_step(vp)
    assert err.max() < 0.5 * max_step(vp)


def test_cubemap_and_perspective_match_direct_rendering():
    erp = smooth_erp(256)
    faces = np.asarray(g.erp_to_cubemap(erp, 64))
    np.testing.assert_allclose(
        faces, np.asarray(scenes.render_cubemap(64, 0.0, "smooth")), atol=2e-4
    )
    back = np.asarray(g.cubemap_to_erp(np.asarray(scenes.render_cubemap(128, 0.0, "smooth")), 128))
    np.testing.assert_allclose(back, smooth_erp(128), atol=2e-3)
    view = np.asarray(g.erp_to_perspective(erp, 75, -40, 25, 10, (48, 64)))
    truth = np.asarray(scenes.render_perspective(75, -40, 25, 10, (48, 64), 0.0, "smooth"))
    np.testing.assert_allclose(view, truth, atol=2e-4)


def test_perspective_to_viewpoint_and_erp_match_direct_rendering():
    img = np.asarray(scenes.render_perspective(90, 30, -20, 15, (96, 128), 0.0, "smooth"))
    vp, mask = g.perspective_to_viewpoint(img, 90, 30, -20, 15, 128)
    vp, mask = np.asarray(vp), np.asarray(mask)
    assert mask.shape == (128, 128, 1) and set(np.unique(mask)) == {0.0, 1.0}
    truth = smooth_map(128)
    # Inside the view: bilinear error; within half a pixel of its border, clamped (half a step).
    assert np.abs((vp - truth) * mask).max() < 0.5 * max_step(img)
    assert (vp[mask[..., 0] == 0] == 0).all()
    # The mask is exactly the set of map directions inside the view's frustum.
    d = layout.map_directions(128)
    forward, right, up = sphere.camera_basis(*np.deg2rad([30, -20, 15]))
    z = d @ forward
    inside = (z > 0) & (np.abs(d @ right / z) <= 1.0) & (np.abs(d @ up / z) <= 0.75)
    assert np.mean(inside != (mask[..., 0] == 1)) < 0.01
    erp, erp_mask = g.perspective_to_erp(img, 90, 30, -20, 15, 64)
    truth = smooth_erp(64)
    assert np.abs((np.asarray(erp) - truth) * np.asarray(erp_mask)).max() < 0.5 * max_step(img)
    # Traced angles (one program for random views) give the same result as static ones.
    traced = jax.jit(lambda im, yaw: g.perspective_to_viewpoint(im, 90, yaw, -20, 15, 128))(
        img, 30.0
    )
    np.testing.assert_allclose(np.asarray(traced[0]), vp, atol=1e-4)
    assert np.mean(np.asarray(traced[1]) != mask) < 1e-3


def test_round_trip_erp_map_erp_psnr():
    """ERP 512 x 1024 -> 640 map -> ERP of the smooth scene (measured: 88.7 dB).

    Floor: two bilinear resamplings, each with pointwise error <= h^2 / 8 (|f_uu| + |f_vv|).
    The smooth scene has |f''| <~ 1 per rad^2; map pixels are at most ~0.0125 rad (U, after
    the sqrt(2) warp), ERP pixels 0.0061 rad: <~ 4e-5 + 1e-5 in the bulk (~86 dB). First-order
    terms (half a map pixel times |f'| <~ 0.6 / rad, where a copy is read at a clamped
    subregion border near the U pole) touch a few rows only. Floor: RMSE 1e-4, 80 dB. Also the
    rigorous L-inf bound: resampling is a convex combination, so the round-trip error is at
    most (ERP -> map error) + (map -> ERP error of the true map).
    """
    erp = smooth_erp(512)
    truth_map = smooth_map(640)
    vp = g.erp_to_viewpoint(erp, 640)
    back = np.asarray(g.viewpoint_to_erp(vp, 512))
    mse = np.mean((back - erp) ** 2)
    psnr = 10 * np.log10(1.0 / mse)
    print(f"round trip PSNR {psnr:.2f} dB")
    assert psnr > 80
    e1 = np.abs(np.asarray(vp) - truth_map).max()
    e2 = np.abs(np.asarray(g.viewpoint_to_erp(truth_map, 512)) - erp).max()
    assert np.abs(back - erp).max() <= e1 + e2 + 1e-5


# py360convert parity -----------------------------------------------------------------------------


def test_e2c_parity_with_py360convert():
    """Faces match py360convert's e2c list faces (same order and orientation, no flips).

    py360convert samples face pixel j at s = 2 j / (a - 1) - 1 (corners on the face edges),
    we at pixel centres s = 2 (j + 0.5) / a - 1: up to half a pixel apart, so the difference is
    below one pixel's step. With py360convert's own grid our ERP sampler reproduces e2c to its
    cv2 fixed-point precision (1/32 pixel).
    """
    erp = smooth_erp(128)
    theirs = np.stack(py360convert.e2c(erp, 64, cube_format="list"))
    ours = np.asarray(g.erp_to_cubemap(erp, 64))
    assert np.abs(ours - theirs).max() < 0.5 * max_step(theirs, axes=(1, 2))
    assert np.abs(ours - theirs).mean() < 0.1 * max_step(theirs, axes=(1, 2))
    xyz = py360convert.utils.xyzcube(64).reshape(64, 6, 64, 3).transpose(1, 0, 2, 3)
    row, col = sphere.direction_to_erp_pixel(xyz.astype(np.float64), 128, 256)
    idx, w = sampling.erp_taps(row, col, 128, 256)
    same_grid = (erp.reshape(-1, 3)[idx] * w[..., None]).sum(-2)
    assert np.abs(same_grid - theirs).max() < max_step(erp) / 32


def test_c2e_parity_with_py360convert():
    """c2e: py360convert uses a corner-aligned ERP grid and half-pixel-shifted face taps, so
    both are compared with the direct rendering; ours is closer and the two agree within
    py360convert's own error."""
    faces = np.asarray(scenes.render_cubemap(64, 0.0, "smooth"))
    truth = smooth_erp(128)
    theirs = py360convert.c2e(list(faces), 128, 256, cube_format="list")
    ours = np.asarray(g.cubemap_to_erp(faces, 128))
    err_theirs = np.abs(theirs - truth).max()
    err_ours = np.abs(ours - truth).max()
    assert err_ours < err_theirs
    assert np.abs(ours - theirs).max() <= err_ours + err_theirs + 1e-6


def test_e2p_parity_with_py360convert():
    """e2p: same yaw (u) and pitch (v) conventions; py360convert's in-plane rotation is our
    roll with the opposite sign; its grid is corner-aligned (half a pixel at the borders)."""
    erp = smooth_erp(128)
    h, w = 64, 96
    v_fov = np.rad2deg(2 * np.arctan(np.tan(np.deg2rad(40)) * (h - 1) / (w - 1)))
    theirs = py360convert.e2p(erp, (80, v_fov), 30, 20, (h, w), in_rot_deg=-20)
    ours = np.asarray(g.erp_to_perspective(erp, 80, 30, 20, 20, (h, w)))
    assert np.abs(ours - theirs).max() < 0.5 * max_step(theirs)


# dtypes and jax transformations ------------------------------------------------------------------


def test_dtypes_and_leading_dims():
    erp = smooth_erp(32)
    u8 = np.round(erp * 255).astype(np.uint8)
    clip = np.stack([u8, u8[:, ::-1]])[None]  # (1, 2, H, W, 3)
    out = g.erp_to_viewpoint(clip, 16)
    assert out.shape == (1, 2, 16, 16, 3) and out.dtype == jnp.uint8
    as_float = g.erp_to_viewpoint(clip.astype(np.float32), 16)
    np.testing.assert_array_equal(np.asarray(out), np.clip(np.round(np.asarray(as_float)), 0, 255))
    assert g.erp_to_viewpoint(erp.astype(jnp.bfloat16), 16).dtype == jnp.bfloat16
    faces = g.erp_to_cubemap(clip, 8)
    assert faces.shape == (1, 2, 6, 8, 8, 3)
    assert g.cubemap_to_erp(faces, 16).shape == (1, 2, 16, 32, 3)
    assert g.viewpoint_to_erp(out, 16).shape == (1, 2, 16, 32, 3)


def test_jit_vmap_grad():
    erp = jnp.asarray(smooth_erp(16))
    batch = jnp.stack([erp, 1 - erp])
    jitted = jax.jit(lambda x: g.viewpoint_to_erp(g.erp_to_viewpoint(x, 16), 16))
    np.testing.assert_allclose(
        jitted(batch), g.viewpoint_to_erp(g.erp_to_viewpoint(batch, 16), 16), atol=1e-6
    )
    vmapped = jax.vmap(lambda x: g.erp_to_viewpoint(x, 16))(batch)
    np.testing.assert_allclose(vmapped, g.erp_to_viewpoint(batch, 16), atol=1e-6)
    vmapped_fuse = jax.vmap(g.fuse_overlaps)(vmapped)
    np.testing.assert_allclose(vmapped_fuse, g.fuse_overlaps(vmapped), atol=1e-6)
    # Gradient through erp_to_viewpoint against central finite differences.
    probe = jnp.asarray(np.random.default_rng(3).normal(size=(16, 16, 3)), jnp.float32)
    loss = jax.jit(lambda x: jnp.sum(jnp.sin(g.erp_to_viewpoint(x, 16)) * probe))
    grad = np.asarray(jax.jit(jax.grad(loss))(erp))
    rng = np.random.default_rng(4)
    for _ in range(4):
        direction = rng.normal(size=erp.shape).astype(np.float32)
        eps = 1e-2
        fd = (loss(erp + eps * direction) - loss(erp - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=2e-2, atol=2e-3)
    # vmap over traced view angles: one program, one view per example.
    yaws = jnp.asarray([0.0, 90.0])
    views = jax.vmap(lambda y: g.erp_to_perspective(erp, 90, y, 0, 0, (8, 8)))(yaws)
    np.testing.assert_allclose(views[1], g.erp_to_perspective(erp, 90, 90, 0, 0, (8, 8)), atol=1e-5)


def test_nearest_mode_picks_source_pixels():
    erp = np.random.default_rng(5).integers(0, 255, (16, 32, 3)).astype(np.uint8)
    vp = np.asarray(g.erp_to_viewpoint(erp, 16, mode="nearest"))
    colours = {tuple(c) for c in erp.reshape(-1, 3)}
    assert all(tuple(c) in colours for c in vp.reshape(-1, 3))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: g.erp_to_viewpoint(np.zeros((8, 8, 3)), 16), "erp"),
        (lambda: g.erp_to_viewpoint(np.zeros((8, 16, 3)), 15), "map_size"),
        (lambda: g.erp_to_viewpoint(np.zeros((8, 16)), 16), "erp"),
        (lambda: g.viewpoint_to_erp(np.zeros((15, 15, 3)), 8), "vp"),
        (lambda: g.viewpoint_to_erp(np.zeros((16, 16, 3)), 8, 20), "width"),
        (lambda: g.fuse_overlaps(np.zeros((16, 18, 3))), "vp"),
        (lambda: g.erp_to_perspective(np.zeros((8, 16, 3)), 180, 0, 0, 0, (4, 4)), "fov_deg"),
        (lambda: g.erp_to_perspective(np.zeros((8, 16, 3)), 0, 0, 0, 0, (4, 4)), "fov_deg"),
        (lambda: g.perspective_to_viewpoint(np.zeros((4, 4, 3)), 90, np.nan, 0, 0, 16), "yaw_deg"),
        (lambda: g.erp_to_viewpoint(np.full((8, 16, 3), np.nan), 16), "non-finite"),
        (lambda: g.cubemap_to_erp(np.zeros((5, 8, 8, 3)), 8), "faces"),
        (lambda: g.erp_to_cubemap(np.zeros((8, 16, 3)), 0), "face_size"),
        (lambda: g.erp_to_viewpoint(np.zeros((8, 16, 3)), 16, mode="cubic"), "mode"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# U-face fusion weights (spec section 4), derived here from the spec's formulas ------------------

# Centre and right vectors of the horizontal faces F R B L (spec section 1: yaw 0, 90, 180, -90),
# in the order of layout.SUBREGIONS; every subregion's up vector is +y.
_CENTRES = np.array([(0, 0, 1), (1, 0, 0), (0, 0, -1), (-1, 0, 0)], np.float64)
_RIGHTS = np.array([(1, 0, 0), (0, 0, -1), (-1, 0, 0), (0, 0, 1)], np.float64)
_U_FLOOR = 0.001  # the spec's "+ 0.001" of a U copy's weight


def _spec_fusion_weights(d):
    """Fusion weight `(N, 4)` of each subregion's copy of unit directions `(N, 3)` (spec 4).

    U (y dominant, up): the U point p = d / d_y; the half-disk of subregion k is centred on the
    midpoint of U's edge with face k, which is c_k in U's (x, z) plane, radius 1; a covering copy
    weighs (1 - rho') + 0.001 with rho' = |p - c_k|, normalised over the copies.
    Side face k (its |s| >= |t| quarters): 1 - |s| / 2 here, |s| / 2 in the neighbour toward s.
    Elsewhere (top quarters of side faces, D): one copy, in the subregion of the face (for D the
    subregion whose centre face the point is nearest).
    """
    d = np.asarray(d, np.float64)
    dc, dr = d @ _CENTRES.T, d @ _RIGHTS.T  # (N, 4)
    nearest = np.argmax(dc, axis=-1)  # the side face (or the D quarter) of the point
    rows = np.arange(len(d))
    weights = np.zeros((len(d), 4))
    weights[rows, nearest] = 1.0

    side = np.argmax(np.abs(d), axis=-1) != 1
    depth = np.where(side, dc[rows, nearest], 1.0)  # > 0 on side faces
    s, t = dr[rows, nearest] / depth, d[:, 1] / depth  # face-local coordinates (spec 2)
    shared = side & (np.abs(s) >= np.abs(t))
    neighbour = (nearest + np.where(s > 0, 1, -1)) % 4
    weights[shared] = 0.0
    weights[rows[shared], nearest[shared]] = 1 - np.abs(s[shared]) / 2
    weights[rows[shared], neighbour[shared]] = np.abs(s[shared]) / 2

    up = ~side & (d[:, 1] > 0)
    p = d[up] / d[up, 1:2]
    rho = np.hypot(p[:, None, 0] - _CENTRES[:, 0], p[:, None, 2] - _CENTRES[:, 2])  # (N_up, 4)
    raw = np.where(rho <= 1, 1 - rho + _U_FLOOR, 0.0)
    weights[up] = raw / raw.sum(-1, keepdims=True)
    return weights


def _u_direction(x, z):
    """Unit direction of the U-face point (x, 1, z)."""
    return sphere.normalize(np.array([x, 1.0, z], np.float64))


def test_u_fusion_weights_at_hand_computed_points():
    """direction_to_copies' U weights at points worked out by hand from the spec's formula
    w = (1 - rho') + 0.001, normalised (F's half-disk is centred on (x, z) = (0, 1), R's on
    (1, 0), B's on (0, -1), L's on (-1, 0), all of radius 1)."""
    assert layout.U_WEIGHT_FLOOR == _U_FLOOR
    r85, r200801 = np.sqrt(0.85), np.sqrt(0.200801)
    cases = {
        # Only F's half-disk (rho'_F = 0.5; R's is sqrt(1.25) away): one copy.
        (0.0, 0.5): (1.0, 0.0, 0.0, 0.0),
        # On the diagonal between F and R: equally far (sqrt(0.5)) from both midpoints.
        (0.5, 0.5): (0.5, 0.5, 0.0, 0.0),
        # rho'_F = |(0.3, -0.4)| = 0.5, rho'_R = |(-0.7, 0.6)| = sqrt(0.85).
        (0.3, 0.6): (0.501 / (0.501 + 1.001 - r85), (1.001 - r85) / (0.501 + 1.001 - r85), 0, 0),
        # Just inside R's rim, rho'_R = 0.999: the floor doubles R's raw weight 0.001 -> 0.002.
        # rho'_F = |(0.2008, -0.4006)| = sqrt(0.200801).
        (0.2008, 0.5994): (
            (1.001 - r200801) / (1.003 - r200801),
            0.002 / (1.003 - r200801),
            0.0,
            0.0,
        ),
        # The U centre: rho' = 1 for all four half-disks; only the floor keeps them defined.
        (0.0, 0.0): (0.25, 0.25, 0.25, 0.25),
        # The same points in the other subregions' half-disks (a quarter turn of U each).
        (0.5, -0.5): (0.0, 0.5, 0.5, 0.0),
        # rho'_L = |(0.4, 0.3)| = 0.5, rho'_F = |(-0.6, -0.7)| = sqrt(0.85).
        (-0.6, 0.3): ((1.001 - r85) / (0.501 + 1.001 - r85), 0, 0, 0.501 / (0.501 + 1.001 - r85)),
        (0.0, -0.5): (0.0, 0.0, 1.0, 0.0),
    }
    d = np.stack([_u_direction(x, z) for x, z in cases])
    copies = layout.direction_to_copies(d, 64)
    expected = np.array(list(cases.values()), np.float64)
    np.testing.assert_allclose(copies.weight, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(copies.covered, expected > 0)
    np.testing.assert_allclose(_spec_fusion_weights(d), expected, rtol=1e-9, atol=1e-12)


def test_u_fusion_weights_follow_the_spec_and_the_four_fold_symmetry():
    """Random U-face directions: each copy's weight is the spec's (1 - rho') + floor normalised,
    the weights sum to 1 over at most two copies (off measure-zero rims), and a quarter yaw turn
    of the direction moves every weight to the next subregion (F -> R -> B -> L -> F)."""
    rng = np.random.default_rng(7)
    xz = rng.uniform(-1, 1, (4000, 2))
    d = sphere.normalize(np.stack([xz[:, 0], np.ones(len(xz)), xz[:, 1]], -1))
    copies = layout.direction_to_copies(d, 64)
    expected = _spec_fusion_weights(d)
    np.testing.assert_allclose(copies.weight, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(copies.covered, expected > 0)
    np.testing.assert_allclose(copies.weight.sum(-1), 1, atol=1e-12)
    count = copies.covered.sum(-1)
    assert count.min() >= 1 and count.max() <= 2
    assert (count == 2).mean() > 0.2  # the lenses where half-disks overlap are exercised
    two = count == 2
    assert np.abs(copies.weight[two] - 0.5).max() > 0.4  # weights far from an even split
    # Four-fold symmetry: yaw by +90 degrees maps F's centre (0, 0, 1) to R's (1, 0, 0).
    turned = np.stack([d[:, 2], d[:, 1], -d[:, 0]], -1)
    np.testing.assert_allclose(
        layout.direction_to_copies(turned, 64).weight,
        np.roll(copies.weight, 1, axis=-1),
        atol=1e-12,
    )


@pytest.mark.parametrize("map_size", [64, 10])
def test_fuse_overlaps_blends_disagreeing_copies_with_the_spec_weights(map_size):
    """A map whose channel k is 1 on subregion k and 0 elsewhere: every copy reads its own
    subregion's indicator (copies clamp to their subregion), so the copies of a point disagree and
    fuse_overlaps gives, at each pixel, the fusion weight of its copy in each subregion. These
    must be the spec's weights (computed here from each pixel's direction), including U's, and
    the map's four-fold symmetry (a clockwise quarter turn takes subregion k to k + 1)."""
    m, r = map_size, map_size // 2
    indicator = np.zeros((m, m, 4), np.float32)
    for k, (row, col) in enumerate([(0, 0), (0, 1), (1, 1), (1, 0)]):  # F R B L (spec table)
        indicator[row * r : (row + 1) * r, col * r : (col + 1) * r, k] = 1
    fused = np.asarray(g.fuse_overlaps(indicator))
    d = np.asarray(g.viewpoint_directions(m), np.float64).reshape(-1, 3)
    expected = _spec_fusion_weights(sphere.normalize(d)).reshape(m, m, 4)
    np.testing.assert_allclose(fused, expected, atol=1e-6)
    up = (np.abs(d).argmax(-1) == 1) & (d[:, 1] > 0)
    blended_u = up.reshape(m, m) & ((expected > 0).sum(-1) == 2)
    assert blended_u.sum() >= 4  # U pixels with two copies are checked
    for k in range(4):
        np.testing.assert_allclose(np.rot90(fused[..., k], -1), fused[..., (k + 1) % 4], atol=1e-6)
    # The same weights blend any values: per-subregion colours c_k fuse to sum_k w_k c_k.
    colours = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(g.fuse_overlaps(indicator @ colours)), expected @ colours, atol=1e-5
    )
