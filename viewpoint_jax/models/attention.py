"""Multi-head dot-product attention with interchangeable backends and sequence parallelism.

All backends take q (B, Lq, H, D), k and v (B, Lk, H, D) and return (B, Lq, H, D) in q's dtype.
- "xla": the reference: einsums with fp32 logits and softmax; runs anywhere.
- "cudnn": cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`), bf16.
- "splash": Pallas splash attention on TPU (bf16); raises a clear error on other platforms. The
  platform is the mesh's (`sharding.use_mesh`), else the process's: a mesh of TPU device
  descriptions (`jax.experimental.topologies`) compiles it for a TPU from a CPU-only process
  (`studies/tpu_compile.py`), and such a program can be compiled, never run. Any
  sequence length: lengths are padded to the kernel's tiles and the padded keys masked. Tests run
  the same kernel in the Pallas interpreter on CPU (`attend(..., interpret=True)`).

`groups` > 1 splits the length axis into that many equal contiguous segments that attend only
within themselves: subregion attention is `groups=4` on the DiT's subregion-major tokens
(`dit.py`: a map's tokens are ordered (subregion, frame, row, column), so each subregion is a
contiguous quarter of the sequence).

Sequence parallelism (`SequenceParallel`, `DiTConfig.sequence_parallel`), inside
`sharding.use_mesh`. Activations are (B, L, H, D) split as ("batch", "length", "act_heads", None),
i.e. examples over (data, fsdp), tokens over "sequence" (s devices, contiguous chunks of L/s),
heads over "tensor" (H/t per device):
- "gather" (the default): XLA's partitioner places the xla and cudnn backends; splash runs under
  `shard_map` with queries split over "length" and keys/values whole on every device (XLA
  all-gathers them, L x H/t x D per device, and the kernel holds L/s x L scores per head).
- "ulysses" (DeepSpeed-Ulysses, MaxDiffusion's `ulysses`): under `shard_map`, one all-to-all
  each for q, k and v turns (B, L/s, H/t, D) into (B, L, H/(t s), D): every device holds all tokens
  of H/(t s) heads; the backend's kernel runs locally (any backend); one all-to-all turns the
  output back into (B, L/s, H/t, D). Needs H/t divisible by s (Wan 14B: 40 heads, 1.3B: 12;
  tensor 1: s in {2, 4, 5, 8, 10, 20, 40} and {2, 3, 4, 6, 12}); otherwise a ValueError naming
  model.num_heads and mesh.sequence. Communication: 4 all-to-alls forward, 4 backward, each of a
  device's B L H D / (t s) block, (s - 1)/s of it leaving the device; memory: no gathered keys
  (BENCHMARKS.md: 2x to 6x less per chip than "gather" for one attention at the 2K map).
- "ring" (xla only): under `shard_map`, each device keeps its queries and passes its key/value
  block around the ring (`ppermute`, s - 1 hops); the blocks are merged with an online softmax in
  fp32 (running max, sum and output), each merge rematerialised in the backward pass. Any head
  count; the score matrix per device is L/s x L/s at a time. Its backward pass is autodiff of the
  loop: it keeps every key/value block the device saw (as much as "gather" holds) and sends the
  key/value gradients back along the ring; a backward that passes the blocks around again (no
  such residuals) is not written.
Groups under a sequence split: when s divides `groups` (subregion attention on s in {1, 2, 4}) each
device already holds whole subregions (4/s of them) and attends them with no communication at all,
in every mode. Otherwise "ulysses" gathers whole sequences first (all subregions, H/(t s) heads) and
splits them into groups locally; "ring" runs rings of s / groups devices within each group (s a
multiple of groups, else a ValueError); "gather" regroups the tokens into the batch axis and lets
XLA move them. A length the sequence axis does not divide is not split (as `sharding.constrain`
drops such axes): attention then runs as "gather".
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from viewpoint_jax.common import sharding

BACKENDS = ("xla", "cudnn", "splash")


class SequenceParallel(enum.StrEnum):
    """How self-attention handles tokens split over the mesh's sequence axis (module docstring)."""

    GATHER = "gather"
    ULYSSES = "ulysses"
    RING = "ring"


# Ring attention merges key blocks with an online softmax written in jnp: the xla backend's math.
RING_BACKENDS = ("xla",)

# Logical axes of attention's operands under a mesh, as `dit.Attention` constrains them.
HEADS_AXES = ("batch", "length", "act_heads", None)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    backend: str = "xla",
    sequence_parallel: str = SequenceParallel.GATHER,
    groups: int = 1,
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v per head (within each of `groups` segments of the length axis),
    no mask. Shapes, groups and the sequence-parallel modes: see the module docstring."""
    return attend(q, k, v, backend, SequenceParallel(sequence_parallel), groups)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    backend: str,
    mode: SequenceParallel,
    groups: int,
    *,
    interpret: bool = False,
) -> jax.Array:
    """`dot_product_attention`; `interpret=True` runs the splash kernel in the Pallas interpreter
    on any platform (tests on CPU), which the public entry point never does."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if q.shape[1] % groups or k.shape[1] % groups:
        raise ValueError(f"lengths {q.shape[1]}, {k.shape[1]} do not split into {groups} groups")
    context = sharding.current_context()
    spec = None if mode == SequenceParallel.GATHER else _sequence_split(context, q, k)
    if spec is None:
        return _gathered_attention(q, k, v, backend, groups, interpret)
    mesh = context[0]
    if backend == "splash":
        _check_splash_platform(mesh, interpret)
    body = _sequence_parallel_body(mode, backend, groups, mesh, spec, q.shape, interpret)
    # check_vma=False: the kernels' pallas_call and custom VJPs carry no varying-axes types.
    return jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(
        q, k, v
    )


def check_ulysses_heads(heads: int, sequence: int) -> None:
    """Ulysses splits each device's `heads` (model.num_heads / mesh.tensor) over the `sequence`
    devices: ValueError naming the config keys unless `sequence` divides them."""
    if heads % sequence:
        raise ValueError(
            f"sequence_parallel 'ulysses' splits each device's {heads} attention heads over "
            f"mesh.sequence = {sequence} devices: choose model.num_heads (per mesh.tensor shard) "
            "divisible by mesh.sequence, or model.sequence_parallel 'ring' (xla backend)"
        )


def _sequence_split(
    context: tuple[Mesh, sharding.LogicalRules] | None, q: jax.Array, k: jax.Array
) -> PartitionSpec | None:
    """The operands' PartitionSpec under the mesh when their length is split (self-attention
    only), else None. Mesh axes that do not divide a dimension are dropped, as
    `sharding.constrain` drops them, so the specs match the activations' constraints."""
    if context is None or q.shape != k.shape:
        return None
    mesh, rules = context
    spec = sharding.named_sharding(mesh, HEADS_AXES, q.shape, rules).spec
    return spec if spec[1] is not None else None


def _axes_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
    """How many devices a PartitionSpec entry splits its dimension over."""
    if axes is None:
        return 1
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def _sequence_parallel_body(
    mode: SequenceParallel,
    backend: str,
    groups: int,
    mesh: Mesh,
    spec: PartitionSpec,
    shape: tuple[int, ...],
    interpret: bool,
) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """What each device runs under `shard_map` on its (B/b, L/s, H/t, D) block (module
    docstring): whole groups locally, else Ulysses' all-to-alls or a ring."""
    axis, sequence = spec[1], _axes_size(mesh, spec[1])
    local = functools.partial(_local_attention, backend=backend, interpret=interpret)
    if groups % sequence == 0:  # each device holds whole groups: no communication
        return functools.partial(local, groups=groups // sequence)
    if mode == SequenceParallel.ULYSSES:
        check_ulysses_heads(shape[2] // _axes_size(mesh, spec[2]), sequence)
        return functools.partial(
            _ulysses, axis=axis, attend=functools.partial(local, groups=groups)
        )
    if backend not in RING_BACKENDS:
        raise ValueError(
            f"sequence_parallel 'ring' runs the {RING_BACKENDS} backends, not {backend!r}"
        )
    if sequence % groups:
        raise ValueError(
            f"sequence_parallel 'ring' needs mesh.sequence = {sequence} to divide {groups} groups "
            "or be a multiple of them"
        )
    return functools.partial(
        _ring_attention, axis=axis, axis_size=sequence, ring_size=sequence // groups
    )


def _gathered_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, backend: str, groups: int, interpret: bool
) -> jax.Array:
    """The "gather" mode: groups regrouped into the batch axis, the backend as placed by XLA's
    partitioner (splash: its own `shard_map`, keys and values whole)."""
    splash = functools.partial(_splash_attention, interpret=interpret)
    return _grouped_attention(q, k, v, backend, groups, splash)


def _local_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, backend: str, groups: int, interpret: bool
) -> jax.Array:
    """One device's attention on its own arrays (inside `shard_map`), within `groups` segments."""
    splash = functools.partial(_splash_attention_local, interpret=interpret)
    return _grouped_attention(q, k, v, backend, groups, splash)


def _grouped_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, backend: str, groups: int, splash: Callable
) -> jax.Array:
    """The backend's attention within `groups` segments of the sequence, each segment an example
    of the batch; `splash` is the splash entry (under the mesh's `shard_map`, or one device's)."""
    q, k, v = (_split_groups(x, groups) for x in (q, k, v))
    if backend == "xla":
        out = _xla_attention(q, k, v)
    elif backend == "cudnn":
        out = _cudnn_attention(q, k, v)
    else:
        out = splash(q, k, v)
    return _merge_groups(out, groups)


def _split_groups(x: jax.Array, groups: int) -> jax.Array:
    """(B, G*Lg, ...) -> (B*G, Lg, ...), batch order (example, group); a free reshape."""
    return x.reshape(x.shape[0] * groups, x.shape[1] // groups, *x.shape[2:])


def _merge_groups(x: jax.Array, groups: int) -> jax.Array:
    """Inverse of `_split_groups`."""
    return x.reshape(x.shape[0] // groups, x.shape[1] * groups, *x.shape[2:])


def _ulysses(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    axis: str | tuple[str, ...],
    attend: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """(B, L/s, h, D) blocks -> all-to-all -> (B, L, h/s, D): `attend` on whole sequences of h/s
    heads -> all-to-all back. Tiled all-to-alls concatenate in device order, so the tokens come
    back in sequence order."""
    heads_split = functools.partial(
        jax.lax.all_to_all, axis_name=axis, split_axis=2, concat_axis=1, tiled=True
    )
    out = attend(*(heads_split(x) for x in (q, k, v)))
    return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)


def _ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    axis: str | tuple[str, ...],
    axis_size: int,
    ring_size: int,
) -> jax.Array:
    """This device's queries (B, Lq, H, D) against the key/value blocks of its ring: the
    `ring_size` consecutive devices of `axis` (a group's devices), the blocks passed one hop per
    step. Online softmax in fp32: (max, sum, output) per query, merged block by block."""
    perm = [(i, i - i % ring_size + (i + 1) % ring_size) for i in range(axis_size)]
    b, lq, heads, dim = q.shape
    state = (
        jnp.full((b, heads, lq), -jnp.inf, jnp.float32),
        jnp.zeros((b, heads, lq), jnp.float32),
        jnp.zeros((b, heads, lq, dim), jnp.float32),
    )
    for step in range(ring_size):
        if step:
            k, v = (jax.lax.ppermute(x, axis, perm) for x in (k, v))
        state = _merge_block(state, q, k, v)
    _, total, out = state
    return jnp.swapaxes(out / total[..., None], 1, 2).astype(q.dtype)


@jax.checkpoint  # The backward pass recomputes each block's scores: L/s x L/s, not L/s x L.
def _merge_block(
    state: tuple[jax.Array, jax.Array, jax.Array], q: jax.Array, k: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One key block into the running (max (B, H, Lq), sum (B, H, Lq), output (B, H, Lq, D)).
    The max only keeps exp in range: the result does not depend on it, so no gradient flows
    through it."""
    running_max, total, out = state
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    new_max = jax.lax.stop_gradient(jnp.maximum(running_max, logits.max(-1)))
    probs = jnp.exp(logits - new_max[..., None])
    rescale = jnp.exp(running_max - new_max)
    block_out = jnp.einsum(
        "bhqk,bkhd->bhqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return new_max, total * rescale + probs.sum(-1), out * rescale[..., None] + block_out


def _xla_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(q.dtype)


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    if jax.default_backend() != "gpu":
        raise ValueError(
            "attention_backend='cudnn' needs an NVIDIA GPU; "
            f"this process runs on {jax.default_backend()!r} (use 'xla')"
        )
    dtype = q.dtype
    # cuDNN's fused kernels take 16-bit inputs only.
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn").astype(dtype)


# The splash kernel tiles both sequences into blocks that must divide them, and its kv blocks must
# be multiples of the TPU's 128 lanes. ViewPoint's token counts are not multiples of 128 (13*40*40 =
# 20800 for the map, 13*20*20 = 5200 per subregion), so sequences are padded up to a multiple of
# the block and the padded keys are masked out with segment ids.
_SPLASH_BLOCKS = (512, 256, 128)  # Largest first: bigger tiles amortise the per-step overhead.
# Padding a fraction p of the tokens costs ~2p more flops; a bigger block is worth at most this.
_SPLASH_MAX_PAD = 1 / 16


# Logical axes of the splash kernel's operands in the "gather" mode.
_SPLASH_Q_AXES = HEADS_AXES
_SPLASH_KV_AXES = ("batch", None, "act_heads", None)  # Every query shard needs all the keys.


def _splash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False
) -> jax.Array:
    """Splash attention, under `shard_map` inside `sharding.use_mesh`. `interpret=True` runs the
    Pallas kernel in the interpreter on any platform (for tests on CPU); the public entry point
    never sets it."""
    context = sharding.current_context()
    _check_splash_platform(context[0] if context else None, interpret)
    kernel = functools.partial(_splash_attention_local, interpret=interpret)
    if context is None:
        return kernel(q, k, v)
    mesh, rules = context
    # Mesh axes that do not divide a dimension are dropped, as `sharding.constrain` does, so the
    # specs match the activations' constraints (and, e.g., a batch of 1 is simply replicated).
    q_spec = sharding.named_sharding(mesh, _SPLASH_Q_AXES, q.shape, rules).spec
    kv_spec = sharding.named_sharding(mesh, _SPLASH_KV_AXES, k.shape, rules).spec
    # check_vma=False: the kernel's pallas_call and custom VJP carry no varying-axes types.
    return jax.shard_map(
        kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False
    )(q, k, v)


def _check_splash_platform(mesh: Mesh | None, interpret: bool) -> None:
    platform = target_platform(mesh)
    if not interpret and platform != "tpu":
        raise ValueError(
            "attention_backend='splash' is a Pallas TPU kernel; "
            f"this process runs on {platform!r} (use 'xla' or 'cudnn')"
        )


def target_platform(mesh: jax.sharding.Mesh | None = None) -> str:
    """The platform a program is traced for: that of `mesh`'s devices (TPU device descriptions of
    a topology compile for a TPU on a machine without one), else the process's default backend."""
    if mesh is not None and mesh.devices.size:
        return mesh.devices.flat[0].platform
    return jax.default_backend()


def _splash_attention_local(
    q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool
) -> jax.Array:
    """Splash attention on one device's arrays: the kernel per example, vmapped over the batch."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )

    dtype = q.dtype
    q_len, heads, head_dim = q.shape[1:]
    kv_len = k.shape[1]
    (q_padded, block_q), (kv_padded, block_kv) = _splash_tiling(q_len), _splash_tiling(kv_len)
    kernel = _splash_kernel(heads, q_padded, kv_padded, block_q, block_kv, interpret)
    # The kernel works per example on (H, L, D) and does not scale the logits.
    q = q * head_dim**-0.5
    q, k, v = (jnp.swapaxes(x, 1, 2).astype(jnp.bfloat16) for x in (q, k, v))
    q = jnp.pad(q, ((0, 0), (0, 0), (0, q_padded - q_len), (0, 0)))
    k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, kv_padded - kv_len), (0, 0))) for x in (k, v))
    segment_ids = None
    if kv_padded != kv_len:
        # Padded keys get their own segment; every query (padded ones too) stays in segment 0,
        # so no softmax row is empty. Outputs of padded queries are dropped below.
        segment_ids = splash.SegmentIds(
            q=jnp.zeros((q_padded,), jnp.int32),
            kv=(jnp.arange(kv_padded) >= kv_len).astype(jnp.int32),
        )
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segment_ids))(q, k, v)
    return jnp.swapaxes(out[:, :, :q_len], 1, 2).astype(dtype)


def _splash_tiling(length: int) -> tuple[int, int]:
    """(padded length, block size) for one sequence: the largest block of `_SPLASH_BLOCKS` whose
    padding stays within `_SPLASH_MAX_PAD` of the length, else the smallest block."""
    for block in _SPLASH_BLOCKS[:-1]:
        padded = _round_up(length, block)
        if padded - length <= _SPLASH_MAX_PAD * length:
            return padded, block
    return _round_up(length, _SPLASH_BLOCKS[-1]), _SPLASH_BLOCKS[-1]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.lru_cache(maxsize=16)
def _splash_kernel(
    heads: int, q_len: int, kv_len: int, block_q: int, block_kv: int, interpret: bool
):
    """The splash kernel for unmasked attention on padded lengths, cached because building its
    block-sparsity tables walks the whole mask."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    block_sizes = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    mask = masks.MultiHeadMask([masks.FullMask((q_len, kv_len)) for _ in range(heads)])
    # The kernel holds its mask tables as arrays; built while tracing they would be tracers of
    # that trace, and the cache would leak them into the next one.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(
            mask,
            block_sizes=block_sizes,
            head_shards=1,
            q_seq_shards=1,
            interpret=interpret,
        )
