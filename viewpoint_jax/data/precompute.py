"""Writes a training config's dataset as precomputed autoencoder latents (`data/latents.py` reads
them): `precompute(config, name)`, the body of `python -m viewpoint_jax.precompute_latents`.

Each record is one draw of the input pipeline's own `ExampleMaker` (clip, yaw turn, condition
view), seeded per record and draw, encoded in batches split over the host's devices by
`autoencoder.encode_maps`, the function the train step uses.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from flax import nnx

from viewpoint_jax.common.progress import Progress
from viewpoint_jax.data import latents, panoramic_videos, pipeline
from viewpoint_jax.data.config import canvas_hw
from viewpoint_jax.data.latents import (
    DRAW_DATA_KEYS,
    LATENTS_DATASET,
    MATCHING_DATA_KEYS,
    STORAGE_DTYPES,
)
from viewpoint_jax.models.autoencoder import compiler_options, encode_maps, latent_shape


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


# --- The dataset ----------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class LatentsConfig(tfds.core.BuilderConfig):
    """Shapes of the stored tensors: latent frames of a video sample, latent grid, channels."""

    latent_frames: int = 1
    latent_height: int = 1
    latent_width: int = 1
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
        grid = (c.latent_height, c.latent_width)
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
                "condition_kind": np.int32,
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
    source: Any,
    split: str,
    makers: dict[str, Any],
    counts: dict[str, int],
    seed: int,
    records: Progress,
) -> Iterator[tuple[str, dict | None]]:
    """(key, pipeline example with `source`/`segment`/`sample`) for every draw of every record;
    (key, None) once for an unreadable record (ExampleMaker logs why). Counts each record drawn
    in `records`."""
    for index in range(len(source)):
        if index:
            records.update(1)
        yield from _record_draws(source[index], index, split, makers, counts, seed)
    records.update(1)


def _record_draws(
    record: dict,
    index: int,
    split: str,
    makers: dict[str, Any],
    counts: dict[str, int],
    seed: int,
) -> Iterator[tuple[str, dict | None]]:
    """The draws of one record (`_draws`); a bad record ends its own draws, not the split's."""
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
                source=panoramic_videos.as_text(record.get("source", "")),
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
                    **{
                        k: example[k]
                        for k in (
                            "caption",
                            "view",
                            "condition_kind",
                            "source",
                            "segment",
                            "sample",
                        )
                    },
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


def _check_arguments(name: str, samples: int, image_samples: int, dtype: str) -> None:
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    if samples < 0 or image_samples < 0 or samples + image_samples == 0:
        raise ValueError(
            f"samples ({samples}) and image_samples ({image_samples}) must be >= 0, not both 0"
        )
    if not name.replace("_", "").isalnum():
        raise ValueError(f"latents name must be letters, digits and '_', got {name!r}")


def _check_batch_size(batch_size: int | None, local_devices: int) -> int:
    """The encode batch: one sample per local device unless given; a multiple of them."""
    batch_size = local_devices if batch_size is None else int(batch_size)
    if batch_size < 1 or batch_size % local_devices:
        raise ValueError(
            f"batch_size must be a positive multiple of the {local_devices} local devices, got "
            f"{batch_size}"
        )
    return batch_size


def _latents_config(
    name: str, autoencoder: Any, data: ml_collections.ConfigDict, dtype: str
) -> LatentsConfig:
    """The latents dataset's builder config: the latent shape of one clip of `data`."""
    latent = latent_shape(autoencoder, (1, data.num_frames, *canvas_hw(data), 3))
    return LatentsConfig(
        name=name,
        latent_frames=latent[1],
        latent_height=latent[2],
        latent_width=latent[3],
        latent_channels=latent[4],
        dtype=dtype,
    )


def precompute(
    config: ml_collections.ConfigDict,
    name: str,
    autoencoder: Any,
    *,
    splits: tuple[str, ...] | None = None,
    samples: int = 4,
    image_samples: int = 0,
    dtype: str = "float16",
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> Path:
    """Writes `panoramic_latents/<name>` under `config.data.data_dir`; returns its directory.

    Args:
      config: a training config: its data section names the source dataset and how samples are
        drawn; its autoencoder section describes `autoencoder` in the dataset's metadata.
      name: the latents dataset's name (what `config.data.precomputed_latents` will name).
      autoencoder: the encoder the config builds (`setup.build.build_autoencoder`).
      splits: source splits to encode (default: the config's train split).
      samples: video draws per video record; image_samples: 1-frame draws per record.
      dtype: storage dtype of the latents, float16 (half the bytes) or float32 (exact).
      seed: the draws' seed.
      batch_size: samples encoded at once, split over this host's devices (default: one per
        device); a multiple of the local device count.
      progress: report the source records drawn, per split (`progress.Progress`).

    Unreadable source records are skipped with a warning and counted. The dataset is written
    to a staging directory and moved into place in one rename.
    """
    data = config.data
    _check_arguments(name, samples, image_samples, dtype)
    splits = tuple(splits or (data.train_split,))
    sources = {
        split: panoramic_videos.open_data_source(data.data_dir, data.name, split)
        for split in splits
    }
    devices = jax.local_devices()
    batch_size = _check_batch_size(batch_size, len(devices))
    encode = jitted_encoder(autoencoder, devices)
    makers = {
        mode: pipeline.ExampleMaker(data, mode, caption_dropout=0.0, with_view=True)
        for mode in ("video", "image")
    }
    counts = {"video": samples, "image": image_samples}

    def generator(split: str) -> Callable[[], Iterator[tuple[str, dict | None]]]:
        def encoded() -> Iterator[tuple[str, dict | None]]:
            source = sources[split]
            with Progress(
                len(source), f"encoding {split}", unit="record", enabled=progress
            ) as done:
                draws = _draws(source, split, makers, counts, seed, done)
                yield from _encoded(draws, encode, batch_size, dtype)

        return encoded

    generators = {split: generator(split) for split in splits}
    metadata = {
        "source": {"data_dir": str(Path(data.data_dir).absolute()), "name": data.name},
        "autoencoder": latents.describe_autoencoder(config),
        "data": {key: latents.jsonable(data[key]) for key in MATCHING_DATA_KEYS + DRAW_DATA_KEYS},
        "draws": {"samples": samples, "image_samples": image_samples, "seed": seed},
    }
    builder_config = _latents_config(name, autoencoder, data, dtype)
    return panoramic_videos.build_atomically(
        lambda staging: PanoramicLatents(
            generators=generators,
            metadata=metadata,
            data_dir=str(staging),
            config=builder_config,
            file_format="array_record",
        ),
        data.data_dir,
    )
