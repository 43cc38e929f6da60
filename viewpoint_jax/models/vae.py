"""Wan2.1's causal 3D video VAE in Flax NNX, channels last.

A video of 1 + 4k frames (B, F, H, W, 3) in [-1, 1] maps to 1 + k latent frames
(B, 1 + k, H/8, W/8, 16): the first frame is encoded on its own, every later latent frame from 4
frames. All temporal convolutions are causal (zero padding in the past only), so a video can be
processed chunk by chunk with a carried cache of the last frames each layer saw:

* every causal conv with a temporal kernel of 3 keeps the last 2 frames of its input;
* the temporal downsampler (kernel 3, stride 2, first frame passed through) keeps the last frame;
* the temporal upsampler (causal conv to 2x channels, then interleaved into 2 frames; the first
  frame passed through) keeps the last 2 frames of its input after the first frame.

Each layer is `layer(x, cache) -> (y, new_cache)`. `cache=None` means "start of the video": a
zero-filled past, and the first-frame special cases of the resamplers. Calling the network once
on the whole video with `cache=None` is the whole-video result; calling it on the first frame and
then on chunks (4 frames to encode, 1 latent frame to decode) with the carried cache gives the same
result, as Wan's reference does. The chunk loop is a `jax.lax.scan` over a cache of fixed shape, so
the compiled program does not grow with the video length.

Only the Wan2.1 layout is implemented (`is_residual=False`, no attention outside the middle
blocks); the Wan2.2 VAE (residual up/down blocks, patchified input) is refused by the converter.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from viewpoint_jax.common import fileio
from viewpoint_jax.models import weights
from viewpoint_jax.models.tiling import tiled_apply

log = logging.getLogger(__name__)


Array = jax.Array


Cache = Any  # a pytree of arrays (None at the start of a video)


# Wan2.1's published per-channel statistics of the latents (also diffusers' config defaults).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip


WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Sizes of the Wan2.1 VAE (defaults: the released Wan2.1_VAE.pth).

    Attributes:
      base_dim: channels of the first (full-resolution) stage.
      z_dim: latent channels.
      dim_mult: channel multiplier per stage; len(dim_mult) - 1 spatial 2x resamplings.
      num_res_blocks: residual blocks per encoder stage (decoder stages have one more).
      temporal_downsample: per resampling stage, whether it also halves time (encoder order;
        the decoder mirrors it).
      latents_mean, latents_std: per-channel normalisation of the latents.
      dtype: compute dtype ("float32" | "bfloat16"); norms and attention softmax stay float32.
      param_dtype: parameter dtype.
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs {len(self.dim_mult) - 1} entries (one per resampling "
                f"stage of dim_mult={self.dim_mult}), got {self.temporal_downsample}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim={self.z_dim} values each")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    def to_dict(self) -> dict[str, Any]:
        items = dataclasses.asdict(self).items()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in items}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WanVAEConfig:
        return fileio.dataclass_from_dict(cls, d)


def _init(rngs: nnx.Rngs, shape: Sequence[int], fan_in: int, dtype) -> Array:
    return jax.random.normal(rngs.params(), shape, dtype) / math.sqrt(fan_in)


_WIDE_CHANNELS = 32  # see `_conv`


# XLA:CPU (jaxlib 0.10) hands 2D convolutions, dots and reductions to YNNPACK by default. On the
# AVX2 CPU this was measured on (2-core AMD EPYC), XLA's Eigen convolution runs the VAE's 3x3
# convs 1.1-1.5x faster than YNNPACK's and on par with torch's oneDNN Conv3d (tools/bench_vae.py,
# per-conv table), so this list keeps YNNPACK for dots and reductions only.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    ),
}


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """XLA options for jitting the VAE: `jax.jit(fn, compiler_options=vae.compiler_options())`.

    On CPU they route the convolutions to XLA's Eigen kernels instead of YNNPACK (see
    `_CPU_COMPILER_OPTIONS`); elsewhere, or with an XLA that does not know the option, they are
    empty. They apply to that one compilation only, never to the process (no XLA_FLAGS), so the
    rest of a program keeps XLA's defaults. Numerics are unchanged up to the order of float sums.

    Args:
      backend: the platform the function is compiled for; default `jax.default_backend()`.
    """
    backend = backend or jax.default_backend()
    return dict(_CPU_COMPILER_OPTIONS) if backend == "cpu" and _cpu_options_supported() else {}


@functools.cache
def _cpu_options_supported() -> bool:
    # The option is experimental: a jaxlib that renamed or dropped it must not break the VAE.
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(
            jnp.zeros((), jnp.float32)
        ).compile()
    except Exception as error:  # XLA reports an unknown option as a generic runtime error
        log.warning("XLA CPU option not available, VAE convs use XLA's defaults: %s", error)
        return False
    return True


def _conv_frames(x: Array, kernel: Array, stride=(1, 1), padding="VALID") -> Array:
    """The same 2D conv on every frame: x (B, F, H, W, Cin), kernel (kh, kw, Cin, Cout)."""
    b, f = x.shape[:2]
    y = jax.lax.conv_general_dilated(
        x.reshape(b * f, *x.shape[2:]),
        kernel.astype(x.dtype),
        window_strides=stride,
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(b, f, *y.shape[1:])


def _conv(x: Array, kernel: Array, bias: Array, stride=(1, 1, 1), padding="VALID") -> Array:
    """Valid in time: x (B, F, H, W, Cin), kernel (kt, kh, kw, Cin, Cout), padding in space only.

    Written with 2D convs (frames folded into the batch), exact up to the order of the float
    sums: XLA's CPU 3D convolution is ~2x slower than its 2D one on the same work. Thin inputs
    (the RGB `conv_in`) stack the kt shifted frame sets along channels for one conv with kernel
    (kh, kw, kt * Cin, Cout), which keeps the matrix products wide; wide inputs sum kt 2D convs,
    which needs no kt-fold copy of the input (stacking them measured 0.7-0.9x as fast, and
    im2col + dot or Winograd F(2x2, 3x3) + batched dots slower still on CPU: their copies and
    transforms are memory bound).
    """
    kt, kh, kw, cin, cout = kernel.shape
    st = stride[0]
    frames = (x.shape[1] - kt) // st + 1
    span = st * (frames - 1) + 1
    shifted = [x[:, t : t + span : st] for t in range(kt)]
    if kt > 1 and cin < _WIDE_CHANNELS:
        stacked_kernel = jnp.moveaxis(kernel, 0, 2).reshape(kh, kw, kt * cin, cout)
        y = _conv_frames(jnp.concatenate(shifted, axis=-1), stacked_kernel, stride[1:], padding)
    else:
        y = sum(_conv_frames(s, kernel[t], stride[1:], padding) for t, s in enumerate(shifted))
    return y + bias.astype(x.dtype)


class CausalConv3d(nnx.Module):
    """3D conv, zero 'same' padding in space, causal in time (the past comes from the cache)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: Sequence[int], *, stride=(1, 1, 1),
                 dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        kt, kh, kw = kernel
        self.kernel = nnx.Param(_init(rngs, (kt, kh, kw, in_dim, out_dim), kt * kh * kw * in_dim,
                                      dtype))  # fmt: skip
        self.bias = nnx.Param(jnp.zeros((out_dim,), dtype))
        self.stride = tuple(stride)

    @property
    def history(self) -> int:
        return self.kernel.shape[0] - 1

    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        kh, kw = self.kernel.shape[1:3]
        padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
        if self.history == 0:
            return _conv(x, self.kernel[...], self.bias[...], self.stride, padding), None
        if cache is None:
            cache = jnp.zeros((x.shape[0], self.history, *x.shape[2:]), x.dtype)
        x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        y = _conv(x, self.kernel[...], self.bias[...], self.stride, padding)
        return y, x[:, -self.history :]


class Conv2d(nnx.Module):
    """Per-frame 2D conv; kernel (kh, kw, Cin, Cout)."""

    def __init__(self, in_dim: int, out_dim: int, size: int, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):  # fmt: skip
        self.kernel = nnx.Param(_init(rngs, (size, size, in_dim, out_dim), size * size * in_dim,
                                      dtype))  # fmt: skip
        self.bias = nnx.Param(jnp.zeros((out_dim,), dtype))

    def __call__(self, x: Array, *, stride: int = 1, padding: Any = "SAME") -> Array:
        y = _conv_frames(x, self.kernel[...], (stride, stride), padding)
        return y + self.bias[...].astype(x.dtype)


class RMSNorm(nnx.Module):
    """x / ||x|| * sqrt(C) * scale over channels (torch F.normalize, eps 1e-12), in float32."""

    def __init__(self, dim: int, *, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), dtype))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, 1e-12) * math.sqrt(x.shape[-1])
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class ResidualBlock(nnx.Module):
    def __init__(self, in_dim: int, out_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(in_dim, dtype=dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, (3, 3, 3), dtype=dtype, rngs=rngs)
        self.norm2 = RMSNorm(out_dim, dtype=dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, (3, 3, 3), dtype=dtype, rngs=rngs)
        self.shortcut = (
            CausalConv3d(in_dim, out_dim, (1, 1, 1), dtype=dtype, rngs=rngs)
            if in_dim != out_dim
            else None
        )

    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        c1, c2 = cache if cache is not None else (None, None)
        skip = x if self.shortcut is None else self.shortcut(x)[0]
        h, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1)
        h, c2 = self.conv2(jax.nn.silu(self.norm2(h)), c2)
        return h + skip, (c1, c2)


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim, dtype=dtype)
        self.to_qkv = Conv2d(dim, 3 * dim, 1, dtype=dtype, rngs=rngs)
        self.proj = Conv2d(dim, dim, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        b, f, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * f, h * w, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("nqc,nkc->nqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(v.dtype)
        out = jnp.einsum("nqk,nkc->nqc", weights, v).reshape(b, f, h, w, c)
        return x + self.proj(out), cache


def _upsample_nearest_2x(x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


class Resample(nnx.Module):
    """Spatial 2x down/up-sampling, optionally with 2x in time.

    mode: "downsample2d" | "downsample3d" | "upsample2d" | "upsample3d". Upsamplers halve the
    channels (Wan2.1), downsamplers keep them.
    """

    def __init__(self, dim: int, mode: str, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.mode = mode
        if mode.startswith("down"):
            self.resample = Conv2d(dim, dim, 3, dtype=dtype, rngs=rngs)
        elif mode.startswith("up"):
            self.resample = Conv2d(dim, dim // 2, 3, dtype=dtype, rngs=rngs)
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        time_conv = None
        if mode == "downsample3d":
            time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), dtype=dtype, rngs=rngs)
        elif mode == "upsample3d":
            time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), dtype=dtype, rngs=rngs)
        self.time_conv = nnx.data(time_conv)

    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        if self.mode.startswith("up"):
            if self.mode == "upsample3d":
                x, cache = self._upsample_time(x, cache)
            return self.resample(_upsample_nearest_2x(x), padding="SAME"), cache
        # Wan pads one zero row/column at the bottom/right, then a valid stride-2 conv.
        x = self.resample(x, stride=2, padding=((0, 1), (0, 1)))
        if self.mode == "downsample3d":
            x, cache = self._downsample_time(x, cache)
        return x, cache

    def _downsample_time(self, x: Array, cache: Cache) -> tuple[Array, Cache]:
        # Frames (first, then pairs): the first frame passes through; frame k >= 1 of the output
        # is the stride-2 conv over input frames (2k-2, 2k-1, 2k). The cache is the last frame.
        new_cache = x[:, -1:]
        if cache is None:
            first, past = x[:, :1], x
            if x.shape[1] < 3:
                return first, new_cache
            return jnp.concatenate([first, self._time_conv_valid(past)], axis=1), new_cache
        return self._time_conv_valid(jnp.concatenate([cache.astype(x.dtype), x], 1)), new_cache

    def _time_conv_valid(self, x: Array) -> Array:
        tc = self.time_conv
        return _conv(x, tc.kernel[...], tc.bias[...], tc.stride, "VALID")

    def _upsample_time(self, x: Array, cache: Cache) -> tuple[Array, Cache]:
        # The first frame passes through; every later frame becomes two frames from a causal conv
        # to 2C channels over the frames after the first (zero past), halves interleaved in time.
        b, _, h, w, c = x.shape
        if cache is None:
            first, rest = x[:, :1], x[:, 1:]
            zeros = jnp.zeros((b, 2, h, w, c), x.dtype)
            if rest.shape[1] == 0:
                return first, zeros
            y, cache = self.time_conv(rest, zeros)
            return jnp.concatenate([first, self._interleave(y)], axis=1), cache
        y, cache = self.time_conv(x, cache)
        return self._interleave(y), cache

    @staticmethod
    def _interleave(y: Array) -> Array:
        b, f, h, w, c2 = y.shape
        y = y.reshape(b, f, h, w, 2, c2 // 2)
        return jnp.moveaxis(y, 4, 2).reshape(b, 2 * f, h, w, c2 // 2)


def _run(layers: Sequence[Callable], x: Array, cache: Cache) -> tuple[Array, list]:
    caches = [None] * len(layers) if cache is None else cache
    new = []
    for layer, c in zip(layers, caches):
        x, c = layer(x, c)
        new.append(c)
    return x, new


class MidBlock(nnx.Module):
    def __init__(self, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(dim, dim, dtype=dtype, rngs=rngs) for _ in range(2)])
        self.attention = AttentionBlock(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        c0, c1 = cache if cache is not None else (None, None)
        x, c0 = self.resnets[0](x, c0)
        x, _ = self.attention(x)
        x, c1 = self.resnets[1](x, c1)
        return x, (c0, c1)


class Encoder(nnx.Module):
    """(B, F, H, W, 3) -> (B, F', H/8, W/8, out_dim)."""

    def __init__(self, cfg: WanVAEConfig, out_dim: int, *, dtype, rngs: nnx.Rngs):
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(3, dims[0], (3, 3, 3), dtype=dtype, rngs=rngs)
        blocks = []
        for i, (in_dim, out_dim_i) in enumerate(itertools.pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim_i, dtype=dtype, rngs=rngs))
                in_dim = out_dim_i
            if i < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                blocks.append(Resample(out_dim_i, mode, dtype=dtype, rngs=rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid = MidBlock(dims[-1], dtype=dtype, rngs=rngs)
        self.norm_out = RMSNorm(dims[-1], dtype=dtype)
        self.conv_out = CausalConv3d(dims[-1], out_dim, (3, 3, 3), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        c_in, c_down, c_mid, c_out = cache if cache is not None else (None,) * 4
        x, c_in = self.conv_in(x, c_in)
        x, c_down = _run(self.down_blocks, x, c_down)
        x, c_mid = self.mid(x, c_mid)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, c_down, c_mid, c_out)


class Decoder(nnx.Module):
    """(B, T, h, w, z_dim) -> (B, T', 8h, 8w, 3)."""

    def __init__(self, cfg: WanVAEConfig, *, dtype, rngs: nnx.Rngs):
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), dtype=dtype, rngs=rngs)
        self.mid = MidBlock(dims[0], dtype=dtype, rngs=rngs)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            if i > 0:
                in_dim //= 2  # the previous upsampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, dtype=dtype, rngs=rngs))
                in_dim = out_dim
            if i < len(mult) - 1:
                mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
                blocks.append(Resample(out_dim, mode, dtype=dtype, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], dtype=dtype)
        self.conv_out = CausalConv3d(dims[-1], 3, (3, 3, 3), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        c_in, c_mid, c_up, c_out = cache if cache is not None else (None,) * 4
        x, c_in = self.conv_in(x, c_in)
        x, c_mid = self.mid(x, c_mid)
        x, c_up = _run(self.up_blocks, x, c_up)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
        return x, (c_in, c_mid, c_up, c_out)


class WanVAE(nnx.Module):
    """Wan2.1 VAE. `encode` -> normalised latents, `decode` -> video in [-1, 1].

    Follows the autoencoder protocol of `viewpoint_jax.models.autoencoder`. On CPU, jit its
    methods with `compiler_options=compiler_options()` for faster convolutions (the callers in
    this package do, through `autoencoder.compiler_options(vae)`).
    """

    def compiler_options(self) -> dict[str, str]:
        """XLA options for jitting `encode` / `decode` (see the module function)."""
        return compiler_options()

    def __init__(self, config: WanVAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.param_dtype)
        self.encoder = Encoder(config, 2 * config.z_dim, dtype=dtype, rngs=rngs)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, (1, 1, 1),
                                       dtype=dtype, rngs=rngs)  # fmt: skip
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, (1, 1, 1), dtype=dtype,
                                            rngs=rngs)  # fmt: skip
        self.decoder = Decoder(config, dtype=dtype, rngs=rngs)

    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    @property
    def _compute_dtype(self):
        return jnp.dtype(self.config.dtype)

    def _check_video(self, video: Array) -> None:
        tf, sf = self.temporal_factor, self.spatial_factor
        if video.ndim != 5:
            raise ValueError(f"video must be (B, F, H, W, 3), got shape {tuple(video.shape)}")
        _, f, h, w, c = video.shape
        if c != 3:
            raise ValueError(f"video must have 3 (RGB) channels last, got {c}: shape {video.shape}")
        if (f - 1) % tf:
            raise ValueError(
                f"the Wan VAE encodes 1 + {tf}k frames (1, 5, 9, ..., 49, ...), got {f} frames"
            )
        if h % sf or w % sf:
            raise ValueError(f"frame size {h}x{w} must be a multiple of {sf}")

    def _check_latents(self, latents: Array) -> None:
        if latents.ndim != 5 or latents.shape[-1] != self.config.z_dim:
            raise ValueError(
                f"latents must be (B, T, h, w, {self.config.z_dim}), got shape {latents.shape}"
            )

    def encode_moments(self, video: Array, *, chunked: bool = True) -> tuple[Array, Array]:
        """(B, 1+4k, H, W, 3) -> posterior mean and log-variance (B, 1+k, H/8, W/8, z), raw."""
        self._check_video(video)
        x = video.astype(self._compute_dtype)
        if chunked:
            tf = self.temporal_factor
            head, cache = self.encoder(x[:, :1])
            rest = x[:, 1:]
            if rest.shape[1]:
                b, f, h, w, c = rest.shape
                chunks = jnp.moveaxis(rest.reshape(b, f // tf, tf, h, w, c), 1, 0)
                graphdef, state = nnx.split(self.encoder)

                def step(cache, chunk):
                    y, cache = nnx.merge(graphdef, state)(chunk, cache)
                    return cache, y

                _, ys = jax.lax.scan(step, cache, chunks)  # (k, B, 1, h, w, 2z)
                tail = jnp.moveaxis(ys, 0, 1).reshape(b, -1, *ys.shape[3:])
                head = jnp.concatenate([head, tail], axis=1)
        else:
            head, _ = self.encoder(x)
        moments, _ = self.quant_conv(head)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, logvar

    def normalize(self, latents: Array) -> Array:
        mean = jnp.asarray(self.config.latents_mean, jnp.float32)
        std = jnp.asarray(self.config.latents_std, jnp.float32)
        return (latents - mean) / std

    def denormalize(self, latents: Array) -> Array:
        mean = jnp.asarray(self.config.latents_mean, jnp.float32)
        std = jnp.asarray(self.config.latents_std, jnp.float32)
        return latents * std + mean

    def encode(self, video: Array, *, chunked: bool = True, tile: int | None = None,
               tile_overlap: int = 8) -> Array:  # fmt: skip
        """Video (B, 1+4k, H, W, 3) in [-1, 1] -> normalised latents (B, 1+k, H/8, W/8, z).

        The posterior mean, normalised with the per-channel latents_mean/std. `tile` (latent
        pixels, e.g. 32 = 256 video pixels) encodes overlapping spatial tiles of that size,
        blended over `tile_overlap` latent pixels.
        """
        self._check_video(video)
        if tile is None:
            return self.normalize(self.encode_moments(video, chunked=chunked)[0])
        sf = self.spatial_factor

        def encode_tile(v):
            return self.normalize(self.encode_moments(v, chunked=chunked)[0])

        return tiled_apply(encode_tile, video, tile=tile, overlap=tile_overlap, in_factor=sf,
                           out_factor=1)  # fmt: skip

    def decode(self, latents: Array, *, chunked: bool = True, tile: int | None = None,
               tile_overlap: int = 8) -> Array:  # fmt: skip
        """Normalised latents (B, 1+k, h, w, z) -> video (B, 1+4k, 8h, 8w, 3) in [-1, 1].

        `tile` (latent pixels, e.g. 32) decodes overlapping spatial tiles of that size, blended
        over `tile_overlap` latent pixels; peak memory then scales with the tile, not the frame.
        """
        self._check_latents(latents)
        if tile is None:
            return self._decode(latents, chunked)
        return tiled_apply(lambda z: self._decode(z, chunked), latents, tile=tile,
                           overlap=tile_overlap, in_factor=1,
                           out_factor=self.spatial_factor)  # fmt: skip

    def _decode(self, latents: Array, chunked: bool) -> Array:
        z = self.denormalize(latents.astype(jnp.float32)).astype(self._compute_dtype)
        z, _ = self.post_quant_conv(z)
        if chunked:
            out, cache = self.decoder(z[:, :1])
            if z.shape[1] > 1:
                graphdef, state = nnx.split(self.decoder)

                def step(cache, frame):
                    y, cache = nnx.merge(graphdef, state)(frame[:, None], cache)
                    return cache, y

                _, ys = jax.lax.scan(step, cache, jnp.moveaxis(z[:, 1:], 1, 0))
                b = z.shape[0]
                tail = jnp.moveaxis(ys, 0, 1).reshape(b, -1, *ys.shape[3:])
                out = jnp.concatenate([out, tail], axis=1)
        else:
            out, _ = self.decoder(z)
        return jnp.clip(out.astype(jnp.float32), -1.0, 1.0)


def abstract_model(config: WanVAEConfig) -> WanVAE:
    """The VAE with `jax.ShapeDtypeStruct` leaves (no memory), for shardings and restore."""
    return nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0)))


def read_config(path: str | os.PathLike) -> WanVAEConfig:
    return WanVAEConfig.from_dict(weights.read_checkpoint_config(path, "Wan VAE"))


def load_vae(path: str | os.PathLike, *, dtype: str | None = None) -> WanVAE:
    """Loads a directory written by `viewpoint_jax.convert.vae.convert_vae`.

    Args:
      path: holds config.json (WanVAEConfig.to_dict()) and params/ (Orbax).
      dtype: overrides the compute dtype ("float32" | "bfloat16").
    """
    config = read_config(path)
    if dtype is not None:
        config = dataclasses.replace(config, dtype=dtype)
    return weights.restore_module(path, abstract_model(config))


def numpy_params(model: WanVAE) -> dict[str, np.ndarray]:
    """'/'-joined parameter path -> numpy array (for tests and tools)."""
    state = nnx.state(model, nnx.Param)
    return {"/".join(str(p) for p in path): np.asarray(v[...]) for path, v in
            nnx.to_flat_state(state)}  # fmt: skip
