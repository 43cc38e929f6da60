"""Small building blocks shared by the models: normalisation in fp32, annotated linear layers."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis without affine parameters, computed in fp32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis with a learned scale; fp32 statistics, output in input dtype."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, axis_name: str = "norm"):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """Affine LayerNorm computed in fp32 (output fp32; callers cast)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.eps) * self.scale[...].astype(jnp.float32) + self.bias[
            ...
        ].astype(jnp.float32)


def linear(
    in_dim: int,
    out_dim: int,
    axes: Sequence[str | None],
    *,
    dtype: jnp.dtype,
    param_dtype: jnp.dtype,
    rngs: nnx.Rngs,
    lora: tuple[int, float] | None = None,
) -> nnx.Linear:
    """nnx.Linear whose kernel carries logical axes `axes` (in, out) and bias `axes[1]`;
    `lora` (rank, scale): a `LoRALinear` with that adapter."""
    kwargs = dict(
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), tuple(axes)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )
    if lora is None:
        return nnx.Linear(in_dim, out_dim, **kwargs)
    rank, scale = lora
    return LoRALinear(in_dim, out_dim, axes, rank=rank, scale=scale, **kwargs)


class LoRALinear(nnx.Linear):
    """nnx.Linear plus a low-rank update: y = x W + b + scale * (x A) B.

    A `(in, rank)` and B `(rank, out)` are `nnx.LoRAParam`s (a kind of nnx.Param, so the model's
    Param filters see them; the trainer tells them apart) carrying the kernel's logical axes on
    their outer dimension, so the sharding rules shard them as the kernel. B starts at zero:
    a fresh adapter adds exactly 0 and the layer computes what the base layer did. The kernel
    and bias keep nnx.Linear's names, so a base checkpoint's tree is this layer's without A, B.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        axes: Sequence[str | None],
        *,
        rank: int,
        scale: float,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        super().__init__(in_dim, out_dim, rngs=rngs, **kwargs)
        param_dtype = kwargs["param_dtype"]
        a_init = nnx.initializers.he_uniform()(rngs.params(), (in_dim, rank), param_dtype)
        self.lora_a = nnx.LoRAParam(a_init, out_sharding=(axes[0], None))
        self.lora_b = nnx.LoRAParam(
            jnp.zeros((rank, out_dim), param_dtype), out_sharding=(None, axes[1])
        )
        self.lora_scale = scale

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        dtype = y.dtype
        a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
        return y + (x.astype(dtype) @ a @ b) * jnp.asarray(self.lora_scale, dtype)
