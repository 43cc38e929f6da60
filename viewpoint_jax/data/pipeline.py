"""The grain input pipeline: panoramic records -> batches of ViewPoint maps and conditions.

Per record (in grain workers): a random clip of `num_frames` frames every `frame_stride` frames
is decoded (OpenCV) and resized to the ERP size; a random yaw turn (a horizontal roll of the
ERP, exact) augments it; the jitted geometry maps it onto the ViewPoint map (or the frames of
`config.representation`: ERP or cube raster, see geometry/canvas.py) and renders the
condition of a kind drawn from `condition_mixture` (by default mostly the paper's: a random
perspective view of the clip projected back onto the map with its mask; see conditions.py);
the caption is dropped (set to "") at rate `caption_dropout` for
classifier-free guidance.

Joint image and video training: images are 1-frame videos. Two streams, each batched on its
own so every batch has one frame count, are interleaved with weights (1 - image_ratio,
image_ratio): the video stream reads the video records, the image stream one random frame of
any record (an image, or a frame of a video). Records are sharded per host, shuffled (reshuffled
every epoch), processed in `worker_count` processes, and the iterator state is checkpointable.

Training batches (`make_train_iterator`), host-local batch B = batch_size // process_count,
F = num_frames for video batches and 1 for image batches, (Hm, Wm) = (M, M) with M = map_size
for the ViewPoint map, `config.canvas_hw(config)` for any representation:

    target_map       (B, F, Hm, Wm, 3) float32 in [-1, 1]
    condition_map    (B, F, Hm, Wm, 3) float32 in [-1, 1], 0 outside the mask
    condition_mask   (B, F, Hm, Wm, 1) float32 in {0, 1}
    condition_kind   (B,) int32: the `conditions.ConditionKind` of each example, drawn from
                     config.condition_mixture (which decides what the mask covers: a view over
                     every frame, nothing, a view at frame 0, a prefix of frames, several views)
    caption          (B,) str ("" when dropped)
    is_image         (B,) bool (all equal within a batch)
    skipped_records  () int64: corrupt records skipped so far on this host (for metrics)

With `config.precomputed_latents` (a dataset written by `python -m viewpoint_jax.precompute_latents`, see
latents.py) the records are fixed draws already encoded, and training batches carry, instead of
the three maps, with f latent frames and (h, w) = (Hm, Wm) / spatial factor:

    latents            (B, f, h, w, C) float32
    condition_latents  (B, f, h, w, C) float32
    latent_mask        (B, f, h, w, 1) float32

With `config.source = "demo_scenes"` (text-to-video pretraining, `config.DataSource`) the
records are procedural demo scenes (`perspective_clips.SceneSource`) and batches carry, instead
of the three maps, only the clip to generate: target_map `(B, F, h, w, 3)` float32 in [-1, 1],
a perspective clip of `config.scenes.size` (`SceneClipMaker`).

Eval batches (`make_eval_iterator`) add perspective (B, F, h, w, 3) float32 (the condition
clip), view (B, 4) float32 (fov, yaw, pitch, roll in degrees), erp (B, F, H, W, 3) float32 in
[-1, 1] (the clip the maps come from, at the ERP size) and source (B,) str.

A record that cannot be read (a corrupt ArrayRecord chunk: `ReadGuardedSource`, warned with
its index) or decoded is skipped with a warning and counted in `skipped_records`; the run never
dies on one bad file, only when more than `config.max_bad_fraction` of the records read (from
20 on) or 1000 in a row are bad. Missing or truncated shards are named when the dataset opens
(`panoramic_videos.check_shards`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from viewpoint_jax.data import conditions, latents, panoramic_videos, perspective_clips
from viewpoint_jax.data.config import (
    DataSource,
    canvas_hw,
    data_representation,
    validate_data_config,
)
from viewpoint_jax.data.config import data_source as source_kind
from viewpoint_jax.data.panoramic_videos import as_text

log = logging.getLogger(__name__)

# A run whose records fail this many times in a row has no readable data: stop with a message.
MAX_CONSECUTIVE_FAILURES = 1000
# Records read before `max_bad_fraction` is enforced (one bad record among the first few is not
# yet a fraction).
MIN_RECORDS_FOR_BAD_FRACTION = 20
# `_status` of what a maker returns for a record it does not turn into an example.
BAD = "bad"  # unreadable: skipped with a warning and counted
SKIP = "skip"  # not for this stream (an image record in the video stream)
MAP_KEYS = ("target_map", "condition_map", "condition_mask")


def _condition_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
    size = tuple(int(v) for v in config.condition_size)
    if size == (0, 0):
        return conditions.condition_size(config.erp_height)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"config.data.condition_size must be (h, w) or (0, 0), got {size}")
    return size


# Per-record processing --------------------------------------------------------------------------


def clip_indices(
    num_available: int, num_frames: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
    """Frame indices of a random clip; short videos get a smaller stride, then a frozen tail.

    A video with at least (num_frames - 1) * stride + 1 frames gives a clip at a uniformly random
    start. A shorter one is read with the largest stride that fits; one with fewer than
    `num_frames` frames repeats its last frame.
    """
    if num_available < 1:
        raise ValueError("a record with no frames")
    if num_frames == 1:
        return np.asarray([rng.integers(num_available)])
    stride = max(1, min(stride, (num_available - 1) // (num_frames - 1)))
    span = (num_frames - 1) * stride + 1
    start = rng.integers(max(1, num_available - span + 1))
    return np.minimum(start + stride * np.arange(num_frames), num_available - 1)


def decode_clip(frames: list[bytes], indices: np.ndarray, erp_hw: tuple[int, int]) -> np.ndarray:
    """Decodes the frames at `indices` (each once) -> RGB uint8 `(F, H, W, 3)` at `erp_hw`."""
    decoded = {}
    for i in np.unique(indices):
        decoded[int(i)] = panoramic_videos.resize_frame(
            panoramic_videos.decode_frame(frames[int(i)]), erp_hw
        )
    return np.stack([decoded[int(i)] for i in indices])


def yaw_roll(erp: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random yaw turn of an ERP clip `(..., H, W, C)`: a horizontal roll by whole pixels.

    Rolling by k columns turns the panorama by 360 k / W degrees about the vertical axis, which
    is exact (no resampling). Returns the rolled clip and k.
    """
    shift = int(rng.integers(erp.shape[-2]))
    return np.roll(erp, shift, axis=-2), shift


@functools.cache
def _cpu_device() -> jax.Device | None:
    """The host CPU: the geometry of the input pipeline stays off the accelerators."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS excludes the CPU: use the default device
        return None


class ExampleMaker:
    """Record -> training example; a grain `random_map` callable (picklable, jax on CPU).

    `mode`: "video" (clips of num_frames; image records are skipped), "image" (one random frame
    of any record) or "eval" (videos, no caption dropout nor yaw turn, extra keys).
    `caption_dropout` overrides the config's rate; `with_view` adds the condition camera
    (`view`, as in eval) to every example; `with_images` adds (as eval does) the ERP clip the
    maps come from (`erp`, (F, H, W, 3) float32 in [-1, 1], after the yaw turn) and the
    condition view (`perspective`), for looking at examples (data/inspection.py).

    The condition kind of each example is drawn from `config.condition_mixture` (eval always
    uses the paper's perspective video); `temporal_factor` is the autoencoder's frame grouping,
    which decides the pixel frames of a known prefix of latent frames (the Wan VAE's 4 by default;
    a prefix under grouping 4 is also whole latent frames under 1 or 2).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        mode: str,
        *,
        caption_dropout: float | None = None,
        with_view: bool = False,
        with_images: bool = False,
        temporal_factor: int = 4,
    ):
        if mode not in ("video", "image", "eval"):
            raise ValueError(f"mode must be video, image or eval, got {mode!r}")
        self.mode = mode
        self.num_frames = 1 if mode == "image" else int(config.num_frames)
        self.stride = int(config.frame_stride)
        self.erp_hw = (int(config.erp_height), int(config.erp_width))
        self.map_size = int(config.map_size)
        self.representation = data_representation(config)
        self.canvas_hw = canvas_hw(config)
        self.condition_hw = _condition_hw(config)
        self.view_ranges = {
            "fov_range": tuple(config.condition_fov_range),
            "yaw_range": tuple(config.condition_yaw_range),
            "pitch_range": tuple(config.condition_pitch_range),
            "roll_range": tuple(config.condition_roll_range),
        }
        conditions.sample_view(np.random.default_rng(0), **self.view_ranges)  # validates ranges
        if caption_dropout is None:
            caption_dropout = 0.0 if mode == "eval" else config.caption_dropout
        self.caption_dropout = float(caption_dropout)
        self.yaw_augment = bool(config.yaw_augment) and mode != "eval"
        self.with_view = with_view or mode == "eval"
        self.with_images = with_images
        self.temporal_factor = int(temporal_factor)
        if mode == "eval":
            mixture = {conditions.ConditionKind.PERSPECTIVE_VIDEO: 1.0}
        else:
            mixture = conditions.parse_mixture(config.condition_mixture)
        # Whole groups only: with a clip longer than 1 + t k, a prefix still ends on a group.
        self.latent_frames = 1 + (self.num_frames - 1) // self.temporal_factor
        self.mixture = conditions.allowed_mixture(mixture, self.latent_frames)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        if record.get("_status") == BAD:  # the reader already failed on it (ReadGuardedSource)
            return record
        if self.mode != "image" and bool(record.get("is_image", False)):
            return {"_status": SKIP}
        try:
            return self.make(record, rng)
        except Exception as error:
            where = as_text(record.get("source", "?")) if isinstance(record, dict) else "?"
            log.warning("skipping unreadable record %s: %s: %s", where, type(error).__name__, error)
            return {"_status": BAD}

    def make(self, record: dict, rng: np.random.Generator) -> dict:
        frames = record["frames"]
        indices = clip_indices(len(frames), self.num_frames, self.stride, rng)
        clip = decode_clip(frames, indices, self.erp_hw)
        if self.yaw_augment:
            clip, _ = yaw_roll(clip, rng)
        kind = conditions.sample_condition_kind(rng, self.mixture)
        views, active = self._views(kind, rng)
        caption = as_text(record["caption"])
        if rng.random() < self.caption_dropout:
            caption = ""
        erp = clip.astype(np.float32) / 127.5 - 1.0
        with jax.default_device(_cpu_device()):
            maps = conditions.target_and_views(
                erp,
                views,
                active,
                map_size=self.map_size,
                out_hw=self.condition_hw,
                representation=self.representation,
            )
            maps = {key: np.asarray(value, np.float32) for key, value in maps.items()}
        condition_map, condition_mask = self._known_region(kind, maps, rng)
        example = {
            "target_map": maps["target_map"],
            "condition_map": condition_map,
            "condition_mask": condition_mask,
            "condition_kind": np.int32(kind),
            "caption": caption,
            "is_image": np.bool_(self.num_frames == 1),
        }
        if self.with_view:
            # The first view's camera; all zeros (fov 0) for the kinds without a view.
            example["view"] = views[0] * active[0]
        if self.mode == "eval" or self.with_images:
            example["perspective"] = maps["perspective"]
            example["erp"] = erp
        if self.mode == "eval":
            example["source"] = as_text(record.get("source", ""))
        return example

    def _views(self, kind: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`(MAX_VIEWS, 4)` cameras and `(MAX_VIEWS,)` 0/1 weights of the views this kind uses."""
        count = {
            conditions.ConditionKind.NONE: 0,
            conditions.ConditionKind.PREFIX: 0,
            conditions.ConditionKind.MULTI_VIEW: int(rng.integers(2, conditions.MAX_VIEWS + 1)),
        }.get(kind, 1)
        views = np.zeros((conditions.MAX_VIEWS, 4), np.float32)
        # Padding views are valid cameras (weight 0): the renderer never sees a 0 degree view.
        views[:, 0] = 90.0
        for i in range(count):
            views[i] = conditions.sample_view(rng, **self.view_ranges).as_array()
        active = (np.arange(conditions.MAX_VIEWS) < count).astype(np.float32)
        return views, active

    def _known_region(
        self, kind: int, maps: dict[str, np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The condition map `(F, Hm, Wm, 3)` and mask `(F, Hm, Wm, 1)` of this kind."""
        condition, mask = maps["condition_map"], maps["condition_mask"]
        if kind == conditions.ConditionKind.PERSPECTIVE_IMAGE:
            # The view is known at frame 0 only: an image that seeds the video.
            condition, mask = condition.copy(), mask.copy()
            condition[1:], mask[1:] = 0.0, 0.0
        elif kind == conditions.ConditionKind.PREFIX:
            known = int(rng.integers(1, self.latent_frames))  # k in [1, latent frames - 1]
            frames = conditions.prefix_pixel_frames(known, self.temporal_factor)
            mask = conditions.prefix_mask(self.num_frames, frames, self.canvas_hw)
            condition = maps["target_map"] * mask
        return condition, mask


def condition_counts(batch: dict) -> dict[str, int]:
    """`conditions/<kind>`: how many examples of each condition kind a batch holds (every kind,
    0 included, so the metric columns are stable); empty for batches without `condition_kind`
    (precomputed latents written before the mixture)."""
    if "condition_kind" not in batch:
        return {}
    kinds = np.asarray(batch["condition_kind"])
    return {
        f"conditions/{kind.key}": int(np.sum(kinds == kind)) for kind in conditions.ConditionKind
    }


class LatentExampleMaker:
    """Precomputed-latent record (data/latents.py) -> training example; a grain `random_map`.

    `mode` "video" reads the video samples, "image" the 1-frame ones (the other kind is skipped);
    the caption is dropped at rate `config.caption_dropout`.
    """

    def __init__(self, config: ml_collections.ConfigDict, mode: str):
        if mode not in ("video", "image"):
            raise ValueError(f"mode must be video or image, got {mode!r}")
        self.is_image = mode == "image"
        self.caption_dropout = float(config.caption_dropout)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        if record.get("_status") == BAD:
            return record
        if bool(record["is_image"]) != self.is_image:
            return {"_status": SKIP}
        caption = as_text(record["caption"])
        if rng.random() < self.caption_dropout:
            caption = ""
        example = {key: np.asarray(record[key], np.float32) for key in latents.LATENT_KEYS}
        if "condition_kind" in record:  # datasets written before the mixture do not have it
            example["condition_kind"] = np.int32(record["condition_kind"])
        example.update(caption=caption, is_image=np.bool_(self.is_image))
        return example


class SceneClipMaker:
    """Demo scene record (`perspective_clips.SceneSource`) -> text-to-video training example; a
    grain `random_map` callable. `mode` "video": a window of `num_frames` consecutive frames of
    the scene's clip, "image": one frame; either seen by a random camera (`config.scenes`: fov
    and pitch in their ranges, any yaw, no roll). The caption is dropped at `caption_dropout`.

    Examples: target_map `(F, h, w, 3)` float32 in [-1, 1] (the perspective clip to generate;
    there is no condition), caption, is_image.
    """

    def __init__(self, config: ml_collections.ConfigDict, mode: str):
        if mode not in ("video", "image"):
            raise ValueError(f"mode must be video or image, got {mode!r}")
        scenes = config.scenes
        self.num_frames = 1 if mode == "image" else int(config.num_frames)
        self.render = dict(
            erp_height=int(config.erp_height),
            clip_frames=int(scenes.clip_frames),
            fps=float(scenes.fps),
            out_hw=tuple(int(v) for v in scenes.size),
        )
        self.view_ranges = dict(
            fov_range=tuple(scenes.fov_range), pitch_range=tuple(scenes.pitch_range)
        )
        self.caption_dropout = float(config.caption_dropout)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        scene = record["scene"]
        first = int(rng.integers(self.render["clip_frames"] - self.num_frames + 1))
        view = conditions.sample_view(rng, **self.view_ranges).as_array()
        caption = "" if rng.random() < self.caption_dropout else scene.caption
        with jax.default_device(_cpu_device()):
            clip = perspective_clips.render_view_clip(
                scene, view, first_frame=first, num_frames=self.num_frames, **self.render
            )
        return {"target_map": clip, "caption": caption, "is_image": np.bool_(self.num_frames == 1)}


# Batching that drops bad records, and the skip counter ------------------------------------------


class ReadGuardedSource:
    """Random-access records whose read errors (a corrupt ArrayRecord chunk, an I/O error)
    become `{"_status": BAD}` records, skipped and counted like undecodable ones, with a
    warning naming the record index."""

    def __init__(self, source: Any):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        try:
            return self._source[index]
        except Exception as error:  # what a corrupt record raises depends on where it is hit
            log.warning(
                "skipping record %d, it cannot be read: %s: %s", index, type(error).__name__, error
            )
            return {"_status": BAD}

    def __repr__(self) -> str:
        return f"ReadGuardedSource({self._source!r})"


def _stack(examples: list[dict]) -> dict:
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


class _BatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, drop_remainder: bool):
        super().__init__(parent)
        self._batch_size = batch_size
        self._drop_remainder = drop_remainder

    def __next__(self) -> dict:
        examples, skipped, failures = [], 0, 0
        while len(examples) < self._batch_size:
            try:
                element = next(self._parent)
            except StopIteration:
                if examples and not self._drop_remainder:
                    break
                raise
            status = element.get("_status")
            if status is None:
                examples.append(element)
                failures = 0
            elif status == BAD:
                skipped += 1
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(
                        f"{failures} records in a row could not be read: is the dataset corrupt?"
                    )
        batch = _stack(examples)
        batch["skipped_records"] = np.int64(skipped)
        batch["read_records"] = np.int64(len(examples) + skipped)
        return batch

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class _BatchDataset(grain.IterDataset):
    """Batches examples, dropping skipped/bad records; `skipped_records` counts the bad ones."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, drop_remainder: bool = True):
        super().__init__(parent)
        self._batch_size = batch_size
        self._drop_remainder = drop_remainder

    def __iter__(self) -> grain.DatasetIterator:
        return _BatchIterator(self._parent.__iter__(), self._batch_size, self._drop_remainder)


class _CountIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, max_bad_fraction: float):
        super().__init__(parent)
        self._total = 0
        self._read = 0
        self._max_bad_fraction = max_bad_fraction

    def __next__(self) -> dict:
        batch = next(self._parent)
        self._total += int(batch["skipped_records"])
        self._read += int(batch.pop("read_records"))
        if self._read >= MIN_RECORDS_FOR_BAD_FRACTION and (
            self._total > self._max_bad_fraction * self._read
        ):
            raise RuntimeError(
                f"{self._total} of the {self._read} records read could not be read or decoded "
                f"(more than config.data.max_bad_fraction = {self._max_bad_fraction}): the "
                "dataset is damaged; the warnings above name the records"
            )
        batch["skipped_records"] = np.int64(self._total)
        return batch

    def get_state(self) -> dict:
        return {
            "parent": self._parent.get_state(),
            "skipped_records": self._total,
            "read_records": self._read,
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._total = int(state["skipped_records"])
        self._read = int(state.get("read_records", 0))  # absent in states of older runs


class _CountDataset(grain.IterDataset):
    """Turns per-batch skip counts into the running total of this host (kept in the state);
    stops when more than `max_bad_fraction` of the records read were bad."""

    def __init__(self, parent: grain.IterDataset, max_bad_fraction: float):
        super().__init__(parent)
        self._max_bad_fraction = max_bad_fraction

    def __iter__(self) -> grain.DatasetIterator:
        return _CountIterator(self._parent.__iter__(), self._max_bad_fraction)


# Iterators --------------------------------------------------------------------------------------


def _cpu_worker_init(worker_index: int, worker_count: int) -> None:
    """Grain workers compute the geometry on CPU: never claim the host's accelerators."""
    del worker_index, worker_count
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def _train_source(config: ml_collections.ConfigDict) -> Any:
    """The train split's records (panoramic or latent), checked to hold what image_ratio asks;
    or the demo scenes (source "demo_scenes")."""
    if source_kind(config) == DataSource.DEMO_SCENES:
        return perspective_clips.SceneSource(config.scenes.count, config.scenes.seed)
    split = config.train_split
    if config.precomputed_latents:
        name, dataset = config.precomputed_latents, latents.LATENTS_DATASET
        kinds = {"video": "video_samples", "image": "image_samples"}
        fix = "rerun `python -m viewpoint_jax.precompute_latents` with --samples / --image_samples"
    else:
        name, dataset = config.name, panoramic_videos.DATASET_NAME
        kinds = {"video": "video_segments", "image": None}  # any record gives image samples
        fix = "set config.data.image_ratio = 1 to train on images only"
    source = panoramic_videos.open_data_source(config.data_dir, name, split, dataset=dataset)
    counts = panoramic_videos.split_counts(config.data_dir, name, dataset).get(split)
    if counts is not None:
        needed = {"video": config.image_ratio < 1, "image": config.image_ratio > 0}
        for kind, key in kinds.items():
            if needed[kind] and key is not None and counts.get(key, 0) == 0:
                raise ValueError(
                    f"split {split!r} of {dataset}/{name} has no {kind} samples but "
                    f"config.data.image_ratio = {config.image_ratio} needs them: {fix}"
                )
        if not config.precomputed_latents:
            _warn_unused_or_missing_images(config, counts.get("images", 0), f"{dataset}/{name}")
    return source


def _warn_unused_or_missing_images(
    config: ml_collections.ConfigDict, num_images: int, dataset: str
) -> None:
    """Says at start what joint image-video training will really read (never silently)."""
    split = config.train_split
    if config.image_ratio == 0 and num_images:
        log.warning(
            "split %r of %s has %d images that config.data.image_ratio = 0 leaves unused (the "
            "video stream skips them); set image_ratio > 0 to train on them",
            split, dataset, num_images,
        )  # fmt: skip
    elif config.image_ratio > 0 and not num_images:
        log.warning(
            "split %r of %s has no images: its image batches (config.data.image_ratio = %g) "
            "are single frames of its videos",
            split, dataset, config.image_ratio,
        )  # fmt: skip


def make_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    seed: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    data_source: Any = None,
    temporal_factor: int = 4,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this host's training batches (keys: module doc).

    Args:
      config: `config.data` (see `viewpoint_jax.setup.config.data_config`).
      seed: shuffle and augmentation seed (default config.shuffle_seed).
      process_index, process_count: this host's shard of the records (jax.process_index(),
        jax.process_count()); each host gets batch_size // process_count examples a batch.
      data_source: random-access records to read instead of config's TFDS split (tests).
      temporal_factor: the autoencoder's frame grouping (prefix conditions cover whole latent
        frames of it; `ExampleMaker`).

    Save/restore with `it.get_state()` / `it.set_state(state)` (JSON-able dict), or with Orbax:
    `grain.checkpoint.CheckpointSave(it)` / `grain.checkpoint.CheckpointRestore(it)`.
    Call `it.close()` when done if worker_count > 0.
    """
    validate_data_config(config)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if config.batch_size % process_count:
        raise ValueError(
            f"config.data.batch_size {config.batch_size} is not divisible by the "
            f"{process_count} hosts"
        )
    batch_size = config.batch_size // process_count
    seed = int(config.shuffle_seed if seed is None else seed)
    precomputed = bool(config.precomputed_latents)
    if data_source is None:
        data_source = _train_source(config)
    if len(data_source) < process_count:
        raise ValueError(f"{len(data_source)} records cannot be sharded over {process_count} hosts")
    records = grain.MapDataset.source(ReadGuardedSource(data_source))
    records = records[process_index::process_count]
    read_options = grain.ReadOptions(
        num_threads=config.read_threads, prefetch_buffer_size=max(2, 2 * batch_size)
    )

    def stream(mode: str, stream_seed: int) -> grain.IterDataset:
        if precomputed:
            maker = LatentExampleMaker(config, mode)
        elif source_kind(config) == DataSource.DEMO_SCENES:
            maker = SceneClipMaker(config, mode)
        else:
            maker = ExampleMaker(config, mode, temporal_factor=temporal_factor)
        ds = records.shuffle(seed=stream_seed).repeat()
        ds = ds.random_map(maker, seed=stream_seed + 1)
        return _BatchDataset(ds.to_iter_dataset(read_options), batch_size)

    streams, weights = {}, {}
    if config.image_ratio < 1:
        streams["video"], weights["video"] = stream("video", seed), 1.0 - config.image_ratio
    if config.image_ratio > 0:
        streams["image"], weights["image"] = stream("image", seed + 7919), config.image_ratio
    ds = (
        streams[next(iter(streams))]
        if len(streams) == 1
        else grain.IterDataset.mix(streams, weights)
    )
    if config.worker_count > 0:
        # Grain's workers read absl flags; outside an absl app (tests, notebooks) use defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size
            ),
            worker_init_fn=_cpu_worker_init,
        )
    return iter(_CountDataset(ds, float(config.max_bad_fraction)))


def make_eval_iterator(
    config: ml_collections.ConfigDict,
    *,
    split: str | None = None,
    batch_size: int = 1,
    seed: int = 0,
    num_examples: int | None = None,
    data_source: Any = None,
) -> Iterable[dict]:
    """A finite, deterministic iterator over the video records of a held-out split.

    No shuffle, no caption dropout, no yaw turn; the clip start and condition view of each
    record are fixed by `seed`. Batches carry the training keys plus perspective, view, source.
    The last batch may be smaller.
    """
    validate_data_config(config)
    if data_source is None:
        data_source = panoramic_videos.open_data_source(
            config.data_dir, config.name, split or config.eval_split
        )
    ds = grain.MapDataset.source(ReadGuardedSource(data_source))
    if num_examples is not None:
        ds = ds[: int(num_examples)]
    ds = ds.random_map(ExampleMaker(config, "eval"), seed=seed)
    options = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=2)
    ds = _BatchDataset(ds.to_iter_dataset(options), batch_size, drop_remainder=False)
    return iter(_CountDataset(ds, float(config.max_bad_fraction)))


def step_arrays(
    batch: dict, text_inputs: Callable[[list[str]], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """A host's training batch -> the arrays the train step takes (this host's rows): the maps
    (or precomputed latents) as float32 and `text_inputs(captions)` (token ids or embeddings,
    `text_encoder.TextFeeder`)."""
    keys = latents.LATENT_KEYS if "latents" in batch else MAP_KEYS
    arrays = {key: np.asarray(batch[key], np.float32) for key in keys if key in batch}
    arrays.update(text_inputs([as_text(caption) for caption in batch["caption"]]))
    return arrays
