"""The autoencoder protocol and parameter-free stand-ins for the VAE.

Everything that turns videos into diffusion latents and back (`WanVAE`, `SpaceToDepthAutoencoder`,
`BlockDCTAutoencoder`) follows `Autoencoder`: `encode(video (B, F, H, W, 3) in [-1, 1]) ->
latents (B, T, h, w, C)` and `decode(latents) -> video`, with
`T = 1 + (F - 1) // temporal_factor` and `h, w = H // spatial_factor, W // spatial_factor`.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax.models.tiling import tiled_apply


@runtime_checkable
class Autoencoder(Protocol):
    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def encode(self, video: jax.Array) -> jax.Array: ...

    def decode(self, latents: jax.Array) -> jax.Array: ...


def compiler_options(autoencoder: Autoencoder) -> dict[str, str]:
    """XLA options to jit an autoencoder's `encode` / `decode` with (`jax.jit(...,
    compiler_options=...)`): the autoencoder's own if it has any (the Wan VAE's faster CPU
    convolutions), else none."""
    options = getattr(autoencoder, "compiler_options", None)
    return options() if callable(options) else {}


def latent_shape(
    autoencoder: Autoencoder, video_shape: tuple[int, ...]
) -> tuple[int, int, int, int, int]:
    """(B, F, H, W, 3) -> the shape `autoencoder.encode` returns for it."""
    b, f, h, w, _ = video_shape
    tf, sf = autoencoder.temporal_factor, autoencoder.spatial_factor
    return (b, 1 + (f - 1) // tf, h // sf, w // sf, autoencoder.latent_channels)


def latent_mask(mask: jax.Array, spatial_factor: int, temporal_factor: int) -> jax.Array:
    """Coverage `(F, M, M, 1)` -> latent-resolution coverage `(1 + (F-1)/t, M/s, M/s, 1)`.

    Averages over each latent cell's pixels and frames, grouped as the causal VAE groups them:
    latent frame 0 is frame 0, latent frame k >= 1 covers frames 4k-3 .. 4k.
    """
    frames, height, width, _ = mask.shape
    if (frames - 1) % temporal_factor or height % spatial_factor or width % spatial_factor:
        raise ValueError(
            f"mask shape {mask.shape} does not fit factors (temporal {temporal_factor}, "
            f"spatial {spatial_factor})"
        )
    s = spatial_factor
    pooled = mask.reshape(frames, height // s, s, width // s, s, 1).mean(axis=(2, 4))
    first = pooled[:1]
    rest = pooled[1:].reshape(-1, temporal_factor, height // s, width // s, 1).mean(axis=1)
    return jnp.concatenate([first, rest], axis=0)


# Encode tiles, in latent pixels. A 1K map (640: 80 latent pixels) encodes whole, as it always
# has; a 2K map (1280: 160) in 2 x 2 tiles of 84 overlapping by 8 (10% more pixels than whole),
# so the encoder's activations at 2K stay about those of 1K (the Wan VAE's 96-channel layers at
# full resolution are most of them).
ENCODE_TILE, ENCODE_TILE_OVERLAP = 84, 8


def encode_tiled(autoencoder: Autoencoder, video: jax.Array) -> jax.Array:
    """`autoencoder.encode(video)` `(B, F, H, W, 3)` -> latents, over overlapping spatial tiles of
    `ENCODE_TILE` latent pixels blended over `ENCODE_TILE_OVERLAP` (`tiling.tiled_apply`) when
    the frame is larger than one tile; a frame of one tile is encoded whole. Exact for the
    block-local stand-ins; for the Wan VAE as close as its own tiled encode (tests/test_vae.py)."""
    sf = autoencoder.spatial_factor
    if max(video.shape[2:4]) <= ENCODE_TILE * sf:
        return autoencoder.encode(video)
    return tiled_apply(
        autoencoder.encode, video, tile=ENCODE_TILE, overlap=ENCODE_TILE_OVERLAP, in_factor=sf,
        out_factor=1,
    )  # fmt: skip


def encode_maps(autoencoder: Autoencoder, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A training batch's maps -> latents (the train step and the latent precompute share it):
    target and condition maps `(B, F, M, M, 3)` through the autoencoder (`encode_tiled`: a 2K
    map in tiles of the 1K size), the condition mask
    `(B, F, M, M, 1)` pooled to the latent grid (`latent_mask`).

    Returns latents and condition_latents `(B, f, M/s, M/s, C)` and latent_mask
    `(B, f, M/s, M/s, 1)`, all float32, with f = 1 + (F - 1) / temporal factor. A batch without
    a condition (perspective clips for text-to-video pretraining) gives the latents alone.
    """
    pool = functools.partial(
        latent_mask,
        spatial_factor=autoencoder.spatial_factor,
        temporal_factor=autoencoder.temporal_factor,
    )
    encoded: dict[str, Any] = {"latents": encode_tiled(autoencoder, batch["target_map"])}
    if "condition_map" in batch:
        encoded["condition_latents"] = encode_tiled(autoencoder, batch["condition_map"])
        encoded["latent_mask"] = jax.vmap(pool)(batch["condition_mask"])
    return {key: value.astype(jnp.float32) for key, value in encoded.items()}


class SpaceToDepthAutoencoder:
    """Moves each `factor` x `factor` pixel block into channels: exactly invertible, no parameters.

    The CPU tiny configurations use it instead of the Wan VAE. Latents have
    `latent_channels = channels * factor**2` channels (48 for RGB and factor 4, 192 for factor 8),
    ordered (row in block, column in block, colour), and the same value range as the pixels.
    Time is not compressed (`temporal_factor = 1`): F frames give F latent frames.
    `decode(encode(x)) == x` bit for bit (it only moves values).
    """

    temporal_factor = 1

    def __init__(self, factor: int = 8, *, channels: int = 3):
        if factor < 1:
            raise ValueError(f"space-to-depth factor must be >= 1, got {factor}")
        self.spatial_factor = int(factor)
        self.channels = int(channels)
        self.latent_channels = self.channels * self.spatial_factor**2

    def __repr__(self) -> str:
        return f"SpaceToDepthAutoencoder(factor={self.spatial_factor}, channels={self.channels})"

    def encode(self, video: jax.Array) -> jax.Array:
        """(B, F, H, W, channels) -> (B, F, H/f, W/f, channels * f * f)."""
        f = self.spatial_factor
        if video.ndim != 5 or video.shape[-1] != self.channels:
            raise ValueError(
                f"video must be (B, F, H, W, {self.channels}), got shape {tuple(video.shape)}"
            )
        b, t, h, w, c = video.shape
        if h % f or w % f:
            raise ValueError(f"frame size {h}x{w} must be a multiple of the factor {f}")
        x = jnp.reshape(video, (b, t, h // f, f, w // f, f, c))
        x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
        return jnp.reshape(x, (b, t, h // f, w // f, f * f * c))

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, F, h, w, channels * f * f) -> (B, F, h*f, w*f, channels)."""
        f = self.spatial_factor
        if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, F, h, w, {self.latent_channels}), got shape "
                f"{tuple(latents.shape)}"
            )
        b, t, h, w, _ = latents.shape
        x = jnp.reshape(latents, (b, t, h, w, f, f, self.channels))
        x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
        return jnp.reshape(x, (b, t, h * f, w * f, self.channels))


def _dct_basis(size: int) -> np.ndarray:
    """`(size, size)` orthonormal DCT-II basis: row k is frequency k over the `size` samples."""
    samples = np.arange(size)[None]
    frequencies = np.arange(size)[:, None]
    basis = np.cos(np.pi * (2 * samples + 1) * frequencies / (2 * size)) * np.sqrt(2 / size)
    basis[0] /= np.sqrt(2)
    return basis


# Luminance, red-green, yellow-blue (rows orthonormal): the colour components the block DCT keeps
# coefficients of, luminance with twice the detail of each colour difference (as JPEG's 4:2:0).
OPPONENT_COLOURS = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]]) / np.sqrt([[3], [2], [6]])


class BlockDCTAutoencoder:
    """Keeps the lowest spatial frequencies of each `factor` x `factor` pixel block: a fixed
    linear autoencoder with the Wan VAE's 16 channels (the DiT's 33 input channels) and no
    parameters.

    Each block's pixels (space-to-depth order) go through an orthonormal colour transform
    (`OPPONENT_COLOURS`) and an orthonormal 2D DCT; the latent keeps, per colour component,
    its lowest frequencies in zigzag order (half the channels for luminance, a quarter for each
    colour difference), scaled by 1 / factor so that the constant term is the block's mean. The
    decoder is the transpose: `decode(encode(x))` is the least-squares projection of `x` onto the
    kept frequencies, and `encode(decode(z)) == z`. Against space-to-depth's 48 channels at
    factor 4, each token of the tiny DiT carries 64 values instead of 192 (BENCHMARKS.md, "What
    the bar asks"). Time is not compressed (`temporal_factor = 1`).
    """

    temporal_factor = 1

    def __init__(self, factor: int = 4, channels: int = 16):
        size, pixels = int(factor), int(factor) ** 2
        if channels % 4 or not 0 < channels <= 2 * pixels:
            raise ValueError(
                f"channels must be a multiple of 4 in [4, {2 * pixels}] for a block DCT of factor "
                f"{factor} (half luminance, a quarter per colour difference), got {channels}"
            )
        self.spatial_factor, self.latent_channels = size, int(channels)
        self._blocks = SpaceToDepthAutoencoder(size)
        dct = _dct_basis(size)
        # (frequency (i, j) flattened, pixel (row, column) flattened)
        frequencies = np.einsum("ir,jc->ijrc", dct, dct).reshape(pixels, pixels)
        zigzag = sorted(range(pixels), key=lambda k: (k // size + k % size, k // size))
        counts = (channels // 2, channels // 4, channels // 4)
        rows = [
            np.outer(frequencies[k], colour).reshape(-1)  # (row, column, rgb) as space-to-depth
            for colour, count in zip(OPPONENT_COLOURS, counts)
            for k in zigzag[:count]
        ]
        self.matrix = jnp.asarray(np.stack(rows) / size, jnp.float32)

    def __repr__(self) -> str:
        return f"BlockDCTAutoencoder(factor={self.spatial_factor}, channels={self.latent_channels})"

    def encode(self, video: jax.Array) -> jax.Array:
        """(B, F, H, W, 3) -> (B, F, H/f, W/f, channels)."""
        return self._blocks.encode(video) @ self.matrix.T

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, F, h, w, channels) -> (B, F, h*f, w*f, 3)."""
        if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, F, h, w, {self.latent_channels}), got shape "
                f"{tuple(latents.shape)}"
            )
        return self._blocks.decode((latents @ self.matrix) * self.spatial_factor**2)
