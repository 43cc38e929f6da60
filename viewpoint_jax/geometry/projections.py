"""Public projections between ERP, cube faces, perspective views and the ViewPoint map.

Images are channels last with any leading (batch, frame) dimensions: `(..., H, W, C)`. Float in ->
same float out; integer (uint8) in -> rounded, clipped integer out. Angles are in degrees.

Each function looks up a `ResamplePlan` cached on its static configuration (sizes, angles, mode)
and applies it: a 49-frame clip is one gather-and-blend program. Perspective functions also take
traced angles (e.g. random condition views inside a jitted step); their sampling grid is then
computed inside the program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax.geometry import canvas, sampling, sphere, viewpoint_map
from viewpoint_jax.geometry.canvas import Representation

MODES = ("bilinear", "nearest")


# Validation --------------------------------------------------------------------------------------


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_images(x, name: str, extra_rank: int = 0):
    """Validates `(..., H, W, C)` images (plus `extra_rank` dims before H); returns an array."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim < 3 + extra_rank:
        layout = "(..., 6, a, a, C)" if extra_rank else "(..., H, W, C)"
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}")
    dtype = np.dtype(x.dtype)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{name} must hold floats or integers, got dtype {dtype}")
    if jnp.issubdtype(dtype, jnp.floating) and not isinstance(x, jax.core.Tracer):
        if not np.isfinite(np.asarray(x, dtype=np.float32)).all():
            raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return x


def _check_erp(erp, name: str = "erp"):
    erp = _check_images(erp, name)
    height, width = erp.shape[-3:-1]
    if width != 2 * height:
        raise ValueError(
            f"{name} must be an ERP image with width = 2 * height, got {height}x{width}"
        )
    return erp


def _check_map(vp, name: str = "vp"):
    vp = _check_images(vp, name)
    height, width = vp.shape[-3:-1]
    if height != width or height % 2:
        raise ValueError(f"{name} must be a square map of even side, got {height}x{width}")
    return vp


def _check_size(value, name: str, even: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if even and value % 2:
        raise ValueError(f"{name} must be even, got {value}")
    return int(value)


def _check_erp_size(height, width) -> tuple[int, int]:
    height = _check_size(height, "height")
    width = 2 * height if width is None else _check_size(width, "width")
    if width != 2 * height:
        raise ValueError(f"width must be 2 * height for an ERP image, got {height}x{width}")
    return height, width


def _check_hw(out_hw, name: str = "out_hw") -> tuple[int, int]:
    if not isinstance(out_hw, tuple | list) or len(out_hw) != 2:
        raise ValueError(f"{name} must be a pair (height, width), got {out_hw!r}")
    return _check_size(out_hw[0], f"{name}[0]"), _check_size(out_hw[1], f"{name}[1]")


def _static_float(value):
    """The value as a Python float, or None when it is traced (only known inside a program)."""
    try:
        return float(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None
    except TypeError as error:
        raise ValueError(f"angles must be scalars, got {value!r}") from error


def _angles(fov_deg, yaw_deg, pitch_deg, roll_deg):
    """Static (float) angles, or None if any is traced; validates the concrete ones."""
    names = ("fov_deg", "yaw_deg", "pitch_deg", "roll_deg")
    values = [_static_float(v) for v in (fov_deg, yaw_deg, pitch_deg, roll_deg)]
    for name, value in zip(names, values):
        if value is not None and not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if values[0] is not None and not 0 < values[0] < 180:
        raise ValueError(f"fov_deg must be in (0, 180) degrees, got {values[0]}")
    return None if any(v is None for v in values) else tuple(values)


# Plans -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def viewpoint_directions_np(map_size: int) -> np.ndarray:
    return viewpoint_map.map_directions(map_size)


@functools.lru_cache(maxsize=16)
def canvas_directions_np(representation: Representation, hw: tuple[int, int]) -> np.ndarray:
    """`canvas.canvas_directions`, cached (the map's shared with `viewpoint_directions_np`)."""
    if representation == Representation.VIEWPOINT:
        return viewpoint_directions_np(hw[0])
    return canvas.canvas_directions(representation, hw)


@functools.lru_cache(maxsize=16)
def _erp_to_canvas_plan(height: int, width: int, representation, out_hw, mode: str):
    directions = canvas_directions_np(representation, out_hw)
    row, col = sphere.direction_to_erp_pixel(directions, height, width)
    idx, w = sampling.erp_taps(row, col, height, width, mode)
    return sampling.make_plan(idx, w, (height, width), out_hw)


def _map_copy_taps(copies: viewpoint_map.Copies, map_size: int, mode: str, snap: bool):
    """Taps `(..., 4 * K)` blending every copy of each point with its fusion weight.

    D copies sample across subregion borders (the four D quarters are one continuous, linear
    diamond in the map); other copies clamp to their own subregion.
    """
    r = map_size // 2
    all_idx, all_w = [], []
    for k, sub in enumerate(viewpoint_map.SUBREGIONS):
        row, col = copies.row[..., k], copies.col[..., k]
        if snap:
            row, col = sampling.snap_to_pixels(row), sampling.snap_to_pixels(col)
        down = copies.in_down[..., k]
        lo_r, lo_c = sub.block[0] * r, sub.block[1] * r
        idx, w = sampling.clamped_taps(
            row,
            col,
            np.where(down, 0, lo_r),
            np.where(down, map_size - 1, lo_r + r - 1),
            np.where(down, 0, lo_c),
            np.where(down, map_size - 1, lo_c + r - 1),
            map_size,
            mode,
        )
        all_idx.append(idx)
        all_w.append(w * copies.weight[..., k, None])
    return np.concatenate(all_idx, axis=-1), np.concatenate(all_w, axis=-1)


@functools.lru_cache(maxsize=16)
def _map_to_erp_plan(map_size: int, height: int, width: int, mode: str):
    copies = viewpoint_map.direction_to_copies(sphere.erp_directions(height, width), map_size)
    idx, w = _map_copy_taps(copies, map_size, mode, snap=False)
    return sampling.make_plan(idx, w, (map_size, map_size), (height, width))


@functools.lru_cache(maxsize=16)
def _fuse_plan(map_size: int):
    copies = viewpoint_map.direction_to_copies(viewpoint_directions_np(map_size), map_size)
    idx, w = _map_copy_taps(copies, map_size, "bilinear", snap=True)
    return sampling.make_plan(idx, w, (map_size, map_size), (map_size, map_size))


@functools.lru_cache(maxsize=16)
def _erp_to_cube_plan(height: int, width: int, face_size: int, mode: str):
    row, col = sphere.direction_to_erp_pixel(sphere.cube_face_directions(face_size), height, width)
    idx, w = sampling.erp_taps(row, col, height, width, mode)
    return sampling.make_plan(idx, w, (height, width), (6 * face_size, face_size))


def _cube_pixel(face: np.ndarray, i: np.ndarray, j: np.ndarray, a: int) -> np.ndarray:
    """Flat index into stacked faces `(6 a, a)` of face pixel (i, j), which may lie one pixel
    outside its face: such a tap is the nearest pixel on the neighbouring face."""
    outside = (i < 0) | (i >= a) | (j < 0) | (j >= a)
    bases = np.stack([sphere.face_basis(n) for n in sphere.FACE_NAMES]).astype(np.float64)[face]
    s = 2 * (j + 0.5) / a - 1
    t = 1 - 2 * (i + 0.5) / a
    point = bases[..., 0, :] + s[..., None] * bases[..., 1, :] + t[..., None] * bases[..., 2, :]
    other, s2, t2 = sphere.direction_to_cube(point)
    i2 = np.clip(np.floor((1 - t2) * a / 2), 0, a - 1).astype(np.int64)
    j2 = np.clip(np.floor((s2 + 1) * a / 2), 0, a - 1).astype(np.int64)
    face = np.where(outside, other, face)
    i = np.where(outside, i2, i)
    j = np.where(outside, j2, j)
    return (face * a + i) * a + j


@functools.lru_cache(maxsize=16)
def _cube_to_erp_plan(face_size: int, height: int, width: int, mode: str):
    a = face_size
    face, s, t = sphere.direction_to_cube(sphere.erp_directions(height, width))
    row = np.clip((1 - t) * a / 2 - 0.5, -0.5, a - 0.5)
    col = np.clip((s + 1) * a / 2 - 0.5, -0.5, a - 0.5)
    if mode == "nearest":
        i = np.clip(np.floor(row + 0.5), 0, a - 1).astype(np.int64)
        j = np.clip(np.floor(col + 0.5), 0, a - 1).astype(np.int64)
        idx, w = ((face * a + i) * a + j)[..., None], np.ones((*row.shape, 1))
    else:
        i0, j0 = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
        fy, fx = row - i0, col - j0
        idx = np.stack(
            [_cube_pixel(face, i0 + di, j0 + dj, a) for di in (0, 1) for dj in (0, 1)], axis=-1
        )
        w = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=-1)
    return sampling.make_plan(idx, w, (6 * a, a), (height, width))


def _perspective_taps(d, fov_deg, yaw_deg, pitch_deg, roll_deg, h: int, w: int, mode, xp):
    """Taps sampling an h x w perspective image at directions `d`, and its coverage mask."""
    fov, yaw, pitch, roll = (xp.deg2rad(v) for v in (fov_deg, yaw_deg, pitch_deg, roll_deg))
    row, col, in_front = sphere.direction_to_perspective_pixel(d, fov, yaw, pitch, roll, h, w, xp)
    mask = in_front & (row >= -0.5) & (row <= h - 0.5) & (col >= -0.5) & (col <= w - 0.5)
    idx, weights = sampling.clamped_taps(row, col, 0, h - 1, 0, w - 1, w, mode, xp)
    return idx, weights * mask[..., None], mask


@functools.lru_cache(maxsize=64)
def _erp_to_perspective_plan(height, width, angles, out_hw, mode):
    d = sphere.perspective_directions(*np.deg2rad(angles), *out_hw)
    row, col = sphere.direction_to_erp_pixel(d, height, width)
    idx, w = sampling.erp_taps(row, col, height, width, mode)
    return sampling.make_plan(idx, w, (height, width), out_hw)


@functools.lru_cache(maxsize=64)
def _perspective_to_grid_plan(in_hw, angles, target: Representation, out_hw, mode):
    """Plan and mask `(H_out, W_out)` from a perspective image onto a frame of `target`."""
    d = canvas_directions_np(target, out_hw)
    idx, w, mask = _perspective_taps(d, *angles, *in_hw, mode, np)
    return sampling.make_plan(idx, w, in_hw, out_hw), mask


# Public API --------------------------------------------------------------------------------------


def viewpoint_directions(map_size: int = 640) -> jax.Array:
    """Unit directions `(M, M, 3)` (float32) of the ViewPoint map's pixel centres."""
    return jnp.asarray(viewpoint_directions_np(viewpoint_map.check_map_size(map_size)), jnp.float32)


def erp_to_viewpoint(erp: jax.Array, map_size: int = 640, *, mode: str = "bilinear") -> jax.Array:
    """ERP `(..., H, 2H, C)` -> ViewPoint map `(..., M, M, C)`."""
    map_size = viewpoint_map.check_map_size(map_size)
    return erp_to_canvas(erp, Representation.VIEWPOINT, (map_size, map_size), mode=mode)


def viewpoint_to_erp(
    vp: jax.Array, height: int, width: int | None = None, *, mode: str = "bilinear"
) -> jax.Array:
    """ViewPoint map `(..., M, M, C)` -> ERP `(..., H, W, C)`, blending overlapping copies.

    Each ERP pixel is the fusion-weighted blend (spec section 4) of every map copy of its
    direction; `width` defaults to 2 * height.
    """
    vp = _check_map(vp)
    height, width = _check_erp_size(height, width)
    plan = _map_to_erp_plan(vp.shape[-2], height, width, _check_mode(mode))
    return sampling.resample(vp, plan)


def fuse_overlaps(vp: jax.Array) -> jax.Array:
    """Map -> map, every duplicated region replaced by the weighted blend of its copies.

    Works at any even resolution (also latents, e.g. 80 or 10): copies at non-integer positions
    are sampled bilinearly. Exactly idempotent where copies correspond pixel for pixel (side
    faces when M / 2 is even, single-copy regions); approximately so in U.
    """
    vp = _check_map(vp)
    return sampling.resample(vp, _fuse_plan(vp.shape[-2]))


def erp_to_cubemap(erp: jax.Array, face_size: int, *, mode: str = "bilinear") -> jax.Array:
    """ERP `(..., H, 2H, C)` -> cube faces `(..., 6, a, a, C)` in the order F R B L U D."""
    erp = _check_erp(erp)
    face_size = _check_size(face_size, "face_size")
    height, width = erp.shape[-3:-1]
    stacked = sampling.resample(erp, _erp_to_cube_plan(height, width, face_size, _check_mode(mode)))
    return stacked.reshape((*stacked.shape[:-3], 6, face_size, face_size, stacked.shape[-1]))


def cubemap_to_erp(
    faces: jax.Array, height: int, width: int | None = None, *, mode: str = "bilinear"
) -> jax.Array:
    """Cube faces `(..., 6, a, a, C)` (order F R B L U D) -> ERP `(..., H, W, C)`.

    Bilinear taps that fall off a face read the nearest pixel of the neighbouring face.
    """
    faces = _check_images(faces, "faces", extra_rank=1)
    if faces.shape[-4] != 6 or faces.shape[-3] != faces.shape[-2]:
        raise ValueError(f"faces must have shape (..., 6, a, a, C), got {tuple(faces.shape)}")
    height, width = _check_erp_size(height, width)
    a = faces.shape[-2]
    stacked = faces.reshape((*faces.shape[:-4], 6 * a, a, faces.shape[-1]))
    return sampling.resample(stacked, _cube_to_erp_plan(a, height, width, _check_mode(mode)))


def erp_to_perspective(
    erp: jax.Array,
    fov_deg: float,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    out_hw: tuple[int, int] = (480, 640),
    *,
    mode: str = "bilinear",
) -> jax.Array:
    """ERP `(..., H, 2H, C)` -> perspective view `(..., h, w, C)`; `fov_deg` is horizontal."""
    erp = _check_erp(erp)
    out_hw = _check_hw(out_hw)
    mode = _check_mode(mode)
    height, width = erp.shape[-3:-1]
    angles = _angles(fov_deg, yaw_deg, pitch_deg, roll_deg)
    if angles is not None:
        return sampling.resample(erp, _erp_to_perspective_plan(height, width, angles, out_hw, mode))
    radians = [
        jnp.deg2rad(jnp.asarray(v, jnp.float32)) for v in (fov_deg, yaw_deg, pitch_deg, roll_deg)
    ]
    d = sphere.perspective_directions(*radians, *out_hw, xp=jnp)
    row, col = sphere.direction_to_erp_pixel(d, height, width, xp=jnp)
    idx, w = sampling.erp_taps(row, col, height, width, mode, xp=jnp)
    return sampling.resample_taps(erp, idx, w, (height, width), out_hw)


def _perspective_to_grid(img, fov_deg, yaw_deg, pitch_deg, roll_deg, target, out_hw, mode):
    img = _check_images(img, "img")
    mode = _check_mode(mode)
    in_hw = tuple(img.shape[-3:-1])
    angles = _angles(fov_deg, yaw_deg, pitch_deg, roll_deg)
    if angles is not None:
        plan, mask = _perspective_to_grid_plan(in_hw, angles, target, out_hw, mode)
        out = sampling.resample(img, plan)
        mask = jnp.asarray(mask)
    else:
        d = jnp.asarray(canvas_directions_np(target, out_hw), jnp.float32)
        angles = [jnp.asarray(v, jnp.float32) for v in (fov_deg, yaw_deg, pitch_deg, roll_deg)]
        idx, w, mask = _perspective_taps(d, *angles, *in_hw, mode, jnp)
        out = sampling.resample_taps(img, idx, w, in_hw, out_hw)
    mask = jnp.broadcast_to(mask[..., None].astype(out.dtype), (*out.shape[:-1], 1))
    return out, mask


def perspective_to_erp(
    img: jax.Array,
    fov_deg: float,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    height: int = 512,
    width: int | None = None,
    *,
    mode: str = "bilinear",
) -> tuple[jax.Array, jax.Array]:
    """Perspective view `(..., h, w, C)` -> (ERP `(..., H, W, C)`, mask `(..., H, W, 1)`).

    The mask is 1 where the view covers the ERP pixel (same dtype as the ERP); the ERP is 0
    elsewhere.
    """
    height, width = _check_erp_size(height, width)
    return _perspective_to_grid(
        img, fov_deg, yaw_deg, pitch_deg, roll_deg, Representation.ERP, (height, width), mode
    )


def perspective_to_viewpoint(
    img: jax.Array,
    fov_deg: float,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    map_size: int = 640,
    *,
    mode: str = "bilinear",
) -> tuple[jax.Array, jax.Array]:
    """Perspective view `(..., h, w, C)` -> (map `(..., M, M, C)`, mask `(..., M, M, 1)`).

    One resampling straight onto the map (spec section 5). The mask is 1 on map pixels the view
    covers (same dtype as the map); the map is 0 elsewhere.
    """
    map_size = viewpoint_map.check_map_size(map_size)
    canvas_hw = (map_size, map_size)
    return perspective_to_canvas(
        img, fov_deg, yaw_deg, pitch_deg, roll_deg, Representation.VIEWPOINT, canvas_hw, mode=mode
    )


# Any representation (canvas.py) --------------------------------------------------------------------


def erp_to_canvas(
    erp: jax.Array,
    representation: Representation,
    canvas_hw: tuple[int, int],
    *,
    mode: str = "bilinear",
) -> jax.Array:
    """ERP `(..., H, 2H, C)` -> frames `(..., h, w, C)` of `representation` at `canvas_hw`
    (`canvas.canvas_size`): the ViewPoint map, an ERP of another size, or the cube raster."""
    erp = _check_erp(erp)
    representation = Representation(representation)
    out_hw = canvas.check_canvas_hw(representation, _check_hw(canvas_hw, "canvas_hw"))
    height, width = erp.shape[-3:-1]
    plan = _erp_to_canvas_plan(height, width, representation, out_hw, _check_mode(mode))
    return sampling.resample(erp, plan)


def canvas_to_erp(
    frames: jax.Array,
    representation: Representation,
    height: int,
    width: int | None = None,
    *,
    mode: str = "bilinear",
) -> jax.Array:
    """Frames `(..., h, w, C)` of `representation` -> ERP `(..., H, W, C)`.

    The ViewPoint map blends its overlapping copies (`viewpoint_to_erp`); the cube raster reads
    across face edges (`cubemap_to_erp`); an ERP is resampled, wrapping around horizontally.
    """
    frames = _check_images(frames, "frames")
    representation = Representation(representation)
    canvas.check_canvas_hw(representation, frames.shape[-3:-1])
    if representation == Representation.VIEWPOINT:
        return viewpoint_to_erp(frames, height, width, mode=mode)
    if representation == Representation.CUBE_2X3:
        return cubemap_to_erp(canvas.raster_to_faces(frames), height, width, mode=mode)
    height, width = _check_erp_size(height, width)
    return erp_to_canvas(frames, Representation.ERP, (height, width), mode=mode)


def perspective_to_canvas(
    img: jax.Array,
    fov_deg: float,
    yaw_deg: float,
    pitch_deg: float,
    roll_deg: float,
    representation: Representation,
    canvas_hw: tuple[int, int],
    *,
    mode: str = "bilinear",
) -> tuple[jax.Array, jax.Array]:
    """Perspective view `(..., h, w, C)` -> (frames `(..., H, W, C)` of `representation` at
    `canvas_hw`, mask `(..., H, W, 1)`): one resampling straight onto the frame's pixels; the
    mask is 1 where the view covers a pixel, the frames 0 elsewhere. Angles may be traced."""
    representation = Representation(representation)
    out_hw = canvas.check_canvas_hw(representation, _check_hw(canvas_hw, "canvas_hw"))
    return _perspective_to_grid(
        img, fov_deg, yaw_deg, pitch_deg, roll_deg, representation, out_hw, mode
    )
