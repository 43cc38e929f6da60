"""DiT benchmarks: CPU forward vs diffusers, compile time vs depth, and a GPU training-step mode.

python tools/bench_dit.py                 # CPU: forward vs diffusers; compile 4 vs 40 layers
python tools/bench_dit.py --gpu           # 1.3B fwd+bwd, 13x80x80 latent, bf16, cuDNN: MFU
"""

from __future__ import annotations

import datetime
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

import viewpoint_jax  # noqa: F401
from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models.dit import DiTConfig

# Mid-size CPU config: real head dim (128), a few layers, a small latent.
MID = dict(dim=512, ffn_dim=1536, num_heads=4, num_layers=4, text_dim=512, freq_dim=256)
MID_LATENT = (1, 4, 24, 24, 16)  # (B, F, H, W, C): 4 * 12 * 12 = 576 tokens
MID_TEXT = 128

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


def _timeit(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _model(config: DiTConfig):
    model = dit_lib.abstract_model(config)
    graphdef, params = nnx.split(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda x: 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), params)
    return graphdef, params


def _jit_forward(graphdef):
    return jax.jit(lambda p, x, t, c: nnx.merge(graphdef, p)(x, t, c))


def _run(forward, args):
    return forward(*args).block_until_ready()


def bench_cpu(repeats: int) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    rng = np.random.default_rng(0)
    x = rng.standard_normal(MID_LATENT).astype(np.float32)
    t = np.array([500.0], np.float32)
    ctx = rng.standard_normal((1, MID_TEXT, MID["text_dim"])).astype(np.float32)

    rows = []
    for pattern in ("pano", "alternate"):
        config = DiTConfig(**MID, attention_pattern=pattern)
        graphdef, params = _model(config)
        forward = _jit_forward(graphdef)
        args = (params, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
        seconds = _timeit(functools.partial(_run, forward, args), repeats)
        rows.append((f"viewpoint_jax ({pattern})", seconds))

    torch.manual_seed(0)
    reference = WanTransformer3DModel(
        num_attention_heads=MID["num_heads"],
        attention_head_dim=MID["dim"] // MID["num_heads"],
        ffn_dim=MID["ffn_dim"],
        num_layers=MID["num_layers"],
        text_dim=MID["text_dim"],
        freq_dim=MID["freq_dim"],
        in_channels=16,
        out_channels=16,
    ).eval()
    tx = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    tt, tc = torch.from_numpy(t), torch.from_numpy(ctx)

    def torch_forward():
        with torch.no_grad():
            reference(tx, tt, tc)

    rows.append(("diffusers WanTransformer3DModel (torch)", _timeit(torch_forward, repeats)))
    torch_s = rows[-1][1]
    tokens = int(np.prod(MID_LATENT[1:4])) // 4
    print(
        f"CPU forward, fp32, {datetime.date.today()}, {jax.device_count()} CPU devices, "
        f"torch threads {torch.get_num_threads()}; dim {MID['dim']}, ffn {MID['ffn_dim']}, "
        f"{MID['num_heads']} heads, {MID['num_layers']} layers, {tokens} tokens, "
        f"text {MID_TEXT} tokens; median of {repeats}\n"
    )
    print("| implementation | forward ms | time / diffusers |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {1e3 * seconds:.1f} | {seconds / torch_s:.2f} |")
    print()


def bench_compile(layer_counts: list[int]) -> None:
    print(f"Compile time (lower + compile, forward, fp32, CPU), {datetime.date.today()}\n")
    print("| layers | pattern | trace s | compile s | total s |")
    print("|---|---|---|---|---|")
    for pattern in ("alternate",):
        for layers in layer_counts:
            config = DiTConfig(**{**MID, "num_layers": layers}, attention_pattern=pattern)
            abstract = nnx.split(dit_lib.abstract_model(config), nnx.Param)
            graphdef, params = abstract
            forward = _jit_forward(graphdef)
            x = jax.ShapeDtypeStruct(MID_LATENT, jnp.float32)
            t = jax.ShapeDtypeStruct((1,), jnp.float32)
            c = jax.ShapeDtypeStruct((1, MID_TEXT, MID["text_dim"]), jnp.float32)
            start = time.perf_counter()
            lowered = forward.lower(params, x, t, c)
            traced = time.perf_counter() - start
            lowered.compile()
            total = time.perf_counter() - start
            print(f"| {layers} | {pattern} | {traced:.2f} | {total - traced:.2f} | {total:.2f} |")
    print()


def model_flops(config: DiTConfig, latent: tuple[int, ...], text_len: int) -> float:
    """Forward FLOPs (2 per multiply-add) of matmuls and attention; the backward is 2x this."""
    b, f, h, w, _ = latent
    pt, ph, pw = config.patch_size
    tokens = (f // pt) * (h // ph) * (w // pw)
    d, m = config.dim, config.ffn_dim
    patch_in = pt * ph * pw * config.in_dim
    per_token = 2 * patch_in * d + 2 * d * pt * ph * pw * config.out_dim
    block_token = 2 * (4 * d * d + 2 * d * d + 2 * d * m)  # self qkvo, cross q o, ffn
    flops = tokens * (per_token + config.num_layers * block_token)
    kinds = config.block_kinds
    full = sum(k == dit_lib.BlockKind.PANO for k in kinds)
    local = len(kinds) - full
    # QK^T and PV: 2 * 2 * Lq * Lk * d; a subregion block attends within each of the 4 subregions.
    flops += 4 * d * (full * tokens**2 + local * tokens**2 / 4)
    flops += config.num_layers * (4 * d * tokens * text_len + 2 * 2 * text_len * d * d)
    flops += 2 * text_len * (config.text_dim * d + d * d)
    return float(b * flops)


def bench_gpu(args: flags.FlagValues) -> None:
    config = DiTConfig.wan_1_3b(
        in_dim=33,
        attention_backend=args.attention,
        remat_policy=args.remat,
        attention_pattern=args.pattern,
    )
    latent = (args.batch, 13, 80, 80, 33)
    text_len = 512
    graphdef, params = _model(config)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(latent), jnp.bfloat16)
    target = jnp.asarray(rng.standard_normal((*latent[:4], 16)), jnp.bfloat16)
    t = jnp.full((args.batch,), 500.0)
    ctx = jnp.asarray(rng.standard_normal((args.batch, text_len, 4096)), jnp.bfloat16)

    @jax.jit
    def step(params, x, t, ctx, target):
        def loss(p):
            out = nnx.merge(graphdef, p)(x, t, ctx)
            return jnp.mean(jnp.square(out - target.astype(jnp.float32)))

        return jax.value_and_grad(loss)(params)

    start = time.perf_counter()
    compiled = step.lower(params, x, t, ctx, target).compile()
    compile_s = time.perf_counter() - start
    run = lambda: jax.block_until_ready(compiled(params, x, t, ctx, target))
    seconds = _timeit(run, args.repeats)
    flops = 3 * model_flops(config, latent, text_len)
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or next(
        (v for k, v in PEAK_BF16_TFLOPS.items() if k in kind.upper()), None
    )
    memory = jax.devices()[0].memory_stats() or {}
    print(
        f"1.3B forward+backward, {kind}, {datetime.date.today()}, latent {latent}, "
        f"bf16 compute / fp32 params, attention {args.attention}, remat {args.remat}, "
        f"pattern {args.pattern}\n"
    )
    print("| step s | model TFLOP/step | TFLOP/s | MFU | compile s | peak HBM GB |")
    print("|---|---|---|---|---|---|")
    mfu = f"{100 * flops / seconds / (peak * 1e12):.1f}%" if peak else "n/a (pass --peak_tflops)"
    print(
        f"| {seconds:.3f} | {flops / 1e12:.1f} | {flops / seconds / 1e12:.0f} | {mfu} | "
        f"{compile_s:.0f} | {memory.get('peak_bytes_in_use', 0) / 1e9:.1f} |"
    )


def define_flags() -> None:
    flags.DEFINE_bool("gpu", False, "the 1.3B training-step benchmark")
    flags.DEFINE_integer("repeats", 5, "timed calls (the fastest counts)")
    flags.DEFINE_list("compile_layers", ["4", "40"], "depths whose compile time is measured")
    flags.DEFINE_string("attention", "cudnn", "GPU mode: attention backend")
    flags.DEFINE_enum("remat", "none", list(dit_lib.REMAT_POLICIES), "GPU mode: remat policy")
    flags.DEFINE_string("pattern", "alternate", "GPU mode: attention pattern")
    flags.DEFINE_integer("batch", 1, "GPU mode: batch size")
    flags.DEFINE_float("peak_tflops", None, "device bf16 peak, for MFU")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    if args.gpu:
        bench_gpu(args)
        return 0
    bench_cpu(args.repeats)
    bench_compile([int(layers) for layers in args.compile_layers])
    return 0


if __name__ == "__main__":
    run(main, define_flags)
