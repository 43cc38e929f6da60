"""The ViewPoint map layout (spec sections 3-4): subregions, unfolding, U half-disk warp, copies.

A map of side M is a 2 x 2 grid of subregions of side r = M / 2, each centred on a horizontal face
turned by theta. Map pixel -> unfolded plane (s, t) of the centre face -> point on the unit cube.
The inverse, direction -> every subregion that shows it (its "copies") with the fusion weight of
each, drives `viewpoint_to_erp` and `fuse_overlaps`.

Everything here is numpy in float64 and runs once per map size (the results are cached by the
callers). Side-face copies are computed from integer numerators (pixel centres are k / r in the
unfolded plane), so the two copies of a side-face point get bit-identical directions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from viewpoint_jax.geometry import sphere


@dataclasses.dataclass(frozen=True)
class Subregion:
    face: str
    theta_deg: int  # counter-clockwise rotation of the face diamond
    block: tuple[int, int]  # (row, col) position in the 2 x 2 grid

    @property
    def cos_sin(self) -> tuple[int, int]:
        """sqrt(2) (cos theta, sin theta): exactly +-1 for the four diagonal rotations."""
        theta = np.deg2rad(self.theta_deg)
        return round(np.sqrt(2) * np.cos(theta)), round(np.sqrt(2) * np.sin(theta))


SUBREGIONS = (
    Subregion("F", 45, (0, 0)),
    Subregion("R", -45, (0, 1)),
    Subregion("B", -135, (1, 1)),
    Subregion("L", 135, (1, 0)),
)

# Weight floor of a U copy, so the U centre (rho' = 1 for all four half-disks) stays defined.
U_WEIGHT_FLOOR = 0.001


def check_map_size(map_size: int, name: str = "map_size") -> int:
    if isinstance(map_size, bool) or not isinstance(map_size, int | np.integer):
        raise ValueError(f"{name} must be an int, got {map_size!r}")
    if map_size < 2 or map_size % 2:
        raise ValueError(f"{name} must be a positive even number, got {map_size}")
    return int(map_size)


def subregion_slices(map_size: int) -> dict[str, tuple[slice, slice]]:
    """(row slice, col slice) of each subregion, keyed by its centre face (F, R, B, L)."""
    r = check_map_size(map_size) // 2
    return {
        sub.face: (
            slice(sub.block[0] * r, (sub.block[0] + 1) * r),
            slice(sub.block[1] * r, (sub.block[1] + 1) * r),
        )
        for sub in SUBREGIONS
    }


def subregion_index(map_size: int) -> np.ndarray:
    """(M, M) int: index into SUBREGIONS of each map pixel."""
    r = check_map_size(map_size) // 2
    index = np.empty((2, 2), np.int64)
    for k, sub in enumerate(SUBREGIONS):
        index[sub.block] = k
    return np.kron(index, np.ones((r, r), np.int64))


# Forward: map pixel -> direction -----------------------------------------------------------------


def unfolded_coords(map_size: int, offset: tuple[float, float] = (0.5, 0.5)):
    """Subregion index, and r * (s, t), of every map sample point `(M, M)`.

    `offset` is the sample point inside each pixel (0.5, 0.5: the centre). For pixel centres the
    scaled coordinates r * s, r * t are integers, held exactly in float64.
    """
    m = check_map_size(map_size)
    r = m // 2
    rows, cols = np.meshgrid(np.arange(m) + offset[0], np.arange(m) + offset[1], indexing="ij")
    index = subregion_index(m)
    cos_sin = np.array([sub.cos_sin for sub in SUBREGIONS])[index]  # (M, M, 2)
    # r * alpha = 2 q - r, q the subregion-local column of the sample point; r * beta likewise.
    alpha = 2 * (cols - r * (cols >= r)) - r
    beta = r - 2 * (rows - r * (rows >= r))
    ct, st = cos_sin[..., 0], cos_sin[..., 1]
    return index, ct * alpha + st * beta, -st * alpha + ct * beta


def warp_u_triangle(s: np.ndarray, t: np.ndarray, unit: float = 1.0):
    """Half-disk warp (paper eq. 3-4) of unfolded points with t > unit; returns (s', t').

    About the edge midpoint m = (0, unit) the point keeps its angle and moves to radius
    rho' = rho (sin ang + |cos ang|) = |s| + (t - unit), its L1 radius.
    """
    up = t - unit
    rho = np.hypot(s, up)
    scale = np.divide(np.abs(s) + up, rho, out=np.ones_like(rho), where=rho > 0)
    return s * scale, unit + up * scale


def unfolded_to_cube(index: np.ndarray, s: np.ndarray, t: np.ndarray, unit: float = 1.0):
    """Point `(..., 3)` on the cube of side 2 * unit of unfolded (s, t) in subregion `index`.

    Fold (spec section 3): excess e = max(|s|, |t|) - 1, point (1 - e) c + clip(s) r + clip(t) u;
    the U triangle (t > 1) is half-disk warped first. With integer (s, t) and `unit` = r, points
    outside U are exact integers.
    """
    bases = np.stack([sphere.face_basis(sub.face) for sub in SUBREGIONS])[index]  # (..., 3, 3)
    in_u = t > unit
    s_warped, t_warped = warp_u_triangle(s, np.where(in_u, t, 2 * unit), unit)
    s = np.where(in_u, s_warped, s)
    t = np.where(in_u, t_warped, t)
    depth = unit - np.maximum(np.maximum(np.abs(s), np.abs(t)) - unit, 0)
    return (
        depth[..., None] * bases[..., 0, :]
        + np.clip(s, -unit, unit)[..., None] * bases[..., 1, :]
        + np.clip(t, -unit, unit)[..., None] * bases[..., 2, :]
    )


def map_directions(map_size: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Unit directions `(M, M, 3)` (float64) of the map's sample points (default: pixel centres)."""
    m = check_map_size(map_size)
    index, s, t = unfolded_coords(m, offset)
    return sphere.normalize(unfolded_to_cube(index, s, t, unit=m // 2))


# Inverse: direction -> copies --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Copies:
    """Where directions `(...)` appear in the map; trailing axis: the 4 subregions.

    covered: bool, the subregion shows the direction. row, col: continuous map pixel
    coordinates. weight: fusion weight, normalised over the covering subregions.
    in_down: the copy lies in the D face (continuous across subregions in the map).
    """

    covered: np.ndarray
    row: np.ndarray
    col: np.ndarray
    weight: np.ndarray
    in_down: np.ndarray


def direction_to_unfolded(d: np.ndarray, sub: Subregion):
    """Unfolded (s, t), coverage, raw fusion weight and D membership of directions in `sub`."""
    basis = sphere.face_basis(sub.face).astype(np.float64)
    dc, dr, du = d @ basis[0], d @ basis[1], d @ basis[2]
    axis = np.argmax(np.stack([np.abs(dc), np.abs(dr), np.abs(du)], axis=-1), axis=-1)
    on_centre = (axis == 0) & (dc > 0)
    on_side = (axis == 1) & ~on_centre
    on_vertical = (axis == 2) & ~on_centre
    s = np.zeros_like(dc)
    t = np.zeros_like(dc)
    weight = np.zeros_like(dc)
    covered = np.zeros(dc.shape, bool)

    # Centre face: the diamond; the quarters next to horizontal neighbours are shared.
    depth = np.where(on_centre, dc, 1.0)
    s_c, t_c = dr / depth, du / depth
    shared = np.abs(s_c) >= np.abs(t_c)
    s = np.where(on_centre, s_c, s)
    t = np.where(on_centre, t_c, t)
    weight = np.where(on_centre, np.where(shared, 1 - np.abs(s_c) / 2, 1.0), weight)
    covered |= on_centre

    # Right / left neighbour: unfolded across the shared edge, a corner triangle.
    side_depth = np.where(on_side, np.abs(dr), 1.0)
    a, b = dc / side_depth, du / side_depth
    s_n = np.sign(dr) * (2 - a)
    ok = on_side & (np.abs(b) <= a)
    s = np.where(ok, s_n, s)
    t = np.where(ok, b, t)
    weight = np.where(ok, 1 - np.abs(s_n) / 2, weight)
    covered |= ok

    # D: the quarter of D next to the centre face, one copy.
    vert_depth = np.where(on_vertical, np.abs(du), 1.0)
    a, b = dc / vert_depth, dr / vert_depth
    down = on_vertical & (du < 0) & (np.abs(b) <= a)
    s = np.where(down, b, s)
    t = np.where(down, -(2 - a), t)
    weight = np.where(down, 1.0, weight)
    covered |= down

    # U: inside the half-disk of radius 1 about the shared edge's midpoint, inverse warp.
    up_face = on_vertical & (du > 0)
    s_u, up_u = b, 1 - a  # U point in the unfolded plane: (s', t' - 1)
    rho_warped = np.hypot(s_u, up_u)
    in_disk = up_face & (rho_warped <= 1)
    l1 = np.abs(s_u) + up_u
    scale = np.divide(rho_warped, l1, out=np.zeros_like(l1), where=l1 > 0)
    s = np.where(in_disk, s_u * scale, s)
    t = np.where(in_disk, 1 + up_u * scale, t)
    weight = np.where(in_disk, 1 - rho_warped + U_WEIGHT_FLOOR, weight)
    covered |= in_disk
    return s, t, covered, weight, down


def unfolded_to_pixel(s, t, sub: Subregion, map_size: int):
    """Continuous map pixel coordinates (row, col) of unfolded (s, t) in subregion `sub`."""
    r = map_size // 2
    ct, st = sub.cos_sin
    alpha = (ct * s - st * t) / 2
    beta = (st * s + ct * t) / 2
    row = sub.block[0] * r + r / 2 - 0.5 - beta * r / 2
    col = sub.block[1] * r + r / 2 - 0.5 + alpha * r / 2
    return row, col


def direction_to_copies(d: np.ndarray, map_size: int) -> Copies:
    """Every copy of directions `(..., 3)` in a map of side `map_size` (spec section 4)."""
    m = check_map_size(map_size)
    fields = [[] for _ in range(5)]
    for sub in SUBREGIONS:
        s, t, covered, weight, down = direction_to_unfolded(d, sub)
        row, col = unfolded_to_pixel(s, t, sub, m)
        for field, value in zip(fields, (covered, row, col, np.where(covered, weight, 0.0), down)):
            field.append(value)
    covered, row, col, weight, down = (np.stack(f, axis=-1) for f in fields)
    total = weight.sum(axis=-1, keepdims=True)
    weight = weight / np.where(total > 0, total, 1.0)
    return Copies(covered=covered, row=row, col=col, weight=weight, in_down=down & covered)
