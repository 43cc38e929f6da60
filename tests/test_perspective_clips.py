"""Perspective clips of demo scenes: the pretraining data of the plain text-to-video DiT."""

import numpy as np
import pytest

from viewpoint_jax import geometry
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.data import demo_dataset, perspective_clips, pipeline

HEIGHT, CLIP_FRAMES, FPS = 32, 9, 4.0


def _scenes_config(**scenes):
    config = data_config_lib.data_config()
    config.source = data_config_lib.DataSource.DEMO_SCENES.value
    config.erp_height, config.erp_width = HEIGHT, 2 * HEIGHT
    config.num_frames = 3
    config.batch_size = 4
    config.read_threads = 1
    config.scenes.update(dict(count=6, clip_frames=CLIP_FRAMES, fps=FPS, size=(16, 24), **scenes))
    return config


def test_scene_source_lists_the_scenes_of_its_seed():
    source = perspective_clips.SceneSource(count=5, seed=7)
    assert len(source) == 5
    assert [source[i]["scene"] for i in range(5)] == [
        demo_dataset.scene_for(7, i) for i in range(5)
    ]
    assert source[3]["source"] == "demo scene 7/3"


def test_view_clip_is_the_camera_view_of_the_scenes_clip():
    """A window of the clip seen by the camera = the same frames of the whole ERP clip (as the
    demo dataset renders it, 8-bit) through erp_to_perspective."""
    scene = demo_dataset.scene_for(1, 2)
    view = np.asarray([75.0, -40.0, 20.0, 0.0], np.float32)
    clip = perspective_clips.render_view_clip(
        scene, view, erp_height=HEIGHT, clip_frames=CLIP_FRAMES, fps=FPS, first_frame=4,
        num_frames=3, out_hw=(16, 24),
    )  # fmt: skip
    erp = demo_dataset.render_scene(scene, HEIGHT, CLIP_FRAMES, FPS)[4:7]
    expected = geometry.erp_to_perspective(erp / 127.5 - 1.0, *view, out_hw=(16, 24))
    assert clip.shape == (3, 16, 24, 3) and clip.dtype == np.float32
    np.testing.assert_allclose(clip, expected, atol=1e-5)


def test_batches_are_captioned_perspective_clips_without_a_condition():
    config = _scenes_config()
    config.caption_dropout = 0.0
    iterator = pipeline.make_train_iterator(config, seed=0)
    batch = next(iterator)
    assert batch["target_map"].shape == (4, 3, 16, 24, 3)
    assert batch["target_map"].min() >= -1.0 and batch["target_map"].max() <= 1.0
    assert not {"condition_map", "condition_mask", "condition_kind"} & set(batch)
    captions = {demo_dataset.scene_for(config.scenes.seed, i).caption for i in range(6)}
    assert set(batch["caption"].tolist()) <= captions
    assert not batch["is_image"].any()
    # Distinct cameras and windows: no two examples show the same pixels.
    flat = batch["target_map"].reshape(4, -1)
    assert len({row.tobytes() for row in flat}) == 4


def test_scene_batches_resume_exactly_and_drop_captions():
    config = _scenes_config()
    config.caption_dropout = 0.5
    iterator = pipeline.make_train_iterator(config, seed=3)
    next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    resumed = pipeline.make_train_iterator(config, seed=3)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["target_map"], want["target_map"])
        assert got["caption"].tolist() == want["caption"].tolist()
    captions = [c for b in expected for c in b["caption"].tolist()]
    assert "" in captions and any(captions)


def test_image_batches_are_single_frames():
    config = _scenes_config()
    config.image_ratio = 1.0
    batch = next(pipeline.make_train_iterator(config, seed=0))
    assert batch["target_map"].shape == (4, 1, 16, 24, 3)
    assert batch["is_image"].all()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("source", "videos", r"config\.data\.source: must be one of"),
        ("scenes.clip_frames", 2, r"config\.data\.scenes\.clip_frames: must be >= num_frames"),
        ("scenes.size", (16,), r"config\.data\.scenes\.size"),
        ("scenes.pitch_range", (10.0, -10.0), r"config\.data\.scenes: condition_pitch_range"),
        ("precomputed_latents", "x", r"config\.data\.precomputed_latents"),
    ],
)
def test_bad_scene_config_names_the_key(key, value, message):
    config = _scenes_config()
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ValueError, match=message):
        data_config_lib.validate_data_config(config)
