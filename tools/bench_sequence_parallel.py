"""Memory per chip of one Pano self-attention, compiled for a Cloud TPU slice on this machine (no
TPU used): the map's tokens split over the mesh's sequence axis, the splash kernel, keys and
values gathered whole ("gather") or heads exchanged by all-to-alls ("ulysses").

    python tools/bench_sequence_parallel.py [--target v5p-8] [--tokens 83200] [--heads 40]

Compiles `attention.dot_product_attention(q, k, v, backend="splash", sequence_parallel=mode)` on
bf16 q, k, v of shape (1, tokens, heads, head_dim) split over sequence = every chip of the
target, alone and with its gradients (of the sum of its output); prints XLA's memory analysis
per chip (studies/tpu_compile.memory_of) and the collectives of each program. The defaults are
Wan 14B's heads at the 2K map (1280 x 1280 pixels, 49 frames: 13 x 80 x 80 tokens).
"""

from __future__ import annotations

import collections
import functools
import re
import time

from absl import flags

from viewpoint_jax.common import cli
from viewpoint_jax.common.cli import refuse_positional

_COLLECTIVE = re.compile(
    r" (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("
)


def define_flags() -> None:
    flags.DEFINE_string("target", "v5p-8", "a Cloud TPU slice (as the compile command's --target)")
    flags.DEFINE_integer("tokens", 13 * 80 * 80, "tokens per example", lower_bound=1)
    flags.DEFINE_integer("heads", 40, "attention heads (Wan 14B: 40, 1.3B: 12)", lower_bound=1)
    flags.DEFINE_integer("head_dim", 128, "head size (Wan: 128)", lower_bound=1)
    flags.DEFINE_list("modes", ["gather", "ulysses"], "sequence_parallel modes to compile")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS

    import jax
    import jax.numpy as jnp

    from viewpoint_jax.common import sharding
    from viewpoint_jax.models import attention
    from viewpoint_jax.studies import tpu_compile

    target = tpu_compile.parse_target(args.target)
    devices = tpu_compile.topology_devices(target)
    mesh = sharding.make_mesh(dict(sequence=len(devices)), devices)
    shape = (1, args.tokens, args.heads, args.head_dim)
    placed = sharding.named_sharding(mesh, attention.HEADS_AXES, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=placed)
    print(f"{target.name} ({target.topology}), mesh sequence={len(devices)}; q, k, v {shape} bf16")
    print(
        "| mode | program | temporaries MiB per chip | total MiB per chip | collectives | compile s |"
    )
    print("|---|---|---:|---:|---|---:|")
    for mode in args.modes:
        attend = functools.partial(
            attention.dot_product_attention, backend="splash", sequence_parallel=mode
        )
        loss = lambda q, k, v, attend=attend: attend(q, k, v).astype(jnp.float32).sum()
        programs = {"forward": attend, "gradients": jax.grad(loss, argnums=(0, 1, 2))}
        for name, program in programs.items():
            start = time.perf_counter()
            with sharding.use_mesh(mesh):
                compiled = jax.jit(program).lower(x, x, x).compile()
            seconds = time.perf_counter() - start
            memory = tpu_compile.memory_of(compiled)
            counts = collections.Counter(_COLLECTIVE.findall(compiled.as_text()))
            moved = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"
            print(
                f"| {mode} | {name} | {memory['temp_bytes'] / 2**20:.0f} | "
                f"{memory['total_bytes'] / 2**20:.0f} | {moved} | {seconds:.1f} |"
            )
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags)
