"""Per-step cost of the compiled sampler against bare model forwards on the same inputs.

    python tools/bench_sample.py                      # CPU, tiny DiT
    python tools/bench_sample.py --gpu --preset 1.3b  # on an accelerator

One sampler step = one DiT forward on the 2B batch (conditional + unconditional) + guidance +
the scheduler update (+ optional fusion / progress callback). The bare forward is the same DiT
call, jitted alone, on the same 2B inputs, run `steps` times back to back (dispatch is
asynchronous, so the host loop does not stall the device); a second baseline chains the same
forwards inside one fori_loop (no sampler arithmetic). Overhead = sampler step / bare forward.
Measurements alternate between the variants and the best of `--repeats` rounds is kept, which
filters out noise from other processes on a shared machine; on CPU the clock is the process's
CPU time (see `main`).
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
from flax import nnx

from viewpoint_jax.diffusion import sampler, schedulers
from viewpoint_jax.models.dit import DiTConfig, WanDiT


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("tiny", "1.3b"), default="tiny")
    parser.add_argument("--map-size", type=int, default=128, help="pixels; latent = map / 8")
    parser.add_argument("--frames", type=int, default=9, help="pixel frames (1 + 4k)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gpu", action="store_true", help="require an accelerator backend")
    return parser.parse_args()


def timed(fn, clock):
    start = clock()
    jax.block_until_ready(fn())
    return clock() - start


def main():
    args = parse_args()
    backend = jax.default_backend()
    if args.gpu and backend == "cpu":
        raise SystemExit("--gpu given but JAX sees only the CPU")
    overrides = dict(in_dim=33, dtype=args.dtype)
    config = (
        DiTConfig.tiny(**overrides) if args.preset == "tiny" else DiTConfig.wan_1_3b(**overrides)
    )
    model = WanDiT(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    latent_frames, side = 1 + (args.frames - 1) // 4, args.map_size // 8
    shape = (1, latent_frames, side, side, 16)
    keys = jax.random.split(jax.random.key(0), 4)
    text_len = 512 if args.preset == "1.3b" else 64
    conditions = sampler.Conditions(
        context=jax.random.normal(keys[0], (1, text_len, config.text_dim)),
        negative_context=jax.random.normal(keys[1], (1, text_len, config.text_dim)),
        latent=jax.random.normal(keys[2], shape),
        mask=jnp.ones((*shape[:-1], 1)),
    )
    schedule = schedulers.make_schedule("unipc", args.steps, 5.0)
    guidance = jnp.float32(5.0)

    # The bare forward on exactly the sampler's per-step inputs (2B batch).
    inputs = jnp.concatenate(
        [sampler.model_input(conditions.latent, conditions.latent, conditions.mask)] * 2
    )
    context = jnp.concatenate([conditions.context, conditions.negative_context])
    timesteps = jnp.full((2,), 500.0)

    @jax.jit
    def forward(params, x, t, context):
        return nnx.merge(graphdef, params)(x, t, context)

    def bare():
        out = None
        for _ in range(args.steps):
            out = forward(params, inputs, timesteps, context)
        return out

    @jax.jit
    def chained_forwards(params, x, condition, t, context):
        # The same forwards inside one program; each feeds the next (else XLA would hoist it).
        model = nnx.merge(graphdef, params)

        def body(_, x):
            return model(jnp.concatenate([x, condition], axis=-1), t, context)

        return jax.lax.fori_loop(0, args.steps, body, x)

    noisy2 = inputs[..., : shape[-1]]
    condition2 = inputs[..., shape[-1] :]

    def run_sampler(**static):
        return lambda: sampler.sample_latents(
            graphdef, params, conditions, keys[3], schedule, guidance, **static
        )

    ticks = []
    variants = {
        "bare forward (jit, per call)": bare,
        "bare forwards in one fori_loop": lambda: chained_forwards(
            params, noisy2, condition2, timesteps, context
        ),
        "sampler, fori_loop": run_sampler(),
        "sampler + per-step fusion": run_sampler(fuse_every_step=True),
        "sampler + progress callback": run_sampler(progress=lambda i: ticks.append(i)),
    }
    for fn in variants.values():  # compile
        jax.block_until_ready(fn())
    # On a CPU the device is this process: its CPU time is what a step costs, and unlike wall
    # time it does not grow when other processes share the cores. On accelerators: wall time.
    clock = time.process_time if backend == "cpu" else time.perf_counter
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            best[name] = min(best[name], timed(fn, clock))

    reference = best["bare forward (jit, per call)"] / args.steps
    print(
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; backend: {backend} "
        f"({jax.devices()[0].device_kind}); DiT {args.preset} {config.dtype}; latent {shape} "
        f"(map {args.map_size}, {args.frames} frames), batch 2 (CFG); {args.steps} steps, "
        f"best of {args.repeats}; clock: {clock.__name__}"
    )
    print()
    print("| variant | ms / step | vs bare forward |")
    print("|---|---:|---:|")
    for name, seconds in best.items():
        per_step = seconds / args.steps
        print(f"| {name} | {1e3 * per_step:.2f} | {per_step / reference:.3f} |")


if __name__ == "__main__":
    main()
