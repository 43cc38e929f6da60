"""World frame, camera bases and pixel conventions (spec sections 1-2).

Directions are unit vectors d = (x, y, z): x right, y up, z forward. Every function here is a
pure function of arrays. The ones taking `xp` run with numpy (static sampling grids, computed once
in float64) or with jax.numpy (angles that are traced under jit / vmap).
"""

from __future__ import annotations

import numpy as np

FACE_NAMES = ("F", "R", "B", "L", "U", "D")

# (centre, right, up) of each cube face: the perspective cameras of spec section 2.
FACE_BASES = {
    "F": ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
    "R": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
    "B": ((0, 0, -1), (-1, 0, 0), (0, 1, 0)),
    "L": ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
    "U": ((0, 1, 0), (1, 0, 0), (0, 0, -1)),
    "D": ((0, -1, 0), (1, 0, 0), (0, 0, 1)),
}


def face_basis(name: str) -> np.ndarray:
    """(3, 3) integer matrix whose rows are the face's centre, right and up vectors."""
    return np.array(FACE_BASES[name], dtype=np.int64)


def camera_basis(yaw, pitch, roll, xp=np):
    """Forward, right and up vectors `(..., 3)` of a camera; angles in radians (spec section 1)."""
    cy, sy = xp.cos(yaw), xp.sin(yaw)
    cp, sp = xp.cos(pitch), xp.sin(pitch)
    cr, sr = xp.cos(roll), xp.sin(roll)
    zero = xp.zeros_like(cy)
    forward = xp.stack([cp * sy, sp + zero, cp * cy], axis=-1)
    right = xp.stack([cy, zero, -sy], axis=-1)
    up = xp.stack([-sp * sy, cp + zero, -sp * cy], axis=-1)
    cr, sr = cr[..., None], sr[..., None]
    return forward, cr * right + sr * up, -sr * right + cr * up


def normalize(v, xp=np):
    return v / xp.linalg.norm(v, axis=-1, keepdims=True)


# ERP ---------------------------------------------------------------------------------------------


def erp_directions(height: int, width: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Unit directions `(H, W, 3)` of ERP pixels; `offset` is the sample point inside a pixel."""
    rows = np.arange(height) + offset[0]
    cols = np.arange(width) + offset[1]
    lat = np.pi * (0.5 - rows / height)
    lon = 2 * np.pi * (cols / width - 0.5)
    lat, lon = np.meshgrid(lat, lon, indexing="ij")
    return np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)


def direction_to_lonlat(d, xp=np):
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return xp.arctan2(x, z), xp.arctan2(y, xp.hypot(x, z))


def direction_to_erp_pixel(d, height: int, width: int, xp=np):
    """Continuous ERP pixel coordinates (row, col) of directions; pixel centres are integers."""
    lon, lat = direction_to_lonlat(d, xp)
    col = (lon / (2 * np.pi) + 0.5) * width - 0.5
    row = (0.5 - lat / np.pi) * height - 0.5
    return row, col


# Perspective -------------------------------------------------------------------------------------


def focal_length(fov_x, width: int, xp=np):
    """Focal length in pixels for a horizontal field of view `fov_x` in radians."""
    return (width / 2) / xp.tan(fov_x / 2)


def perspective_directions(fov_x, yaw, pitch, roll, height: int, width: int, xp=np, offset=0.5):
    """Unit directions `(h, w, 3)` of a perspective camera's pixel centres (angles in radians)."""
    forward, right, up = camera_basis(yaw, pitch, roll, xp)
    f = focal_length(fov_x, width, xp)
    x = xp.arange(width) + offset - width / 2
    y = height / 2 - xp.arange(height) - offset
    rays = (
        f * forward[None, None, :]
        + x[None, :, None] * right[None, None, :]
        + y[:, None, None] * up[None, None, :]
    )
    return normalize(rays, xp)


def direction_to_perspective_pixel(d, fov_x, yaw, pitch, roll, height: int, width: int, xp=np):
    """Continuous pixel coordinates (row, col) of directions in a camera, and `in_front` (z > 0)."""
    forward, right, up = camera_basis(yaw, pitch, roll, xp)
    z = d @ forward
    in_front = z > 1e-9
    z_safe = xp.where(in_front, z, 1.0)
    f = focal_length(fov_x, width, xp)
    col = f * (d @ right) / z_safe + width / 2 - 0.5
    row = height / 2 - f * (d @ up) / z_safe - 0.5
    return row, col, in_front


# Cube faces --------------------------------------------------------------------------------------


def cube_face_directions(face_size: int) -> np.ndarray:
    """Unit directions `(6, a, a, 3)` of cube face pixel centres, faces in order F R B L U D."""
    a = face_size
    s = 2 * (np.arange(a) + 0.5) / a - 1
    t = 1 - 2 * (np.arange(a) + 0.5) / a
    t, s = np.meshgrid(t, s, indexing="ij")
    points = []
    for name in FACE_NAMES:
        c, r, u = face_basis(name)
        points.append(c + s[..., None] * r + t[..., None] * u)
    return normalize(np.stack(points))


def direction_to_cube(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face index (order F R B L U D) and face-local (s, t) of directions (numpy)."""
    bases = np.stack([face_basis(n) for n in FACE_NAMES]).astype(np.float64)  # (6, 3, 3)
    along = d @ bases[:, 0].T  # (..., 6): component along each face centre
    face = np.argmax(along, axis=-1)
    basis = bases[face]  # (..., 3, 3)
    depth = np.take_along_axis(along, face[..., None], axis=-1)[..., 0]
    s = np.einsum("...k,...k->...", d, basis[..., 1, :]) / depth
    t = np.einsum("...k,...k->...", d, basis[..., 2, :]) / depth
    return face, s, t
