"""Generating 360 videos with loaded `Models`: one window (`generate`), or window by window,
each knowing the last frames of the one before (`generate_long`, `continue_video`).

Each window: the conditions (`conditioning.make_conditions`), the compiled sampling loop on the
models' mesh (`denoising.sample`), wholly known latent frames re-imposed, the decode spread over
the mesh and the canvas -> ERP conversion (`decoding`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax.common import sharding, video_io
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation import conditioning, decoding
from viewpoint_jax.generation.models import Models
from viewpoint_jax.geometry import Representation

# The sampler's `progress(step)`, called on the host after each step (`denoising.denoise`).
StepCallback = Callable[[jax.Array], Any]


@dataclasses.dataclass
class Generation:
    """One result: uint8 RGB videos of the map `(F, M, M, 3)` (the frames of `representation`
    the model generated, `(F, Hm, Wm, 3)`) and of the ERP `(F, H, W, 3)`."""

    map_video: np.ndarray
    panorama: np.ndarray
    latents: np.ndarray
    settings: denoising.SampleSettings
    representation: Representation = Representation.VIEWPOINT


def generate(
    models: Models,
    prompt: str,
    settings: denoising.SampleSettings,
    *,
    negative_prompt: str = "",
    video: np.ndarray | None = None,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    num_frames: int | None = None,
    progress: StepCallback | None = None,
    image: np.ndarray | None = None,
    prefix_map: np.ndarray | None = None,
) -> Generation:
    """Prompt (+ at most one of: a perspective video `(F, h, w, 3)` uint8, F = 1 + 4k, over
    every frame; a perspective `image` `(h, w, 3)` at frame 0; the first frames of the map
    `prefix_map` `(P, M, M, 3)`, P = 1 + 4j) -> 360 video. Placement: fov/yaw/pitch/roll.

    Denoises on `models.mesh` (see `denoising.sample`); the prompts' embeddings come from
    `models.encode_prompts` (already encoded ones are reused, so a released text encoder is
    fine). Wholly known latent frames (a prefix) are re-imposed after sampling
    (`denoising.impose_known_frames`), so they are exactly the condition's latents.
    """
    data = models.config.data
    representation = data_config_lib.data_representation(data)
    context, negative_context = _contexts(models, prompt, negative_prompt)
    conditions = conditioning.make_conditions(
        models.autoencoder,
        context,
        negative_context,
        map_size=data.map_size,
        num_frames=num_frames or data.num_frames,
        video=video,
        fov_deg=fov_deg,
        yaw_deg=yaw_deg,
        pitch_deg=pitch_deg,
        roll_deg=roll_deg,
        image=image,
        prefix_map=prefix_map,
        representation=representation,
    )
    with contextlib.ExitStack() as stack:
        if models.mesh is not None:
            stack.enter_context(sharding.use_mesh(models.mesh, models.rules))
        latents = denoising.sample(
            models.model, conditions, jax.random.key(settings.seed), settings, progress=progress
        )
        latents = denoising.impose_known_frames(latents, conditions)
    map_video, panorama = decoding.decode_to_panorama(
        models.autoencoder,
        latents,
        data.erp_height,
        data.erp_width,
        representation,
        mesh=models.mesh,
    )
    return Generation(
        map_video=video_io.to_uint8(map_video[0]),
        panorama=video_io.to_uint8(panorama[0]),
        latents=np.asarray(latents),
        settings=settings,
        representation=representation,
    )


def _contexts(models: Models, prompt: str, negative_prompt: str) -> tuple[jax.Array, jax.Array]:
    """Text embeddings `(1, L, D)` of the prompt and of the negative prompt
    (`Models.encode_prompts`: each encoded once, usable after the encoder is released)."""
    context, negative_context = models.encode_prompts([prompt, negative_prompt])[:, None]
    return context, negative_context


@dataclasses.dataclass
class LongGeneration:
    """A video generated window by window (`generate_long`, `continue_video`).

    map_video `(N, M, M, 3)` (the frames of `representation`) and panorama `(N, H, W, 3)` uint8;
    window_latents: each window's sampled latents `(1, f, h, w, C)` (known frames re-imposed);
    window_starts: the output frame at which each window's frame 0 lies; settings: the first
    window's (window i is seeded with `fold_in(key(seed), i)`).
    """

    map_video: np.ndarray
    panorama: np.ndarray
    window_latents: list[np.ndarray]
    window_starts: list[int]
    settings: denoising.SampleSettings
    representation: Representation = Representation.VIEWPOINT


def _window_frames(temporal: int, window: int, overlap_latent_frames: int) -> tuple[int, int]:
    """(latent frames of a window, pixel frames its overlap covers); ValueError naming the bad
    argument."""
    if window < 1 or (window - 1) % temporal:
        raise ValueError(f"window must be 1 + {temporal}k frames, got {window}")
    latent_frames = 1 + (window - 1) // temporal
    if not 1 <= overlap_latent_frames <= latent_frames - 1:
        raise ValueError(
            f"overlap_latent_frames must be in [1, {latent_frames - 1}] for a window of "
            f"{window} frames ({latent_frames} latent frames), got {overlap_latent_frames}"
        )
    return latent_frames, 1 + temporal * (overlap_latent_frames - 1)


def _extend_windows(
    models: Models,
    contexts: tuple[jax.Array, jax.Array],
    settings: denoising.SampleSettings,
    known_map: jax.Array,
    num_frames: int,
    *,
    window: int,
    overlap_frames: int,
    representation: Representation,
    first_window_index: int,
    progress: StepCallback | None = None,
) -> tuple[jax.Array, list[np.ndarray], list[int]]:
    """Extends the map video `known_map` `(T, Hm, Wm, 3)` in [-1, 1] (frames of the models'
    `representation`) to `num_frames` frames, one window at a time: each window knows its first
    `overlap_frames` frames (the last ones so far, as a prefix condition) and appends the rest;
    the last window is cut at `num_frames`."""
    data = models.config.data
    frames, all_latents, starts = [known_map], [], []
    total = known_map.shape[0]
    index = first_window_index
    while total < num_frames:
        prefix = jnp.concatenate(frames, axis=0)[-overlap_frames:]
        conditions = conditioning.make_conditions(
            models.autoencoder,
            *contexts,
            map_size=data.map_size,
            num_frames=window,
            prefix_map=prefix,
            representation=representation,
        )
        rng = jax.random.fold_in(jax.random.key(settings.seed), index)
        latents = denoising.sample(models.model, conditions, rng, settings, progress=progress)
        latents = denoising.impose_known_frames(latents, conditions)
        new = decoding.decode_latents(models.autoencoder, latents, mesh=models.mesh)
        new = new[0, overlap_frames:]
        frames.append(new[: num_frames - total])
        starts.append(total - overlap_frames)
        all_latents.append(np.asarray(latents))
        total += min(new.shape[0], num_frames - total)
        index += 1
    return jnp.concatenate(frames, axis=0), all_latents, starts


def generate_long(
    models: Models,
    prompt: str,
    settings: denoising.SampleSettings,
    *,
    num_frames: int,
    window: int | None = None,
    overlap_latent_frames: int = 1,
    negative_prompt: str = "",
    image: np.ndarray | None = None,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    progress: StepCallback | None = None,
) -> LongGeneration:
    """A 360 video of exactly `num_frames` = 1 + 4m frames (1 + t m for temporal factor t),
    longer than the model's window, from a prompt (and optionally a perspective `image`
    `(h, w, 3)` at frame 0, placed by fov/yaw/pitch/roll).

    Stitching rule: a window has W = `window` frames (default config.data.num_frames, 1 + t(L-1)
    for L latent frames) and overlaps the previous one by k = `overlap_latent_frames` latent
    frames, i.e. P = 1 + t (k - 1) pixel frames. Window 0 gives output frames [0, W). Window
    i >= 1 starts at output frame s_i = s_{i-1} + W - P: its first P frames are the last P
    output frames so far, given to it as a known prefix through the mask channel (condition =
    their map, mask 1; their latents re-imposed after sampling); its frames P .. W-1 are
    appended. The last window is cut at `num_frames`. So no frame is duplicated or dropped, and
    each window adds W - P = t (L - k) new frames. With num_frames <= W one window is cut.
    Window i is sampled with the key `fold_in(key(settings.seed), i)`.

    The overlap is passed as pixels and re-encoded, not as the previous window's last k latents:
    those were computed by the causal VAE after earlier frames, while the prefix condition the
    model was trained on is encoded from the clip's own start (latent frame 0 = one frame).
    """
    data = models.config.data
    temporal = models.autoencoder.temporal_factor
    window = int(window or data.num_frames)
    _, overlap_frames = _window_frames(temporal, window, overlap_latent_frames)
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"num_frames must be 1 + {temporal}m, got {num_frames}")
    representation = data_config_lib.data_representation(data)
    contexts = _contexts(models, prompt, negative_prompt)
    conditions = conditioning.make_conditions(
        models.autoencoder,
        *contexts,
        map_size=data.map_size,
        num_frames=window,
        fov_deg=fov_deg,
        yaw_deg=yaw_deg,
        pitch_deg=pitch_deg,
        roll_deg=roll_deg,
        image=image,
        representation=representation,
    )
    rng = jax.random.fold_in(jax.random.key(settings.seed), 0)
    first = denoising.sample(models.model, conditions, rng, settings, progress=progress)
    first_map = decoding.decode_latents(models.autoencoder, first, mesh=models.mesh)
    first_map = first_map[0, :num_frames]
    map_video, window_latents, starts = _extend_windows(
        models, contexts, settings, first_map, num_frames, window=window,
        overlap_frames=overlap_frames, representation=representation, first_window_index=1,
        progress=progress,
    )  # fmt: skip
    panorama = decoding.canvas_to_panorama(
        map_video, data.erp_height, data.erp_width, representation
    )
    return LongGeneration(
        map_video=video_io.to_uint8(map_video),
        panorama=video_io.to_uint8(panorama),
        window_latents=[np.asarray(first), *window_latents],
        window_starts=[0, *starts],
        settings=settings,
        representation=representation,
    )


def continue_video(
    models: Models,
    pano_erp_video: np.ndarray,
    prompt: str,
    settings: denoising.SampleSettings,
    *,
    num_frames: int,
    window: int | None = None,
    overlap_latent_frames: int = 1,
    negative_prompt: str = "",
    progress: StepCallback | None = None,
) -> LongGeneration:
    """Extends an existing 360 video `pano_erp_video` `(T, H, 2H, 3)` (uint8, or float in
    [-1, 1]) to `num_frames` = 1 + 4m frames in all (num_frames > T).

    The output's first T frames are the given video (panorama frames as given, in uint8, when
    at the config's ERP size, else through its map; map frames its ViewPoint map); then windows
    as in `generate_long`, window 1 knowing the last P = 1 + t (k - 1) given frames, each later
    window the last P frames so far.
    The source needs at least P frames. ValueError naming `pano_erp_video` for a video that is
    not 2:1 equirectangular, `num_frames` for a bad count.
    """
    data = models.config.data
    temporal = models.autoencoder.temporal_factor
    window = int(window or data.num_frames)
    _, overlap_frames = _window_frames(temporal, window, overlap_latent_frames)
    representation = data_config_lib.data_representation(data)
    source_map = conditioning.panorama_to_canvas(
        pano_erp_video, data.map_size, "pano_erp_video", representation=representation
    )
    source_frames = source_map.shape[0]
    if num_frames < 1 or (num_frames - 1) % temporal or num_frames <= source_frames:
        raise ValueError(
            f"num_frames must be 1 + {temporal}m and more than the {source_frames} frames of "
            f"pano_erp_video, got {num_frames}"
        )
    if source_frames < overlap_frames:
        raise ValueError(
            f"pano_erp_video has {source_frames} frames; overlap_latent_frames = "
            f"{overlap_latent_frames} needs at least {overlap_frames}"
        )
    contexts = _contexts(models, prompt, negative_prompt)
    map_video, window_latents, starts = _extend_windows(
        models, contexts, settings, source_map, num_frames, window=window,
        overlap_frames=overlap_frames, representation=representation, first_window_index=1,
        progress=progress,
    )  # fmt: skip
    new_panorama = decoding.canvas_to_panorama(
        map_video[source_frames:], data.erp_height, data.erp_width, representation
    )
    source = np.asarray(pano_erp_video)
    if source.dtype != np.uint8:
        source = video_io.to_uint8(source)
    if source.shape[1:3] != (data.erp_height, data.erp_width):  # other sizes: through its map
        source = video_io.to_uint8(
            decoding.canvas_to_panorama(source_map, data.erp_height, data.erp_width, representation)
        )
    return LongGeneration(
        map_video=video_io.to_uint8(map_video),
        panorama=np.concatenate([source, video_io.to_uint8(new_panorama)], axis=0),
        window_latents=window_latents,
        window_starts=starts,
        settings=settings,
        representation=representation,
    )
