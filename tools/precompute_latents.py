"""Encodes a training config's dataset into latents, so its train step skips the autoencoder.

    python tools/precompute_latents.py --config configs/wan14b.py --name vp640 \\
        [--samples 4] [--image_samples 0] [--dtype float16] [--splits train] [--batch_size N]
        [--config.k=v ...]

Reads the panoramic_videos dataset of config.data (data_dir, name), draws `--samples` training
samples per video record (random clip, yaw turn, condition view, as the in-step pipeline does)
and `--image_samples` 1-frame samples per record, encodes them with config.autoencoder and
writes `panoramic_latents/<name>` into config.data.data_dir. Train on it with
`--config.data.precomputed_latents=<name>`. See viewpoint_jax/data/latents.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from absl import flags
    from ml_collections import config_flags

    from viewpoint_jax.data import builder, latents, precompute

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "a configs/*.py file (`path[:arg]`)", lock_config=True
    )
    name = flags.DEFINE_string("name", None, "name of the latents dataset to write")
    samples = flags.DEFINE_integer("samples", 4, "video draws per video record")
    image_samples = flags.DEFINE_integer("image_samples", 0, "1-frame draws per record")
    dtype = flags.DEFINE_enum("dtype", "float16", latents.STORAGE_DTYPES, "storage dtype")
    splits = flags.DEFINE_list("splits", None, "source splits (default: config.data.train_split)")
    seed = flags.DEFINE_integer("seed", 0, "seed of the draws")
    batch_size = flags.DEFINE_integer(
        "batch_size", None, "samples encoded at once, over the local devices (default: 1 each)"
    )
    flags.FLAGS(sys.argv if argv is None else argv)
    if config_flag.value is None:
        raise ValueError("--config is required (e.g. --config configs/wan14b.py)")
    if not name.value:
        raise ValueError("--name is required (what config.data.precomputed_latents will name)")
    config = config_flag.value
    start = time.time()
    out = precompute.precompute(
        config,
        name.value,
        splits=tuple(splits.value) if splits.value else None,
        samples=samples.value,
        image_samples=image_samples.value,
        dtype=dtype.value,
        seed=seed.value,
        batch_size=batch_size.value,
    )
    counts = builder.split_counts(config.data.data_dir, name.value, latents.LATENTS_DATASET)
    for split, count in sorted(counts.items()):
        print(
            f"{split}: {count['video_samples']} video and {count['image_samples']} image "
            f"samples, {count['skipped_records']} unreadable records skipped"
        )
    print(f"wrote {out} in {time.time() - start:.1f} s")
    print(f"train on it with --config.data.precomputed_latents={name.value}")
    return 0


if __name__ == "__main__":
    from viewpoint_jax.cli import run_main

    run_main(main)
