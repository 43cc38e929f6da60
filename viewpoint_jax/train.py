"""Fine-tunes the Wan DiT on ViewPoint maps with flow matching (training/loop.py).

    python -m viewpoint_jax.train --config configs/tiny.py --workdir runs/tiny
    python -m viewpoint_jax.train --config configs/wan14b.py --workdir runs/vp14b \\
        [--config.key=value ...] [--coordinator_address host:port --num_processes N --process_id i]
"""

from __future__ import annotations

import functools
import sys

from absl import flags
from ml_collections import config_flags

from viewpoint_jax.common import distributed
from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.training import checkpoints, loop

# --- CLI ------------------------------------------------------------------------------------------


def define_flags() -> None:
    """The CLI's flags; defined only when this module is the program (demo imports it)."""
    config_flags.DEFINE_config_file(
        "config", None, "a configs/*.py file (`path[:arg]`)", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "the run directory (checkpoints, logs)")
    distributed.define_flags()
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    given = flags.FLAGS
    distributed.initialize_from_flags()
    try:
        result = loop.train(given.config, given.workdir)
    except (loop.NonFiniteLossError, checkpoints.CheckpointSaveError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done: step {result['step']}" + (" (stopped by SIGTERM)" if result["stopped"] else ""))
    return 0


console_main = functools.partial(run, main, define_flags)  # the viewpoint-train script


if __name__ == "__main__":
    console_main()
