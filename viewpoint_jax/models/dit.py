"""Wan2.1 video DiT in Flax NNX, extended with ViewPoint's Pano and subregion attention.

The architecture follows Wan2.1 exactly (patch embedding, text/time embeddings, 6-way modulated
blocks with RMSNorm'd q/k, 3D RoPE, affine LayerNorm before cross-attention, tanh-GELU FFN, a head
with 2-way modulation). Norms, the time embedding and the modulation run in fp32; the matmuls run
in `config.dtype`.

ViewPoint (Fang et al., 2025) alternates two kinds of blocks (`BlockKind`): PANO blocks attend over
all tokens of the map and all frames; SUBREGION blocks (the paper's "Perspective attention") split
the token grid into the four subregions of the 2x2 ViewPoint map (top-left F, top-right R,
bottom-left L, bottom-right B; docs/viewpoint-map.md) and attend within each, with
subregion-local RoPE positions. Every other part of a block (modulation, cross-attention, FFN)
acts token by token, so running the whole block on (4B, F*(H/2)*(W/2), D) with modulation and text
repeated per subregion is the same as regrouping only the self-attention's tokens; we do the latter
and skip repeating the text K/V four times.

Token order: a model with subregion blocks orders its tokens subregion-major, (subregion, frame,
row, column) with the subregions F, R, L, B (`DiTConfig.subregion_major`), so each subregion is a
contiguous quarter of the sequence: subregion attention is a free reshape (attention's `groups=4`),
and with the tokens split over the mesh's "sequence" axis (s dividing 4) each device holds whole
subregions and attends them without communication. Pano attention, RoPE (its tables reordered
alike), the FFN and the modulation do not depend on the order; the patch embedding and the head
rearrange the latent into it and back (a plain Wan, pano blocks only, keeps Wan's (frame, row,
column)). Self-attention's sequence parallelism is `DiTConfig.sequence_parallel`
(models/attention.py).

Blocks are stacked along a leading "layers" axis and scanned (in groups of the attention pattern's
period, i.e. pairs for "alternate"), so compile time is flat in depth.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from viewpoint_jax.common import fileio
from viewpoint_jax.common.sharding import DEFAULT_RULES, LogicalRules, constrain
from viewpoint_jax.models import attention as attention_lib
from viewpoint_jax.models import layers, weights
from viewpoint_jax.models import rope as rope_lib
from viewpoint_jax.models.attention import SequenceParallel

# Wan's time input: the DiT sees t = NUM_TRAIN_TIMESTEPS * sigma for noise level sigma in [0, 1]
# (the sinusoidal embedding was trained on that scale); diffusion/ reads it from here.
NUM_TRAIN_TIMESTEPS = 1000


class BlockKind(enum.StrEnum):
    """What a block's self-attention sees: the whole map (PANO) or one subregion (SUBREGION)."""

    PANO = "pano"
    SUBREGION = "subregion"


class RopeLayout(enum.StrEnum):
    """Where a token's RoPE position comes from (`DiTConfig.rope_layout`).

    GRID: Wan's 3D RoPE, (frame, row, column) of the token grid, whatever the canvas shows.
    CUBE_FACES: the paper's Table 2 "CP-4DRoPE" row as we read it: a 2 x 3 cube-face raster
    (`geometry.canvas.Representation.CUBE_2X3`) whose tokens get 4D positions (frame, face index,
    row and column within the face), so every face has the same 2D positions as a perspective
    frame of its size and the faces are told apart by a fourth axis (`cube_face_rope_tables`).
    """

    GRID = "grid"
    CUBE_FACES = "cube_faces"


class Prediction(enum.StrEnum):
    """What the head predicts; the model always returns the velocity.

    VELOCITY: the velocity e - x itself (Wan). CLEAN: the clean latent x, returned as the
    velocity it implies at the input's noise level, (x_s - x) / s: a pixel-space DiT whose
    tokens carry more values than its width (the tiny configs' space-to-depth latents) learns
    the clean image far better than the noise in it (Li & He, 2025, "Back to Basics: Let
    Denoising Generative Models Denoise"). Training and sampling code see a velocity either way.
    """

    VELOCITY = "velocity"
    CLEAN = "clean"


# The noise level below which a clean prediction's velocity is not scaled further: (x_s - x) / s
# would weigh the loss by 1 / s^2 without bound (as JiT clips it).
CLEAN_MIN_SIGMA = 0.05


class LoRATarget(enum.StrEnum):
    """The linear layers of a block a LoRA adapter can sit on (FFN: both of its layers)."""

    SELF_Q = "self_q"
    SELF_K = "self_k"
    SELF_V = "self_v"
    SELF_O = "self_o"
    CROSS_Q = "cross_q"
    CROSS_K = "cross_k"
    CROSS_V = "cross_v"
    CROSS_O = "cross_o"
    FFN = "ffn"


# "alternate": PANO, SUBREGION, PANO, ... (our reading of the paper's Pano-Perspective
# attention); or one kind for every block.
PATTERNS = ("alternate", *BlockKind)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_all_dots": jax.checkpoint_policies.dots_saveable,
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Sizes and execution options of the DiT. Field names follow the original Wan config."""

    in_dim: int = 16
    out_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # "alternate" (pano, subregion, pano, ...), "pano" (plain Wan), "subregion", or a tuple of
    # BlockKind values per block.
    attention_pattern: str | tuple[str, ...] = "alternate"
    attention_backend: str = "xla"
    # How self-attention handles tokens split over the mesh's "sequence" axis: an
    # attention_lib.SequenceParallel ("gather" | "ulysses" | "ring"; models/attention.py).
    sequence_parallel: str = "gather"
    prediction: str = "velocity"  # a Prediction
    rope_layout: str = "grid"  # a RopeLayout
    remat_policy: str = "none"
    dtype: str = "float32"
    param_dtype: str = "float32"
    # LoRA adapters (layers.LoRALinear) on the blocks' `lora_targets` (LoRATarget values) of
    # rank `lora_rank` (0: none), their update scaled by lora_alpha / lora_rank (alpha 0: the
    # rank, scale 1) times `lora_scale` (an execution option: sampling with weaker adapters).
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple[str, ...] = ("self_q", "self_k", "self_v", "self_o")
    lora_scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if isinstance(self.attention_pattern, list):
            object.__setattr__(self, "attention_pattern", tuple(self.attention_pattern))
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise ValueError(f"lora_rank {self.lora_rank} and lora_alpha must be >= 0")
        unknown = set(self.lora_targets) - set(LoRATarget)
        if unknown:
            raise ValueError(
                f"lora_targets {sorted(unknown)} not in {[t.value for t in LoRATarget]}"
            )
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(f"head dim {self.dim // self.num_heads} must be even for RoPE")
        if self.attention_backend not in attention_lib.BACKENDS:
            raise ValueError(
                f"attention_backend {self.attention_backend!r} not in {attention_lib.BACKENDS}"
            )
        if self.sequence_parallel not in tuple(SequenceParallel):
            raise ValueError(
                f"sequence_parallel {self.sequence_parallel!r} not in "
                f"{[m.value for m in SequenceParallel]}"
            )
        if (
            self.sequence_parallel == SequenceParallel.RING
            and self.attention_backend not in attention_lib.RING_BACKENDS
        ):
            raise ValueError(
                f"sequence_parallel 'ring' runs on the {attention_lib.RING_BACKENDS} attention "
                f"backends, not {self.attention_backend!r} (use 'ulysses')"
            )
        if self.prediction not in tuple(Prediction):
            raise ValueError(
                f"prediction {self.prediction!r} not in {[p.value for p in Prediction]}"
            )
        if self.rope_layout not in tuple(RopeLayout):
            raise ValueError(
                f"rope_layout {self.rope_layout!r} not in {[r.value for r in RopeLayout]}"
            )
        if self.rope_layout == RopeLayout.CUBE_FACES and BlockKind.SUBREGION in self.block_kinds:
            raise ValueError("rope_layout 'cube_faces' is for a cube raster: use pano attention")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {list(REMAT_POLICIES)}")
        _ = self.block_kinds  # validates the pattern

    def lora_for(self, target: LoRATarget) -> tuple[int, float] | None:
        """(rank, scale) of the adapter on `target`, None where there is none."""
        if not self.lora_rank or target not in self.lora_targets:
            return None
        alpha = self.lora_alpha or self.lora_rank
        return self.lora_rank, alpha / self.lora_rank * self.lora_scale

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def block_kinds(self) -> tuple[BlockKind, ...]:
        pattern = self.attention_pattern
        kinds = tuple(BlockKind)
        if pattern == "alternate":
            return tuple(kinds[i % 2] for i in range(self.num_layers))
        if pattern in kinds:
            return (BlockKind(pattern),) * self.num_layers
        if isinstance(pattern, str):
            raise ValueError(f"attention_pattern {pattern!r}: use one of {PATTERNS} or a tuple")
        if len(pattern) != self.num_layers or not set(pattern) <= set(kinds):
            raise ValueError(
                f"attention_pattern tuple must have {self.num_layers} entries from "
                f"{[k.value for k in kinds]}, got {pattern}"
            )
        return tuple(BlockKind(kind) for kind in pattern)

    @property
    def subregion_major(self) -> bool:
        """Whether tokens are ordered (subregion, frame, row, column) (module docstring): in a
        model with subregion blocks."""
        return BlockKind.SUBREGION in self.block_kinds

    @property
    def scan_group(self) -> tuple[BlockKind, ...]:
        """The shortest repeating unit of `block_kinds`; its blocks are stacked and scanned."""
        kinds = self.block_kinds
        for period in range(1, len(kinds) + 1):
            if len(kinds) % period == 0 and kinds == kinds[:period] * (len(kinds) // period):
                return kinds[:period]
        return kinds

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["lora_targets"] = list(self.lora_targets)
        if isinstance(self.attention_pattern, tuple):
            d["attention_pattern"] = list(self.attention_pattern)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        return fileio.dataclass_from_dict(cls, d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DiTConfig:
        """A named size ("tiny" | "wan_1_3b" | "wan_14b") with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; the presets are {PRESETS}")
        return getattr(cls, name)(**overrides)

    @classmethod
    def wan_1_3b(cls, **overrides: Any) -> DiTConfig:
        base = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, dtype="bfloat16")
        return cls(**{**base, **overrides})

    @classmethod
    def wan_14b(cls, **overrides: Any) -> DiTConfig:
        base = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, dtype="bfloat16")
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> DiTConfig:
        base = dict(dim=48, ffn_dim=96, num_heads=2, num_layers=2, text_dim=32, freq_dim=32)
        return cls(**{**base, **overrides})


PRESETS = ("tiny", "wan_1_3b", "wan_14b")


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Wan's timestep embedding: [cos(t w_i), sin(t w_i)], w_i = 10000^(-i / (dim/2)); fp32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def velocity_from_clean(noisy: jax.Array, clean: jax.Array, t: jax.Array) -> jax.Array:
    """The velocity `(x_s - x) / s` `(B, F, H, W, C)` float32 that a clean-latent prediction
    `clean` implies for the noisy latent `noisy` at timesteps `t` `(B,)` = 1000 s, with s at
    least CLEAN_MIN_SIGMA (exact above it: x_s - s v = x)."""
    sigma = jnp.maximum(t.astype(jnp.float32) / NUM_TRAIN_TIMESTEPS, CLEAN_MIN_SIGMA)
    sigma = sigma.reshape(-1, *(1,) * (clean.ndim - 1))
    return (noisy.astype(jnp.float32) - clean.astype(jnp.float32)) / sigma


def _token_axes(subregion_major: bool) -> tuple[str, str, str]:
    """einops axes of the latent's rows and columns and of the token order (module docstring):
    (r, c) index the 2 x 2 subregions, (h, w) a token's row and column within one."""
    if subregion_major:
        return "(r h ph)", "(c w pw)", "(r c f h w)"
    return "(h ph)", "(w pw)", "(f h w)"


def _grid_sizes(grid: tuple[int, int, int], subregion_major: bool) -> dict[str, int]:
    f, h, w = grid
    if subregion_major:
        return dict(f=f, r=2, h=h // 2, c=2, w=w // 2)
    return dict(f=f, h=h, w=w)


def patches_of(x: jax.Array, patch: tuple[int, int, int], subregion_major: bool) -> jax.Array:
    """Latent (B, F, H, W, C) -> patches (B, L, pt, ph, pw, C) in the model's token order."""
    pt, ph, pw = patch
    rows, cols, tokens = _token_axes(subregion_major)
    sizes = dict(r=2, c=2) if subregion_major else {}
    pattern = f"b (f pt) {rows} {cols} ch -> b {tokens} pt ph pw ch"
    return einops.rearrange(x, pattern, pt=pt, ph=ph, pw=pw, **sizes)


def latent_of(
    tokens: jax.Array,
    grid: tuple[int, int, int],
    patch: tuple[int, int, int],
    subregion_major: bool,
) -> jax.Array:
    """Head outputs (B, L, pt*ph*pw*C) in the model's token order -> latent (B, F, H, W, C)."""
    pt, ph, pw = patch
    rows, cols, order = _token_axes(subregion_major)
    pattern = f"b {order} (pt ph pw ch) -> b (f pt) {rows} {cols} ch"
    return einops.rearrange(
        tokens, pattern, pt=pt, ph=ph, pw=pw, **_grid_sizes(grid, subregion_major)
    )


def rope_in_token_order(
    config: DiTConfig, grid: tuple[int, int, int]
) -> dict[BlockKind, tuple[np.ndarray, np.ndarray]]:
    """cos, sin tables (L, head_dim / 2) of each block kind, rows in the model's token order:
    pano blocks the whole grid's positions, subregion blocks each subregion's own (the same
    table four times)."""
    pano_tables = (
        rope_lib.cube_face_rope_tables
        if config.rope_layout == RopeLayout.CUBE_FACES
        else rope_lib.rope_tables
    )
    tables = pano_tables(grid, config.head_dim, config.rope_theta)
    if not config.subregion_major:
        return {BlockKind.PANO: tables}
    sizes = _grid_sizes(grid, subregion_major=True)
    ropes = {
        BlockKind.PANO: tuple(
            einops.rearrange(t, "(f r h c w) n -> (r c f h w) n", **sizes) for t in tables
        )
    }
    sub_grid = (grid[0], grid[1] // 2, grid[2] // 2)
    sub_tables = rope_lib.rope_tables(sub_grid, config.head_dim, config.rope_theta)
    ropes[BlockKind.SUBREGION] = tuple(np.tile(t, (4, 1)) for t in sub_tables)
    return ropes


def _dtypes(config: DiTConfig) -> dict[str, Any]:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


class Attention(nnx.Module):
    """Wan attention: q/k/v/o projections, RMSNorm on q and k over the full width."""

    def __init__(self, config: DiTConfig, kv_dim: int, kind: str, *, rngs: nnx.Rngs):
        """`kind`: "self" or "cross", the prefix of its LoRATargets."""
        dt = _dtypes(config)
        d = config.dim
        self.num_heads = config.num_heads
        self.backend = config.attention_backend
        # Cross-attention's keys are the text's, whole on every device: only self-attention
        # splits its keys over the sequence axis.
        self.sequence_parallel = (
            config.sequence_parallel if kind == "self" else SequenceParallel.GATHER.value
        )

        def lora(name: str) -> tuple[int, float] | None:
            return config.lora_for(LoRATarget(f"{kind}_{name}"))

        self.q = layers.linear(d, d, ("embed", "heads"), **dt, rngs=rngs, lora=lora("q"))
        self.k = layers.linear(kv_dim, d, ("embed", "heads"), **dt, rngs=rngs, lora=lora("k"))
        self.v = layers.linear(kv_dim, d, ("embed", "heads"), **dt, rngs=rngs, lora=lora("v"))
        self.o = layers.linear(d, d, ("heads", "embed"), **dt, rngs=rngs, lora=lora("o"))
        self.norm_q = layers.RMSNorm(d, eps=config.eps, param_dtype=dt["param_dtype"])
        self.norm_k = layers.RMSNorm(d, eps=config.eps, param_dtype=dt["param_dtype"])

    def _heads(self, x: jax.Array) -> jax.Array:
        x = x.reshape(*x.shape[:-1], self.num_heads, -1)
        return constrain(x, attention_lib.HEADS_AXES)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        rope: tuple[jax.Array, jax.Array] | None = None,
        subregions: bool = False,
    ) -> jax.Array:
        """x (B, L, D); context (B, Lc, kv_dim) for cross-attention, else self-attention.

        `subregions` makes it subregion attention: x's tokens are subregion-major (module
        docstring) and each quarter of them attends only within itself (`rope` then holds
        subregion-local tables).
        """
        kv_input = x if context is None else context
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(kv_input)))
        v = self._heads(self.v(kv_input))
        if rope is not None:
            q, k = rope_lib.apply_rope(q, *rope), rope_lib.apply_rope(k, *rope)
        out = attention_lib.dot_product_attention(
            q,
            k,
            v,
            backend=self.backend,
            sequence_parallel=self.sequence_parallel,
            groups=4 if subregions else 1,
        )
        out = constrain(out, attention_lib.HEADS_AXES)
        return self.o(out.reshape(*out.shape[:2], -1))


class Block(nnx.Module):
    """One Wan block; the static `kind` (a BlockKind) of each call picks its self-attention.

    Keeping the kind out of the parameters makes a checkpoint independent of the attention pattern.
    """

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        dt = _dtypes(config)
        d = config.dim
        self.eps = config.eps
        self.dtype = dt["dtype"]
        self.self_attn = Attention(config, d, "self", rngs=rngs)
        self.cross_norm = layers.LayerNorm(d, eps=config.eps, param_dtype=dt["param_dtype"])
        self.cross_attn = Attention(config, d, "cross", rngs=rngs)
        ffn = dict(**dt, rngs=rngs, lora=config.lora_for(LoRATarget.FFN))
        self.ffn_in = layers.linear(d, config.ffn_dim, ("embed", "mlp"), **ffn)
        self.ffn_out = layers.linear(config.ffn_dim, d, ("mlp", "embed"), **ffn)
        init = jax.random.normal(rngs.params(), (6, d), dt["param_dtype"]) / math.sqrt(d)
        self.modulation = nnx.Param(init, out_sharding=(None, "embed"))

    def __call__(
        self,
        x: jax.Array,
        e: jax.Array,
        context: jax.Array,
        ropes: dict[BlockKind, tuple[jax.Array, jax.Array]],
        kind: BlockKind = BlockKind.PANO,
    ) -> jax.Array:
        """x (B, L, D) fp32 residual stream; e (B, 6, D) fp32 time projection; context
        (B, Lc, D) embedded text. As in Wan, the residual stream stays fp32; matmuls run in dtype.
        """
        dtype = self.dtype
        mod = self.modulation[...].astype(jnp.float32)[None] + e
        shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, i : i + 1] for i in range(6))

        h = (layers.layer_norm(x, self.eps) * (1 + scale) + shift).astype(dtype)
        with jax.named_scope(f"{kind.value}_attention"):
            subregions = kind == BlockKind.SUBREGION
            h = self.self_attn(h, rope=ropes[kind], subregions=subregions)
        x = x + h.astype(jnp.float32) * gate

        h = self.cross_attn(self.cross_norm(x).astype(dtype), context=context)
        x = x + h.astype(jnp.float32)

        h = (layers.layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(dtype)
        h = jax.nn.gelu(self.ffn_in(h), approximate=True)
        h = constrain(h, ("batch", "length", "act_mlp"))
        h = self.ffn_out(h)
        x = x + h.astype(jnp.float32) * c_gate
        return constrain(x, ("batch", "length", "act_embed"))


class WanDiT(nnx.Module):
    """Wan2.1 DiT: `model(x (B, F, H, W, C_in), t (B,), context (B, L, text_dim))` -> fp32
    (B, F, H, W, C_out). `t` are timesteps in [0, 1000]; H, W are latent sizes.
    """

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt = _dtypes(config)
        d = config.dim
        pt, ph, pw = config.patch_size
        self.patch_kernel = nnx.Param(
            nnx.initializers.lecun_normal(in_axis=(0, 1, 2, 3), out_axis=4)(
                rngs.params(), (pt, ph, pw, config.in_dim, d), dt["param_dtype"]
            ),
            out_sharding=(None, None, None, "conv_in", "embed"),
        )
        self.patch_bias = nnx.Param(jnp.zeros((d,), dt["param_dtype"]), out_sharding=("embed",))
        self.text_in = layers.linear(config.text_dim, d, ("embed", "mlp"), **dt, rngs=rngs)
        self.text_out = layers.linear(d, d, ("mlp", "embed"), **dt, rngs=rngs)
        # The time path runs in fp32, as in Wan (its modulation is the most precision-sensitive).
        f32 = dict(dtype=jnp.float32, param_dtype=dt["param_dtype"])
        self.time_in = layers.linear(config.freq_dim, d, ("embed", "mlp"), **f32, rngs=rngs)
        self.time_out = layers.linear(d, d, ("mlp", "embed"), **f32, rngs=rngs)
        self.time_projection = layers.linear(d, 6 * d, ("embed", "mlp"), **f32, rngs=rngs)

        # All blocks stacked along a leading "layers" axis; `_run_blocks` scans over them.
        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(config, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.head = layers.linear(
            d, pt * ph * pw * config.out_dim, ("embed", None), **dt, rngs=rngs
        )
        head_init = jax.random.normal(rngs.params(), (2, d), dt["param_dtype"]) / math.sqrt(d)
        self.head_modulation = nnx.Param(head_init, out_sharding=(None, "embed"))

    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
        config = self.config
        dtype = jnp.dtype(config.dtype)
        b, frames, height, width, _ = x.shape
        pt, ph, pw = config.patch_size
        grid = (frames // pt, height // ph, width // pw)
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent {x.shape[1:4]} is not divisible by patch {config.patch_size}")
        if config.subregion_major and (grid[1] % 2 or grid[2] % 2):
            raise ValueError(
                f"subregion blocks need an even token grid, got {grid[1:]} from latent "
                f"{x.shape[2:4]} (height and width must be multiples of {2 * ph}, {2 * pw})"
            )

        patches = patches_of(x.astype(dtype), config.patch_size, config.subregion_major)
        tokens = jnp.einsum("blijkc,ijkcd->bld", patches, self.patch_kernel[...].astype(dtype))
        tokens = (tokens + self.patch_bias[...].astype(dtype)).astype(jnp.float32)
        tokens = constrain(tokens, ("batch", "length", "act_embed"))

        temb = self.time_out(jax.nn.silu(self.time_in(sinusoidal_embedding(t, config.freq_dim))))
        e = self.time_projection(jax.nn.silu(temb)).reshape(b, 6, config.dim)
        ctx = self.text_out(jax.nn.gelu(self.text_in(context.astype(dtype)), approximate=True))
        ctx = constrain(ctx, ("batch", None, "act_embed"))

        ropes = {
            kind: (jnp.asarray(cos), jnp.asarray(sin))
            for kind, (cos, sin) in rope_in_token_order(config, grid).items()
        }
        tokens = self._run_blocks(tokens, e, ctx, ropes)

        mod = self.head_modulation[...].astype(jnp.float32)[None] + temb[:, None]
        shift, scale = mod[:, :1], mod[:, 1:]
        h = (layers.layer_norm(tokens, config.eps) * (1 + scale) + shift).astype(dtype)
        out = latent_of(self.head(h), grid, config.patch_size, config.subregion_major)
        out = out.astype(jnp.float32)  # as Wan: the velocity leaves the model in fp32
        if config.prediction == Prediction.CLEAN:
            out = velocity_from_clean(x[..., : config.out_dim], out, t)
        return out

    def _run_blocks(self, tokens, e, ctx, ropes):
        """Scans over groups of blocks, one period of the attention pattern per step."""
        group = self.config.scan_group
        graphdef, params = nnx.split(self.blocks, nnx.Param)
        grouped = jax.tree.map(lambda p: p.reshape(-1, len(group), *p.shape[1:]), params)

        def body(x, group_params):
            for j, kind in enumerate(group):
                block = nnx.merge(graphdef, jax.tree.map(lambda p, j=j: p[j], group_params))
                x = block(x, e, ctx, ropes, kind)
            return x, None

        if self.config.remat_policy != "none":
            policy = REMAT_POLICIES[self.config.remat_policy]
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        tokens, _ = jax.lax.scan(body, tokens, grouped)
        return tokens


def count_params(model_or_state: Any) -> int:
    """Number of parameter scalars of a module or state (abstract or concrete)."""
    state = model_or_state
    if isinstance(model_or_state, nnx.Module):
        state = nnx.state(model_or_state, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def abstract_model(config: DiTConfig) -> WanDiT:
    """The model with `jax.ShapeDtypeStruct` leaves (no memory), e.g. for shardings and restore."""
    return nnx.eval_shape(lambda: WanDiT(config, rngs=nnx.Rngs(0)))


def read_config(path: str | os.PathLike) -> DiTConfig:
    return DiTConfig.from_dict(weights.read_checkpoint_config(path, "Wan DiT"))


def load_dit(
    path: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: LogicalRules = DEFAULT_RULES,
    **config_overrides: Any,
) -> WanDiT:
    """A ready model from a converted checkpoint directory, restored into `mesh` shardings if given.

    `config_overrides` change execution options (attention_backend, remat_policy, dtype, ...).
    """
    config = dataclasses.replace(read_config(path), **config_overrides)
    return weights.restore_module(path, abstract_model(config), mesh, rules)


def save_dit(
    path: str | os.PathLike,
    model: WanDiT,
    *,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `model` as a converted checkpoint directory, atomically: `config.json` + Orbax
    `params/`, the layout `convert.dit.convert_dit` writes for a Wan DiT, so `load_dit` and
    `load_pretrained_params` (config.model.init_checkpoint) read it as they read converted Wan
    weights. `extra_files`: file name -> text written beside them. Returns the directory."""
    with fileio.atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        weights.save_state(tmp, nnx.state(model, nnx.Param))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path).absolute()


def inflate_patch_kernel(kernel: jax.Array, in_dim: int) -> jax.Array:
    """(pt, ph, pw, C_old, D) -> (pt, ph, pw, in_dim, D): old input channels kept, new ones zero.

    A text-to-video Wan checkpoint takes the 16 noisy-latent channels; ViewPoint appends the
    condition latent and mask. Zero weights on them make the inflated model compute exactly what
    the pretrained one did until training teaches it to use the condition.
    """
    old = kernel.shape[3]
    if in_dim < old:
        raise ValueError(f"cannot inflate a patch embedding of {old} channels to {in_dim}")
    pad = [(0, 0)] * kernel.ndim
    pad[3] = (0, in_dim - old)
    return jnp.pad(kernel, pad)


def load_pretrained_params(
    path: str | os.PathLike,
    model_config: DiTConfig,
    shardings: Any | None = None,
    *,
    cast: Callable[[nnx.State], nnx.State] | None = None,
) -> nnx.State:
    """Params of a converted Wan DiT, inflated to `model_config.in_dim` input channels.

    The checkpoint's sizes must match the model's except for in_dim (fewer channels are inflated
    with zeros, see `inflate_patch_kernel`); a mismatch names the field. `cast` maps the abstract
    params to the dtypes to read them in (a LoRA run's frozen base, `lora.base_dtypes`).
    """
    source = read_config(path)
    fields = ("dim", "ffn_dim", "num_heads", "num_layers", "out_dim", "text_dim", "patch_size")
    for field in (*fields, "prediction"):
        if getattr(source, field) != getattr(model_config, field):
            raise ValueError(
                f"config.model.init_checkpoint {path}: {field} is {getattr(source, field)} in the "
                f"checkpoint but {getattr(model_config, field)} in the config"
            )
    source_config = dataclasses.replace(model_config, in_dim=source.in_dim)
    _, abstract = nnx.split(abstract_model(source_config), nnx.Param)
    abstract = abstract if cast is None else cast(abstract)
    # Shardings do not depend on the channel count of the patch embedding: reuse the model's.
    params = weights.restore_state(path, abstract, shardings)
    kernel = params["patch_kernel"]
    inflated = inflate_patch_kernel(kernel[...], model_config.in_dim)
    if shardings is not None:
        inflated = jax.device_put(inflated, shardings["patch_kernel"].get_value())
    kernel.set_value(inflated)
    return params
