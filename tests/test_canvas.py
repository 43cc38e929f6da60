"""The representations the DiT can see (geometry/canvas.py): sizes, the cube raster, directions,
and the projections ERP <-> frames and perspective -> frames for each."""

import jax
import numpy as np
import pytest

from viewpoint_jax import geometry as g
from viewpoint_jax.data import scenes
from viewpoint_jax.geometry import canvas, sphere
from viewpoint_jax.geometry.canvas import Representation

ALL = tuple(Representation)


def smooth(representation, hw):
    """The smooth scene rendered straight into a frame of `representation` (ground truth)."""
    return np.asarray(
        scenes.render(canvas.canvas_directions(representation, hw), 0.0, scenes.Scene("smooth"))
    )


def test_sizes_match_the_maps_pixel_budget_in_whole_tokens():
    assert canvas.canvas_size("viewpoint", 64) == (64, 64)
    assert canvas.canvas_size("erp", 640) == (448, 896)
    assert canvas.canvas_size("cube_2x3", 640) == (512, 768)
    assert canvas.canvas_size("erp", 64) == (48, 96)
    assert canvas.canvas_size("cube_2x3", 64) == (64, 96)
    for m in (64, 128, 256, 512, 640, 832):
        for representation in (Representation.ERP, Representation.CUBE_2X3):
            height, width = canvas.canvas_size(representation, m)
            assert height % canvas.CANVAS_MULTIPLE == 0 and width % canvas.CANVAS_MULTIPLE == 0
            canvas.check_canvas_hw(representation, (height, width))
            # Rounding a side to a multiple of 16 moves the pixel count by at most
            # (1 +- 8 / side)^2: within 20 % from M = 256 on, at M = 64 within 1.5x.
            ratio = height * width / m**2
            assert (0.8 < ratio < 1.2) if m >= 256 else (0.65 < ratio <= 1.5), (m, ratio)


def test_frame_shapes_are_checked_by_name():
    with pytest.raises(ValueError, match="'erp' must be an ERP frame with width = 2 \\* height"):
        canvas.check_canvas_hw(Representation.ERP, (48, 64))
    with pytest.raises(ValueError, match=r"2 x 3 raster of square faces \(2a x 3a\), got 64x64"):
        canvas.check_canvas_hw(Representation.CUBE_2X3, (64, 64))
    with pytest.raises(ValueError, match="square map of even side"):
        g.erp_to_canvas(np.zeros((16, 32, 3)), "viewpoint", (16, 18))
    with pytest.raises(ValueError, match="is not a valid Representation"):
        canvas.canvas_size("cubemap", 64)


def test_cube_raster_puts_each_face_in_its_cell_and_back():
    faces = np.arange(6 * 4 * 4 * 2, dtype=np.float32).reshape(6, 4, 4, 2)
    raster = canvas.faces_to_raster(faces)
    assert raster.shape == (8, 12, 2)
    for k in range(6):  # F R B on the top row, L U D below
        row, col = divmod(k, 3)
        np.testing.assert_array_equal(
            raster[4 * row : 4 * row + 4, 4 * col : 4 * col + 4], faces[k]
        )
    np.testing.assert_array_equal(canvas.raster_to_faces(raster[None])[0], faces)


def test_directions_are_those_of_each_representations_pixels():
    erp = canvas.canvas_directions(Representation.ERP, (8, 16))
    np.testing.assert_array_equal(erp, sphere.erp_directions(8, 16))
    cube = canvas.canvas_directions(Representation.CUBE_2X3, (8, 12))
    np.testing.assert_array_equal(canvas.raster_to_faces(cube), sphere.cube_face_directions(4))
    for representation, hw in ((Representation.VIEWPOINT, (16, 16)), (Representation.ERP, (8, 16))):
        d = canvas.canvas_directions(representation, hw)
        np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-12)
    # The top row of the cube raster is continuous: F's right edge meets R's left edge.
    step = np.abs(np.diff(cube[:4], axis=1)).max()
    assert np.abs(cube[:4, 3] - cube[:4, 4]).max() <= step


@pytest.mark.parametrize("representation", ALL)
def test_erp_to_frames_matches_direct_rendering(representation):
    erp = np.asarray(scenes.render_erp(256, 0.0, "smooth"))
    hw = canvas.canvas_size(representation, 128)
    frames = np.asarray(g.erp_to_canvas(erp, representation, hw))
    assert frames.shape == (*hw, 3)
    # Bilinear reading of a smooth scene: far below one ERP pixel's step (0.012 here).
    assert np.abs(frames - smooth(representation, hw)).max() < 1e-3


# Measured at ERP 128 x 256 and M = 128 (frames: 128 x 128 map, 96 x 192 ERP, 96 x 144 cube):
# 67.7, 76.3 and 80.6 dB. Two bilinear resamplings of the smooth scene (|f''| <~ 1 / rad^2) at
# pixels of ~0.025 rad (map, U after the warp) or ~0.03 rad (ERP, cube) err by h^2 / 8 |f''|
# <~ 1e-4 each in the bulk; the map's first-order terms at clamped subregion borders (half a map
# pixel times |f'| <~ 0.6 / rad) add up to ~0.007 on a few rows. Floors with a 5 dB margin.
ROUND_TRIP_DB = {
    Representation.VIEWPOINT: 62.0,
    Representation.ERP: 71.0,
    Representation.CUBE_2X3: 75.0,
}


@pytest.mark.parametrize("representation", ALL)
def test_round_trip_erp_frames_erp_psnr(representation):
    erp = np.asarray(scenes.render_erp(128, 0.0, "smooth"))
    hw = canvas.canvas_size(representation, 128)
    frames = g.erp_to_canvas(erp, representation, hw)
    back = np.asarray(g.canvas_to_erp(frames, representation, 128))
    assert back.shape == erp.shape
    psnr = 10 * np.log10(1.0 / np.mean((back - erp) ** 2))
    print(f"{representation.value}: round trip PSNR {psnr:.2f} dB")
    assert psnr > ROUND_TRIP_DB[representation]
    # Resampling is a convex combination: the round trip errs by at most the error of each leg.
    e1 = np.abs(np.asarray(frames) - smooth(representation, hw)).max()
    e2 = np.abs(np.asarray(g.canvas_to_erp(smooth(representation, hw), representation, 128)) - erp)
    assert np.abs(back - erp).max() <= e1 + e2.max() + 1e-5


def test_an_erp_frame_of_the_same_size_is_returned_unchanged():
    erp = np.asarray(scenes.render_erp(32, 0.0, "room"))
    np.testing.assert_array_equal(np.asarray(g.erp_to_canvas(erp, "erp", (32, 64))), erp)
    np.testing.assert_array_equal(np.asarray(g.canvas_to_erp(erp, "erp", 32)), erp)


@pytest.mark.parametrize("representation", ALL)
def test_perspective_lands_where_its_frustum_is(representation):
    angles = (90, 30, -20, 15)
    img = np.asarray(scenes.render_perspective(*angles, (48, 64), 0.0, "smooth"))
    hw = canvas.canvas_size(representation, 128)
    frames, mask = (
        np.asarray(a) for a in g.perspective_to_canvas(img, *angles, representation, hw)
    )
    assert frames.shape == (*hw, 3) and mask.shape == (*hw, 1)
    assert set(np.unique(mask)) == {0.0, 1.0} and (frames[mask[..., 0] == 0] == 0).all()
    # Inside: the scene, up to bilinear error (half a step within half a pixel of the border).
    step = max(float(np.abs(np.diff(img, axis=a)).max()) for a in (0, 1))
    assert np.abs((frames - smooth(representation, hw)) * mask).max() < 0.5 * step
    d = canvas.canvas_directions(representation, hw)
    forward, right, up = sphere.camera_basis(*np.deg2rad(angles[1:]))
    z = d @ forward
    inside = (z > 0) & (np.abs(d @ right / z) <= 1.0) & (np.abs(d @ up / z) <= 0.75)
    assert np.mean(inside != (mask[..., 0] == 1)) < 0.01
    # Traced angles (one program for random views) give the same result as static ones.
    traced = jax.jit(lambda yaw: g.perspective_to_canvas(img, 90, yaw, -20, 15, representation, hw))
    frames_traced, mask_traced = traced(30.0)
    np.testing.assert_allclose(np.asarray(frames_traced), frames, atol=1e-4)
    assert np.mean(np.asarray(mask_traced) != mask) < 1e-3
