"""The training condition: a random perspective view of a panoramic clip, placed on the map.

ViewPoint learns to outpaint a perspective video into a panorama. For training, the perspective
video is cut out of the panoramic clip itself: a camera with a random field of view, yaw, pitch
(and roll) renders the ERP clip into a perspective video (`erp_to_perspective`), which is then
projected back onto the ViewPoint map with the mask of the pixels it covers
(`perspective_to_viewpoint`, spec section 5). Outside the mask the condition is 0.

The sampling of a view is a pure function of a `np.random.Generator`; the rendering is a pure
jax function of the clip and the (traced) angles, so one compiled program serves every view.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax import geometry


@dataclasses.dataclass(frozen=True)
class ConditionView:
    """A perspective camera: horizontal field of view and orientation, in degrees."""

    fov_deg: float
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0

    def as_array(self) -> np.ndarray:
        """`(4,)` float32: fov, yaw, pitch, roll."""
        return np.asarray([self.fov_deg, self.yaw_deg, self.pitch_deg, self.roll_deg], np.float32)


def _check_range(value: Sequence[float], name: str, lo: float, hi: float) -> tuple[float, float]:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ValueError(
            f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {value}"
        )
    return float(value[0]), float(value[1])


def sample_view(
    rng: np.random.Generator,
    fov_range: Sequence[float] = (60.0, 120.0),
    yaw_range: Sequence[float] = (-180.0, 180.0),
    pitch_range: Sequence[float] = (-30.0, 30.0),
    roll_range: Sequence[float] = (0.0, 0.0),
) -> ConditionView:
    """A view with each angle uniform in its range (degrees; fov horizontal, in (0, 180))."""
    fov = _check_range(fov_range, "condition_fov_range", 1e-3, 179.0)
    yaw = _check_range(yaw_range, "condition_yaw_range", -360.0, 360.0)
    pitch = _check_range(pitch_range, "condition_pitch_range", -90.0, 90.0)
    roll = _check_range(roll_range, "condition_roll_range", -180.0, 180.0)
    return ConditionView(*(float(rng.uniform(lo, hi)) for lo, hi in (fov, yaw, pitch, roll)))


def condition_size(erp_height: int, aspect: float = 16 / 9) -> tuple[int, int]:
    """Default perspective size (h, w): h = ERP height / 2, w = h * aspect, both even.

    With a 90 degree view this samples the ERP at about its own resolution near the view centre.
    """
    height = max(2, 2 * round(erp_height / 4))
    return height, max(2, 2 * round(height * aspect / 2))


def render_condition(
    erp: jax.Array, view: jax.Array, map_size: int, out_hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Perspective clip of the ERP clip and its projection onto the map.

    Args:
      erp: `(..., H, 2H, C)` float ERP frames (any leading dims, e.g. frames).
      view: `(4,)` fov, yaw, pitch, roll in degrees (may be traced).
      map_size: M, the side of the ViewPoint map.
      out_hw: (h, w) of the perspective clip.

    Returns:
      perspective `(..., h, w, C)`, condition map `(..., M, M, C)` (0 outside the mask), mask
      `(..., M, M, 1)` (1 where the view covers the map pixel, else 0).
    """
    fov, yaw, pitch, roll = (view[i] for i in range(4))
    perspective = geometry.erp_to_perspective(erp, fov, yaw, pitch, roll, out_hw=out_hw)
    condition, mask = geometry.perspective_to_viewpoint(
        perspective, fov, yaw, pitch, roll, map_size
    )
    return perspective, condition, mask


@functools.partial(jax.jit, static_argnames=("map_size", "out_hw"))
def target_and_condition(
    erp: jax.Array, view: jax.Array, map_size: int, out_hw: tuple[int, int]
) -> dict[str, jax.Array]:
    """ERP clip `(F, H, 2H, 3)` float -> target map, perspective clip, condition map and mask.

    Returns a dict: target_map `(F, M, M, 3)`, perspective `(F, h, w, 3)`, condition_map
    `(F, M, M, 3)`, condition_mask `(F, M, M, 1)`; one compiled program per clip shape.
    """
    target = geometry.erp_to_viewpoint(erp, map_size)
    perspective, condition, mask = render_condition(erp, view, map_size, out_hw)
    return {
        "target_map": target,
        "perspective": perspective,
        "condition_map": condition,
        "condition_mask": mask,
    }


def condition_from_perspective(
    perspective: jax.Array, view: ConditionView, map_size: int
) -> tuple[jax.Array, jax.Array]:
    """A user's perspective clip `(..., h, w, 3)` -> (condition map, mask) for sampling."""
    return geometry.perspective_to_viewpoint(
        perspective, view.fov_deg, view.yaw_deg, view.pitch_deg, view.roll_deg, map_size
    )


def mask_on_map(view: ConditionView, out_hw: tuple[int, int], map_size: int) -> jnp.ndarray:
    """`(M, M, 1)` float32 mask of the map pixels a view of size `out_hw` covers."""
    _, mask = condition_from_perspective(jnp.zeros((*out_hw, 1), jnp.float32), view, map_size)
    return mask
