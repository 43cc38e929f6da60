"""Compiles the real train step or sampler for a TPU slice on any machine, no TPU needed
(studies/tpu_compile.py), and prints per chip: memory vs HBM, FLOPs, the roofline time.

    python -m viewpoint_jax.compile --config configs/wan14b.py --target v5p-8 --mode train
    python -m viewpoint_jax.compile --config configs/wan1_3b.py --target v6e-8 --mode sample
    python -m viewpoint_jax.compile --config configs/wan14b.py --target v5p:2x2x2 \\
        --config.model.remat_policy=full --batch_per_chip 1
    python -m viewpoint_jax.compile --config configs/wan.py:14b_lora --target v5p-8 --chips 1

--target: a Cloud TPU accelerator type (v5p-8 is 4 chips: v4 and v5p count TensorCores; v6e-8
is 8 chips, v5e-4 4 chips) or a topology (v5p:2x2x2, v6e:4x4). Needs libtpu (the `tpu` or `test`
extra); compiling the 14B step takes minutes and tens of GB of host memory. --chips N compiles
the program of the target's first N chips: one chip's program, which no single-chip slice of
v5p lays out.
"""

from __future__ import annotations

import functools

from absl import flags
from ml_collections import config_flags

from viewpoint_jax.common.cli import UserError, refuse_positional, run
from viewpoint_jax.studies import tpu_compile


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "a configs/*.py file (`path[:arg]`)")
    flags.DEFINE_string("target", None, "TPU slice: v5p-8, v6e-8, v5e-4, or a topology v5p:2x2x2")
    flags.DEFINE_enum("mode", "train", ["train", "sample"], "the train step or the sampler")
    flags.DEFINE_integer(
        "chips", None, "compile for the target's first N chips (e.g. 1: one chip's program)"
    )
    flags.DEFINE_integer("batch_per_chip", 1, "train: samples per chip (the paper's recipe: 1)")
    flags.DEFINE_string("mesh", None, "sample: the sampling mesh, e.g. fsdp=2,sequence=-1")
    flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "sample: the DiT's weights")
    flags.mark_flags_as_required(["config", "target"])


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    given = flags.FLAGS
    tpu_compile.use_cpu_backend()
    try:
        target = tpu_compile.parse_target(given.target)
        if given.chips is not None:
            target = tpu_compile.on_chips(target, given.chips)
    except ValueError as error:
        raise UserError(str(error)) from None
    if given.batch_per_chip < 1:
        raise UserError(f"--batch_per_chip must be >= 1, got {given.batch_per_chip}")
    config, notes = tpu_compile.for_target(given.config, given.batch_per_chip, target, given.mode)
    devices = tpu_compile.topology_devices(target)
    if given.mode == "train":
        report = tpu_compile.compile_train(config, target, devices)
    else:
        report = tpu_compile.compile_sample(config, target, devices, given.mesh, given.dtype)
    report.notes[:0] = notes
    print(
        tpu_compile.format_report(report, config_flags.get_config_filename(given["config"])),
        flush=True,
    )
    return 0


console_main = functools.partial(run, main, define_flags)


if __name__ == "__main__":
    console_main()
