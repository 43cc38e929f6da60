"""Peak memory of DiT conversion vs checkpoint size (streaming: it should not grow).

Writes synthetic original-layout Wan2.1 DiT checkpoints (a single fp32 safetensors + config.json,
dim 1536 / ffn 8960 like the 1.3B model, the depth chosen to reach each size) under a scratch
directory, converts each in a fresh subprocess, and reports that process's peak RSS. A tiny
checkpoint gives the baseline (Python + JAX + Orbax). Everything is deleted afterwards.

  python tools/bench_convert.py [--sizes_gb=1,4] [--dtype bfloat16] [--scratch /tmp]
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viewpoint_jax.common.cli import refuse_positional, run

ROOT = Path(__file__).resolve().parent.parent

DIM, FFN, HEADS, TEXT, FREQ, IN, OUT = 1536, 8960, 12, 4096, 256, 16, 16


def wan_shapes(num_layers: int, dim: int = DIM, ffn: int = FFN) -> dict[str, tuple[int, ...]]:
    """Original Wan2.1 key -> shape, in the release's order."""
    shapes = {
        "patch_embedding.weight": (dim, IN, 1, 2, 2),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, TEXT),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, FREQ),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
    }
    for i in range(num_layers):
        p = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{p}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{p}{attn}.{proj}.bias"] = (dim,)
            shapes[f"{p}{attn}.norm_q.weight"] = (dim,)
            shapes[f"{p}{attn}.norm_k.weight"] = (dim,)
        shapes[f"{p}norm3.weight"] = shapes[f"{p}norm3.bias"] = (dim,)
        shapes[f"{p}ffn.0.weight"], shapes[f"{p}ffn.0.bias"] = (ffn, dim), (ffn,)
        shapes[f"{p}ffn.2.weight"], shapes[f"{p}ffn.2.bias"] = (dim, ffn), (dim,)
        shapes[f"{p}modulation"] = (1, 6, dim)
    shapes["head.head.weight"], shapes["head.head.bias"] = (4 * OUT, dim), (4 * OUT,)
    shapes["head.modulation"] = (1, 2, dim)
    return shapes


def write_checkpoint(folder: Path, num_layers: int, dim: int = DIM, ffn: int = FFN) -> int:
    """Streams a random fp32 safetensors file to disk without holding it in memory; its bytes."""
    folder.mkdir(parents=True)
    shapes = wan_shapes(num_layers, dim, ffn)
    header, offset = {}, 0
    for key, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape))
        header[key] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    block = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32) * 0.02
    with open(folder / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for shape in shapes.values():
            n = int(np.prod(shape))
            for start in range(0, n, block.size):
                f.write(block[: min(block.size, n - start)].tobytes())
    config = dict(
        dim=dim,
        ffn_dim=ffn,
        num_heads=max(dim // 128, 1),
        num_layers=num_layers,
        in_dim=IN,
        out_dim=OUT,
        freq_dim=FREQ,
        text_len=512,
        eps=1e-6,
        model_type="t2v",
    )
    (folder / "config.json").write_text(json.dumps(config))
    return 8 + len(blob) + offset


_CHILD = """
import json, resource, sys, time
from viewpoint_jax.convert.dit import convert_dit
start = time.perf_counter()
convert_dit(sys.argv[1], sys.argv[2], dtype=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def convert_in_subprocess(src: Path, dst: Path, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(dst), dtype],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def define_flags() -> None:
    flags.DEFINE_list("sizes_gb", ["1", "4"], "checkpoint sizes to convert, GB")
    flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "stored dtype")
    flags.DEFINE_string("scratch", tempfile.gettempdir(), "where the checkpoints are written")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    sizes_gb = [float(size) for size in args.sizes_gb]

    per_layer = 4 * sum(
        int(np.prod(s)) for k, s in wan_shapes(1).items() if k.startswith("blocks.")
    )
    fixed = 4 * sum(int(np.prod(s)) for s in wan_shapes(0).values())
    scratch = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.scratch))
    rows = []
    try:
        cases = [("baseline (tiny)", 1, 64, 128)]
        cases += [
            (f"{gb:g} GB", max(1, round((gb * 1e9 - fixed) / per_layer)), DIM, FFN)
            for gb in sizes_gb
        ]
        for name, layers, dim, ffn in cases:
            src, dst = scratch / "src", scratch / "dst"
            nbytes = write_checkpoint(src, layers, dim, ffn)
            result = convert_in_subprocess(src, dst, args.dtype)
            out_bytes = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
            rows.append((name, layers, nbytes / 1e9, out_bytes / 1e9, result))
            shutil.rmtree(src)
            shutil.rmtree(dst)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = rows[0][4]["peak_rss_mb"]
    print(
        f"DiT conversion peak RSS ({datetime.date.today()}, fp32 safetensors -> {args.dtype} "
        f"Orbax, {' '.join(sys.argv[1:]) or 'defaults'})\n"
    )
    print(
        "| checkpoint | layers | source GB | output GB | time s | peak RSS MB | over baseline MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, layers, src_gb, out_gb, r in rows:
        print(
            f"| {name} | {layers} | {src_gb:.2f} | {out_gb:.2f} | {r['seconds']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - base:.0f} |"
        )
    return 0


if __name__ == "__main__":
    run(main, define_flags)
