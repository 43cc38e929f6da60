"""Panoramic geometry in pure jax.numpy: ERP, cube faces, perspective views, the ViewPoint map,
and the representations the DiT can see (canvas.py).

Conventions and layout: docs/viewpoint-map.md.
"""

from viewpoint_jax.geometry.canvas import Representation, canvas_size
from viewpoint_jax.geometry.projections import (
    canvas_to_erp,
    cubemap_to_erp,
    erp_to_canvas,
    erp_to_cubemap,
    erp_to_perspective,
    erp_to_viewpoint,
    fuse_overlaps,
    perspective_to_canvas,
    perspective_to_erp,
    perspective_to_viewpoint,
    viewpoint_directions,
    viewpoint_to_erp,
)
from viewpoint_jax.geometry.sphere import (
    FACE_NAMES,
    camera_basis,
    cube_face_directions,
    erp_directions,
    perspective_directions,
)
from viewpoint_jax.geometry.viewpoint_map import SUBREGIONS, subregion_index, subregion_slices

__all__ = [
    "FACE_NAMES",
    "SUBREGIONS",
    "Representation",
    "camera_basis",
    "canvas_size",
    "canvas_to_erp",
    "cube_face_directions",
    "cubemap_to_erp",
    "erp_directions",
    "erp_to_canvas",
    "erp_to_cubemap",
    "erp_to_perspective",
    "erp_to_viewpoint",
    "fuse_overlaps",
    "perspective_directions",
    "perspective_to_canvas",
    "perspective_to_erp",
    "perspective_to_viewpoint",
    "subregion_index",
    "subregion_slices",
    "viewpoint_directions",
    "viewpoint_to_erp",
]
