"""Prints per-split statistics of a prepared dataset and renders training examples as a PNG.

    python -m viewpoint_jax.inspect_dataset --config configs/wan14b.py \\
        --config.data.data_dir=/data/tfds --config.data.name=my_panoramas \\
        [--num_batches 1] [--out sheet.png] [--split train] [--seed 0] [--config.k=v ...]

The sheet has a row per example (first frame): ERP clip (after the random yaw turn), ViewPoint
map, condition view, condition map and mask, made exactly as training makes them from
config.data (see viewpoint_jax/data/inspection.py).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from viewpoint_jax.common.cli import refuse_positional, run


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "a configs/*.py file (`path[:arg]`)", lock_config=True
    )
    flags.DEFINE_integer("num_batches", 1, "training batches to render (0: statistics only)")
    flags.DEFINE_string("out", "dataset_sheet.png", "PNG sheet to write")
    flags.DEFINE_string("split", None, "split to draw from (default: the train split)")
    flags.DEFINE_integer("seed", 0, "seed of the draws")
    flags.mark_flag_as_required("config")


def main(argv: list[str]) -> int:
    from viewpoint_jax.data import inspection  # lazy: --help answers before JAX loads

    refuse_positional(argv)
    values = flags.FLAGS
    data = values.config.data
    print(inspection.format_statistics(inspection.split_statistics(data.data_dir, data.name)))
    if values.num_batches > 0:
        path = inspection.render_sheet(
            data, values.out, values.num_batches, values.split, values.seed
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run(main, define_flags)
