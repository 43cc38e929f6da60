"""Benchmarks the JAX Wan VAE against diffusers' AutoencoderKLWan on CPU, in one run.

  python tools/bench_vae.py                       # 17 frames at 256x256, full-size VAE
  python tools/bench_vae.py --frames 5 --size 128 --skip_tiled  # the ratio in a few minutes

Both sides use the real Wan2.1 VAE size (base_dim 96) with the same random weights (diffusers'
init, seed 0, copied into the JAX model). Each (framework, op) runs in its own subprocess so that
the peak resident memory of one does not hide the other's: "peak RSS growth" is the process's
peak RSS during the op (sampled every 5 ms) minus its RSS just before (weights and inputs already
resident). "CPU s" is the process's CPU time (user + system, all threads) over the op: on a
shared machine it moves less than the wall time when other jobs take cores. diffusers is warmed up
on one frame first; JAX is compiled ahead of time (compile time listed apart) with
`vae.compiler_options()` (Eigen convolutions instead of YNNPACK on CPU; `--xla_default` keeps
XLA's defaults). `--repeats N` times N calls of each and reports the fastest.

The second table times one causal 3x3x3 conv layer (a 96-channel res-block conv on a chunk of 4
frames plus 2 cached ones at 256x256 by default): torch's Conv3d, XLA's 3D convolution, and the
model's formulation (a sum over the temporal taps of 2D convs, `vae._conv`) compiled with XLA's
default options (YNNPACK convolutions) and with `vae.compiler_options()`. They run in one process,
taking turns, best of 5 rounds each, so that other jobs' load hits them alike.

`--rounds N` alternates the diffusers and JAX subprocesses of the first table N times (each keeps
its fastest round), for the same reason.

The third table compares the tiled and untiled decode of a 49-frame 640x640 video (13 x 80 x 80
latents) by XLA's compiled memory analysis (temporaries + output), without running them: running
the full-resolution decode twice is too heavy for this shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import flags

from viewpoint_jax.common.cli import refuse_positional, run


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


def _timed(run, repeats: int) -> dict:
    """Fastest of `repeats` calls: wall seconds, CPU seconds (all threads), peak RSS growth."""
    best = None
    for _ in range(repeats):
        with _PeakRSS() as mem:
            cpu, start = time.process_time(), time.perf_counter()
            run()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "cpu_seconds": cpu, "peak_rss": mem.growth}
    return best


def worker(framework: str, op: str, frames: int, size: int, repeats: int = 1,
           xla_default: bool = False) -> dict:  # fmt: skip
    video, latents = _inputs(frames, size)
    ref = _torch_model()
    if framework == "torch":
        import torch

        torch.set_grad_enabled(False)
        x = torch.from_numpy(video if op == "encode" else latents).permute(0, 4, 1, 2, 3)
        run = ref.encode if op == "encode" else ref.decode
        run(x[:, :, :1])  # one frame: first-call kernel set-up stays out of the timing
        return _timed(lambda: run(x), repeats)

    import jax
    import jax.numpy as jnp
    from flax import nnx

    import viewpoint_jax  # noqa: F401
    from viewpoint_jax.convert.vae import vae_from_state_dict
    from viewpoint_jax.models import vae as vae_lib

    vae = vae_from_state_dict(ref.state_dict())
    del ref
    graphdef, state = nnx.split(vae)
    options = None if xla_default else vae_lib.compiler_options()
    fn = jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), op)(x), compiler_options=options)
    x = jnp.asarray(video if op == "encode" else latents)
    start = time.perf_counter()
    compiled = fn.lower(state, x).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    timed = _timed(lambda: jax.block_until_ready(compiled(state, x)), repeats)
    return {**timed, "compile_seconds": compile_s, "xla_temp": analysis.temp_size_in_bytes}


LAYER_FORMULATIONS = {
    "torch": "torch Conv3d",
    "xla_conv3d": "XLA 3D conv (old)",
    "taps_2d": "sum of per-tap 2D convs (vae._conv), XLA defaults (YNNPACK)",
    "taps_2d_options": "sum of per-tap 2D convs (vae._conv), vae.compiler_options() (Eigen)",
}


def layer_worker(frames: int, size: int, channels: int, rounds: int) -> dict:
    """Seconds of one causal 3x3x3 conv over `frames` + 2 cached frames, per formulation.

    All formulations run in this one process, taking turns for `rounds` rounds, and each keeps
    its fastest round: load from other jobs on a shared machine then hits them all alike.
    """
    import jax
    import numpy as np
    import torch

    from viewpoint_jax.models import vae

    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, frames + 2, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, channels, channels)).astype(np.float32)
    kernel /= np.sqrt(27 * channels)
    bias = np.zeros((channels,), np.float32)

    conv = torch.nn.Conv3d(channels, channels, 3, padding=(0, 1, 1))
    conv.weight.copy_(torch.from_numpy(kernel).permute(4, 3, 0, 1, 2))
    conv.bias.zero_()
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()

    def conv3d(x, kernel, bias):
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1, 1), ((0, 0), (1, 1), (1, 1)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )  # fmt: skip
        return y + bias

    def taps(x, kernel, bias):
        return vae._conv(x, kernel, bias, (1, 1, 1), ((1, 1), (1, 1)))

    args = [jax.device_put(a) for a in (x, kernel, bias)]

    def compiled(fn, options=None):
        c = jax.jit(fn, compiler_options=options).lower(*args).compile()
        return lambda: jax.block_until_ready(c(*args))

    runs = {
        "torch": lambda: conv(xt),
        "xla_conv3d": compiled(conv3d),
        "taps_2d": compiled(taps),
        "taps_2d_options": compiled(taps, vae.compiler_options()),
    }
    best = {}
    for call in runs.values():
        call()  # first-call set-up stays out of the timing
    for _ in range(rounds):
        for name, call in runs.items():
            start = time.perf_counter()
            call()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return best


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


def define_flags() -> None:
    flags.DEFINE_integer("frames", 17, "frames of the encoded/decoded video")
    flags.DEFINE_integer("size", 256, "its side, pixels")
    flags.DEFINE_integer("tiled_frames", 49, "frames of the tiled-decode comparison")
    flags.DEFINE_integer("tiled_size", 640, "its side, pixels")
    flags.DEFINE_integer("tile", 32, "latent pixels (32 = 256 px)")
    flags.DEFINE_integer("overlap", 8, "latent pixels")
    flags.DEFINE_bool("skip_tiled", False, "skip the tiled-decode table")
    flags.DEFINE_integer("layer_frames", 4, "new frames (+2 cached)")
    flags.DEFINE_integer("layer_size", 256, "the conv layer's side, pixels")
    flags.DEFINE_integer("layer_channels", 96, "the conv layer's channels")
    flags.DEFINE_bool("skip_layer", False, "skip the conv-layer table")
    flags.DEFINE_bool("skip_model", False, "skip the whole-VAE table")
    flags.DEFINE_integer("repeats", 1, "timed calls per op (fastest)")
    flags.DEFINE_bool("xla_default", False, "compile the JAX VAE without vae.compiler_options()")
    flags.DEFINE_integer("rounds", 1, "alternate diffusers/JAX subprocesses this many times")
    flags.DEFINE_integer("layer_rounds", 5, "rounds of the conv-layer table")
    flags.DEFINE_bool("layer_worker", False, "(internal) the conv-layer table's process")
    flags.DEFINE_list("worker", None, "(internal) FRAMEWORK,OP: one op's process")
    flags.DEFINE_bool("tiled_worker", False, "(internal) the tiled-decode table's process")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    if args.worker:
        print(json.dumps(worker(*args.worker, args.frames, args.size, args.repeats,
                                args.xla_default)))  # fmt: skip
        return 0
    if args.layer_worker:
        print(json.dumps(layer_worker(args.layer_frames, args.layer_size, args.layer_channels,
                                      args.layer_rounds)))  # fmt: skip
        return 0
    if args.tiled_worker:
        print(json.dumps(tiled_memory(args.tiled_frames, args.tiled_size, args.tile,
                                      args.overlap)))  # fmt: skip
        return 0

    if not args.skip_model:
        sizes = ["--frames", str(args.frames), "--size", str(args.size), "--repeats",
                 str(args.repeats), *(["--xla_default"] if args.xla_default else [])]  # fmt: skip
        print(f"Wan2.1 VAE (base_dim 96, random weights), {args.frames} frames {args.size}x"
              f"{args.size}, CPU ({os.cpu_count()} cores), fp32, JAX compiler options: "
              f"{'XLA defaults' if args.xla_default else 'vae.compiler_options()'}, "
              f"best of {args.repeats} call(s) x {args.rounds} alternating round(s)\n")  # fmt: skip
        print(
            "| op | diffusers s | JAX s | speed-up (diffusers/JAX) | diffusers CPU s | JAX CPU s "
            "| CPU ratio (diffusers/JAX) | diffusers peak RSS growth | JAX peak RSS growth "
            "| JAX XLA temp | JAX compile s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for op in ("encode", "decode"):
            torch_runs, jax_runs = [], []
            for _ in range(args.rounds):
                torch_runs.append(_spawn(f"--worker=torch,{op}", *sizes))
                jax_runs.append(_spawn(f"--worker=jax,{op}", *sizes))
            t = min(torch_runs, key=lambda r: r["seconds"])
            j = min(jax_runs, key=lambda r: r["seconds"])
            print(f"| {op} | {t['seconds']:.1f} | {j['seconds']:.1f} | "
                  f"{t['seconds'] / j['seconds']:.2f}x | {t['cpu_seconds']:.1f} | "
                  f"{j['cpu_seconds']:.1f} | {t['cpu_seconds'] / j['cpu_seconds']:.2f}x | "
                  f"{_gib(t['peak_rss'])} | "
                  f"{_gib(j['peak_rss'])} | {_gib(j['xla_temp'])} | "
                  f"{j['compile_seconds']:.1f} |", flush=True)  # fmt: skip
    if not args.skip_layer:
        layer = ["--layer_frames", str(args.layer_frames), "--layer_size", str(args.layer_size),
                 "--layer_channels", str(args.layer_channels), "--layer_rounds",
                 str(args.layer_rounds)]  # fmt: skip
        print(f"\nOne causal 3x3x3 conv, {args.layer_channels} -> {args.layer_channels} channels, "
              f"{args.layer_frames} (+2 cached) frames {args.layer_size}x{args.layer_size}, "
              f"one process, best of {args.layer_rounds} rounds\n")  # fmt: skip
        print("| formulation | s | speed (torch s / s) |")
        print("|---|---|---|")
        seconds = _spawn("--layer_worker", *layer)
        for name, label in LAYER_FORMULATIONS.items():
            ratio = seconds["torch"] / seconds[name]
            print(f"| {label} | {seconds[name]:.3f} | {ratio:.2f}x |", flush=True)
    if args.skip_tiled:
        return 0
    m = _spawn(
        "--tiled_worker",
        "--tiled_frames",
        str(args.tiled_frames),
        "--tiled_size",
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
    return 0


if __name__ == "__main__":
    run(main, define_flags)
