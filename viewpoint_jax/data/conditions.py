"""The training condition: a random perspective view of a panoramic clip, placed on the map.

ViewPoint learns to outpaint a perspective video into a panorama. For training, the perspective
video is cut out of the panoramic clip itself: a camera with a random field of view, yaw, pitch
(and roll) renders the ERP clip into a perspective video (`erp_to_perspective`), which is then
projected back onto the ViewPoint map with the mask of the pixels it covers
(`perspective_to_viewpoint`, spec section 5). Outside the mask the condition is 0.

The sampling of a view is a pure function of a `np.random.Generator`; the rendering is a pure
jax function of the clip and the (traced) angles, so one compiled program serves every view.

`representation` (`config.data.representation`, geometry/canvas.py) chooses the frames the DiT
sees: the ViewPoint map (default), the ERP or the cube raster. Target, condition and mask are
rendered straight into it, at `layouts.canvas_size(representation, map_size)`; "map" in the names
below is that frame, whatever the representation.

One model serves every condition: training draws a `ConditionKind` per example from
`config.data.condition_mixture` (perspective video, none, perspective image at frame 0, a known
prefix of latent frames, several views), all expressed by the same condition map and mask.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax import geometry
from viewpoint_jax.geometry import Representation


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
    erp: jax.Array,
    view: jax.Array,
    map_size: int,
    out_hw: tuple[int, int],
    representation: Representation = Representation.VIEWPOINT,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Perspective clip of the ERP clip and its projection onto the map.

    Args:
      erp: `(..., H, 2H, C)` float ERP frames (any leading dims, e.g. frames).
      view: `(4,)` fov, yaw, pitch, roll in degrees (may be traced).
      map_size: M, the side of the ViewPoint map (it sizes every representation's frame).
      out_hw: (h, w) of the perspective clip.
      representation: the frames it is projected onto (module docstring).

    Returns:
      perspective `(..., h, w, C)`, condition map `(..., Hm, Wm, C)` (0 outside the mask), mask
      `(..., Hm, Wm, 1)` (1 where the view covers the pixel, else 0); (Hm, Wm) = (M, M) for the
      ViewPoint map, `layouts.canvas_size(representation, M)` in general.
    """
    fov, yaw, pitch, roll = (view[i] for i in range(4))
    perspective = geometry.erp_to_perspective(erp, fov, yaw, pitch, roll, out_hw=out_hw)
    canvas_hw = geometry.canvas_size(representation, map_size)
    condition, mask = geometry.perspective_to_canvas(
        perspective, fov, yaw, pitch, roll, representation, canvas_hw
    )
    return perspective, condition, mask


@functools.partial(jax.jit, static_argnames=("map_size", "out_hw", "representation"))
def target_and_condition(
    erp: jax.Array,
    view: jax.Array,
    map_size: int,
    out_hw: tuple[int, int],
    representation: Representation = Representation.VIEWPOINT,
) -> dict[str, jax.Array]:
    """ERP clip `(F, H, 2H, 3)` float -> target map, perspective clip, condition map and mask.

    Returns a dict: target_map `(F, Hm, Wm, 3)`, perspective `(F, h, w, 3)`, condition_map
    `(F, Hm, Wm, 3)`, condition_mask `(F, Hm, Wm, 1)` ((Hm, Wm) as in `render_condition`); one
    compiled program per clip shape.
    """
    target = geometry.erp_to_canvas(
        erp, representation, geometry.canvas_size(representation, map_size)
    )
    perspective, condition, mask = render_condition(erp, view, map_size, out_hw, representation)
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


# Condition kinds and their mixture ----------------------------------------------------------------


class ConditionKind(enum.IntEnum):
    """What part of the target is known to the model (the mask channel says where).

    PERSPECTIVE_VIDEO: one perspective view over every frame (the paper's condition).
    NONE: nothing known; mask 0 and condition 0 (text-to-360).
    PERSPECTIVE_IMAGE: one perspective view at frame 0 only (image-to-360 video).
    PREFIX: the first k latent frames of the panorama fully known (continuation, long videos).
    MULTI_VIEW: 2 to `MAX_VIEWS` perspective views over every frame (union of their masks).

    The int value is what batches carry (`condition_kind`, int32); the lower-case name is the key
    of `config.data.condition_mixture`.
    """

    PERSPECTIVE_VIDEO = 0
    NONE = 1
    PERSPECTIVE_IMAGE = 2
    PREFIX = 3
    MULTI_VIEW = 4

    @property
    def key(self) -> str:
        return self.name.lower()


# This project's extension (the paper trains perspective_video alone, configs/wan.py's default):
# the paper's condition stays the majority; the rest teach the other uses of the mask channel.
DEFAULT_CONDITION_MIXTURE = {
    "perspective_video": 0.7,
    "none": 0.1,
    "perspective_image": 0.1,
    "prefix": 0.05,
    "multi_view": 0.05,
}
MAX_VIEWS = 3  # views rendered per example: multi_view uses 2..MAX_VIEWS, the others 0 or 1


def parse_mixture(mixture: Mapping[str, float]) -> dict[ConditionKind, float]:
    """`config.data.condition_mixture` (kind name -> weight) -> {kind: probability}.

    Kinds left out weigh 0. ValueError naming the key for an unknown kind, a negative or
    non-finite weight, or weights that sum to 0.
    """
    names = {kind.key: kind for kind in ConditionKind}
    weights = {}
    for name, weight in dict(mixture).items():
        if name not in names:
            raise ValueError(
                f"config.data.condition_mixture.{name}: unknown condition kind; the kinds are "
                f"{sorted(names)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"config.data.condition_mixture.{name}: a number, got {weight!r}")
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"config.data.condition_mixture.{name}: must be >= 0, got {weight}")
        weights[names[name]] = float(weight)
    total = sum(weights.values())
    if not total > 0:
        raise ValueError(f"config.data.condition_mixture: weights must sum to > 0, got {mixture}")
    return {kind: weight / total for kind, weight in weights.items() if weight > 0}


def allowed_mixture(
    mixture: dict[ConditionKind, float], num_latent_frames: int
) -> dict[ConditionKind, float]:
    """The mixture restricted to the kinds a clip of `num_latent_frames` can have, renormalised.

    A prefix needs at least 2 latent frames (one known, one to generate); for a single frame a
    perspective image is a perspective video. ValueError when no kind with weight is left.
    """
    allowed = dict(mixture)
    if num_latent_frames < 2:
        allowed.pop(ConditionKind.PREFIX, None)
    total = sum(allowed.values())
    if not total > 0:
        raise ValueError(
            f"config.data.condition_mixture: {[k.key for k in mixture]} leaves no kind for "
            f"clips of {num_latent_frames} latent frame(s) (a prefix needs 2 or more)"
        )
    return {kind: weight / total for kind, weight in allowed.items()}


def sample_condition_kind(
    rng: np.random.Generator, mixture: dict[ConditionKind, float]
) -> ConditionKind:
    """One kind drawn with the mixture's probabilities (`parse_mixture` / `allowed_mixture`)."""
    kinds = list(mixture)
    if len(kinds) == 1:  # no draw: a single-kind stream (eval) keeps the generator's sequence
        return kinds[0]
    return kinds[int(rng.choice(len(kinds), p=np.asarray([mixture[k] for k in kinds])))]


def latent_frame_count(num_frames: int, temporal_factor: int) -> int:
    """Latent frames of `num_frames` pixel frames: 1 + (F - 1) / t (F must be 1 + t j)."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(f"num_frames must be 1 + {temporal_factor}k, got {num_frames}")
    return 1 + (num_frames - 1) // temporal_factor


def prefix_pixel_frames(known_latent_frames: int, temporal_factor: int) -> int:
    """Pixel frames behind the first k latent frames, as the causal VAE groups them.

    Latent frame 0 is pixel frame 0 and latent frame j >= 1 is pixel frames t j - t + 1 .. t j, so
    the first k latent frames are exactly the pixel frames 0 .. t (k - 1): 1 + t (k - 1) frames.
    """
    if known_latent_frames < 1:
        raise ValueError(f"a prefix needs at least 1 latent frame, got {known_latent_frames}")
    return 1 + temporal_factor * (known_latent_frames - 1)


def prefix_mask(num_frames: int, known_pixel_frames: int, hw: tuple[int, int]) -> np.ndarray:
    """`(F, H, W, 1)` float32: 1 on the first `known_pixel_frames` frames, 0 after."""
    mask = np.zeros((num_frames, *hw, 1), np.float32)
    mask[:known_pixel_frames] = 1.0
    return mask


@functools.partial(jax.jit, static_argnames=("map_size", "out_hw", "representation"))
def target_and_views(
    erp: jax.Array,
    views: jax.Array,
    active: jax.Array,
    map_size: int,
    out_hw: tuple[int, int],
    representation: Representation = Representation.VIEWPOINT,
) -> dict[str, jax.Array]:
    """ERP clip `(F, H, 2H, 3)` -> target map and the union of up to V perspective views.

    Args:
      erp: `(F, H, 2H, 3)` float in [-1, 1].
      views: `(V, 4)` fov, yaw, pitch, roll (degrees) of each view.
      active: `(V,)` float, 1 for the views that count, 0 for padding (V is fixed, so one
        compiled program serves every kind).
      map_size: M; out_hw: (h, w) of the perspective clips; representation: the frames the
        target and condition are rendered into (module docstring).

    Returns a dict: target_map `(F, Hm, Wm, 3)`, perspective `(F, h, w, 3)` (view 0's clip),
    condition_map `(F, Hm, Wm, 3)` (where views overlap, the mean of their projections; 0 outside
    the union), condition_mask `(F, Hm, Wm, 1)` (the union of the active views' masks);
    (Hm, Wm) = `layouts.canvas_size(representation, map_size)`.
    """
    target = geometry.erp_to_canvas(
        erp, representation, geometry.canvas_size(representation, map_size)
    )
    rendered = [
        render_condition(erp, views[i], map_size, out_hw, representation)
        for i in range(views.shape[0])
    ]
    masks = jnp.stack([mask * active[i] for i, (_, _, mask) in enumerate(rendered)])
    projections = jnp.stack([condition for _, condition, _ in rendered])
    coverage = masks.sum(axis=0)
    condition = (projections * masks).sum(axis=0) / jnp.maximum(coverage, 1.0)
    return {
        "target_map": target,
        "perspective": rendered[0][0],
        "condition_map": condition,
        "condition_mask": jnp.minimum(coverage, 1.0),
    }
