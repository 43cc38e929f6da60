"""ViewPoint on Wan2.1-T2V-14B: `configs/wan.py:14b` by name (docs/paper-recipe.md says which
settings are the paper's and which are ours).

python -m viewpoint_jax.train --config configs/wan14b.py --workdir runs/vp14b ...
"""

from pathlib import Path

from viewpoint_jax.setup.config import load_config_file


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/wan14b.py takes no argument, got {arg!r}")
    return load_config_file(f"{Path(__file__).with_name('wan.py')}:14b")
