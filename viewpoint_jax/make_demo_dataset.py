"""Renders the embedded demo dataset (procedural panoramic scenes with captions) and writes it
through the TFDS builder, as `make demo` does (data/demo_dataset.py).

    python -m viewpoint_jax.make_demo_dataset --out demo_output [--num_train 48] [--height 64]
"""

from __future__ import annotations

import time

from absl import flags

from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.data.demo_dataset import build_demo_dataset


def define_flags() -> None:
    flags.DEFINE_string("out", "demo_output", "output folder (source/ and data/)")
    flags.DEFINE_string("name", "demo", "dataset name (config.data.name)")
    flags.DEFINE_integer("num_train", 48, "training clips", lower_bound=1)
    flags.DEFINE_integer("num_test", 8, "held-out clips", lower_bound=0)
    flags.DEFINE_integer("num_images", 8, "still images (training split)", lower_bound=0)
    flags.DEFINE_integer("height", 64, "ERP height (width 2 x height)", lower_bound=8)
    flags.DEFINE_integer("num_frames", 17, "frames per clip", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "seed of every scene")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    values = flags.FLAGS
    start = time.time()
    data_dir, name = build_demo_dataset(
        values.out,
        values.name,
        num_train=values.num_train,
        num_test=values.num_test,
        num_images=values.num_images,
        height=values.height,
        num_frames=values.num_frames,
        seed=values.seed,
    )
    print(f"demo dataset {name!r} written to {data_dir} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run(main, define_flags)
