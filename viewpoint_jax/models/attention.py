"""Multi-head dot-product attention with interchangeable backends.

All backends take q (B, Lq, H, D), k and v (B, Lk, H, D) and return (B, Lq, H, D) in q's dtype.
- "xla": the reference: einsums with fp32 logits and softmax; runs anywhere.
- "cudnn": cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`), bf16.
- "splash": Pallas splash attention on TPU (bf16); raises a clear error on other platforms.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

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


def _splash_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    if jax.default_backend() != "tpu":
        raise ValueError(
            "attention_backend='splash' is a Pallas TPU kernel; "
            f"this process runs on {jax.default_backend()!r} (use 'xla' or 'cudnn')"
        )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    dtype = q.dtype
    heads, q_len, kv_len = q.shape[2], q.shape[1], k.shape[1]
    kernel = _splash_kernel(splash, masks, heads, q_len, kv_len)
    scale = q.shape[-1] ** -0.5
    # The kernel works per example on (H, L, D) and does not scale the logits.
    q, k, v = (jnp.swapaxes(x, 1, 2).astype(jnp.bfloat16) for x in ((q * scale), k, v))
    out = jax.vmap(kernel)(q, k, v)
    return jnp.swapaxes(out, 1, 2).astype(dtype)


@functools.lru_cache(maxsize=16)
def _splash_kernel(splash, masks, heads: int, q_len: int, kv_len: int):
    mask = masks.MultiHeadMask([masks.FullMask((q_len, kv_len)) for _ in range(heads)])
    return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
