"""Embeds every caption of a training config's dataset once, for `text_encoder.precompute`.

    python -m viewpoint_jax.precompute_text --config configs/wan14b.py --cache_dir /data/text_cache \\
        [--splits train] [--batch_size 8] [--config.k=v ...]

Encodes the distinct captions of the split(s) of config.data (and "", the dropped caption) with
config.text_encoder and writes them to `<cache_dir>/embeddings.npz`; a cache already there is
reused and only the missing captions are encoded. Train with
`--config.text_encoder.precompute=True --config.text_encoder.cache_dir=<cache_dir>`: every host
reads the file, and captions it lacks are still embedded as they come (text_lib.TextFeeder).
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from viewpoint_jax.common.cli import refuse_positional, run


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "a configs/*.py file (`path[:arg]`)", lock_config=True
    )
    flags.DEFINE_string(
        "cache_dir", None, "where to write embeddings.npz (default: config.text_encoder.cache_dir)"
    )
    flags.DEFINE_list("splits", None, "splits to read (default: config.data.train_split)")
    flags.DEFINE_integer("batch_size", 8, "captions encoded per call")
    flags.mark_flag_as_required("config")


def main(argv: list[str]) -> int:
    from viewpoint_jax.data import panoramic_videos  # lazy: --help answers before JAX loads
    from viewpoint_jax.models import text_encoder as text_lib  # lazy: as above
    from viewpoint_jax.setup import build  # lazy: as above

    refuse_positional(argv)
    values = flags.FLAGS
    config = values.config
    directory = values.cache_dir or config.text_encoder.cache_dir
    if not directory:
        raise ValueError("--cache_dir is required (config.text_encoder.cache_dir is empty)")
    data = config.data
    captions = [""]  # the caption of every dropped-caption (classifier-free guidance) example
    for split in values.splits or [data.train_split]:
        captions += panoramic_videos.split_captions(data.data_dir, data.name, split)
    start = time.time()
    path = Path(directory) / text_lib.SHARED_TEXT_CACHE
    cache = text_lib.cache_text_embeddings(
        build.build_text_encoder(config),
        captions,
        path,
        batch_size=values.batch_size,
        progress=True,
    )
    print(f"{len(cache)} captions in {path} ({time.time() - start:.1f} s)")
    print(
        "train with --config.text_encoder.precompute=True "
        f"--config.text_encoder.cache_dir={directory}"
    )
    return 0


if __name__ == "__main__":
    run(main, define_flags)
