"""What a video is conditioned on, as the sampler's `Conditions` (pure array code; the files are
read by the command and `generation/requests.py`).

`perspective_condition` projects a perspective video/image onto the map with its coverage mask;
`image_condition` knows one image at frame 0 only; `prefix_condition` knows the first frames of a
panorama in full (continuation); `panorama_to_canvas` turns an ERP video into the frames the
model denoises; `encode_condition` encodes a condition with the autoencoder and brings the mask
to latent resolution; `make_conditions` does all of it for one sample.

`representation` (`config.data.representation`, geometry/canvas.py): the "map" here is the frame
the model denoises, the ViewPoint map by default or the ERP / cube raster of about as many
pixels (`geometry.canvas_size(representation, map_size)`); conditions are projected onto it and
`decoding.canvas_to_panorama` converts it back to ERP.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax import geometry
from viewpoint_jax.diffusion.denoising import Conditions
from viewpoint_jax.generation import decoding
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models import autoencoder as autoencoder_lib


def valid_frame_count(num_frames: int, temporal_factor: int = 4) -> int:
    """The largest `1 + temporal_factor k <= num_frames` (the frame counts the causal VAE takes)."""
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    return 1 + (num_frames - 1) // temporal_factor * temporal_factor


def perspective_condition(
    video: jax.Array,
    map_size: int,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    *,
    representation: Representation = Representation.VIEWPOINT,
) -> tuple[jax.Array, jax.Array]:
    """Projects a perspective video `(F, h, w, 3)` (uint8, or float in [-1, 1]) onto the map
    (the frames of `representation`, (Hm, Wm) = `geometry.canvas_size(representation, map_size)`).

    Returns the condition video `(F, Hm, Wm, 3)` in [-1, 1], 0 outside the covered area, and the
    coverage mask `(F, Hm, Wm, 1)` in [0, 1]. `fov_deg` is the horizontal field of view.
    """
    if not 0 < fov_deg < 180:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    video = jnp.asarray(video)
    if video.dtype == jnp.uint8:
        video = video.astype(jnp.float32) / 127.5 - 1.0
    canvas_hw = geometry.canvas_size(representation, map_size)
    projected, mask = geometry.perspective_to_canvas(
        video, fov_deg, yaw_deg, pitch_deg, roll_deg, representation, canvas_hw
    )
    mask = mask.astype(jnp.float32)
    return projected * mask, mask


def encode_video(autoencoder: Any, video: jax.Array) -> jax.Array:
    """Map video `(B, F, M, M, 3)` in [-1, 1] -> latents `(B, f, M/s, M/s, C)` with the
    autoencoder's compiled encoder (one program per autoencoder, reused); a frame larger than
    `autoencoder.ENCODE_TILE` latent pixels (a 2K map) in tiles of that size, as training
    encodes it (`autoencoder.encode_tiled`)."""
    tiling = None
    if max(video.shape[2:4]) > autoencoder_lib.ENCODE_TILE * autoencoder.spatial_factor:
        tiling = decoding.Tiling(autoencoder_lib.ENCODE_TILE, autoencoder_lib.ENCODE_TILE_OVERLAP)
    # The decode's cache: one compiled program per autoencoder (replica), method and tiling.
    return decoding._jitted(autoencoder, "encode", tiling)(video)


def encode_condition(
    autoencoder: Any, condition: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Condition video `(B, F, M, M, 3)` in [-1, 1] and mask `(B, F, M, M, 1)` -> latent
    `(B, f, M/s, M/s, C)` and latent mask `(B, f, M/s, M/s, 1)` (s = spatial factor)."""
    latent = encode_video(autoencoder, condition)
    pool = functools.partial(
        autoencoder_lib.latent_mask,
        spatial_factor=autoencoder.spatial_factor,
        temporal_factor=autoencoder.temporal_factor,
    )
    return latent, jax.vmap(pool)(mask)


def _as_unit_range(video: np.ndarray | jax.Array) -> jax.Array:
    """uint8 `[0, 255]` -> float32 `[-1, 1]`; floats are taken as already in [-1, 1]."""
    video = jnp.asarray(video)
    if video.dtype == jnp.uint8:
        return video.astype(jnp.float32) / 127.5 - 1.0
    return video.astype(jnp.float32)


def image_condition(
    image: np.ndarray | jax.Array,
    map_size: int,
    num_frames: int,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    *,
    representation: Representation = Representation.VIEWPOINT,
) -> tuple[jax.Array, jax.Array]:
    """A perspective image `(h, w, 3)` known at frame 0 only (image-to-360 video).

    Returns the condition video `(F, Hm, Wm, 3)` (the projected image at frame 0, 0 elsewhere)
    and its mask `(F, Hm, Wm, 1)` (the image's coverage at frame 0, 0 on frames 1 .. F-1);
    (Hm, Wm) as in `perspective_condition`.
    """
    image = jnp.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (h, w, 3), got shape {tuple(image.shape)}")
    projected, mask = perspective_condition(
        image[None], map_size, fov_deg, yaw_deg, pitch_deg, roll_deg, representation=representation
    )
    later = num_frames - 1
    condition = jnp.concatenate([projected, jnp.zeros((later, *projected.shape[1:]))], axis=0)
    return condition, jnp.concatenate([mask, jnp.zeros((later, *mask.shape[1:]))], axis=0)


def panorama_to_canvas(
    pano_erp_video: np.ndarray | jax.Array,
    map_size: int,
    name: str = "pano_erp_video",
    *,
    representation: Representation = Representation.VIEWPOINT,
) -> jax.Array:
    """An equirectangular video `(F, H, 2H, 3)` (uint8, or float in [-1, 1]) -> its ViewPoint
    map video `(F, M, M, 3)` (the frames of `representation`, `(F, Hm, Wm, 3)`) float32 in
    [-1, 1]. ValueError naming `name` unless it is 2:1 ERP."""
    shape = tuple(np.shape(pano_erp_video))
    if len(shape) != 4 or shape[-1] != 3 or shape[2] != 2 * shape[1] or shape[0] < 1:
        raise ValueError(
            f"{name} must be a 2:1 equirectangular video (F, H, 2H, 3), got shape {shape}"
        )
    canvas_hw = geometry.canvas_size(representation, map_size)
    return geometry.erp_to_canvas(_as_unit_range(pano_erp_video), representation, canvas_hw)


def prefix_condition(
    prefix_map: np.ndarray | jax.Array, num_frames: int, temporal_factor: int
) -> tuple[jax.Array, jax.Array]:
    """The first P frames of the map known in full (continuation, long videos).

    `prefix_map` `(P, Hm, Wm, 3)` (uint8, or float in [-1, 1]) holds the known frames, with
    P = 1 + t (k - 1): exactly the pixel frames of the first k latent frames (latent frame 0 is
    frame 0, latent frame j >= 1 frames t j - t + 1 .. t j), so the pooled latent mask is 1 on the
    first k latent frames and 0 on the rest. Returns the condition video `(F, Hm, Wm, 3)` (the
    prefix, then 0) and its mask `(F, Hm, Wm, 1)` (1 on the prefix, 0 after).
    """
    prefix = _as_unit_range(prefix_map)
    known = prefix.shape[0]
    if prefix.ndim != 4 or (known - 1) % temporal_factor or not 1 <= known < num_frames:
        raise ValueError(
            f"prefix_map must be (P, Hm, Wm, 3) with P = 1 + {temporal_factor}j frames, fewer than "
            f"num_frames = {num_frames}, got shape {tuple(prefix.shape)}"
        )
    later = num_frames - known
    condition = jnp.concatenate([prefix, jnp.zeros((later, *prefix.shape[1:]))], axis=0)
    mask = jnp.zeros((num_frames, *prefix.shape[1:3], 1), jnp.float32).at[:known].set(1.0)
    return condition, mask


def make_conditions(
    autoencoder: Any,
    context: jax.Array,
    negative_context: jax.Array,
    map_size: int,
    num_frames: int,
    video: np.ndarray | None = None,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    *,
    image: np.ndarray | None = None,
    prefix_map: np.ndarray | jax.Array | None = None,
    representation: Representation = Representation.VIEWPOINT,
) -> Conditions:
    """Conditions for one sample: text `(1, L, D)` embeddings and at most one of
    - `video`: a perspective video or image `(F, h, w, 3)` uint8 over every frame, placed at
      (yaw, pitch, roll) with horizontal `fov_deg`; its frame count is used (it must be 1 + 4k);
    - `image`: a perspective image `(h, w, 3)` known at frame 0 only (`image_condition`), same
      placement, `num_frames` frames;
    - `prefix_map`: the first P = 1 + 4j frames of the map `(P, Hm, Wm, 3)` known in full
      (`prefix_condition`), `num_frames` frames.

    With none of them the map is all unknown (text-to-360): the condition is an all-zero video
    with mask 0, for `num_frames` frames. The map is the frame of `representation`, (Hm, Wm) =
    `geometry.canvas_size(representation, map_size)` ((M, M) for the ViewPoint map).
    """
    temporal = autoencoder.temporal_factor
    given = [
        n
        for n, v in (("video", video), ("image", image), ("prefix_map", prefix_map))
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of video, image, prefix_map; got {given}")
    if video is None:
        frames = valid_frame_count(num_frames, temporal)
        if frames != num_frames:
            raise ValueError(f"num_frames must be 1 + {temporal}k, got {num_frames}")
    canvas_hw = geometry.canvas_size(representation, map_size)
    place = dict(fov_deg=fov_deg, yaw_deg=yaw_deg, pitch_deg=pitch_deg, roll_deg=roll_deg)
    if image is not None:
        condition, mask = image_condition(
            image, map_size, num_frames, **place, representation=representation
        )
    elif prefix_map is not None:
        if tuple(np.shape(prefix_map))[1:] != (*canvas_hw, 3):
            raise ValueError(
                f"prefix_map must be (P, {canvas_hw[0]}, {canvas_hw[1]}, 3), got "
                f"{np.shape(prefix_map)}"
            )
        condition, mask = prefix_condition(prefix_map, num_frames, temporal)
    elif video is None:
        condition = jnp.zeros((num_frames, *canvas_hw, 3), jnp.float32)
        mask = jnp.zeros((num_frames, *canvas_hw, 1), jnp.float32)
    else:
        if (len(video) - 1) % temporal:
            raise ValueError(
                f"the condition video has {len(video)} frames; frame counts must be 1 + {temporal}k"
            )
        condition, mask = perspective_condition(
            video, map_size, **place, representation=representation
        )
    latent, mask = encode_condition(autoencoder, condition[None], mask[None])
    return Conditions(
        context=jnp.asarray(context, jnp.float32),
        negative_context=jnp.asarray(negative_context, jnp.float32),
        latent=latent.astype(jnp.float32),
        mask=mask,
    )
