"""Pretrains the tiny DiT as a plain text-to-video Wan on perspective clips of demo scenes.

python tools/pretrain_tiny.py --out viewpoint_jax/assets/tiny_perspective \\
    [--config configs/tiny.py:pretrain] [--workdir runs/tiny_pretrain]

A thin wrapper of `viewpoint_jax.pretrain` (the command that made the committed checkpoint is in
its README.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viewpoint_jax.pretrain import console_main

if __name__ == "__main__":
    console_main()
