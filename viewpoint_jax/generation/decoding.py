"""Latents -> pixels: the autoencoder as a compiled function, its tiled decode spread over a
mesh, and the canvas -> ERP conversion that blends the map's overlapping copies (the final,
pixel-space fusion).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from viewpoint_jax import geometry
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.models import vae as vae_lib


class Tiling(NamedTuple):
    """How an autoencoder call splits the frame (`decode_latents`): tiles of `tile` latent
    pixels blended over `overlap`, spread over the devices of `mesh` (None: where the input
    is)."""

    tile: int
    overlap: int
    mesh: jax.sharding.Mesh | None = None


def autoencoder_function(
    autoencoder: Any, method: str, tiling: Tiling | None = None
) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """`autoencoder.<method>` as a pure function `fn(arrays, x)` of the autoencoder's arrays,
    and those arrays (None for a weightless one); with `tiling`, over spatial tiles
    (`vae.tiled_apply`). Jit it with `autoencoder.compiler_options(autoencoder)`."""
    graphdef, arrays = (
        nnx.split(autoencoder) if isinstance(autoencoder, nnx.Module) else (None, None)
    )

    def fn(arrays: Any, x: jax.Array) -> jax.Array:
        module = autoencoder if graphdef is None else nnx.merge(graphdef, arrays)
        if tiling is None:
            return getattr(module, method)(x)
        factors = (1, module.spatial_factor)  # latent -> output pixels
        in_factor, out_factor = factors if method == "decode" else factors[::-1]
        return vae_lib.tiled_apply(
            getattr(module, method), x, tile=tiling.tile, overlap=tiling.overlap,
            in_factor=in_factor, out_factor=out_factor, mesh=tiling.mesh,
        )  # fmt: skip

    return fn, arrays


@functools.lru_cache(maxsize=64)  # an encode and a decode per autoencoder replica (device group)
def _jitted(
    autoencoder: Any, method: str, tiling: Tiling | None = None
) -> Callable[[jax.Array], jax.Array]:
    """`autoencoder_function` jitted with the autoencoder's compiler options, its arrays bound;
    cached per (frozen) autoencoder, so repeated calls reuse one compiled program."""
    fn, arrays = autoencoder_function(autoencoder, method, tiling)
    options = autoencoder_lib.compiler_options(autoencoder)
    return functools.partial(jax.jit(fn, compiler_options=options), arrays)


# Decode tiles, in latent pixels: Wan's tiled VAE decode (256 px tiles, 64 px overlap).
DECODE_TILE, DECODE_TILE_OVERLAP = 32, 8


def replicate(autoencoder: Any, mesh: jax.sharding.Mesh) -> Any:
    """The autoencoder with its weights (if any) replicated on every device of `mesh`, which
    `decode_latents(..., mesh=mesh)` spreads its tiles over; returns it (modules updated in
    place)."""
    if isinstance(autoencoder, nnx.Module):
        everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        nnx.update(autoencoder, jax.device_put(nnx.state(autoencoder), everywhere))
    return autoencoder


def decode_latents(
    autoencoder: Any,
    latents: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
    tile: int | None = DECODE_TILE,
    tile_overlap: int = DECODE_TILE_OVERLAP,
) -> jax.Array:
    """Map latents `(B, f, h, w, C)` -> map video `(B, F, M, M, 3)` in [-1, 1] (clipped).

    Decodes overlapping spatial tiles of `tile` latent pixels blended over `tile_overlap`
    (`vae.tiled_apply`; one tile, the exact decode, when the frame is no larger; `tile=None`:
    the whole frame), spread over every device of `mesh`, one tile per device at a time, with
    the autoencoder's weights replicated there (`replicate`). The result is the one-device
    result up to fp32 rounding. Each tile runs over all frames, so the Wan VAE's causal cache
    is as untiled.
    """
    tiling = None if tile is None else Tiling(tile, tile_overlap, mesh)
    if mesh is not None:
        everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        latents = jax.device_put(latents, everywhere)
    decoded = _jitted(autoencoder, "decode", tiling)(latents)
    return jnp.clip(decoded.astype(jnp.float32), -1.0, 1.0)


@functools.partial(jax.jit, static_argnames=("height", "width", "representation"))
def canvas_to_panorama(
    map_video: jax.Array,
    height: int,
    width: int,
    representation: Representation = Representation.VIEWPOINT,
) -> jax.Array:
    """Map video `(..., M, M, 3)` -> ERP `(..., height, width, 3)`, blending the overlapping
    copies of each sphere region (the final pixel-space fusion); frames of another
    `representation` `(..., Hm, Wm, 3)` -> ERP by `geometry.canvas_to_erp`."""
    return geometry.canvas_to_erp(map_video, representation, height, width)


def decode_to_panorama(
    autoencoder: Any,
    latents: jax.Array,
    height: int,
    width: int,
    representation: Representation = Representation.VIEWPOINT,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Map latents `(B, f, h, w, C)` -> (map video `(B, F, Hm, Wm, 3)`, ERP video
    `(B, F, height, width, 3)`), both in [-1, 1]; the ERP blends the overlapping copies (of the
    ViewPoint map; other representations: `canvas_to_panorama`). The decode is spread over `mesh`
    (`decode_latents`)."""
    map_video = decode_latents(autoencoder, latents, mesh=mesh)
    return map_video, canvas_to_panorama(map_video, height, width, representation)
