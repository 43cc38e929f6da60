"""Pretrains a plain text-to-video DiT and publishes it as a converted Wan checkpoint.

    python -m viewpoint_jax.pretrain --config=configs/tiny.py:pretrain \\
        --workdir=runs/tiny_pretrain --out=viewpoint_jax/assets/tiny_perspective

Trains the config (a plain text-to-video config: perspective clips without a condition, e.g.
configs/tiny.py:pretrain, the default) in --workdir (a rerun resumes it), then writes the final
weights to --out in the layout of a converted Wan DiT (config.json + params/) with the run's
metrics.jsonl and a README.md stating this command. The command above made the committed
viewpoint_jax/assets/tiny_perspective that configs/tiny.py fine-tunes from. The work is
training/pretrain.py's; this module is its flags.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.training.pretrain import DEFAULT_CONFIG, pretrain


def define_flags() -> None:
    """The CLI's flags; defined only when this module is the program."""
    config_flags.DEFINE_config_file(
        "config", f"{DEFAULT_CONFIG}:pretrain", "a plain text-to-video config (`path[:arg]`)"
    )
    flags.DEFINE_string("workdir", "runs/tiny_pretrain", "the run directory (resumable)")
    flags.DEFINE_string("out", None, "the checkpoint directory to write (replaced)")
    flags.mark_flags_as_required(["out"])


def main(argv: list[str]) -> int:
    """Pretrains --config in --workdir and writes --out; the README names this command."""
    refuse_positional(argv)
    given = flags.FLAGS
    # As typed with `-m` (sys.argv[0] is then this file's absolute path, no use to a reader).
    command = shlex.join(["python", "-m", "viewpoint_jax.pretrain", *sys.argv[1:]])
    pretrain(given.config, given.workdir, given.out, command=command)
    print(f"wrote {Path(given.out).absolute()}")
    return 0


def console_main() -> None:
    """`main` under the package's CLI plumbing (flags, one-line errors)."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
