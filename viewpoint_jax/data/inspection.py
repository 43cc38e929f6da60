"""Looking at a prepared dataset: per-split statistics and a sheet of training examples.

`split_statistics` reads every record of a panoramic_videos dataset (counts, frames, seconds,
frame rates, sizes); `render_sheet` draws training examples exactly as the pipeline makes them
(ERP clip after the yaw turn, ViewPoint map, condition view, condition map, mask) into one PNG.
`python -m viewpoint_jax.inspect_dataset` is the command line.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import cv2
import ml_collections
import numpy as np

from viewpoint_jax.common.fileio import atomic_path
from viewpoint_jax.data import panoramic_videos, pipeline

# Columns of the sheet: (example key, title); every tile is scaled to TILE_HEIGHT pixels high.
SHEET_COLUMNS = (
    ("erp", "ERP"),
    ("target_map", "ViewPoint map"),
    ("perspective", "condition view"),
    ("condition_map", "condition map"),
    ("condition_mask", "mask"),
)
TILE_HEIGHT = 160
LABEL_HEIGHT = 22


def split_statistics(data_dir: str | os.PathLike, name: str = "default") -> dict[str, dict]:
    """Per split: records, videos, images, video frames and seconds, frames per record
    (min, mean, max), frame rates and stored sizes (value -> records), skipped files."""
    info = panoramic_videos.open_data_source(data_dir, name).dataset_info
    counts = panoramic_videos.split_counts(data_dir, name)
    statistics = {}
    for split in sorted(info.splits):
        source = panoramic_videos.open_data_source(data_dir, name, split)
        videos, images, frames, seconds, lengths = set(), 0, 0, 0.0, []
        rates, sizes = collections.Counter(), collections.Counter()
        for index in range(len(source)):
            record = source[index]
            sizes[f"{int(record['width'])}x{int(record['height'])}"] += 1
            if bool(record["is_image"]):
                images += 1
                continue
            count, fps = int(record["num_frames"]), float(record["fps"])
            videos.add(pipeline.as_text(record["source"]))
            frames += count
            seconds += count / fps if fps > 0 else 0.0
            lengths.append(count)
            rates[f"{fps:g}"] += 1
        statistics[split] = {
            "records": len(source),
            "videos": len(videos),
            "images": images,
            "video_frames": frames,
            "video_seconds": seconds,
            "frames_per_record": (
                (min(lengths), float(np.mean(lengths)), max(lengths)) if lengths else None
            ),
            "fps": dict(rates),
            "sizes": dict(sizes),
            "skipped_files": counts.get(split, {}).get("skipped_files", []),
        }
    return statistics


def format_statistics(statistics: dict[str, dict]) -> str:
    """The statistics of `split_statistics` as a few lines per split."""
    lines = []
    for split, s in statistics.items():
        lines.append(
            f"{split}: {s['records']} records: {s['videos']} videos ({s['video_frames']} frames, "
            f"{s['video_seconds']:.1f} s), {s['images']} images"
        )
        if s["frames_per_record"]:
            low, mean, high = s["frames_per_record"]
            lines.append(f"  frames per video record: min {low}, mean {mean:.1f}, max {high}")
        if s["fps"]:
            lines.append("  fps: " + ", ".join(f"{k} ({v})" for k, v in s["fps"].items()))
        lines.append("  stored sizes: " + ", ".join(f"{k} ({v})" for k, v in s["sizes"].items()))
        if s["skipped_files"]:
            lines.append(f"  skipped at build: {', '.join(s['skipped_files'])}")
    return "\n".join(lines)


def _tile(image: np.ndarray) -> np.ndarray:
    """`(H, W, C)` float in [-1, 1] (or a [0, 1] mask, C = 1) -> uint8 RGB TILE_HEIGHT high."""
    if image.shape[-1] == 1:  # the mask: 0 black, 1 white
        image = np.repeat(image * 2.0 - 1.0, 3, axis=-1)
    rgb = np.clip((image + 1.0) * 127.5, 0, 255).astype(np.uint8)
    width = max(1, round(rgb.shape[1] * TILE_HEIGHT / rgb.shape[0]))
    return cv2.resize(rgb, (width, TILE_HEIGHT), interpolation=cv2.INTER_AREA)


def _labelled(tile: np.ndarray, text: str) -> np.ndarray:
    label = np.full((LABEL_HEIGHT, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(label, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([label, tile])


def training_examples(
    config: ml_collections.ConfigDict, num_batches: int, split: str | None = None, seed: int = 0
) -> list[list[dict]]:
    """`num_batches` batches of training examples (lists of `config.batch_size` dicts), made as
    the pipeline makes them: a batch is images with probability image_ratio, else videos."""
    source = panoramic_videos.open_data_source(
        config.data_dir, config.name, split or config.train_split
    )
    rng = np.random.default_rng(seed)
    makers = {
        mode: pipeline.ExampleMaker(config, mode, with_images=True) for mode in ("video", "image")
    }
    order = rng.permutation(len(source))
    batches, cursor = [], 0
    for _ in range(num_batches):
        maker = makers["image" if rng.random() < config.image_ratio else "video"]
        batch = []
        for _ in range(len(source)):  # at most one pass looking for examples of this kind
            if len(batch) == config.batch_size:
                break
            example = maker(source[int(order[cursor % len(source)])], rng)
            cursor += 1
            if "_status" not in example:
                batch.append(example)
        if not batch:
            raise ValueError(f"no {maker.mode} examples in the {source} records")
        batches.append(batch)
    return batches


def render_sheet(
    config: ml_collections.ConfigDict,
    path: str | os.PathLike,
    num_batches: int = 1,
    split: str | None = None,
    seed: int = 0,
) -> Path:
    """Writes a PNG sheet of training examples: a row per example (first frame of its clip),
    columns ERP, ViewPoint map, condition view, condition map, mask; returns the path."""
    rows = []
    for number, batch in enumerate(training_examples(config, num_batches, split, seed)):
        for example in batch:
            kind = "image" if bool(example["is_image"]) else f"{len(example['erp'])} frames"
            tiles = [_tile(example[key][0]) for key, _ in SHEET_COLUMNS]
            titles = [f"batch {number} ({kind}): {SHEET_COLUMNS[0][1]}"] + [
                title for _, title in SHEET_COLUMNS[1:]
            ]
            caption = example["caption"] or "(caption dropped)"
            row = np.concatenate([_labelled(t, s) for t, s in zip(tiles, titles)], axis=1)
            rows.append(_labelled(row, caption[:160]))
    width = max(row.shape[1] for row in rows)
    sheet = np.concatenate(
        [
            np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255)
            for row in rows
        ]
    )
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise ValueError(f"could not write {path}")
    return Path(path)
