"""Builds a panoramic dataset (ArrayRecord, read without TensorFlow) from a folder you prepare.

    python tools/prepare_dataset.py --src DIR --out DATA_DIR [--name NAME] [--height 512]
        [--fps 16] [--stereo top-bottom|left-right|mono] [--workers N] [--dry_run]

A thin wrapper of `viewpoint_jax.prepare_dataset` (the `viewpoint-prepare` console script;
its docstring says more).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viewpoint_jax.prepare_dataset import console_main

if __name__ == "__main__":
    console_main()
