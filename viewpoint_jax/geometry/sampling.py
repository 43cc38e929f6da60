"""Resampling as a precomputed sparse linear map: a gather plus a weighted sum.

Every projection between two pixel grids is linear in the pixel values: output pixel p is
`sum_k weights[p, k] * input[indices[p, k]]`. The indices and weights depend only on static sizes
and angles, so they are computed once (numpy, float64) and the runtime is one gather-and-blend
program. Overlap fusion of the ViewPoint map folds into the same weights.

Runtime layout: all leading (batch, frame) dimensions are moved next to the channels, so each
gathered row holds every frame of one source pixel (49 frames x 3 channels of a clip). The index
and weight work is then paid once per pixel instead of once per frame, and rows are contiguous.
Rows of different tap counts (one copy vs two overlapping copies) are computed in separate buckets
and put back in order with one cheap row gather.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Weights below this are bilinear round-off (a sample exactly on a pixel centre); dropping them
# keeps copies that correspond pixel for pixel bit-identical.
_NEGLIGIBLE_WEIGHT = 1e-6


# Taps --------------------------------------------------------------------------------------------


def erp_taps(row, col, height: int, width: int, mode: str = "bilinear", xp=np):
    """Flat indices and weights `(..., K)` sampling an H x W ERP at continuous (row, col).

    Wraps horizontally (column -1 is column W-1) and clamps vertically (spec section 2).
    """
    row = xp.clip(row, 0, height - 1)
    col = xp.mod(col, width)
    if mode == "nearest":
        i = xp.clip(xp.floor(row + 0.5), 0, height - 1).astype(np.int32)
        j = xp.mod(xp.floor(col + 0.5), width).astype(np.int32)
        return (i * width + j)[..., None], xp.ones_like(row)[..., None]
    i0 = xp.clip(xp.floor(row), 0, max(height - 2, 0))
    fy = row - i0
    j0 = xp.floor(col)
    fx = col - j0
    i0, j0 = i0.astype(np.int32), j0.astype(np.int32)
    i1 = xp.minimum(i0 + 1, height - 1)
    j1 = xp.mod(j0 + 1, width)
    idx = xp.stack([i0 * width + j0, i0 * width + j1, i1 * width + j0, i1 * width + j1], axis=-1)
    w = xp.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=-1)
    return idx, w


def clamped_taps(row, col, row_lo, row_hi, col_lo, col_hi, width: int, mode="bilinear", xp=np):
    """Flat indices and weights `(..., K)` sampling inside the rectangle [lo, hi] (inclusive).

    `width` is the row stride of the flattened image; positions outside the rectangle clamp to
    its border pixels (clamping the coordinate, so bilinear reproduces the edge value).
    """
    row = xp.clip(row, row_lo, row_hi)
    col = xp.clip(col, col_lo, col_hi)
    if mode == "nearest":
        i = xp.clip(xp.floor(row + 0.5), row_lo, row_hi).astype(np.int32)
        j = xp.clip(xp.floor(col + 0.5), col_lo, col_hi).astype(np.int32)
        return (i * width + j)[..., None], xp.ones_like(row)[..., None]
    i0 = xp.clip(xp.floor(row), row_lo, xp.maximum(row_hi - 1, row_lo))
    j0 = xp.clip(xp.floor(col), col_lo, xp.maximum(col_hi - 1, col_lo))
    fy, fx = row - i0, col - j0
    i0, j0 = i0.astype(np.int32), j0.astype(np.int32)
    i1 = xp.minimum(i0 + 1, row_hi).astype(np.int32)
    j1 = xp.minimum(j0 + 1, col_hi).astype(np.int32)
    idx = xp.stack([i0 * width + j0, i0 * width + j1, i1 * width + j0, i1 * width + j1], axis=-1)
    w = xp.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=-1)
    return idx, w


def snap_to_pixels(coord: np.ndarray, tolerance: float = 1e-6) -> np.ndarray:
    """Rounds coordinates within `tolerance` of a pixel centre onto it (removes float round-off)."""
    nearest = np.round(coord)
    return np.where(np.abs(coord - nearest) < tolerance, nearest, coord)


# Plans -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ResamplePlan:
    """A sparse linear map from an `in_hw` grid to an `out_hw` grid, bucketed by tap count.

    buckets: tuple of (indices (P_b, K_b) int32, weights (P_b, K_b) float32), rows in bucket order.
    order: (P,) int32 such that output pixel p is row order[p] of the concatenated buckets, or
      None when the buckets are already in output order.
    """

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    buckets: tuple[tuple[np.ndarray, np.ndarray], ...]
    order: np.ndarray | None

    @property
    def num_taps(self) -> int:
        return int(sum(idx.size for idx, _ in self.buckets))


def _merge_duplicate_taps(idx: np.ndarray, w: np.ndarray):
    """Sums the weights of repeated indices in each row and drops negligible weights."""
    taps = idx.shape[1]
    order = np.argsort(idx, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    w = np.take_along_axis(w, order, axis=1)
    for k in range(taps - 1, 0, -1):
        same = idx[:, k] == idx[:, k - 1]
        w[same, k - 1] += w[same, k]
        w[same, k] = 0.0
    w = np.where(np.abs(w) < _NEGLIGIBLE_WEIGHT, 0.0, w)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)
    # Move live taps to the front of each row so rows can be cut to their tap count.
    live_first = np.argsort(w == 0, axis=1, kind="stable")
    return np.take_along_axis(idx, live_first, axis=1), np.take_along_axis(w, live_first, axis=1)


def make_plan(
    idx: np.ndarray, w: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> ResamplePlan:
    """Builds a plan from per-output-pixel taps `(H_out, W_out, K)` (rows normalised to sum 1).

    A row whose weights are all zero produces 0 (used for pixels outside a perspective view).
    """
    num_out = out_hw[0] * out_hw[1]
    idx = np.asarray(idx, np.int64).reshape(num_out, -1)
    w = np.asarray(w, np.float64).reshape(num_out, -1)
    idx, w = _merge_duplicate_taps(idx, w)
    counts = np.maximum((w != 0).sum(axis=1), 1)

    # Greedy bucketing: each bucket pads its rows to its largest tap count. Splitting pays off
    # when the padding saved exceeds the cost of the final reordering gather (~one tap per row).
    sizes = sorted(set(counts.tolist()))
    groups = [[size] for size in sizes]
    merged = True
    while merged and len(groups) > 1:
        merged = False
        for g in range(len(groups) - 1):
            small = np.isin(counts, groups[g]).sum()
            saving = small * (max(groups[g + 1]) - max(groups[g]))
            if saving < 0.5 * num_out:
                groups[g + 1] = groups[g] + groups[g + 1]
                del groups[g]
                merged = True
                break

    buckets, rows_in_bucket_order = [], []
    for group in groups:
        rows = np.flatnonzero(np.isin(counts, group))
        taps = max(group)
        buckets.append(
            (
                np.ascontiguousarray(idx[rows, :taps].astype(np.int32)),
                np.ascontiguousarray(w[rows, :taps].astype(np.float32)),
            )
        )
        rows_in_bucket_order.append(rows)
    position = np.concatenate(rows_in_bucket_order)
    order = None
    if len(buckets) > 1:
        inverse = np.empty(num_out, np.int32)
        inverse[position] = np.arange(num_out, dtype=np.int32)
        order = inverse
    return ResamplePlan(
        in_hw=tuple(in_hw), out_hw=tuple(out_hw), buckets=tuple(buckets), order=order
    )


# Runtime -----------------------------------------------------------------------------------------


def compute_dtype(dtype) -> np.dtype:
    """Floats keep their precision (at least float32); integers are blended in float32."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.promote_types(dtype, jnp.float32)
    return jnp.dtype(jnp.float32)


def cast_output(values: jax.Array, dtype) -> jax.Array:
    """Float -> the input float dtype; integer images are rounded and clipped to their range."""
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return jnp.clip(jnp.round(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def apply_taps(rows: jax.Array, idx: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """`sum_k w[p, k] * rows[idx[p, k]]` for rows `(S, D)`; returns `(P, D)` in `dtype`."""
    out = None
    for k in range(idx.shape[-1]):
        term = rows[idx[..., k]].astype(dtype) * w[..., k, None].astype(dtype)
        out = term if out is None else out + term
    return out


def to_rows(x: jax.Array, hw: tuple[int, int]) -> tuple[jax.Array, tuple[int, ...]]:
    """`(..., H, W, C)` -> `(H * W, L * C)` with the leading dims L next to the channels."""
    lead = x.shape[:-3]
    channels = x.shape[-1]
    flat = x.reshape((-1, hw[0] * hw[1], channels))
    rows = jnp.moveaxis(flat, 0, 1).reshape(hw[0] * hw[1], -1)
    return rows, (*lead, channels)


def from_rows(rows: jax.Array, hw: tuple[int, int], lead_channels: tuple[int, ...]) -> jax.Array:
    """Inverse of `to_rows`: `(H * W, L * C)` -> `(..., H, W, C)`."""
    *lead, channels = lead_channels
    out = rows.reshape(hw[0] * hw[1], -1, channels)
    return jnp.moveaxis(out, 1, 0).reshape((*lead, *hw, channels))


def resample(x: jax.Array, plan: ResamplePlan) -> jax.Array:
    """Applies a plan to images `(..., H_in, W_in, C)` -> `(..., H_out, W_out, C)`."""
    x = jnp.asarray(x)
    if x.shape[-3:-1] != plan.in_hw:
        raise ValueError(f"expected images of spatial size {plan.in_hw}, got {x.shape[-3:-1]}")
    arrays = (tuple(plan.buckets), plan.order)
    return _resample(x, arrays, plan.in_hw, plan.out_hw)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _resample(x, arrays, in_hw, out_hw):
    buckets, order = arrays
    dtype = compute_dtype(x.dtype)
    rows, lead_channels = to_rows(x, in_hw)
    out = [blend_rows(rows, idx, w, dtype, x.dtype) for idx, w in buckets]
    out = out[0] if len(out) == 1 else jnp.concatenate(out, axis=0)
    if order is not None:
        out = out[order]
    return from_rows(out, out_hw, lead_channels)


_CHUNK_ROWS = 1 << 14


def blend_rows(rows, idx, w, dtype, out_dtype):
    """`apply_taps` in chunks of output rows inside a loop.

    The loop is a fusion boundary: without it XLA fuses the surrounding layout transposes (or a
    previous resampling) into the gathers, and every tap then re-reads strided memory or
    recomputes its producer (several times slower). Chunks also keep the working set in cache.
    """
    num = idx.shape[0]
    chunks = -(-num // _CHUNK_ROWS)
    pad = chunks * _CHUNK_ROWS - num
    xp = np if isinstance(idx, np.ndarray) and isinstance(w, np.ndarray) else jnp
    idx, w = xp.pad(idx, ((0, pad), (0, 0))), xp.pad(w, ((0, pad), (0, 0)))
    taps = idx.shape[-1]
    out = jax.lax.map(
        lambda iw: cast_output(apply_taps(rows, iw[0], iw[1], dtype), out_dtype),
        (idx.reshape(chunks, _CHUNK_ROWS, taps), w.reshape(chunks, _CHUNK_ROWS, taps)),
    )
    return out.reshape(chunks * _CHUNK_ROWS, -1)[:num]


def resample_taps(x: jax.Array, idx: jax.Array, w: jax.Array, in_hw, out_hw) -> jax.Array:
    """Applies taps `(H_out, W_out, K)` computed inside a program (e.g. from traced angles)."""
    x = jnp.asarray(x)
    dtype = compute_dtype(x.dtype)
    rows, lead_channels = to_rows(x, tuple(in_hw))
    k = idx.shape[-1]
    out = blend_rows(rows, idx.reshape(-1, k), w.reshape(-1, k), dtype, x.dtype)
    return from_rows(out, tuple(out_hw), lead_channels)
