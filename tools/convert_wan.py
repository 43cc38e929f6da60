"""Converts published PyTorch Wan2.1 weights into Orbax checkpoint directories.

python tools/convert_wan.py dit  --src Wan2.1-T2V-1.3B/ --dst ckpt/dit [--in_dim=33] [--dtype=bfloat16]
python tools/convert_wan.py vae  --src Wan2.1_VAE.pth --dst ckpt/vae
python tools/convert_wan.py umt5 --src models_t5_umt5-xxl-enc-bf16.pth --dst ckpt/umt5

A thin wrapper of `viewpoint_jax.convert_wan` (the `viewpoint-convert` console script).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viewpoint_jax.convert_wan import console_main

if __name__ == "__main__":
    console_main()
