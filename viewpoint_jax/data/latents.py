"""Autoencoder latents precomputed into a dataset, so the train step skips the encoder.

The config chooses (`config.data.precomputed_latents`): "" encodes the maps in the jitted step;
a name reads `panoramic_latents/<name>` from `config.data.data_dir`, written from the config's
panoramic_videos dataset by

    `python -m viewpoint_jax.precompute_latents` --config configs/wan14b.py --name vp640 [--samples 4]

Each record is one training sample drawn once, at preparation, exactly as the in-step pipeline
draws it (`pipeline.ExampleMaker`: a random clip, yaw turn and condition view, seeded per
record and sample) and encoded with the config's autoencoder (`autoencoder.encode_maps`, the same
function the step uses); `data/precompute.py` writes them:

    latents            (f, h, w, C) float16 or float32: the target map's latents
    condition_latents  (f, h, w, C): the condition map's latents
    latent_mask        (f, h, w, 1) float32: the condition mask pooled to latent cells
    caption            str, never dropped here (the pipeline drops it at read time)
    is_image           bool: a 1-frame sample (joint image training), f = 1
    view               (4,) float32: fov, yaw, pitch, roll of the condition camera (degrees;
                       the first view, zeros for kinds without one)
    condition_kind     int32: its `conditions.ConditionKind` (drawn from condition_mixture;
                       absent in datasets written before the mixture)
    source, segment    the panoramic_videos record it came from; sample: its draw number

The trade-off: the in-step path draws a fresh clip, yaw turn and view each time it visits a
record; precomputed latents repeat `samples` fixed draws per record (plus `image_samples`
1-frame draws). What they save is the autoencoder's forward pass and memory in every step.
`info.metadata` records the sizes and the autoencoder, and `check_matches_config` refuses a
training config that would read latents of another map size, representation, clip length or
autoencoder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import ml_collections

from viewpoint_jax.data import panoramic_videos

LATENTS_DATASET = "panoramic_latents"
LATENT_KEYS = ("latents", "condition_latents", "latent_mask")
STORAGE_DTYPES = ("float16", "float32")
# Keys of config.data that decide what the stored tensors are: a mismatch is an error.
MATCHING_DATA_KEYS = ("map_size", "representation", "num_frames")
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
    "condition_mixture",
)

log = logging.getLogger(__name__)


def describe_autoencoder(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What identifies the latents of `config.autoencoder` (stored in the dataset's metadata)."""
    ae = config.autoencoder
    if ae.kind == "space_to_depth":
        return {"kind": ae.kind, "factor": int(ae.factor)}
    if ae.kind == "block_dct":
        return {"kind": ae.kind, "factor": int(ae.factor), "channels": int(ae.channels)}
    return {"kind": ae.kind, "checkpoint": str(Path(ae.checkpoint).absolute())}


def jsonable(value: Any) -> Any:
    """A config value as JSON stores it (tuples as lists, ConfigDicts as dicts), to compare with
    stored metadata."""
    if hasattr(value, "to_dict"):  # a ConfigDict (condition_mixture)
        return {key: jsonable(item) for key, item in value.to_dict().items()}
    return list(value) if isinstance(value, tuple | list) else value


# --- Reading -------------------------------------------------------------------------------------


def read_metadata(data_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The metadata `precompute` wrote (source, autoencoder, data, draws, counts)."""
    path = panoramic_videos.dataset_dir(data_dir, name, LATENTS_DATASET) / "metadata.json"
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: not a dataset written by `python -m viewpoint_jax.precompute_latents`"
        )
    return json.loads(path.read_text())


def open_latents(data_dir: str | os.PathLike, name: str, split: str) -> Any:
    """Random-access latent records of a split (ArrayRecord, no TensorFlow)."""
    return panoramic_videos.open_data_source(data_dir, name, split, dataset=LATENTS_DATASET)


def check_matches_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """ValueError naming the key when `config.data.precomputed_latents` was written for another
    map size, representation, clip length or autoencoder; logs the draw settings that differ.
    Returns metadata."""
    data = config.data
    metadata = read_metadata(data.data_dir, data.precomputed_latents)
    where = f"precomputed latents {data.precomputed_latents!r} ({data.data_dir})"
    # Datasets written before representations hold ViewPoint-map latents.
    stored = {"representation": "viewpoint", **metadata.get("data", {})}
    for key in MATCHING_DATA_KEYS:
        if key in stored and stored[key] != jsonable(data[key]):
            raise ValueError(
                f"config.data.{key} is {data[key]!r} but the {where} were written with "
                f"{stored[key]!r}; rerun `python -m viewpoint_jax.precompute_latents` or set "
                "config.data.precomputed_latents = '' to encode in the step"
            )
    autoencoder = describe_autoencoder(config)
    if metadata.get("autoencoder") != autoencoder:
        raise ValueError(
            f"config.autoencoder is {autoencoder} but the {where} were encoded with "
            f"{metadata.get('autoencoder')}"
        )
    for key in DRAW_DATA_KEYS:
        if key in stored and stored[key] != jsonable(data[key]):
            log.warning(
                "config.data.%s = %r is not used: the %s were drawn with %r",
                key,
                data[key],
                where,
                stored[key],
            )
    return metadata
