"""Rotary position embeddings of the DiT's tokens (pure numpy/jnp): Wan's 3D RoPE over (frame,
row, column), and the 4D variant of the cube-faces canvas (frame, face, row in face, column in
face; CP-4DRoPE)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax.geometry.canvas import CUBE_COLUMNS, CUBE_ROWS


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of the head dim between frames, height and width."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@functools.lru_cache(maxsize=32)
def rope_tables(
    grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of Wan's 3D RoPE for a (frames, height, width) token grid.

    Returns two (F*H*W, head_dim // 2) float32 arrays, one angle per rotated pair; positions start
    at 0 on every axis (so a subregion's table is that of a grid of the subregion's size).
    """
    angles = []
    for axis, (size, part) in enumerate(zip(grid, rope_split(head_dim))):
        inv_freq = 1.0 / theta ** (np.arange(0, part, 2, dtype=np.float64) / part)
        a = np.arange(size, dtype=np.float64)[:, None] * inv_freq[None]  # (size, part/2)
        shape = [1, 1, 1, part // 2]
        shape[axis] = size
        angles.append(np.broadcast_to(a.reshape(shape), (*grid, part // 2)))
    angle = np.concatenate(angles, axis=-1).reshape(-1, head_dim // 2)
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def rope_split_4d(head_dim: int) -> tuple[int, int, int, int]:
    """The split of the head dim between frames, cube face, height and width: height and width
    keep Wan's bands (`rope_split`), so a face's 2D positions rotate the same dims as in the
    pretrained DiT; Wan's frame band is halved between frames and the face index (our choice: the
    paper does not say how the fourth axis is sized)."""
    frames, height, width = rope_split(head_dim)
    face = 2 * (frames // 4)
    return frames - face, face, height, width


def _axis_angles(positions: np.ndarray, part: int, theta: float) -> np.ndarray:
    """RoPE angles `(N, part/2)` of integer positions `(N,)` on one axis of `part` dims."""
    inv_freq = 1.0 / theta ** (np.arange(0, part, 2, dtype=np.float64) / part)
    return positions.astype(np.float64)[:, None] * inv_freq[None]


@functools.lru_cache(maxsize=32)
def cube_face_rope_tables(
    grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of the 4D RoPE of a 2 x 3 raster of cube faces (`RopeLayout.CUBE_FACES`).

    `grid`: the token grid (frames, 2a, 3a) of the raster, faces a x a tokens in row-major
    order (face k at raster row k // 3, column k % 3). Each token's position is (frame, k, row in
    its face, column in its face), rotated over the bands of `rope_split_4d`. Returns two
    (F*2a*3a, head_dim // 2) float32 arrays in the grid's token order.
    """
    frames, height, width = grid
    side = height // CUBE_ROWS
    if height % CUBE_ROWS or width != CUBE_COLUMNS * side or side < 1:
        raise ValueError(
            f"rope_layout 'cube_faces' needs a token grid of 2 x 3 square faces (2a x 3a), "
            f"got {height}x{width}"
        )
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    t, y, x = t.ravel(), y.ravel(), x.ravel()
    face = (y // side) * CUBE_COLUMNS + x // side
    positions = (t, face, y % side, x % side)
    angle = np.concatenate(
        [
            _axis_angles(p, part, theta)
            for p, part in zip(positions, rope_split_4d(head_dim), strict=True)
        ],
        axis=-1,
    )
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates adjacent pairs (x[2i], x[2i+1]) of x (B, L, H, D) by the angles of (L, D/2)."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None], sin[None, :, None]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
