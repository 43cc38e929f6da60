"""Training conditions: a random perspective view of the clip, projected back onto the map."""

import jax.numpy as jnp
import numpy as np
import pytest

from viewpoint_jax import geometry
from viewpoint_jax.data import conditions, scenes
from viewpoint_jax.geometry import sphere

MAP = 64
ERP_HEIGHT = 64
OUT_HW = (32, 56)


def _frustum_coordinates(view: conditions.ConditionView, map_size: int):
    """Tangent-plane coordinates (x/z, y/z) and depth z of each map pixel in the camera frame."""
    d = np.asarray(geometry.viewpoint_directions(map_size), np.float64)
    forward, right, up = sphere.camera_basis(
        *np.deg2rad([view.yaw_deg, view.pitch_deg, view.roll_deg])
    )
    z = d @ forward
    safe = np.where(z > 1e-6, z, 1.0)
    return (d @ right) / safe, (d @ up) / safe, z


@pytest.mark.parametrize(
    "view",
    [
        conditions.ConditionView(90.0, 0.0, 0.0, 0.0),
        conditions.ConditionView(70.0, 135.0, -20.0, 0.0),
        conditions.ConditionView(110.0, -60.0, 25.0, 10.0),
    ],
)
def test_mask_covers_exactly_where_the_view_lands(view):
    mask = np.asarray(conditions.mask_on_map(view, OUT_HW, MAP))[..., 0]
    assert set(np.unique(mask)) <= {0.0, 1.0}
    u, v, z = _frustum_coordinates(view, MAP)
    half_w = np.tan(np.deg2rad(view.fov_deg) / 2)
    half_h = half_w * OUT_HW[0] / OUT_HW[1]
    inside = (z > 0) & (np.abs(u) < 0.93 * half_w) & (np.abs(v) < 0.93 * half_h)
    outside = (z <= 0) | (np.abs(u) > 1.07 * half_w) | (np.abs(v) > 1.07 * half_h)
    assert inside.sum() > 20 and outside.sum() > 20
    assert mask[inside].min() == 1.0
    assert mask[outside].max() == 0.0


def test_condition_equals_the_map_of_the_scene_inside_the_mask():
    erp = scenes.render_erp(ERP_HEIGHT, scene="smooth", samples=2)[None]  # (1, H, 2H, 3)
    truth = np.asarray(scenes.render_viewpoint(MAP, scene="smooth", samples=2))
    view = conditions.ConditionView(100.0, 40.0, 15.0, 0.0)
    out = conditions.target_and_condition(erp, view.as_array(), map_size=MAP, out_hw=OUT_HW)
    cond, mask = np.asarray(out["condition_map"][0]), np.asarray(out["condition_mask"][0, ..., 0])
    assert out["perspective"].shape == (1, *OUT_HW, 3)
    assert np.abs(cond[mask == 0]).max() == 0.0  # zero outside the mask
    # Inside, the condition is the scene's map up to two bilinear resamplings (measured 0.003).
    inside = mask == 1
    assert inside.sum() > 100
    error = np.abs(cond[inside] - truth[inside]).max()
    assert error < 0.01, error
    # A wrong view (other yaw) does not match: the test can tell views apart.
    assert np.abs(cond[inside] - np.roll(truth, MAP // 2, axis=1)[inside]).max() > 0.1
    # The target is the map of the ERP.
    np.testing.assert_allclose(out["target_map"][0], truth, atol=0.015)  # measured 0.0066


def test_traced_angles_match_static_angles():
    erp = scenes.render_erp(ERP_HEIGHT, time=0.3, scene="room")[None]
    view = conditions.ConditionView(80.0, -120.0, 10.0, 5.0)
    traced = conditions.target_and_condition(erp, view.as_array(), map_size=MAP, out_hw=OUT_HW)
    static = conditions.render_condition(erp, view.as_array().tolist(), MAP, OUT_HW)
    for got, want in zip(
        [traced["perspective"], traced["condition_map"], traced["condition_mask"]], static
    ):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_sample_view_ranges_and_determinism():
    ranges = dict(fov_range=(60, 120), yaw_range=(-180, 180), pitch_range=(-30, 30))
    views = [conditions.sample_view(np.random.default_rng(i), **ranges) for i in range(200)]
    again = [conditions.sample_view(np.random.default_rng(i), **ranges) for i in range(200)]
    assert views == again
    angles = np.stack([v.as_array() for v in views])
    for column, (lo, hi) in enumerate([(60, 120), (-180, 180), (-30, 30)]):
        assert lo <= angles[:, column].min() < lo + 0.2 * (hi - lo)
        assert hi - 0.2 * (hi - lo) < angles[:, column].max() <= hi
    assert np.all(angles[:, 3] == 0)
    fixed = conditions.sample_view(np.random.default_rng(0), (90, 90), (0, 0), (0, 0))
    assert fixed == conditions.ConditionView(90.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="condition_fov_range"):
        conditions.sample_view(np.random.default_rng(0), fov_range=(120, 60))
    with pytest.raises(ValueError, match="condition_pitch_range"):
        conditions.sample_view(np.random.default_rng(0), pitch_range=(-100, 0))


def test_condition_size_and_user_perspective():
    assert conditions.condition_size(512) == (256, 456)
    assert conditions.condition_size(16) == (8, 14)
    view = conditions.ConditionView(90.0)
    frames = jnp.ones((2, *OUT_HW, 3))
    cond, mask = conditions.condition_from_perspective(frames, view, MAP)
    assert cond.shape == (2, MAP, MAP, 3) and mask.shape == (2, MAP, MAP, 1)
    np.testing.assert_allclose(cond, jnp.broadcast_to(mask, cond.shape), atol=1e-6)
