"""Converts published PyTorch Wan2.1 weights into Orbax checkpoint directories.

python tools/convert_wan.py dit  --src Wan2.1-T2V-1.3B/ --dst ckpt/dit \\
    [--in-dim 33] [--dtype bfloat16]
python tools/convert_wan.py vae  --src Wan2.1_VAE.pth --dst ckpt/vae
python tools/convert_wan.py umt5 --src models_t5_umt5-xxl-enc-bf16.pth --dst ckpt/umt5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viewpoint_jax.cli import run_main


def _dit(args: argparse.Namespace) -> None:
    from viewpoint_jax.convert.dit import convert_dit

    overrides = {}
    for name in ("dim", "ffn_dim", "num_heads", "num_layers", "out_dim", "text_dim", "freq_dim"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.attention_pattern:
        overrides["attention_pattern"] = args.attention_pattern
    config = convert_dit(
        args.src,
        args.dst,
        in_dim=args.in_dim,
        dtype=args.dtype,
        overwrite=args.overwrite,
        **overrides,
    )
    print(json.dumps(config.to_dict()))


def _vae(args: argparse.Namespace) -> None:
    from viewpoint_jax.convert.vae import convert_vae

    convert_vae(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)


def _umt5(args: argparse.Namespace) -> None:
    from viewpoint_jax.convert.umt5 import convert_umt5

    convert_umt5(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run, help_text in (
        ("dit", _dit, "the video DiT (original or diffusers layout)"),
        ("vae", _vae, "the Wan VAE"),
        ("umt5", _umt5, "the umT5-XXL text encoder"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--src", required=True, help="checkpoint file or folder")
        sub.add_argument("--dst", required=True, help="output directory (written atomically)")
        # umT5 ships in bf16 and stays so by default (fp32 would double its 11 GB).
        default_dtype = None if name == "umt5" else "float32"
        sub.add_argument("--dtype", default=default_dtype, choices=("float32", "bfloat16"))
        sub.add_argument("--overwrite", action="store_true")
        sub.set_defaults(run=run)
        if name == "dit":
            sub.add_argument("--in-dim", type=int, help="input channels (33 for ViewPoint)")
            sub.add_argument("--attention-pattern", help="alternate | pano | perspective")
            for size in (
                "dim",
                "ffn_dim",
                "num_heads",
                "num_layers",
                "out_dim",
                "text_dim",
                "freq_dim",
            ):
                sub.add_argument(
                    f"--{size.replace('_', '-')}", type=int, dest=size, help="override config.json"
                )
    args = parser.parse_args()
    start = time.perf_counter()
    args.run(args)
    print(f"wrote {args.dst} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
