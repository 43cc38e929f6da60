"""Per-step cost of the compiled sampler against bare model forwards on the same inputs.

    python tools/bench_sample.py                      # CPU, tiny DiT
    python tools/bench_sample.py --gpu --preset 1.3b  # on an accelerator
    python tools/bench_sample.py --devices 1,2,4,8    # sharded sampling (CPU: simulated devices)

One sampler step = one DiT forward on the 2B batch (conditional + unconditional) + guidance +
the scheduler update (+ optional fusion / progress callback). The bare forward is the same DiT
call, jitted alone, on the same 2B inputs, run `steps` times back to back (dispatch is
asynchronous, so the host loop does not stall the device); a second baseline chains the same
forwards inside one fori_loop (no sampler arithmetic). Overhead = sampler step / bare forward.
Measurements alternate between the variants and the best of `--repeats` rounds is kept, which
filters out noise from other processes on a shared machine; on CPU the clock is the process's
CPU time (see `main`).

--devices N1,N2,...: the sampler on the sampling mesh (`generation.models.sampling_mesh`, FSDP over
the first N devices, weights sharded by their logical axes, under `sharding.use_mesh`) for each
N: ms per step and per-device bytes (XLA's memory analysis of the compiled loop: arguments +
outputs + temporaries), both also as ratios to the first N. Without an accelerator the devices are
simulated on the host CPU (`--xla_force_host_platform_device_count`): they share its cores and
the clock is CPU time, so a time ratio there is the total work of all devices (the cost of
sharding), not a speed-up.
"""

from __future__ import annotations

import datetime
import os
import time

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from viewpoint_jax.common.cli import UserError, refuse_positional, run
from viewpoint_jax.diffusion import denoising, schedulers
from viewpoint_jax.models.dit import DiTConfig, WanDiT


def define_flags() -> None:
    flags.DEFINE_enum("preset", "tiny", ["tiny", "1.3b"], "DiT size")
    flags.DEFINE_integer("map_size", 128, "pixels; latent = map / 8")
    flags.DEFINE_integer("frames", 9, "pixel frames (1 + 4k)")
    flags.DEFINE_integer("steps", 20, "sampling steps")
    flags.DEFINE_integer("repeats", 5, "best of this many rounds", lower_bound=1)
    flags.DEFINE_string("dtype", "float32", "DiT compute dtype")
    flags.DEFINE_bool("gpu", False, "require an accelerator backend")
    flags.DEFINE_string("devices", None, "comma-separated device counts, e.g. 1,2,4,8: sharded")


def simulate_devices(args) -> None:
    """Enough simulated CPU devices for `--devices` (unless on a GPU). XLA reads the flag when
    jax creates its backends (the first device query), not at import, so this runs first in
    `main`."""
    if not args.devices or args.gpu:
        return
    count = max(int(n) for n in args.devices.split(","))
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def bench_devices(args, config, conditions, backend: str) -> None:
    """Per-step time and per-device bytes of the sampler on 1..N-device meshes."""
    from viewpoint_jax.common import sharding
    from viewpoint_jax.generation.models import sampling_mesh

    counts = [int(n) for n in args.devices.split(",")]
    if max(counts) > jax.device_count():
        raise UserError(f"--devices {args.devices}: only {jax.device_count()} devices")
    settings = denoising.SampleSettings(num_steps=args.steps, scheduler="unipc", guidance_scale=5.0)
    schedule = schedulers.make_schedule("unipc", args.steps, 5.0)
    model = WanDiT(config, rngs=nnx.Rngs(0))
    clock = time.process_time if backend == "cpu" else time.perf_counter
    rows = []
    for count in counts:
        mesh = sampling_mesh(jax.devices()[:count])
        graphdef, params = nnx.split(model)
        params = jax.device_put(params, sharding.state_shardings(params, mesh))
        with sharding.use_mesh(mesh):
            placed = denoising.place_conditions(conditions, mesh, sharding.DEFAULT_RULES)
            compiled = denoising.sample_latents.lower(
                graphdef,
                params,
                placed,
                jax.random.key(0),
                schedule,
                jnp.float32(5.0),
                mesh_context=(mesh, sharding.DEFAULT_RULES),
            ).compile()

            def run(model=(graphdef, params), seed=0):
                return denoising.sample(model, conditions, jax.random.key(seed), settings)

            jax.block_until_ready(run())  # compile
            seconds = min(
                timed(lambda seed=seed: run(seed=seed), clock)
                for seed in range(1, args.repeats + 1)
            )
        memory = compiled.memory_analysis()
        per_device = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        )
        rows.append((count, seconds / args.steps, per_device))
    print(
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; backend: {backend} "
        f"({jax.devices()[0].device_kind}, {jax.device_count()} devices); DiT {args.preset} "
        f"{config.dtype}; latent {conditions.latent.shape}, batch 2 (CFG); {args.steps} steps, "
        f"best of {args.repeats}; mesh: fsdp over N devices; clock: {clock.__name__}"
    )
    print()
    print("| devices | ms / step | vs 1st | MiB / device | vs 1st |")
    print("|---:|---:|---:|---:|---:|")
    base_time, base_bytes = rows[0][1], rows[0][2]
    for count, per_step, per_device in rows:
        print(
            f"| {count} | {1e3 * per_step:.2f} | {per_step / base_time:.2f} | "
            f"{per_device / 2**20:.2f} | {per_device / base_bytes:.3f} |"
        )


def timed(fn, clock):
    start = clock()
    jax.block_until_ready(fn())
    return clock() - start


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    simulate_devices(args)
    backend = jax.default_backend()
    if args.gpu and backend == "cpu":
        raise UserError("--gpu given but JAX sees only the CPU")
    overrides = dict(in_dim=33, dtype=args.dtype)
    config = (
        DiTConfig.tiny(**overrides) if args.preset == "tiny" else DiTConfig.wan_1_3b(**overrides)
    )
    latent_frames, side = 1 + (args.frames - 1) // 4, args.map_size // 8
    shape = (1, latent_frames, side, side, 16)
    keys = jax.random.split(jax.random.key(0), 4)
    text_len = 512 if args.preset == "1.3b" else 64
    conditions = denoising.Conditions(
        context=jax.random.normal(keys[0], (1, text_len, config.text_dim)),
        negative_context=jax.random.normal(keys[1], (1, text_len, config.text_dim)),
        latent=jax.random.normal(keys[2], shape),
        mask=jnp.ones((*shape[:-1], 1)),
    )
    schedule = schedulers.make_schedule("unipc", args.steps, 5.0)
    guidance = jnp.float32(5.0)
    if args.devices:
        bench_devices(args, config, conditions, backend)
        return 0
    model = WanDiT(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    # The bare forward on exactly the sampler's per-step inputs (2B batch).
    inputs = jnp.concatenate(
        [denoising.model_input(conditions.latent, conditions.latent, conditions.mask)] * 2
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
        return lambda: denoising.sample_latents(
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
    return 0


if __name__ == "__main__":
    run(main, define_flags)
