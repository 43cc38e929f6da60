"""The umT5 encoder as Wan2.1 uses it (`wan/modules/t5.py`, `umt5_xxl(encoder_only=True)`), NNX.

Pre-norm T5 blocks: RMS norm (T5's LayerNorm: no mean subtraction, no bias, fp32 statistics),
self-attention without the 1/sqrt(d) scaling and with a learned relative position bias, RMS norm,
gated tanh-GELU FFN `out(gelu(gate(x)) * linear(x))`; a final RMS norm. Unlike T5, whose layers
share layer 0's bias table, every umT5 layer has its own (`num_buckets`, `num_heads`) table.

The residual stream, norms and softmax run in fp32; the matmuls in `config.dtype` (Wan runs the
whole encoder in bf16, residual included, so a bf16 run here is at least as accurate). Padded keys
are masked out; padded queries are computed like any other position (Wan zeroes them afterwards,
see `text_encoder.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from viewpoint_jax.common import fileio
from viewpoint_jax.common.sharding import DEFAULT_RULES, LogicalRules, constrain
from viewpoint_jax.models import layers, weights


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    """Sizes (named as in transformers' UMT5Config) and execution dtypes."""

    vocab_size: int = 256384
    d_model: int = 4096
    num_heads: int = 64
    d_kv: int = 64  # head dim; num_heads * d_kv is the attention width
    d_ff: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    dtype: str = "float32"  # matmul compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"UMT5Config.{name} must be positive, got {getattr(self, name)}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError(f"num_buckets must be even and >= 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 4:
            raise ValueError(
                f"max_distance {self.max_distance} must exceed num_buckets // 4 = "
                f"{self.num_buckets // 4} (the largest exactly bucketed distance)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UMT5Config:
        return fileio.dataclass_from_dict(cls, d)

    @classmethod
    def umt5_xxl(cls, **overrides: Any) -> UMT5Config:
        """umt5-xxl as in Wan2.1 (which runs it in bf16)."""
        base = dict(dtype="bfloat16", param_dtype="bfloat16")
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> UMT5Config:
        """A small random encoder for CPU demos and tests (its width is the tiny DiT's text_dim)."""
        base = dict(vocab_size=512, d_model=32, num_heads=4, d_kv=8, d_ff=64, num_layers=2)
        return cls(**{**base, **overrides})


# ---------------------------------------------------------------------------------------------
# Pure functions.


def relative_position_buckets(
    query_length: int, key_length: int, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bidirectional relative-position buckets `(query_length, key_length)` int32.

    Half of the buckets are for keys after the query. Within a half, distances below
    `num_buckets // 4` get one bucket each, larger ones logarithmically wider buckets up to
    `max_distance`, beyond which they share the last one. Computed on the host in float32 with
    the reference's operation order, so boundary distances (16, 32, 64) land in the same bucket.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    half = num_buckets // 2
    max_exact = half // 2
    distance = np.abs(relative)
    with np.errstate(divide="ignore"):  # log(0) of the exact buckets, discarded by the `where`
        log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact)) / np.float32(
            np.log(max_distance / max_exact)
        )
    log_ratio = log_ratio * np.float32(half - max_exact)
    large = max_exact + np.where(np.isfinite(log_ratio), log_ratio, 0).astype(np.int64)
    bucket = np.where(distance < max_exact, distance, np.minimum(large, half - 1))
    return (bucket + half * (relative > 0)).astype(np.int32)


def _dtypes(config: UMT5Config) -> dict[str, Any]:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def _linear(in_dim: int, out_dim: int, axes: tuple[str, str], config: UMT5Config, rngs: nnx.Rngs):
    # Wan initialises with std in_dim^-0.5 (lecun normal); the scale only matters for random
    # encoders (tiny demo), whose activations then stay O(1) through the blocks.
    return nnx.Linear(
        in_dim,
        out_dim,
        use_bias=False,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
        rngs=rngs,
        **_dtypes(config),
    )


# ---------------------------------------------------------------------------------------------
# Modules.


class UMT5Block(nnx.Module):
    """Self-attention with its own relative position bias, then the gated-GELU FFN; pre-norm."""

    def __init__(self, config: UMT5Config, *, rngs: nnx.Rngs):
        d, inner = config.d_model, config.num_heads * config.d_kv
        param_dtype = jnp.dtype(config.param_dtype)
        self.num_heads = config.num_heads
        self.attn_norm = layers.RMSNorm(d, eps=config.eps, param_dtype=param_dtype)
        self.q = _linear(d, inner, ("embed", "heads"), config, rngs)
        self.k = _linear(d, inner, ("embed", "heads"), config, rngs)
        self.v = _linear(d, inner, ("embed", "heads"), config, rngs)
        self.o = _linear(inner, d, ("heads", "embed"), config, rngs)
        bias = jax.random.normal(rngs.params(), (config.num_buckets, config.num_heads))
        self.relative_bias = nnx.Param(
            (bias * d**-0.5).astype(param_dtype), out_sharding=(None, None)
        )
        self.ffn_norm = layers.RMSNorm(d, eps=config.eps, param_dtype=param_dtype)
        self.ffn_gate = _linear(d, config.d_ff, ("embed", "mlp"), config, rngs)
        self.ffn_linear = _linear(d, config.d_ff, ("embed", "mlp"), config, rngs)
        self.ffn_out = _linear(config.d_ff, d, ("mlp", "embed"), config, rngs)

    def __call__(
        self, x: jax.Array, key_mask: jax.Array, buckets: jax.Array, dtype: jnp.dtype
    ) -> jax.Array:
        """x (B, L, D) fp32 residual; key_mask (B, L) bool; buckets (L, L) int32."""
        b, length, _ = x.shape
        h = self.attn_norm(x).astype(dtype)
        q, k, v = (
            constrain(
                p(h).reshape(b, length, self.num_heads, -1), ("batch", "length", "act_heads", None)
            )
            for p in (self.q, self.k, self.v)
        )
        # T5 folds the 1/sqrt(d) scaling into its weights: the logits are the raw dot products.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        bias = jnp.take(self.relative_bias[...].astype(jnp.float32), buckets, axis=0)  # (L, L, H)
        logits = logits + jnp.transpose(bias, (2, 0, 1))[None]
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = constrain(out, ("batch", "length", "act_heads", None))
        x = x + self.o(out.reshape(b, length, -1)).astype(jnp.float32)

        h = self.ffn_norm(x).astype(dtype)
        h = jax.nn.gelu(self.ffn_gate(h), approximate=True) * self.ffn_linear(h)
        h = constrain(h, ("batch", "length", "act_mlp"))
        x = x + self.ffn_out(h).astype(jnp.float32)
        return constrain(x, ("batch", "length", "act_embed"))


class UMT5Encoder(nnx.Module):
    """`encoder(ids (B, L) int, mask (B, L) | None) -> (B, L, d_model)` float32 hidden states."""

    def __init__(self, config: UMT5Config, *, rngs: nnx.Rngs):
        self.config = config
        param_dtype = jnp.dtype(config.param_dtype)
        embedding = jax.random.normal(rngs.params(), (config.vocab_size, config.d_model))
        self.token_embedding = nnx.Param(
            embedding.astype(param_dtype), out_sharding=("vocab", "embed")
        )

        # All blocks stacked along a leading "layers" axis and scanned, so compile time is flat
        # in depth.
        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> UMT5Block:
            return UMT5Block(config, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = layers.RMSNorm(config.d_model, eps=config.eps, param_dtype=param_dtype)

    def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        config = self.config
        if ids.ndim != 2:
            raise ValueError(f"ids must be (batch, length), got shape {ids.shape}")
        if mask is None:
            mask = jnp.ones(ids.shape, bool)
        elif mask.shape != ids.shape:
            raise ValueError(f"mask shape {mask.shape} differs from ids shape {ids.shape}")
        length = ids.shape[1]
        buckets = jnp.asarray(
            relative_position_buckets(length, length, config.num_buckets, config.max_distance)
        )
        x = jnp.take(self.token_embedding[...], ids, axis=0).astype(jnp.float32)
        x = constrain(x, ("batch", "length", "act_embed"))
        key_mask = mask.astype(bool)
        dtype = jnp.dtype(config.dtype)

        graphdef, params = nnx.split(self.blocks)

        def body(x, block_params):
            block = nnx.merge(graphdef, block_params)
            return block(x, key_mask, buckets, dtype), None

        x, _ = jax.lax.scan(body, x, params)
        return self.final_norm(x)


def abstract_model(config: UMT5Config) -> UMT5Encoder:
    """The encoder with `jax.ShapeDtypeStruct` leaves (no memory), for shardings and restore."""
    return nnx.eval_shape(lambda: UMT5Encoder(config, rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------------------------
# Converted checkpoints: `<dir>/config.json` + `<dir>/params` (Orbax, the nnx.Param pure dict).


def read_config(path: str | os.PathLike) -> UMT5Config:
    return UMT5Config.from_dict(weights.read_checkpoint_config(path, "umT5 encoder"))


def load_umt5(
    path: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: LogicalRules = DEFAULT_RULES,
    **config_overrides: Any,
) -> UMT5Encoder:
    """The encoder of a `convert_umt5` directory, restored into `mesh` shardings if given.

    `config_overrides` change execution options (e.g. dtype="bfloat16" for bf16 matmuls).
    """
    config = dataclasses.replace(read_config(path), **config_overrides)
    return weights.restore_module(path, abstract_model(config), mesh, rules)
