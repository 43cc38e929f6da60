"""Procedural scenes: colours of directions, consistent across pixel grids, moving with time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viewpoint_jax import geometry as g
from viewpoint_jax.data import scenes


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_render_is_rgb_in_unit_range(kind):
    d = g.erp_directions(16, 32)
    colour = np.asarray(scenes.render(d, 0.5, kind))
    assert colour.shape == (16, 32, 3) and colour.dtype == np.float32
    assert colour.min() >= 0 and colour.max() <= 1 and colour.std() > 0.02


def test_grids_render_the_same_scene():
    """Every grid is the renderer applied to that grid's pixel directions."""
    vp = np.asarray(scenes.render_viewpoint(32, 0.3))
    np.testing.assert_allclose(
        vp, np.asarray(scenes.render(g.viewpoint_directions(32), 0.3)), atol=1e-6
    )
    faces = np.asarray(scenes.render_cubemap(8, 0.3))
    np.testing.assert_allclose(
        faces, np.asarray(scenes.render(g.cube_face_directions(8), 0.3)), atol=1e-6
    )
    view = np.asarray(scenes.render_perspective(90, 0, 0, 0, (8, 8), 0.3))
    np.testing.assert_allclose(view, faces[0], atol=1e-5)  # the F face is the front 90-degree view
    erp = np.asarray(scenes.render_erp(16, 0.3))
    np.testing.assert_allclose(
        erp, np.asarray(scenes.render(g.erp_directions(16, 32), 0.3)), atol=1e-6
    )


def test_room_moves_with_time_and_video_is_one_program():
    video = np.asarray(scenes.render_erp_video(32, num_frames=3, fps=2.0))
    assert video.shape == (3, 32, 64, 3)
    np.testing.assert_allclose(video[1], np.asarray(scenes.render_erp(32, 0.5)), atol=1e-5)
    assert np.abs(video[2] - video[0]).mean() > 0.01  # discs orbit, light moves, camera turns
    # The smooth and graticule scenes are static.
    d = g.erp_directions(8, 16)
    np.testing.assert_array_equal(scenes.render(d, 0.0, "smooth"), scenes.render(d, 5.0, "smooth"))
    frames = jax.jit(jax.vmap(lambda t: scenes.render(jnp.asarray(d), t)))(jnp.arange(2.0))
    np.testing.assert_allclose(frames[1], scenes.render(d, 1.0), atol=1e-5)


def test_room_has_high_frequency_detail_and_supersampling_smooths_it():
    view = np.asarray(scenes.render_perspective(40, 0, 0, 0, (32, 32), 0.0))  # the wave panel
    assert np.abs(np.diff(view, axis=1)).mean() > 0.05
    d = g.erp_directions(64, 128)
    sharp = np.asarray(scenes.render(d, 0.0))
    smooth = np.asarray(scenes.render_erp(64, 0.0, samples=3))
    assert np.abs(np.diff(smooth, axis=1)).mean() < np.abs(np.diff(sharp, axis=1)).mean()


def test_unknown_scene_kind():
    with pytest.raises(ValueError, match="scene kind"):
        scenes.render(np.zeros((1, 3)), 0.0, "forest")
