"""The grain pipeline: clips, yaw turns, maps, conditions, caption dropout, mixing, state."""

import json
import logging

import numpy as np
import pytest

from viewpoint_jax import geometry
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.data import panoramic_videos, pipeline, scenes

H, W, M, F = 16, 32, 16, 5


def _record(index: int, num_frames: int, is_image: bool = False, corrupt: bool = False) -> dict:
    rng = np.random.default_rng(index)
    frames = (rng.random((num_frames, H, W, 3)) * 255).astype(np.uint8)
    encoded = [panoramic_videos.encode_frame(f, "png") for f in frames]
    if corrupt:
        encoded = [b"\x89PNG garbage"] * num_frames
    kind = "image" if is_image else "clip"
    return {
        "frames": encoded,
        "caption": f"{kind} {index}".encode(),
        "source": f"{kind}{index}".encode(),
        "is_image": is_image,
        "num_frames": num_frames,
    }


def _source(num_videos=6, num_images=0, corrupt=()):
    videos = [_record(i, 8, corrupt=i in corrupt) for i in range(num_videos)]
    return videos + [_record(100 + i, 1, is_image=True) for i in range(num_images)]


def _config(**overrides):
    config = data_config_lib.data_config()
    config.update(
        dict(erp_height=H, erp_width=W, map_size=M, num_frames=F, batch_size=2, caption_dropout=0.0)
    )
    # The paper's condition only; tests/test_condition_mixture.py covers the other kinds.
    config.condition_mixture = {"perspective_video": 1.0}
    config.update(overrides)
    return config


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batches_have_the_documented_shapes_and_ranges():
    it = pipeline.make_train_iterator(_config(), data_source=_source())
    for batch in _take(it, 2):
        assert set(batch) == {
            "target_map", "condition_map", "condition_mask", "condition_kind", "caption",
            "is_image", "skipped_records",
        }  # fmt: skip
        assert batch["target_map"].shape == (2, F, M, M, 3)
        assert batch["condition_map"].shape == (2, F, M, M, 3)
        assert batch["condition_mask"].shape == (2, F, M, M, 1)
        for key in ("target_map", "condition_map", "condition_mask"):
            assert batch[key].dtype == np.float32
        assert -1 <= batch["target_map"].min() and batch["target_map"].max() <= 1
        assert set(np.unique(batch["condition_mask"])) == {0.0, 1.0}
        mask = batch["condition_mask"]
        assert np.all(mask == mask[:, :1])  # one view for the whole clip
        assert np.all(batch["condition_map"][np.broadcast_to(mask, (2, F, M, M, 3)) == 0] == 0)
        assert batch["caption"].shape == (2,) and all(
            c.startswith("clip ") for c in batch["caption"]
        )
        assert batch["is_image"].dtype == bool and not batch["is_image"].any()
        assert batch["skipped_records"] == 0


def test_target_is_the_map_of_the_clip_turned_by_a_whole_pixel_roll():
    record = _record(0, F)
    erp = np.stack([panoramic_videos.decode_frame(f) for f in record["frames"]]).astype(np.float32)
    erp = erp / 127.5 - 1
    plain = pipeline.ExampleMaker(_config(yaw_augment=False), "video")
    example = plain(record, np.random.default_rng(0))
    np.testing.assert_allclose(example["target_map"], geometry.erp_to_viewpoint(erp, M), atol=1e-5)
    turned = pipeline.ExampleMaker(_config(), "video")
    target = turned(record, np.random.default_rng(3))["target_map"]
    errors = [
        np.abs(target - np.asarray(geometry.erp_to_viewpoint(np.roll(erp, k, axis=2), M))).max()
        for k in range(W)
    ]
    assert min(errors) < 1e-5 and sorted(errors)[1] > 0.1  # exactly one roll explains it


def test_yaw_roll_is_a_horizontal_roll():
    clip = np.random.default_rng(0).random((3, H, W, 3))
    shifts = set()
    for seed in range(64):
        rolled, shift = pipeline.yaw_roll(clip, np.random.default_rng(seed))
        np.testing.assert_array_equal(rolled, np.roll(clip, shift, axis=2))
        shifts.add(shift)
    assert len(shifts) > W // 2 and shifts <= set(range(W))


def test_clip_indices_handle_long_short_and_tiny_videos():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        idx = pipeline.clip_indices(100, 5, 3, rng)
        assert np.all(np.diff(idx) == 3) and idx[-1] < 100
        starts.add(int(idx[0]))
    assert len(starts) > 10
    np.testing.assert_array_equal(pipeline.clip_indices(9, 5, 3, rng), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(pipeline.clip_indices(3, 5, 2, rng), [0, 1, 2, 2, 2])
    assert pipeline.clip_indices(7, 1, 4, rng).shape == (1,)


def test_caption_dropout_rate():
    for rate, low, high in [(0.0, 0, 0), (0.3, 21, 51), (1.0, 120, 120)]:
        it = pipeline.make_train_iterator(
            _config(caption_dropout=rate, batch_size=4), data_source=_source()
        )
        captions = np.concatenate([b["caption"] for b in _take(it, 30)])
        dropped = int(np.sum(captions == ""))
        assert low <= dropped <= high, (rate, dropped)  # 0.3: mean 36, 3 sigma band


def test_image_and_video_batches_mix_and_stay_homogeneous():
    it = pipeline.make_train_iterator(
        _config(image_ratio=0.25), data_source=_source(num_videos=4, num_images=4)
    )
    batches = _take(it, 12)
    kinds = [bool(b["is_image"][0]) for b in batches]
    assert sum(kinds) == 3
    for batch, is_image in zip(batches, kinds):
        assert np.all(batch["is_image"] == is_image)
        assert batch["target_map"].shape[1] == (1 if is_image else F)
        if not is_image:  # image records never become frozen videos
            assert all(c.startswith("clip ") for c in batch["caption"])
    image_captions = {c for b, k in zip(batches, kinds) if k for c in b["caption"]}
    # Image batches read image records and single frames of videos.
    assert {c.split()[0] for c in image_captions} == {"clip", "image"}


def test_corrupt_record_is_skipped_with_a_warning_and_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="viewpoint_jax.data.pipeline"):
        it = pipeline.make_train_iterator(
            _config(max_bad_fraction=0.5), data_source=_source(num_videos=4, corrupt={2})
        )
        batches = _take(it, 8)  # 16 examples = 4 epochs of 3 good records + 4 skips
    counts = [int(b["skipped_records"]) for b in batches]
    assert counts == sorted(counts) and counts[-1] >= 3
    assert all(not any(c == "clip 2" for c in b["caption"]) for b in batches)
    assert "skipping unreadable record clip2" in caplog.text


def test_only_bad_records_stop_with_a_message(monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_FAILURES", 5)
    it = pipeline.make_train_iterator(_config(), data_source=_source(num_videos=2, corrupt={0, 1}))
    with pytest.raises(RuntimeError, match="could not be read"):
        next(it)


def test_iterator_state_round_trip():
    config = _config(image_ratio=0.5, caption_dropout=0.5)
    source = _source(num_videos=5, num_images=2, corrupt={1})
    it = pipeline.make_train_iterator(config, seed=3, data_source=source)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able (grain/Orbax checkpoints)
    expected = _take(it, 4)
    restored = pipeline.make_train_iterator(config, seed=3, data_source=source)
    restored.set_state(state)
    for got, want in zip(_take(restored, 4), expected):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other_seed = pipeline.make_train_iterator(config, seed=4, data_source=source)
    assert any(
        not np.array_equal(a["target_map"], b["target_map"])
        for a, b in zip(_take(other_seed, 7)[3:], expected)
    )


def test_hosts_read_disjoint_records():
    source = _source(num_videos=8)
    seen = []
    for index in range(2):
        it = pipeline.make_train_iterator(
            _config(batch_size=4), process_index=index, process_count=2, data_source=source
        )
        epoch = _take(it, 2)  # 2 batches of 2 = this host's 4 records
        assert epoch[0]["target_map"].shape[0] == 2
        seen.append({c for b in epoch for c in b["caption"]})
    assert len(seen[0]) == len(seen[1]) == 4
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"clip {i}" for i in range(8)}


def test_multiprocess_workers_and_their_state():
    config = _config(worker_count=2)
    it = pipeline.make_train_iterator(config, data_source=_source(num_videos=6))
    try:
        first = _take(it, 2)
        state = it.get_state()
        expected = _take(it, 3)
        it.set_state(state)  # the workers rewind to the saved state
        got = _take(it, 3)
    finally:
        it.close()
    assert first[0]["target_map"].shape == (2, F, M, M, 3)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a["target_map"], b["target_map"])
        np.testing.assert_array_equal(a["caption"], b["caption"])
    # Both workers contributed: 5 batches cover 10 examples of 6 records.
    assert len({c for b in first + expected for c in b["caption"]}) == 6


def test_eval_iterator_is_deterministic_and_complete():
    source = _source(num_videos=3, num_images=1)
    runs = [
        list(pipeline.make_eval_iterator(_config(), batch_size=2, seed=1, data_source=source))
        for _ in range(2)
    ]
    assert [len(b["caption"]) for b in runs[0]] == [2, 1]  # 3 videos, the image is skipped
    batch = runs[0][0]
    assert batch["perspective"].shape == (2, F, 8, 14, 3) and batch["view"].shape == (2, 4)
    assert list(batch["source"]) == ["clip0", "clip1"]
    for a, b in zip(*runs):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(erp_width=40), "config.data.erp_width: must be 2 \\* erp_height"),
        (dict(num_frames=0), "config.data.num_frames: must be a positive integer"),
        (dict(image_ratio=1.5), "config.data.image_ratio: must be in"),
        (dict(batch_size=3), "batch_size 3 is not divisible by the 2 hosts"),
        (dict(condition_fov_range=(100, 50)), "condition_fov_range"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        pipeline.make_train_iterator(
            _config(**overrides), process_count=2, data_source=_source(num_videos=2)
        )


def test_yaw_turn_is_applied_with_a_random_shift_per_example():
    """ExampleMaker rolls the clip by a random whole-pixel shift: over 8 seeds the target map is
    erp_to_viewpoint of the decoded clip rolled by exactly one of the W shifts, and the shifts
    vary (a maker that skips the roll would always match shift 0)."""
    record = _record(0, F)
    erp = np.stack([panoramic_videos.decode_frame(f) for f in record["frames"]]).astype(np.float32)
    erp = erp / 127.5 - 1
    rolled_maps = np.asarray(
        geometry.erp_to_viewpoint(np.stack([np.roll(erp, k, axis=2) for k in range(W)]), M)
    )  # (W, F, M, M, 3): the target map of every candidate turn
    maker = pipeline.ExampleMaker(_config(), "video")
    shifts = []
    for seed in range(8):
        target = maker(record, np.random.default_rng(seed))["target_map"]
        errors = np.abs(rolled_maps - target).max(axis=(1, 2, 3, 4))
        (matches,) = np.nonzero(errors < 1e-5)
        assert len(matches) == 1, (seed, np.sort(errors)[:3])  # exactly one roll explains it
        shifts.append(int(matches[0]))
    assert len(set(shifts)) >= 4, shifts


def _smooth_record(height: int, num_frames: int) -> dict:
    """A clip of the smooth scene (still), as the builder stores it: resampling it twice (view,
    then back onto the frames) stays close to resampling it once."""
    frame = np.asarray(scenes.render_erp(height, 0.0, "smooth", samples=2))
    frames = [panoramic_videos.encode_frame(scenes.to_uint8(frame), "png")] * num_frames
    return {"frames": frames, "caption": b"smooth", "source": b"smooth", "is_image": False}


@pytest.mark.parametrize("representation", list(geometry.Representation))
def test_target_condition_and_mask_agree_in_every_representation(representation):
    height, map_size = 32, 64
    config = _config(erp_height=height, erp_width=2 * height, map_size=map_size)
    config.representation = representation.value
    example = pipeline.ExampleMaker(config, "eval")(
        _smooth_record(height, F), np.random.default_rng(2)
    )
    hw = geometry.canvas_size(representation, map_size)
    target, condition = example["target_map"], example["condition_map"]
    mask = example["condition_mask"]
    assert target.shape == condition.shape == (F, *hw, 3) and mask.shape == (F, *hw, 1)
    # The target is the ERP clip (carried by eval examples) in this representation's frames.
    np.testing.assert_allclose(
        target, geometry.erp_to_canvas(example["erp"], representation, hw), atol=1e-6
    )
    # The condition is the target where the view lands (two resamplings of the smooth scene
    # vs one: measured 0.014 to 0.015), and 0 elsewhere.
    inside = np.broadcast_to(mask == 1, condition.shape)
    assert 0.05 < inside.mean() < 0.6 and set(np.unique(mask)) == {0.0, 1.0}
    assert np.abs(condition - target)[inside].max() < 0.03
    assert not condition[~inside].any()
    # The mask is where the camera looks: brought to ERP, it is the view's own ERP mask.
    fov, yaw, pitch, roll = (float(v) for v in example["view"])
    _, erp_mask = geometry.perspective_to_erp(
        np.zeros((*example["perspective"].shape[1:3], 1)), fov, yaw, pitch, roll, height=height
    )
    in_erp = np.asarray(geometry.canvas_to_erp(mask[0], representation, height)) > 0.5
    assert np.mean(in_erp != (np.asarray(erp_mask) == 1)) < 0.01  # measured 0.15 to 0.25 %
