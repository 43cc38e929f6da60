"""Damaged datasets (built by the real builder): a corrupt record is skipped and counted, too
many stop training with a message, a missing or truncated shard is named when it opens."""

import logging

import pytest
from test_preparation import LINES, _write_folder

from viewpoint_jax.data import panoramic_videos, pipeline, preparation
from viewpoint_jax.data.config import data_config


@pytest.fixture()
def dataset(tmp_path):
    """(data_dir, name, first train shard) of a tiny dataset: 3 train records, a shard per
    source file (the builder's resumable unit)."""
    src = _write_folder(tmp_path / "src", LINES)
    out = preparation.prepare(
        src, tmp_path / "data", "tiny", frame_format="png", max_frames=4, progress=False
    )
    shards = sorted(out.glob("*-train.array_record-*"))
    assert shards, f"no train shard in {out}"
    return tmp_path / "data", "tiny", shards[0]


def _flip_first_record(shard):
    """Flips bytes inside the first chunk: its hash no longer matches, the others still read."""
    data = bytearray(shard.read_bytes())
    for i in range(200, 260):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))


def _config(data_dir, name, **overrides):
    config = data_config()
    config.update(
        dict(
            data_dir=str(data_dir),
            name=name,
            erp_height=16,
            erp_width=32,
            map_size=16,
            num_frames=1,
            batch_size=2,
            image_ratio=1.0,  # every record gives image samples: all 3 are usable
            caption_dropout=0.0,
        )
    )
    config.update(overrides)
    return config


def test_corrupt_record_is_skipped_and_counted(dataset, caplog):
    data_dir, name, shard = dataset
    _flip_first_record(shard)
    source = panoramic_videos.open_data_source(data_dir, name, "train")  # the footer still reads
    with pytest.raises(RuntimeError, match="hash mismatch"):
        source[0]
    config = _config(data_dir, name, max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="viewpoint_jax.data.pipeline"):
        iterator = pipeline.make_train_iterator(config)
        batches = [next(iterator) for _ in range(6)]  # 12 examples, 4 epochs of 2 good records
    assert int(batches[-1]["skipped_records"]) >= 4
    assert "skipping record 0, it cannot be read: RuntimeError" in caplog.text


def test_too_many_bad_records_stop_with_a_message(dataset):
    data_dir, name, shard = dataset
    _flip_first_record(shard)
    iterator = pipeline.make_train_iterator(_config(data_dir, name, max_bad_fraction=0.05))
    with pytest.raises(RuntimeError, match=r"max_bad_fraction = 0\.05"):
        for _ in range(20):
            next(iterator)


def test_missing_shard_is_named_when_the_dataset_opens(dataset):
    data_dir, name, shard = dataset
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"dataset shard {shard} is missing"):
        panoramic_videos.open_data_source(data_dir, name, "train")


def test_truncated_shard_is_named_when_the_dataset_opens(dataset):
    data_dir, name, shard = dataset
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"dataset shard {shard} cannot be opened"):
        panoramic_videos.open_data_source(data_dir, name, "train")
