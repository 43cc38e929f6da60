"""Encodes a training config's dataset into latents, so its train step skips the autoencoder.

    python -m viewpoint_jax.precompute_latents --config configs/wan14b.py --name vp640 \\
        [--samples 4] [--image_samples 0] [--dtype float16] [--splits train] [--batch_size N]
        [--config.k=v ...]

Reads the panoramic_videos dataset of config.data (data_dir, name), draws `--samples` training
samples per video record (random clip, yaw turn, condition view, as the in-step pipeline does)
and `--image_samples` 1-frame samples per record, encodes them with config.autoencoder and
writes `panoramic_latents/<name>` into config.data.data_dir. Train on it with
`--config.data.precomputed_latents=<name>`. See viewpoint_jax/data/latents.py.
"""

from __future__ import annotations

import time

from absl import flags
from ml_collections import config_flags

from viewpoint_jax.common.cli import refuse_positional, run


def define_flags() -> None:
    from viewpoint_jax.data import latents  # lazy: --help answers before JAX loads

    config_flags.DEFINE_config_file(
        "config", None, "a configs/*.py file (`path[:arg]`)", lock_config=True
    )
    flags.DEFINE_string("name", None, "name of the latents dataset to write")
    flags.DEFINE_integer("samples", 4, "video draws per video record")
    flags.DEFINE_integer("image_samples", 0, "1-frame draws per record")
    flags.DEFINE_enum("dtype", "float16", latents.STORAGE_DTYPES, "storage dtype")
    flags.DEFINE_list("splits", None, "source splits (default: config.data.train_split)")
    flags.DEFINE_integer("seed", 0, "seed of the draws")
    flags.DEFINE_integer(
        "batch_size", None, "samples encoded at once, over the local devices (default: 1 each)"
    )
    flags.mark_flag_as_required("config")


def main(argv: list[str]) -> int:
    from viewpoint_jax.data import latents, panoramic_videos, precompute  # lazy: as define_flags
    from viewpoint_jax.setup import build  # lazy: as define_flags

    refuse_positional(argv)
    values = flags.FLAGS
    if not values.name:
        raise ValueError("--name is required (what config.data.precomputed_latents will name)")
    config = values.config
    start = time.time()
    out = precompute.precompute(
        config,
        values.name,
        build.build_autoencoder(config),
        splits=tuple(values.splits) if values.splits else None,
        samples=values.samples,
        image_samples=values.image_samples,
        dtype=values.dtype,
        seed=values.seed,
        batch_size=values.batch_size,
    )
    counts = panoramic_videos.split_counts(
        config.data.data_dir, values.name, latents.LATENTS_DATASET
    )
    for split, count in sorted(counts.items()):
        print(
            f"{split}: {count['video_samples']} video and {count['image_samples']} image "
            f"samples, {count['skipped_records']} unreadable records skipped"
        )
    print(f"wrote {out} in {time.time() - start:.1f} s")
    print(f"train on it with --config.data.precomputed_latents={values.name}")
    return 0


if __name__ == "__main__":
    run(main, define_flags)
