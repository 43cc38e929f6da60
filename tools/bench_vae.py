"""Benchmarks the JAX Wan VAE against diffusers' AutoencoderKLWan on CPU, in one run.

  python tools/bench_vae.py                       # 17 frames at 256x256, full-size VAE
  python tools/bench_vae.py --frames 5 --size 128 --skip-tiled  # the ratio in a few minutes

Both sides use the real Wan2.1 VAE size (base_dim 96) with the same random weights (diffusers'
init, seed 0, copied into the JAX model). Each (framework, op) runs in its own subprocess so that
the peak resident memory of one does not hide the other's: "peak RSS growth" is the process's
peak RSS during the op (sampled every 5 ms) minus its RSS just before (weights and inputs already
resident). diffusers is warmed up on one frame first; JAX is compiled ahead of time (compile time
listed apart), so its timed call is steady state.

The second table times one causal 3x3x3 conv layer (a 96-channel res-block conv on a chunk of 4
frames plus 2 cached ones at 256x256 by default): torch's Conv3d, XLA's 3D convolution, and the
model's formulation (a sum over the temporal taps of 2D convs, `vae._conv`).

The third table compares the tiled and untiled decode of a 49-frame 640x640 video (13 x 80 x 80
latents) by XLA's compiled memory analysis (temporaries + output), without running them: running
the full-resolution decode twice is too heavy for this shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Samples this process's RSS every 5 ms while active; `.growth` = peak - RSS at entry."""

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.growth = self.peak - self.start


def _torch_model():
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan().eval()  # base_dim 96, z_dim 16: the released Wan2.1 VAE size


def _inputs(frames: int, size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (1, frames, size, size, 3)).astype(np.float32)
    latents = rng.standard_normal((1, 1 + (frames - 1) // 4, size // 8, size // 8, 16))
    return video, latents.astype(np.float32)


def worker(framework: str, op: str, frames: int, size: int) -> dict:
    video, latents = _inputs(frames, size)
    ref = _torch_model()
    if framework == "torch":
        import torch

        torch.set_grad_enabled(False)
        x = torch.from_numpy(video if op == "encode" else latents).permute(0, 4, 1, 2, 3)
        run = ref.encode if op == "encode" else ref.decode
        run(x[:, :, :1])  # one frame: first-call kernel set-up stays out of the timing
        with _PeakRSS() as mem:
            start = time.perf_counter()
            run(x)
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "peak_rss": mem.growth}

    import jax
    import jax.numpy as jnp
    from flax import nnx

    import viewpoint_jax  # noqa: F401
    from viewpoint_jax.convert.vae import vae_from_state_dict

    vae = vae_from_state_dict(ref.state_dict())
    del ref
    graphdef, state = nnx.split(vae)
    fn = jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), op)(x))
    x = jnp.asarray(video if op == "encode" else latents)
    start = time.perf_counter()
    compiled = fn.lower(state, x).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    # Compiled ahead of time, so the first call is already steady state.
    with _PeakRSS() as mem:
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, x))
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "compile_seconds": compile_s,
        "peak_rss": mem.growth,
        "xla_temp": analysis.temp_size_in_bytes,
    }


def layer_worker(framework: str, frames: int, size: int, channels: int) -> dict:
    """Best of 3 timings of one causal 3x3x3 conv over `frames` + 2 cached frames."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, frames + 2, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, channels, channels)).astype(np.float32)
    kernel /= np.sqrt(27 * channels)
    bias = np.zeros((channels,), np.float32)
    if framework == "torch":
        import torch

        torch.set_grad_enabled(False)
        conv = torch.nn.Conv3d(channels, channels, 3, padding=(0, 1, 1))
        conv.weight.copy_(torch.from_numpy(kernel).permute(4, 3, 0, 1, 2))
        conv.bias.zero_()
        xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
        run = lambda: conv(xt)
    else:
        import jax

        from viewpoint_jax.models import vae

        if framework == "xla_conv3d":

            def fn(x, kernel, bias):
                y = jax.lax.conv_general_dilated(
                    x, kernel, (1, 1, 1), ((0, 0), (1, 1), (1, 1)),
                    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                )  # fmt: skip
                return y + bias

        else:

            def fn(x, kernel, bias):
                return vae._conv(x, kernel, bias, (1, 1, 1), ((1, 1), (1, 1)))

        compiled = jax.jit(fn).lower(x, kernel, bias).compile()
        args = [jax.device_put(a) for a in (x, kernel, bias)]
        run = lambda: jax.block_until_ready(compiled(*args))
    run()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times)}


def tiled_memory(frames: int, size: int, tile: int, overlap: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import viewpoint_jax  # noqa: F401
    from viewpoint_jax.models.vae import WanVAE, WanVAEConfig

    vae = nnx.eval_shape(lambda: WanVAE(WanVAEConfig(), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(vae)
    z = jax.ShapeDtypeStruct((1, 1 + (frames - 1) // 4, size // 8, size // 8, 16), jnp.float32)
    out = {}
    for name, kwargs in (("untiled", {}), ("tiled", {"tile": tile, "tile_overlap": overlap})):
        fn = jax.jit(lambda s, x, kw=kwargs: nnx.merge(graphdef, s).decode(x, **kw))
        start = time.perf_counter()
        mem = fn.lower(state, z).compile().memory_analysis()
        out[name] = {
            "temp": mem.temp_size_in_bytes,
            "output": mem.output_size_in_bytes,
            "compile_seconds": time.perf_counter() - start,
        }
    return out


def _spawn(*args: str) -> dict:
    cmd = [sys.executable, __file__, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tiled-frames", type=int, default=49)
    parser.add_argument("--tiled-size", type=int, default=640)
    parser.add_argument("--tile", type=int, default=32, help="latent pixels (32 = 256 px)")
    parser.add_argument("--overlap", type=int, default=8, help="latent pixels")
    parser.add_argument("--skip-tiled", action="store_true")
    parser.add_argument("--layer-frames", type=int, default=4, help="new frames (+2 cached)")
    parser.add_argument("--layer-size", type=int, default=256)
    parser.add_argument("--layer-channels", type=int, default=96)
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--layer-worker", metavar="FRAMEWORK", help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "OP"), help=argparse.SUPPRESS)
    parser.add_argument("--tiled-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.frames, args.size)))
        return
    if args.layer_worker:
        print(json.dumps(layer_worker(args.layer_worker, args.layer_frames, args.layer_size,
                                      args.layer_channels)))  # fmt: skip
        return
    if args.tiled_worker:
        print(json.dumps(tiled_memory(args.tiled_frames, args.tiled_size, args.tile,
                                      args.overlap)))  # fmt: skip
        return

    if not args.skip_model:
        sizes = ["--frames", str(args.frames), "--size", str(args.size)]
        print(f"Wan2.1 VAE (base_dim 96, random weights), {args.frames} frames {args.size}x"
              f"{args.size}, CPU ({os.cpu_count()} cores), fp32\n")  # fmt: skip
        print(
            "| op | diffusers s | JAX s | speed-up (diffusers/JAX) | diffusers peak RSS growth "
            "| JAX peak RSS growth | JAX XLA temp | JAX compile s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for op in ("encode", "decode"):
            t = _spawn("--worker", "torch", op, *sizes)
            j = _spawn("--worker", "jax", op, *sizes)
            print(f"| {op} | {t['seconds']:.1f} | {j['seconds']:.1f} | "
                  f"{t['seconds'] / j['seconds']:.2f}x | {_gib(t['peak_rss'])} | "
                  f"{_gib(j['peak_rss'])} | {_gib(j['xla_temp'])} | "
                  f"{j['compile_seconds']:.1f} |", flush=True)  # fmt: skip
    if not args.skip_layer:
        layer = ["--layer-frames", str(args.layer_frames), "--layer-size", str(args.layer_size),
                 "--layer-channels", str(args.layer_channels)]  # fmt: skip
        print(f"\nOne causal 3x3x3 conv, {args.layer_channels} -> {args.layer_channels} channels, "
              f"{args.layer_frames} (+2 cached) frames {args.layer_size}x{args.layer_size}, "
              "best of 3\n")  # fmt: skip
        print("| formulation | s | speed (torch s / s) |")
        print("|---|---|---|")
        base = None
        for name in ("torch", "xla_conv3d", "taps_2d"):
            seconds = _spawn("--layer-worker", name, *layer)["seconds"]
            base = base or seconds
            label = {"torch": "torch Conv3d", "xla_conv3d": "XLA 3D conv (old)",
                     "taps_2d": "sum of per-tap 2D convs (vae._conv)"}[name]  # fmt: skip
            print(f"| {label} | {seconds:.3f} | {base / seconds:.2f}x |", flush=True)
    if args.skip_tiled:
        return
    m = _spawn(
        "--tiled-worker",
        "--tiled-frames",
        str(args.tiled_frames),
        "--tiled-size",
        str(args.tiled_size),
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
    )
    print(f"\nDecode of {args.tiled_frames} frames {args.tiled_size}x{args.tiled_size} "
          f"(XLA compiled memory analysis, not run); tiles of {args.tile} latent px "
          f"({8 * args.tile} px), overlap {args.overlap} ({8 * args.overlap} px)\n")  # fmt: skip
    print("| decode | XLA temporaries | output | ratio (temporaries) |")
    print("|---|---|---|---|")
    base = m["untiled"]["temp"]
    for name in ("untiled", "tiled"):
        r = m[name]
        print(f"| {name} | {_gib(r['temp'])} | {_gib(r['output'])} | {r['temp'] / base:.2f} |")


if __name__ == "__main__":
    main()
