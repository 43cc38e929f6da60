"""Prints per-split statistics of a prepared dataset and renders training examples as a PNG.

    python tools/inspect_dataset.py --config configs/wan14b.py \\
        --config.data.data_dir=/data/tfds --config.data.name=my_panoramas \\
        [--num_batches 1] [--out sheet.png] [--split train] [--seed 0] [--config.k=v ...]

The sheet has a row per example (first frame): ERP clip (after the random yaw turn), ViewPoint
map, condition view, condition map and mask, made exactly as training makes them from
config.data (see viewpoint_jax/data/inspection.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from absl import flags
    from ml_collections import config_flags

    from viewpoint_jax.data import inspection

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "a configs/*.py file (`path[:arg]`)", lock_config=True
    )
    num_batches = flags.DEFINE_integer("num_batches", 1, "training batches to render")
    out = flags.DEFINE_string("out", "dataset_sheet.png", "PNG sheet to write")
    split = flags.DEFINE_string("split", None, "split to draw from (default: the train split)")
    seed = flags.DEFINE_integer("seed", 0, "seed of the draws")
    flags.FLAGS(sys.argv if argv is None else argv)
    if config_flag.value is None:
        raise ValueError("--config is required (e.g. --config configs/wan14b.py)")
    data = config_flag.value.data
    print(inspection.format_statistics(inspection.split_statistics(data.data_dir, data.name)))
    if num_batches.value > 0:
        path = inspection.render_sheet(data, out.value, num_batches.value, split.value, seed.value)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from viewpoint_jax.cli import run_main

    run_main(main)
