"""Spatial tiling: a function of a video applied to overlapping tiles and blended back, so a
large frame is encoded or decoded in bounded memory (the Wan VAE's encode and decode, the
sampler's decode spread over the mesh)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of equal tiles covering [0, length); the last one is flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _blend_ramp(start: Array, tile: int, length: int, ramp: int) -> Array:
    """(tile,) weights: linear ramps of `ramp` samples on the sides that touch another tile."""
    i = jnp.arange(tile, dtype=jnp.float32)
    up = jnp.minimum(1.0, (i + 1.0) / (ramp + 1.0))
    down = jnp.minimum(1.0, (tile - i) / (ramp + 1.0))
    w = jnp.where(start > 0, up, 1.0) * jnp.where(start + tile < length, down, 1.0)
    return w


def tiled_apply(
    fn: Callable[[Array], Array],
    x: Array,
    *,
    tile: int,
    overlap: int,
    in_factor: int,
    out_factor: int,
    mesh: jax.sharding.Mesh | None = None,
) -> Array:
    """Applies `fn` to overlapping spatial tiles of `x` and blends the results.

    Sizes are in latent pixels; a latent pixel is `in_factor` input pixels and `out_factor` output
    pixels (decode: 1 and 8, encode: 8 and 1). All tiles have the same shape (the last tile of a
    row/column is flush with the border), so `fn` compiles once and runs in a `lax.scan`; each
    output pixel is the average of the tiles covering it, weighted by ramps across the overlaps.
    `fn` sees whole tiles over all frames, so a causal temporal cache inside it (the Wan VAE's)
    runs exactly as on an untiled video.

    With `mesh`, each scan step takes `mesh.size` tiles, stacked on a leading axis sharded over
    every axis of the mesh: each device runs `fn` on its own tile (`x`, `fn`'s weights and the
    result replicated), so a device holds one tile's activations at a time and the steps are
    `ceil(tiles / devices)`. The tile list is padded with zero-weight copies of the last tile,
    and the tiles are added to the result in the same order as without a mesh.

    Args:
      fn: (B, F, tile*in_factor, tile*in_factor, C) -> (B, F', tile*out_factor, .., C').
      x: (B, F, H, W, C) with H, W multiples of in_factor.
      mesh: the devices to spread the tiles over (None: one tile at a time, where `x` lives).
    Returns:
      (B, F', H/in_factor*out_factor, W/in_factor*out_factor, C').
    """
    b, f, h, w, c = x.shape
    lh, lw = h // in_factor, w // in_factor
    th, tw = min(tile, lh), min(tile, lw)
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile ({tile})")
    starts = [(i, j) for i in _tile_starts(lh, th, stride) for j in _tile_starts(lw, tw, stride)]
    per_step = 1 if mesh is None else mesh.size
    padding = -len(starts) % per_step
    live = np.repeat(np.float32([1, 0]), [len(starts), padding]).reshape(-1, per_step)
    starts = np.asarray(starts + starts[-1:] * padding, np.int32).reshape(-1, per_step, 2)
    tile_shape = (b, f, th * in_factor, tw * in_factor, c)
    out_tile = jax.eval_shape(fn, jax.ShapeDtypeStruct(tile_shape, x.dtype))
    ob, of, _, _, oc = out_tile.shape
    acc = jnp.zeros((ob, of, lh * out_factor, lw * out_factor, oc), jnp.float32)
    norm = jnp.zeros((lh * out_factor, lw * out_factor), jnp.float32)
    ramp = overlap * out_factor
    zero = jnp.zeros((), jnp.int32)

    def cut(start):
        at = (zero, zero, start[0] * in_factor, start[1] * in_factor, zero)
        return jax.lax.dynamic_slice(x, at, tile_shape)

    def add(acc, norm, y, start, live):
        i, j = start[0] * out_factor, start[1] * out_factor
        wy = _blend_ramp(i, th * out_factor, lh * out_factor, ramp)
        wx = _blend_ramp(j, tw * out_factor, lw * out_factor, ramp)
        weight = wy[:, None] * wx[None, :] * live
        at = (zero, zero, i, j, zero)
        old = jax.lax.dynamic_slice(acc, at, y.shape)
        acc = jax.lax.dynamic_update_slice(acc, old + y * weight[:, :, None], at)
        old_n = jax.lax.dynamic_slice(norm, (i, j), weight.shape)
        return acc, jax.lax.dynamic_update_slice(norm, old_n + weight, (i, j))

    def body(carry, step):
        step_starts, step_live = step
        pieces = jax.vmap(cut)(step_starts)  # (per_step, *tile_shape)
        if mesh is not None:
            spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
            pieces = jax.lax.with_sharding_constraint(pieces, spread)
        ys = jax.vmap(fn)(pieces).astype(jnp.float32)
        for k in range(per_step):  # in tile order, as one tile per step would add them
            carry = add(*carry, ys[k], step_starts[k], step_live[k])
        return carry, None

    (acc, norm), _ = jax.lax.scan(body, (acc, norm), (jnp.asarray(starts), jnp.asarray(live)))
    return (acc / norm[:, :, None]).astype(out_tile.dtype)
