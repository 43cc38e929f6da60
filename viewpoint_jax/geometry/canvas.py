"""The canvas: the 2D frame the DiT denoises, for each panorama representation (numpy, static).

A representation is how one panoramic frame is laid out on the canvas ("map" is kept for the
ViewPoint map alone):

- VIEWPOINT: the ViewPoint map, M x M (viewpoint_map.py; the paper's representation);
- ERP: the equirectangular frame, H x 2H;
- CUBE_2X3: the six cube faces of side a in a 2 x 3 raster, 2a x 3a, as CP-ICLoRA lays them
  out: F R B on the top row, L U D below, each face oriented as `erp_to_cubemap` gives it (the
  top row is continuous across both of its inner edges).

Canvas sizes (`canvas_size`): every representation of a config gets about as many pixels, hence
latent tokens, as its ViewPoint map of side M (`config.data.map_size`), with sides multiples of
`CANVAS_MULTIPLE` so the autoencoder's cells and the DiT's patches tile them (and no token of
the cube raster straddles two faces):

    ERP       H = 16 round(M / (16 sqrt 2)),  2 H^2 ~ M^2   (M 640: 448 x 896, 0.98 M^2)
    CUBE_2X3  a = 16 round(M / (16 sqrt 6)),  6 a^2 ~ M^2   (M 640: 512 x 768, 0.96 M^2)

At small M the rounding is coarse (M 64: ERP 48 x 96, 1.125 M^2; cube 64 x 96, 1.5 M^2).
"""

from __future__ import annotations

import enum

import einops
import numpy as np

from viewpoint_jax.geometry import sphere, viewpoint_map


class Representation(enum.StrEnum):
    """How a panoramic frame is laid out on the canvas (`config.data.representation`)."""

    VIEWPOINT = "viewpoint"
    ERP = "erp"
    CUBE_2X3 = "cube_2x3"


# Sides of the ERP and cube canvases are multiples of this: the Wan VAE's 8 x the DiT's 2 x 2
# patch, one latent token (also a multiple of the tiny configs' 4 x 2 and 8 x 2).
CANVAS_MULTIPLE = 16
CUBE_ROWS = 2  # the raster holds the faces in FACE_NAMES order, row-major, in 2 rows of 3
CUBE_COLUMNS = 3


def _nearest_multiple(value: float) -> int:
    return max(1, round(value / CANVAS_MULTIPLE)) * CANVAS_MULTIPLE


def canvas_size(representation: Representation | str, map_size: int) -> tuple[int, int]:
    """(H, W) of a frame of `representation` whose pixel budget matches an M x M ViewPoint map
    (module docstring); the map's own (M, M) for VIEWPOINT."""
    representation = Representation(representation)
    m = viewpoint_map.check_map_size(map_size)
    if representation == Representation.VIEWPOINT:
        return m, m
    if representation == Representation.ERP:
        height = _nearest_multiple(m / np.sqrt(2))
        return height, 2 * height
    face = _nearest_multiple(m / np.sqrt(6))
    return CUBE_ROWS * face, CUBE_COLUMNS * face


def check_canvas_hw(representation: Representation, hw: tuple[int, int], name: str = "frames"):
    """ValueError unless (H, W) is a frame shape of `representation` (square and even, 2:1,
    or 2a x 3a); returns `hw` as ints."""
    height, width = int(hw[0]), int(hw[1])
    shapes = {
        Representation.VIEWPOINT: (
            height == width and height % 2 == 0,
            "a square map of even side",
        ),
        Representation.ERP: (width == 2 * height, "an ERP frame with width = 2 * height"),
        Representation.CUBE_2X3: (
            height % 2 == 0 and 2 * width == 3 * height,
            "a 2 x 3 raster of square faces (2a x 3a)",
        ),
    }
    ok, shape = shapes[Representation(representation)]
    if not ok or height < 1:
        raise ValueError(
            f"{name} of representation {str(representation)!r} must be {shape}, "
            f"got {height}x{width}"
        )
    return height, width


def faces_to_raster(faces):
    """Cube faces `(..., 6, a, a, C)` (F R B L U D) -> the 2 x 3 raster `(..., 2a, 3a, C)`.
    numpy or jax arrays."""
    return einops.rearrange(faces, "... (r c) h w ch -> ... (r h) (c w) ch", r=CUBE_ROWS)


def raster_to_faces(raster):
    """Inverse of `faces_to_raster`: `(..., 2a, 3a, C)` -> `(..., 6, a, a, C)`."""
    return einops.rearrange(
        raster, "... (r h) (c w) ch -> ... (r c) h w ch", r=CUBE_ROWS, c=CUBE_COLUMNS
    )


def canvas_directions(representation: Representation, hw: tuple[int, int]) -> np.ndarray:
    """Unit directions `(H, W, 3)` (float64) of the pixel centres of a frame of `representation`."""
    height, width = check_canvas_hw(representation, hw)
    if representation == Representation.VIEWPOINT:
        return viewpoint_map.map_directions(height)
    if representation == Representation.ERP:
        return sphere.erp_directions(height, width)
    return faces_to_raster(sphere.cube_face_directions(height // CUBE_ROWS))
