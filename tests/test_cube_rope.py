"""CP-4DRoPE (`RopeLayout.CUBE_FACES`): the 4D RoPE of a 2 x 3 cube-face raster, its config key
and its refusals; Table 2's arm."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import viewpoint_jax  # noqa: F401  (flax config)
from viewpoint_jax.models import rope
from viewpoint_jax.models.dit import DiTConfig, RopeLayout, WanDiT
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.studies import representation_ablation

HEAD_DIM = 96  # the tiny config's (dim 192, 2 heads): bands 16 frame, 16 face, 32, 32
GRID = (2, 4, 6)  # 2 frames, faces of 2 x 2 tokens


def test_each_face_has_a_perspective_frame_positions_and_the_face_index_a_band_of_its_own():
    cos, sin = rope.cube_face_rope_tables(GRID, HEAD_DIM)
    angle = np.arctan2(sin, cos).reshape(*GRID, HEAD_DIM // 2)
    frames, face, height, width = (n // 2 for n in rope.rope_split_4d(HEAD_DIM))
    assert (frames, face, height, width) == (8, 8, 16, 16)
    face_band = slice(frames, frames + face)
    # A face alone: its frame, row and column bands are Wan's 3D table of an (F, a, a) grid
    # (height and width on the same dims as in the pretrained DiT).
    cos3, sin3 = rope.rope_tables((GRID[0], 2, 2), HEAD_DIM)
    reference = np.arctan2(sin3, cos3).reshape(GRID[0], 2, 2, HEAD_DIM // 2)
    wan_frames = rope.rope_split(HEAD_DIM)[0] // 2
    for k in range(6):
        r, c = divmod(k, 3)
        tile = angle[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
        np.testing.assert_allclose(
            tile[..., frames + face :], reference[..., wan_frames:], atol=1e-6
        )
        # The face band holds k times its frequencies, the same for every token of the face.
        inv_freq = 1.0 / 10000.0 ** (np.arange(0, 2 * face, 2) / (2 * face))
        np.testing.assert_allclose(
            np.cos(tile[..., face_band]),
            np.broadcast_to(np.cos(k * inv_freq), tile[..., face_band].shape),
            atol=1e-6,
        )
    # Two faces' tokens at the same place differ in the face band only.
    np.testing.assert_allclose(angle[:, :2, :2, :frames], angle[:, 2:, 4:, :frames], atol=1e-6)
    assert not np.allclose(np.cos(angle[:, :2, :2, face_band]), np.cos(angle[:, 2:, 4:, face_band]))


def test_a_grid_of_other_shape_is_refused():
    with pytest.raises(ValueError, match="2 x 3 square faces"):
        rope.cube_face_rope_tables((1, 4, 4), HEAD_DIM)


def test_the_dit_uses_the_face_positions_and_is_otherwise_the_same_model():
    grid_model = WanDiT(DiTConfig.tiny(attention_pattern="pano"), rngs=nnx.Rngs(0))
    faces_config = dataclasses.replace(grid_model.config, rope_layout=RopeLayout.CUBE_FACES.value)
    faces_model = nnx.eval_shape(lambda: WanDiT(faces_config, rngs=nnx.Rngs(0)))
    nnx.update(faces_model, nnx.state(grid_model, nnx.Param))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 2, 8, 12, 16)), jnp.float32)  # 4 x 6 tokens
    t = jnp.asarray([500.0])
    ctx = jnp.asarray(rng.standard_normal((1, 3, 32)), jnp.float32)
    grid_out, faces_out = grid_model(x, t, ctx), faces_model(x, t, ctx)
    assert faces_out.shape == grid_out.shape and np.isfinite(np.asarray(faces_out)).all()
    assert not np.allclose(grid_out, faces_out, atol=1e-4)  # the positions reach attention
    # The same model with the face tables patched in for the grid's gives the same output.
    original = rope.rope_tables
    try:
        rope.rope_tables = rope.cube_face_rope_tables
        np.testing.assert_allclose(grid_model(x, t, ctx), faces_out, atol=1e-5)
    finally:
        rope.rope_tables = original


def test_subregion_blocks_or_an_unknown_layout_are_refused():
    with pytest.raises(ValueError, match="use pano attention"):
        DiTConfig.tiny(rope_layout="cube_faces")
    with pytest.raises(ValueError, match="rope_layout 'sphere'"):
        DiTConfig.tiny(attention_pattern="pano", rope_layout="sphere")


def test_the_config_key_needs_the_cube_raster():
    config = config_lib.load_config_file(str(config_lib.packaged_config("tiny.py")))
    config.model.attention_pattern = "pano"
    config.model.rope_layout = "cube_faces"
    with pytest.raises(ValueError, match=r"config\.model\.rope_layout: .*use 'cube_2x3'"):
        config_lib.validate_config(config, 1)
    config.data.representation = "cube_2x3"
    config_lib.validate_config(config, 1)
    assert config_lib.model_overrides(config)["rope_layout"] == "cube_faces"


def test_table_2_has_the_cp_4drope_arm():
    arm = representation_ablation.REPRESENTATION_ARMS["cube_4drope"]
    assert arm["data.representation"] == "cube_2x3"
    assert arm["model.rope_layout"] == RopeLayout.CUBE_FACES
    row = {
        "representation": "cube_2x3",
        "attention_pattern": "pano",
        "rope_layout": "cube_faces",
        "frame_size": [64, 96],
        "tokens_per_frame": 96,
        "mse": 0.3,
        "psnr_db": 11.0,
        "round_trip_mse": 0.01,
        **dict.fromkeys(representation_ablation.CONSISTENCY_METRICS),
    }
    references = {
        "ground_truth": dict.fromkeys(representation_ablation.CONSISTENCY_METRICS),
        "mid_grey_fill": {"mse": 0.27, "psnr_db": 11.7},
    }
    table = representation_ablation.representation_markdown({"cube_4drope": row}, references)
    assert "| cube_4drope | cube_2x3 | pano, 4D RoPE (face index) | 64x96 (96) |" in table
