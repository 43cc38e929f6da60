"""Autoencoder latents precomputed into a dataset, so the train step skips the encoder.

The config chooses (`config.data.precomputed_latents`): "" encodes the maps in the jitted step;
a name reads `panoramic_latents/<name>` from `config.data.data_dir`, written from the config's
panoramic_videos dataset by

    python tools/precompute_latents.py --config configs/wan14b.py --name vp640 [--samples 4]

Each record is one training sample drawn once, at preparation, exactly as the in-step pipeline
draws it (`pipeline.ExampleMaker`: a random clip, yaw turn and condition view, seeded per
record and sample) and encoded with the config's autoencoder (`encode_maps`, the same function
the step uses):

    latents            (f, h, w, C) float16 or float32: the target map's latents
    condition_latents  (f, h, w, C): the condition map's latents
    latent_mask        (f, h, w, 1) float32: the condition mask pooled to latent cells
    caption            str, never dropped here (the pipeline drops it at read time)
    is_image           bool: a 1-frame sample (joint image training), f = 1
    view               (4,) float32: fov, yaw, pitch, roll of the condition camera (degrees)
    source, segment    the panoramic_videos record it came from; sample: its draw number

The trade-off: the in-step path draws a fresh clip, yaw turn and view each time it visits a
record; precomputed latents repeat `samples` fixed draws per record (plus `image_samples`
1-frame draws). What they save is the autoencoder's forward pass and memory in every step.
`info.metadata` records the sizes and the autoencoder, and `check_matches_config` refuses a
training config that would read latents of another map size, clip length or autoencoder.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from flax import nnx

from viewpoint_jax.data import builder
from viewpoint_jax.models.autoencoder import compiler_options

LATENTS_DATASET = "panoramic_latents"
LATENT_KEYS = ("latents", "condition_latents", "latent_mask")
STORAGE_DTYPES = ("float16", "float32")
# Keys of config.data that decide what the stored tensors are: a mismatch is an error.
MATCHING_DATA_KEYS = ("map_size", "num_frames")
# Keys that only decide how samples were drawn: recorded, reported when they differ.
DRAW_DATA_KEYS = (
    "erp_height",
    "erp_width",
    "frame_stride",
    "yaw_augment",
    "condition_fov_range",
    "condition_yaw_range",
    "condition_pitch_range",
    "condition_roll_range",
    "condition_size",
)

log = logging.getLogger(__name__)


# --- The encoding, shared with the train step ---------------------------------------------------


def encode_maps(autoencoder: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Maps -> latents: target and condition maps `(B, F, M, M, 3)` through the autoencoder,
    the condition mask `(B, F, M, M, 1)` pooled to the latent grid.

    Returns latents and condition_latents `(B, f, M/s, M/s, C)` and latent_mask
    `(B, f, M/s, M/s, 1)`, all float32, with f = 1 + (F - 1) / temporal factor.
    """
    from viewpoint_jax.diffusion import sampler

    pool = functools.partial(
        sampler.latent_mask,
        spatial_factor=autoencoder.spatial_factor,
        temporal_factor=autoencoder.temporal_factor,
    )
    encoded = {
        "latents": autoencoder.encode(batch["target_map"]),
        "condition_latents": autoencoder.encode(batch["condition_map"]),
        "latent_mask": jax.vmap(pool)(batch["condition_mask"]),
    }
    return {key: value.astype(jnp.float32) for key, value in encoded.items()}


def jitted_encoder(
    autoencoder: Any, devices: list[jax.Device] | None = None
) -> Callable[[dict], dict]:
    """`encode_maps` compiled for one autoencoder (an NNX module's arrays are bound once).

    With `devices`, the batch is split over them (data parallel; the weights are replicated), so
    a batch size must be a multiple of their number.
    """
    if devices is None or len(devices) < 2:
        shardings = None
    else:
        mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
        shardings = (
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")),
        )
    jit = functools.partial(jax.jit, compiler_options=compiler_options(autoencoder))
    if isinstance(autoencoder, nnx.Module):
        graphdef, arrays = nnx.split(autoencoder)
        if shardings is not None:
            arrays = jax.device_put(arrays, shardings[0])

        def encode(arrays, batch):
            return encode_maps(nnx.merge(graphdef, arrays), batch)

        jitted = jit(encode) if shardings is None else jit(encode, in_shardings=shardings)
        return functools.partial(jitted, arrays)
    encode = functools.partial(encode_maps, autoencoder)
    return jit(encode) if shardings is None else jit(encode, in_shardings=shardings[1:])


def describe_autoencoder(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What identifies the latents of `config.autoencoder` (stored in the dataset's metadata)."""
    ae = config.autoencoder
    if ae.kind == "space_to_depth":
        return {"kind": ae.kind, "factor": int(ae.factor)}
    return {"kind": ae.kind, "checkpoint": str(Path(ae.checkpoint).absolute())}


# --- The dataset ----------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class LatentsConfig(tfds.core.BuilderConfig):
    """Shapes of the stored tensors: latent frames of a video sample, latent grid, channels."""

    latent_frames: int = 1
    latent_size: int = 1
    latent_channels: int = 1
    dtype: str = "float16"


class PanoramicLatents(tfds.core.GeneratorBasedBuilder):
    """Training samples as latents (see the module docstring); written by `precompute`."""

    name = LATENTS_DATASET
    code_path = None  # nothing to download, no checksums file to look for
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIG_CLASS = LatentsConfig
    BUILDER_CONFIGS: ClassVar[list] = []

    def __init__(
        self,
        *,
        generators: dict[str, Callable[[], Iterator[tuple[str, dict]]]] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs,
    ):
        self._generators = generators or {}
        self._metadata = metadata or {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        grid = (c.latent_size, c.latent_size)
        features = tfds.features.FeaturesDict(
            {
                "latents": tfds.features.Tensor(
                    shape=(None, *grid, c.latent_channels),
                    dtype=np.dtype(c.dtype),
                    encoding=tfds.features.Encoding.BYTES,
                ),
                "condition_latents": tfds.features.Tensor(
                    shape=(None, *grid, c.latent_channels),
                    dtype=np.dtype(c.dtype),
                    encoding=tfds.features.Encoding.BYTES,
                ),
                # Mostly 0 and 1: compresses well.
                "latent_mask": tfds.features.Tensor(
                    shape=(None, *grid, 1), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB
                ),
                "caption": tfds.features.Text(),
                "is_image": np.bool_,
                "view": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "source": tfds.features.Text(),
                "segment": np.int32,
                "sample": np.int32,
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="ViewPoint training samples encoded by an autoencoder.",
            features=features,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata.update(self._metadata)
        self.info.metadata["counts"] = {}
        return {split: self._generate_examples(split) for split in self._generators}

    def _generate_examples(self, split: str):
        counts = {"video_samples": 0, "image_samples": 0, "skipped_records": 0}
        for key, example in self._generators[split]():
            if example is None:  # an unreadable source record
                counts["skipped_records"] += 1
                continue
            counts["image_samples" if example["is_image"] else "video_samples"] += 1
            yield key, example
        self.info.metadata["counts"][split] = counts


def _sample_rng(seed: int, split: str, index: int, kind: int, sample: int) -> np.random.Generator:
    # One independent stream per (split, record, video/image, draw): a rebuild gives the same
    # samples, and adding draws keeps the earlier ones.
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index, kind, sample])


def _draws(
    source: Any, split: str, makers: dict[str, Any], counts: dict[str, int], seed: int
) -> Iterator[tuple[str, dict | None]]:
    """(key, pipeline example with `source`/`segment`/`sample`) for every draw of every record;
    (key, None) once for an unreadable record (ExampleMaker logs why)."""
    from viewpoint_jax.data import pipeline  # (pipeline imports this module)

    for index in range(len(source)):
        record = source[index]
        for kind, mode in enumerate(("video", "image")):
            for sample in range(counts[mode]):
                example = makers[mode](record, _sample_rng(seed, split, index, kind, sample))
                status = example.get("_status")
                if status == pipeline.SKIP:  # an image record has no video draws
                    break
                if status == pipeline.BAD:
                    yield f"{index}:bad", None
                    return
                example.update(
                    source=pipeline.as_text(record.get("source", "")),
                    segment=int(record.get("segment", 0)),
                    sample=sample,
                )
                yield f"{index}:{mode}:{sample}", example


def _encoded(
    draws: Iterator[tuple[str, dict | None]],
    encode: Callable[[dict], dict],
    batch_size: int,
    dtype: str,
) -> Iterator[tuple[str, dict | None]]:
    """Encodes the draws `batch_size` at a time (videos and images in separate batches, padded
    to a fixed size so each compiles once); yields the stored examples."""
    from viewpoint_jax.data import pipeline

    pending: dict[bool, list[tuple[str, dict]]] = {False: [], True: []}

    def flush(is_image: bool) -> Iterator[tuple[str, dict]]:
        group, pending[is_image] = pending[is_image], []
        padded = group + [group[-1]] * (batch_size - len(group))
        maps = {key: np.stack([e[key] for _, e in padded]) for key in pipeline.MAP_KEYS}
        encoded = jax.device_get(encode(maps))
        for field in ("latents", "condition_latents"):
            encoded[field] = encoded[field].astype(dtype)
            if not np.isfinite(encoded[field]).all():
                raise ValueError(
                    f"non-finite {field} in the samples {[k for k, _ in group]} stored as {dtype} "
                    "(float16 overflows past 65504: use --dtype float32)"
                )
        for row, (key, example) in enumerate(group):
            yield (
                key,
                {
                    "latents": encoded["latents"][row],
                    "condition_latents": encoded["condition_latents"][row],
                    "latent_mask": encoded["latent_mask"][row],
                    **{k: example[k] for k in ("caption", "view", "source", "segment", "sample")},
                    "is_image": is_image,
                },
            )

    for key, example in draws:
        if example is None:
            yield key, None
            continue
        is_image = bool(example["is_image"])
        pending[is_image].append((key, example))
        if len(pending[is_image]) == batch_size:
            yield from flush(is_image)
    for is_image, group in pending.items():
        if group:
            yield from flush(is_image)


def precompute(
    config: ml_collections.ConfigDict,
    name: str,
    *,
    splits: tuple[str, ...] | None = None,
    samples: int = 4,
    image_samples: int = 0,
    dtype: str = "float16",
    seed: int = 0,
    batch_size: int | None = None,
    autoencoder: Any = None,
    progress: bool = True,
) -> Path:
    """Writes `panoramic_latents/<name>` under `config.data.data_dir`; returns its directory.

    Args:
      config: a training config: its data section names the source dataset and how samples are
        drawn; its autoencoder section the encoder (built here unless `autoencoder` is given).
      name: the latents dataset's name (what `config.data.precomputed_latents` will name).
      splits: source splits to encode (default: the config's train split).
      samples: video draws per video record; image_samples: 1-frame draws per record.
      dtype: storage dtype of the latents, float16 (half the bytes) or float32 (exact).
      seed: the draws' seed.
      batch_size: samples encoded at once, split over this host's devices (default: one per
        device); a multiple of the local device count.

    Unreadable source records are skipped with a warning and counted. The dataset is written
    to a staging directory and moved into place in one rename.
    """
    from viewpoint_jax import components
    from viewpoint_jax.data import pipeline

    data = config.data
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    if samples < 0 or image_samples < 0 or samples + image_samples == 0:
        raise ValueError(
            f"samples ({samples}) and image_samples ({image_samples}) must be >= 0, not both 0"
        )
    if not name.replace("_", "").isalnum():
        raise ValueError(f"latents name must be letters, digits and '_', got {name!r}")
    splits = tuple(splits or (data.train_split,))
    sources = {split: builder.open_data_source(data.data_dir, data.name, split) for split in splits}
    if autoencoder is None:
        autoencoder = components.build_autoencoder(config)
    devices = jax.local_devices()
    batch_size = len(devices) if batch_size is None else int(batch_size)
    if batch_size < 1 or batch_size % len(devices):
        raise ValueError(
            f"batch_size must be a positive multiple of the {len(devices)} local devices, got "
            f"{batch_size}"
        )
    encode = jitted_encoder(autoencoder, devices)
    makers = {
        mode: pipeline.ExampleMaker(data, mode, caption_dropout=0.0, with_view=True)
        for mode in ("video", "image")
    }
    counts = {"video": samples, "image": image_samples}

    def generator(split: str) -> Callable[[], Iterator[tuple[str, dict | None]]]:
        draws = functools.partial(_draws, sources[split], split, makers, counts, seed)
        return lambda: _encoded(draws(), encode, batch_size, dtype)

    generators = {split: generator(split) for split in splits}
    metadata = {
        "source": {"data_dir": str(Path(data.data_dir).absolute()), "name": data.name},
        "autoencoder": describe_autoencoder(config),
        "data": {key: _jsonable(data[key]) for key in MATCHING_DATA_KEYS + DRAW_DATA_KEYS},
        "draws": {"samples": samples, "image_samples": image_samples, "seed": seed},
    }
    builder_config = LatentsConfig(
        name=name,
        latent_frames=1 + (data.num_frames - 1) // autoencoder.temporal_factor,
        latent_size=data.map_size // autoencoder.spatial_factor,
        latent_channels=autoencoder.latent_channels,
        dtype=dtype,
    )
    return builder.build_atomically(
        lambda staging: PanoramicLatents(
            generators=generators,
            metadata=metadata,
            data_dir=str(staging),
            config=builder_config,
            file_format="array_record",
        ),
        data.data_dir,
        progress=progress,
    )


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


# --- Reading -------------------------------------------------------------------------------------


def read_metadata(data_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The metadata `precompute` wrote (source, autoencoder, data, draws, counts)."""
    import json

    path = builder.dataset_dir(data_dir, name, LATENTS_DATASET) / "metadata.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: not a dataset written by tools/precompute_latents.py")
    return json.loads(path.read_text())


def open_latents(data_dir: str | os.PathLike, name: str, split: str) -> Any:
    """Random-access latent records of a split (ArrayRecord, no TensorFlow)."""
    return builder.open_data_source(data_dir, name, split, dataset=LATENTS_DATASET)


def check_matches_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """ValueError naming the key when `config.data.precomputed_latents` was written for another
    map size, clip length or autoencoder; logs the draw settings that differ. Returns metadata."""
    data = config.data
    metadata = read_metadata(data.data_dir, data.precomputed_latents)
    where = f"precomputed latents {data.precomputed_latents!r} ({data.data_dir})"
    stored = metadata.get("data", {})
    for key in MATCHING_DATA_KEYS:
        if key in stored and stored[key] != _jsonable(data[key]):
            raise ValueError(
                f"config.data.{key} is {data[key]!r} but the {where} were written with "
                f"{stored[key]!r}; rerun tools/precompute_latents.py or set "
                "config.data.precomputed_latents = '' to encode in the step"
            )
    autoencoder = describe_autoencoder(config)
    if metadata.get("autoencoder") != autoencoder:
        raise ValueError(
            f"config.autoencoder is {autoencoder} but the {where} were encoded with "
            f"{metadata.get('autoencoder')}"
        )
    for key in DRAW_DATA_KEYS:
        if key in stored and stored[key] != _jsonable(data[key]):
            log.warning(
                "config.data.%s = %r is not used: the %s were drawn with %r",
                key,
                data[key],
                where,
                stored[key],
            )
    return metadata
