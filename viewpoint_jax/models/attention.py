"""Multi-head dot-product attention with interchangeable backends.

All backends take q (B, Lq, H, D), k and v (B, Lk, H, D) and return (B, Lq, H, D) in q's dtype.
- "xla": the reference: einsums with fp32 logits and softmax; runs anywhere.
- "cudnn": cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`), bf16.
- "splash": Pallas splash attention on TPU (bf16); raises a clear error on other platforms. The
  platform is the mesh's (`sharding.use_mesh`), else the process's: a mesh of TPU device
  descriptions (`jax.experimental.topologies`) compiles it for a TPU from a CPU-only process
  (`studies/tpu_compile.py`), and such a program can be compiled, never run. Any
  sequence length: lengths are padded to the kernel's tiles and the padded keys masked. Tests run
  the same kernel in the Pallas interpreter on CPU (`_splash_attention(..., interpret=True)`).
  XLA cannot partition a Pallas kernel, so inside `sharding.use_mesh` it runs under `shard_map`:
  examples split over the "batch" mesh axes, heads over "act_heads", queries over "length";
  keys and values are whole on every device (XLA gathers them if they are sequence-sharded).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from viewpoint_jax.common import sharding

BACKENDS = ("xla", "cudnn", "splash")


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, backend: str = "xla"
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v per head, no mask. Shapes: see the module docstring."""
    if backend == "xla":
        return _xla_attention(q, k, v)
    if backend == "cudnn":
        return _cudnn_attention(q, k, v)
    if backend == "splash":
        return _splash_attention(q, k, v)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


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


# Logical axes of the splash kernel's operands under a mesh, as `dit.Attention` constrains them.
_SPLASH_Q_AXES = ("batch", "length", "act_heads", None)
_SPLASH_KV_AXES = ("batch", None, "act_heads", None)  # Every query shard needs all the keys.


def _splash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False
) -> jax.Array:
    """Splash attention, under `shard_map` inside `sharding.use_mesh`. `interpret=True` runs the
    Pallas kernel in the interpreter on any platform (for tests on CPU); the public entry point
    never sets it."""
    context = sharding.current_context()
    platform = target_platform(context[0] if context else None)
    if not interpret and platform != "tpu":
        raise ValueError(
            "attention_backend='splash' is a Pallas TPU kernel; "
            f"this process runs on {platform!r} (use 'xla' or 'cudnn')"
        )
    attend = functools.partial(_splash_attention_local, interpret=interpret)
    if context is None:
        return attend(q, k, v)
    mesh, rules = context
    # Mesh axes that do not divide a dimension are dropped, as `sharding.constrain` does, so the
    # specs match the activations' constraints (and, e.g., a batch of 1 is simply replicated).
    q_spec = sharding.named_sharding(mesh, _SPLASH_Q_AXES, q.shape, rules).spec
    kv_spec = sharding.named_sharding(mesh, _SPLASH_KV_AXES, k.shape, rules).spec
    # check_vma=False: the kernel's pallas_call and custom VJP carry no varying-axes types.
    return jax.shard_map(
        attend, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False
    )(q, k, v)


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
