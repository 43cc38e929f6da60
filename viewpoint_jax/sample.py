"""Generate a 360 video from a prompt and, optionally, a perspective video or image.

    python -m viewpoint_jax.sample --config configs/tiny.py --checkpoint runs/tiny \\
        --prompt "a quiet forest at dawn" [--video in.mp4 --fov 90 --yaw 0 --pitch 0 --roll 0] \\
        --out outputs/forest

writes, atomically (the directory appears complete or not at all):
  pano.mp4       the equirectangular video, H.264, tagged as 360 (Spherical Video V1 + V2)
  viewpoint.mp4  the ViewPoint map the model generated (a model of another
                 config.data.representation: erp.mp4 or cube_2x3.mp4, its own frames)
  faces.png      the six 90-degree views (F R B L U D) at a few times
  viewer.html    a self-contained page that plays the panorama; drag to look around
  settings.json  prompt, condition, sampler settings and seed, config and checkpoint used
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from viewpoint_jax import geometry
from viewpoint_jax.common import distributed, sharding, video_io
from viewpoint_jax.common.cli import UserError, refuse_positional, run
from viewpoint_jax.common.fileio import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    check_writable,
)
from viewpoint_jax.common.progress import Progress
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.generation import viewer
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import checkpoints

DEFAULT_FPS = 16.0  # Wan2.1's frame rate


@dataclasses.dataclass
class Models:
    """Everything generation needs: the DiT, the autoencoder, the text encoder and the config.

    mesh, rules: where the DiT's (and text encoder's) weights are sharded, by `rules`, and the
    autoencoder's replicated (`sampler.replicate`; None: one device). prompt_embeddings: prompt
    -> its `(L, D)` float32 text embeddings on the host, filled by `encode_prompts`; generation
    reads them from here, so after `release_text_encoder()` the prompts encoded before can
    still be sampled.
    """

    model: Any
    autoencoder: Any
    text_encoder: Any
    config: Any
    mesh: jax.sharding.Mesh | None = None
    rules: sharding.LogicalRules = sharding.DEFAULT_RULES
    prompt_embeddings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def encode_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> `(P, L, D)` float32 embeddings on the host (one encoder call for the ones
        not encoded yet), remembered in `prompt_embeddings`."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.prompt_embeddings]
        if missing:
            if self.text_encoder is None:
                raise ValueError(
                    f"the text encoder was released; prompt {missing[0]!r} was not encoded before "
                    "release_text_encoder() (encode every prompt first)"
                )
            embeddings, _ = self.text_encoder.encode_text(missing)
            self.prompt_embeddings.update(zip(missing, np.asarray(jax.device_get(embeddings))))
        return np.stack([self.prompt_embeddings[p] for p in prompts])

    def release_text_encoder(self) -> None:
        """Frees the text encoder's device memory (umT5-XXL: 11 GB) before denoising; the
        embeddings `encode_prompts` made stay usable."""
        if self.text_encoder is None:
            return
        for array in jax.tree.leaves(nnx.state(self.text_encoder.encoder)):
            if isinstance(array, jax.Array) and not array.is_deleted():
                array.delete()
        self.text_encoder = None

    def replica(self, mesh: jax.sharding.Mesh) -> Models:
        """These models on another group of devices, `mesh`, of the same shape: the DiT's
        weights copied device to device with the same partition specs, the autoencoder's
        replicated there, the encoded prompts shared. ValueError unless the text encoder was
        released (it is not copied: encode every prompt first)."""
        if self.text_encoder is not None:
            raise ValueError("release_text_encoder() before making a replica (encode first)")
        if self.mesh is None or dict(mesh.shape) != dict(self.mesh.shape):
            raise ValueError(f"a replica needs a mesh shaped like {self.mesh}, got {mesh}")
        graphdef, state = nnx.split(self.model)
        state = jax.device_put(
            state, jax.tree.map(lambda x: jax.sharding.NamedSharding(mesh, x.sharding.spec), state)
        )
        autoencoder = self.autoencoder
        if isinstance(autoencoder, nnx.Module):  # a new module: `replicate` updates in place
            autoencoder = nnx.merge(*nnx.split(autoencoder))
        return dataclasses.replace(
            self,
            model=nnx.merge(graphdef, state),
            autoencoder=sampler.replicate(autoencoder, mesh),
            mesh=mesh,
        )


@dataclasses.dataclass
class Generation:
    """One result: uint8 RGB videos of the map `(F, M, M, 3)` (the frames of `representation`
    the model generated, `(F, Hm, Wm, 3)`) and of the ERP `(F, H, W, 3)`."""

    map_video: np.ndarray
    panorama: np.ndarray
    latents: np.ndarray
    settings: sampler.SampleSettings
    representation: Representation = Representation.VIEWPOINT


# --- Loading -------------------------------------------------------------------------------------


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> `get_config(arg)` of that file (ml_collections style)."""
    return config_lib.load_config_file(spec)


SAMPLE_DTYPES = ("bfloat16", "float32")


def sampling_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """The default sampling mesh: FSDP over `devices` (default: this process's devices).

    Weights split over every device; the 2-sample guidance batch splits over fsdp only where it
    divides (2 devices), else each device runs the whole batch on all-gathered layer weights.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    return sharding.make_mesh({"fsdp": len(devices)}, devices)


def latent_shape(config, num_frames: int | None = None) -> tuple[int, int, int, int, int]:
    """The `(1, f, h, w, C)` map latent (of the frames of `config.data.representation`) of one
    sample of `config.data` (from the autoencoder's shapes only: no weights are read)."""
    data = config.data
    video = (1, num_frames or data.num_frames, *config_lib.canvas_hw(data), 3)
    return autoencoder_lib.latent_shape(build.abstract_autoencoder(config), video)


def load_models(
    config,
    checkpoint: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    dtype: str = "bfloat16",
) -> Models:
    """Builds the text encoder and autoencoder from `config` and restores the DiT from a training
    run directory or a converted checkpoint.

    The DiT is restored straight into shardings over `mesh` (default `sampling_mesh()`: FSDP
    over all local devices) by the config's logical-axis rules (`config.sharding_rules`: the
    width over fsdp, heads and FFN over tensor), its weights read as `dtype` ("bfloat16":
    half the memory of the fp32 checkpoint, and bf16 matmuls; "float32": both in fp32). The
    text encoder is sharded over the same mesh; `Models.release_text_encoder()` frees it once
    the prompts are encoded. The autoencoder's weights are replicated over the mesh (they are
    small), which its tiled decode is spread over (`sampler.decode_latents`).

    Raises:
      UserError: no checkpoint directory. ValueError: an unknown dtype, or a mesh that does not
        divide the DiT (heads by tensor, the config's tokens by sequence), naming the axis.
    """
    if dtype not in SAMPLE_DTYPES:
        raise ValueError(f"dtype must be one of {SAMPLE_DTYPES}, got {dtype!r}")
    if not Path(checkpoint).is_dir():
        raise UserError(f"--checkpoint: no such directory {checkpoint}")
    mesh = sampling_mesh() if mesh is None else mesh
    rules = config_lib.logical_rules(config)
    # Checked on the config's sizes before any weight is read (a 14B restore takes minutes).
    latent = latent_shape(config)
    sampler.check_mesh_fits(build.dit_config(config), mesh, latent)
    model = checkpoints.restore_model_for_inference(
        checkpoint, config, mesh=mesh, rules=rules, dtype=dtype, param_dtype=dtype
    )
    sampler.check_mesh_fits(model.config, mesh, latent)  # a checkpoint's own sizes
    return Models(
        model=model,
        autoencoder=sampler.replicate(build.build_autoencoder(config), mesh),
        text_encoder=build.build_text_encoder(config, mesh=mesh, rules=rules),
        config=config,
        mesh=mesh,
        rules=rules,
    )


# --- Generation ----------------------------------------------------------------------------------


def generate(
    models: Models,
    prompt: str,
    settings: sampler.SampleSettings,
    *,
    negative_prompt: str = "",
    video: np.ndarray | None = None,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    num_frames: int | None = None,
    progress=None,
    image: np.ndarray | None = None,
    prefix_map: np.ndarray | None = None,
) -> Generation:
    """Prompt (+ at most one of: a perspective video `(F, h, w, 3)` uint8, F = 1 + 4k, over
    every frame; a perspective `image` `(h, w, 3)` at frame 0; the first frames of the map
    `prefix_map` `(P, M, M, 3)`, P = 1 + 4j) -> 360 video. Placement: fov/yaw/pitch/roll.

    Denoises on `models.mesh` (see `sampler.sample`); the prompts' embeddings come from
    `models.encode_prompts` (already encoded ones are reused, so a released text encoder is
    fine). Wholly known latent frames (a prefix) are re-imposed after sampling
    (`sampler.impose_known_frames`), so they are exactly the condition's latents.
    """
    data = models.config.data
    representation = config_lib.data_representation(data)
    context, negative_context = _contexts(models, prompt, negative_prompt)
    conditions = sampler.make_conditions(
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
        latents = sampler.sample(
            models.model, conditions, jax.random.key(settings.seed), settings, progress=progress
        )
        latents = sampler.impose_known_frames(latents, conditions)
    map_video, panorama = sampler.decode_to_panorama(
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
    settings: sampler.SampleSettings
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
    settings: sampler.SampleSettings,
    known_map: jax.Array,
    num_frames: int,
    window: int,
    overlap_frames: int,
    first_window_index: int,
    progress=None,
) -> tuple[jax.Array, list[np.ndarray], list[int]]:
    """Extends the map video `known_map` `(T, Hm, Wm, 3)` in [-1, 1] to `num_frames` frames, one
    window at a time: each window knows its first `overlap_frames` frames (the last ones so far,
    as a prefix condition) and appends the rest; the last window is cut at `num_frames`."""
    data = models.config.data
    representation = config_lib.data_representation(data)
    frames, all_latents, starts = [known_map], [], []
    total = known_map.shape[0]
    index = first_window_index
    while total < num_frames:
        prefix = jnp.concatenate(frames, axis=0)[-overlap_frames:]
        conditions = sampler.make_conditions(
            models.autoencoder,
            *contexts,
            map_size=data.map_size,
            num_frames=window,
            prefix_map=prefix,
            representation=representation,
        )
        rng = jax.random.fold_in(jax.random.key(settings.seed), index)
        latents = sampler.sample(models.model, conditions, rng, settings, progress=progress)
        latents = sampler.impose_known_frames(latents, conditions)
        new = sampler.decode_latents(models.autoencoder, latents, mesh=models.mesh)
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
    settings: sampler.SampleSettings,
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
    progress=None,
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
    representation = config_lib.data_representation(data)
    contexts = _contexts(models, prompt, negative_prompt)
    conditions = sampler.make_conditions(
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
    first = sampler.sample(models.model, conditions, rng, settings, progress=progress)
    first_map = sampler.decode_latents(models.autoencoder, first, mesh=models.mesh)
    first_map = first_map[0, :num_frames]
    map_video, window_latents, starts = _extend_windows(
        models, contexts, settings, first_map, num_frames, window, overlap_frames, 1, progress
    )
    panorama = sampler.canvas_to_panorama(
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
    settings: sampler.SampleSettings,
    *,
    num_frames: int,
    window: int | None = None,
    overlap_latent_frames: int = 1,
    negative_prompt: str = "",
    progress=None,
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
    representation = config_lib.data_representation(data)
    source_map = sampler.panorama_to_canvas(
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
        models, contexts, settings, source_map, num_frames, window, overlap_frames, 1, progress
    )
    new_panorama = sampler.canvas_to_panorama(
        map_video[source_frames:], data.erp_height, data.erp_width, representation
    )
    source = np.asarray(pano_erp_video)
    if source.dtype != np.uint8:
        source = video_io.to_uint8(source)
    if source.shape[1:3] != (data.erp_height, data.erp_width):  # other sizes: through its map
        source = video_io.to_uint8(
            sampler.canvas_to_panorama(source_map, data.erp_height, data.erp_width, representation)
        )
    return LongGeneration(
        map_video=video_io.to_uint8(map_video),
        panorama=np.concatenate([source, video_io.to_uint8(new_panorama)], axis=0),
        window_latents=window_latents,
        window_starts=starts,
        settings=settings,
        representation=representation,
    )


# --- Outputs -------------------------------------------------------------------------------------


def faces_contact_sheet(panorama: np.ndarray, max_rows: int = 6, face_size: int = 160):
    """ERP video `(F, H, W, 3)` uint8 -> one image: a row of the six 90-degree views (F R B L U
    D) for each of up to `max_rows` evenly spaced frames, labelled."""
    frames = np.unique(np.linspace(0, len(panorama) - 1, min(max_rows, len(panorama))).round())
    frames = frames.astype(int)
    face_size = min(face_size, panorama.shape[1])
    faces = np.asarray(
        geometry.erp_to_cubemap(jnp.asarray(panorama[frames]), face_size)
    )  # (rows, 6, a, a, 3)
    gap, label_width, header = 4, 56, 22
    rows, a = len(frames), face_size
    sheet = np.full((header + rows * (a + gap), label_width + 6 * (a + gap), 3), 24, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for k, name in enumerate(geometry.FACE_NAMES):
        x = label_width + k * (a + gap) + a // 2 - 6
        cv2.putText(sheet, name, (x, 16), font, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    for r, frame in enumerate(frames):
        y = header + r * (a + gap)
        cv2.putText(sheet, f"f{frame}", (6, y + a // 2 + 5), font, 0.45, (230, 230, 230), 1)
        for k in range(6):
            x = label_width + k * (a + gap)
            sheet[y : y + a, x : x + a] = faces[r, k]
    return sheet


def condition_record(
    video: str, frames: int, fov: float, yaw: float, pitch: float, roll: float
) -> dict[str, Any]:
    """How the condition view was placed, as settings.json records it."""
    return {"video": video, "frames": frames, "fov": fov, "yaw": yaw, "pitch": pitch, "roll": roll}


def settings_record(
    generation: Generation,
    prompt: str,
    negative_prompt: str,
    condition: dict[str, Any] | None,
    fps: float,
    **extra: Any,
) -> dict[str, Any]:
    """settings.json of an output: what reproduces it (prompt, seed, sampler settings, condition)
    and what it is (frames, fps, sizes), plus `extra` (config, checkpoint, timings)."""
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": generation.settings.seed,
        "settings": generation.settings.to_dict(),
        "condition": condition,
        "frames": len(generation.panorama),
        "fps": fps,
        "panorama_size": list(generation.panorama.shape[1:3]),
        "map_size": int(generation.map_video.shape[1]),
        "representation": generation.representation.value,
        **extra,
    }


def canvas_video_name(representation: Representation) -> str:
    """The file of the frames the model generated: viewpoint.mp4 (the map), erp.mp4,
    cube_2x3.mp4."""
    return f"{Representation(representation).value}.mp4"


def write_outputs(
    out: str | os.PathLike,
    generation: Generation,
    fps: float,
    record: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Writes the five outputs into `out` (one atomic directory rename)."""
    with atomic_directory(out, overwrite=overwrite) as tmp:
        video_io.write_video(tmp / "pano.mp4", generation.panorama, fps, spherical=True)
        canvas_video = tmp / canvas_video_name(generation.representation)
        video_io.write_video(canvas_video, generation.map_video, fps)
        sheet = faces_contact_sheet(generation.panorama)
        with atomic_path(tmp / "faces.png") as path:
            if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
                raise RuntimeError(f"cannot write {path}")
        title = record.get("prompt") or "360 video"
        viewer.write_viewer(
            tmp / "viewer.html", (tmp / "pano.mp4").read_bytes(), generation.panorama[0], title
        )
        atomic_write_text(tmp / "settings.json", json.dumps(record, indent=2) + "\n")
    return Path(out)


# --- Command line --------------------------------------------------------------------------------


def define_flags() -> None:
    """The CLI's flags; defined only when this module is the program (demo imports it)."""
    config_flags.DEFINE_config_file(
        "config", None, "config file, path.py[:arg] (default: the run's RUN_DIR/config.json)"
    )
    flags.DEFINE_string("checkpoint", None, "training run directory or converted DiT directory")
    flags.DEFINE_string("prompt", None, "what the 360 video shows")
    flags.DEFINE_string(
        "prompts",
        None,
        "a JSON-lines file, one video a line: prompt and optionally name, negative_prompt, video, "
        "image, continue, fov, yaw, pitch, roll, num_frames, overlap, seed (the flags are the "
        "defaults); outputs go to --out/<name>, finished ones are skipped on a rerun",
    )
    flags.DEFINE_string("negative_prompt", "", "what it should not show")
    flags.DEFINE_string("video", None, "perspective video (or image) known at every frame")
    flags.DEFINE_string("image", None, "perspective image known at frame 0 only (image-to-360)")
    flags.DEFINE_string("continue", None, "a 360 (ERP) video to extend to --num_frames frames")
    flags.DEFINE_float("fov", 90.0, "its horizontal field of view, degrees")
    flags.DEFINE_float("yaw", 0.0, "degrees, positive turns right")
    flags.DEFINE_float("pitch", 0.0, "degrees, positive looks up")
    flags.DEFINE_float("roll", 0.0, "degrees")
    flags.DEFINE_integer(
        "num_frames",
        None,
        "frames to generate, 1 + 4k; more than the model's clip (config.data.num_frames) are "
        "made window by window (with --video: the most frames of it to use)",
    )
    flags.DEFINE_integer(
        "overlap", 1, "latent frames each window shares with the previous (long videos)"
    )
    flags.DEFINE_integer("steps", None, "sampling steps (config: sample.steps)")
    flags.DEFINE_float("shift", None, "timestep shift (config: sample.shift)")
    flags.DEFINE_float("guidance_scale", None, "classifier-free guidance scale")
    flags.DEFINE_enum("scheduler", None, ["unipc", "euler"], "sampler (config: sample.scheduler)")
    flags.DEFINE_integer("seed", 0, "noise seed")
    flags.DEFINE_bool("fuse_every_step", False, "fuse map overlaps at every step")
    flags.DEFINE_bool(
        "keep_known",
        None,
        "hold the latent cells the condition covers at its latent at every step, so the input "
        "view comes back exactly (--nokeep_known: the model repaints it; default: config "
        "sample.keep_known)",
    )
    flags.DEFINE_float("fps", None, "output frame rate (default: input's or 16)")
    for flag, key in COMPONENT_FLAGS.items():
        flags.DEFINE_string(flag, None, f"overrides config.{key}")
    flags.DEFINE_enum(
        "dtype", "bfloat16", list(SAMPLE_DTYPES), "DiT weights and matmuls (bf16: half memory)"
    )
    flags.DEFINE_string(
        "mesh", None, "device mesh, e.g. fsdp=8 or data=2,fsdp=4 (default: FSDP over all devices)"
    )
    flags.DEFINE_string("out", None, "output directory")
    flags.DEFINE_bool("overwrite", False, "replace an existing --out")
    distributed.define_flags()
    flags.mark_flags_as_required(["checkpoint", "out"])


# Flags that point the config's frozen components at files on this machine.
COMPONENT_FLAGS = {
    "vae": "autoencoder.checkpoint",
    "text_encoder": "text_encoder.checkpoint",
    "tokenizer": "text_encoder.tokenizer",
}


@dataclasses.dataclass(frozen=True)
class Request:
    """One video to generate: what the flags, or one line of a --prompts file, ask for."""

    prompt: str
    negative_prompt: str = ""
    video: str | None = None
    image: str | None = None
    continue_from: str | None = None  # the "continue" flag / key
    fov: float = 90.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    num_frames: int | None = None
    overlap: int = 1
    seed: int = 0
    fps: float | None = None
    name: str = ""

    def check(self, prefix: str = "--") -> None:
        """Cheap checks before anything heavy is loaded; messages name the flag (`prefix` "--")
        or the key of a --prompts line (`prefix` "")."""
        if not 0 < self.fov < 180:
            raise UserError(f"{prefix}fov must be in (0, 180) degrees, got {self.fov:g}")
        for name in ("yaw", "pitch", "roll"):
            if not np.isfinite(getattr(self, name)):
                raise UserError(f"{prefix}{name} must be a finite angle, got {getattr(self, name)}")
        if not -90 <= self.pitch <= 90:
            raise UserError(f"{prefix}pitch must be in [-90, 90] degrees, got {self.pitch:g}")
        if self.num_frames is not None and (self.num_frames < 1 or (self.num_frames - 1) % 4):
            raise UserError(
                f"{prefix}num_frames must be 1 + 4k (1, 5, 9, ..., 49), got {self.num_frames}"
            )
        given = [k for k, v in (("video", self.video), ("image", self.image),
                                ("continue", self.continue_from)) if v]  # fmt: skip
        if len(given) > 1:
            raise UserError(
                f"{prefix}{given[0]} and {prefix}{given[1]} cannot be combined: pick one condition"
            )
        if self.continue_from and self.num_frames is None:
            raise UserError(
                f"{prefix}continue needs {prefix}num_frames: the length of the extended video"
            )
        if self.overlap < 1:
            raise UserError(f"{prefix}overlap must be >= 1 latent frame, got {self.overlap}")
        if self.fps is not None and not self.fps > 0:
            raise UserError(f"{prefix}fps must be > 0, got {self.fps:g}")


# The keys of a --prompts line (besides "prompt") and the Request fields they set.
PROMPT_FILE_KEYS = {
    **{k: k for k in ("name", "negative_prompt", "video", "image", "fov", "yaw", "pitch")},
    **{k: k for k in ("roll", "num_frames", "overlap", "seed", "fps")},
    "continue": "continue_from",
}


def request_from_flags(args: Any) -> Request:
    return Request(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        video=args.video,
        image=args.image,
        continue_from=args["continue"].value,
        fov=args.fov,
        yaw=args.yaw,
        pitch=args.pitch,
        roll=args.roll,
        num_frames=args.num_frames,
        overlap=args.overlap,
        seed=args.seed,
        fps=args.fps,
    )


def check_args(args: Any) -> None:
    """Cheap checks of the flags before anything heavy is loaded."""
    if bool(args.prompt) == bool(args.prompts):
        raise UserError("pass --prompt (one video) or --prompts FILE.jsonl (many), not both")
    request_from_flags(args).check()
    if args.prompts:
        if not Path(args.prompts).is_file():
            raise UserError(f"--prompts: no such file {args.prompts}")
    elif Path(args.out).exists() and not args.overwrite:
        raise UserError(f"--out {args.out} exists (pass --overwrite to replace it)")
    check_writable(args.out)  # before minutes of sampling, not after


def read_prompt_file(path: str | os.PathLike, defaults: Request) -> list[Request | UserError]:
    """The requests of a --prompts file, each line's keys over `defaults` (the flags); a bad
    line gives a UserError naming the file and line instead, so the others still run. Names
    default to the line number (00001, ...) and must be unique."""
    requests: list[Request | UserError] = []
    names: set[str] = set()
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UserError('expected a JSON object with a "prompt" string')
            unknown = sorted(set(record) - {"prompt", *PROMPT_FILE_KEYS})
            if unknown:
                raise UserError(f"unknown keys {unknown}; known: {sorted(PROMPT_FILE_KEYS)}")
            fields = {"name": f"{number:05d}", "prompt": record["prompt"]}
            fields.update({PROMPT_FILE_KEYS[k]: v for k, v in record.items() if k != "prompt"})
            request = dataclasses.replace(defaults, **fields)
            request = dataclasses.replace(request, name=str(request.name))
            if not request.name or "/" in request.name or request.name.startswith("."):
                raise UserError(f"name {request.name!r} is not a folder name")
            if request.name in names:
                raise UserError(f"name {request.name!r} is used by an earlier line")
            request.check(prefix="")
        except (UserError, ValueError, TypeError) as error:
            requests.append(UserError(f"{where}: {error}"))
            continue
        names.add(request.name)
        requests.append(request)
    return requests


def sampling_config(
    checkpoint: str | os.PathLike,
    config: ml_collections.ConfigDict | None = None,
    components: dict[str, str | None] | None = None,
) -> ml_collections.ConfigDict:
    """The config to sample with: `config` if given, else the one that trained the run
    (RUN_DIR/config.json); `components` (flag -> path, None: keep) override its file paths.
    A component the config needs but has no file for is refused, naming its key and flag."""
    if config is None:
        saved = Path(checkpoint) / "config.json"
        if not saved.is_file():
            raise UserError(
                f"--checkpoint {checkpoint} has no config.json of a training run: pass --config"
            )
        config = config_lib.config_from_json(saved.read_text())
        if "data" not in config:  # a converted DiT's config.json: the model's shape only
            raise UserError(f"--checkpoint {checkpoint} is a converted DiT: pass --config")
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked; the caller's stays as it is
    for flag, path in (components or {}).items():
        if path is not None:
            config.update_from_flattened_dict({COMPONENT_FLAGS[flag]: path})
    needed = []
    if config.get("autoencoder", {}).get("kind") == "wan_vae":
        needed.append("vae")
    if config.get("text_encoder", {}).get("kind") == "umt5":
        needed += ["text_encoder", "tokenizer"]
    for flag in needed:
        key = COMPONENT_FLAGS[flag]
        path = config
        for part in key.split("."):
            path = path[part]
        if not path or not Path(path).exists():
            where = f"{path!r} does not exist" if path else "is empty"
            raise UserError(f"config.{key} {where} on this machine: pass --{flag}=PATH")
    return config


def sampling_meshes(
    spec: str | None, devices: Sequence[jax.Device] | None = None
) -> list[jax.sharding.Mesh]:
    """`--mesh` "axis=size,..." (axes of `sharding.MESH_AXES`, one size may be -1: the rest) ->
    the meshes one model each runs on, over this process's `devices` (default: its local ones):
    one when the sizes cover them all, else one per group of that many consecutive devices
    (`run_prompt_file` spreads a prompt file's lines over the groups). None: the default
    `[sampling_mesh(devices)]`. UserError naming --mesh for a bad spec or a device count the
    sizes do not divide."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not spec:
        return [sampling_mesh(devices)]
    sizes = {}
    for part in spec.split(","):
        axis, _, size = part.partition("=")
        if axis.strip() not in sharding.MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise UserError(
                f"--mesh {spec!r}: expected axis=size pairs over {sharding.MESH_AXES}, "
                f"e.g. fsdp=8 or data=2,fsdp=4"
            )
        sizes[axis.strip()] = int(size)
    group = len(devices) if -1 in sizes.values() else int(np.prod(list(sizes.values())))
    if group < 1 or len(devices) % group:
        raise UserError(
            f"--mesh {spec!r}: a model on {group} devices does not divide this process's "
            f"{len(devices)} devices into groups"
        )
    try:
        return [
            sharding.make_mesh(sizes, devices[i : i + group]) for i in range(0, len(devices), group)
        ]
    except ValueError as error:
        raise UserError(f"--mesh {spec!r}: {error}") from None


def read_condition(path: str, max_frames: int | None) -> tuple[np.ndarray, float]:
    """Reads the condition video/image; trims to 1 + 4k frames (at most `max_frames`)."""
    video, fps = video_io.read_video(path, num_frames=max_frames)
    frames = sampler.valid_frame_count(len(video))
    if frames != len(video):
        print(
            f"warning: {path} has {len(video)} frames; using the first {frames} "
            "(frame counts must be 1 + 4k)",
            file=sys.stderr,
        )
    return video[:frames], fps


@dataclasses.dataclass
class ConditionInputs:
    """What the flags condition on, read from disk: at most one of a perspective `video`
    `(F, h, w, 3)`, an `image` `(h, w, 3)` or a 360 video to `continue_from` `(T, H, 2H, 3)`
    (uint8), the output frame rate, and settings.json's record of the condition."""

    video: np.ndarray | None = None
    image: np.ndarray | None = None
    continue_from: np.ndarray | None = None
    fps: float = DEFAULT_FPS
    record: dict[str, Any] | None = None


def read_inputs(args: Request, config: ml_collections.ConfigDict) -> ConditionInputs:
    """Reads the condition files a request names (one line naming a bad file)."""
    inputs = ConditionInputs()
    if args.video:
        inputs.video, fps = read_condition(args.video, args.num_frames or config.data.num_frames)
        inputs.fps = fps or inputs.fps
        inputs.record = condition_record(
            str(args.video), len(inputs.video), args.fov, args.yaw, args.pitch, args.roll
        )
    elif args.image:
        inputs.image = video_io.read_video(args.image, num_frames=1)[0][0]
        place = dict(fov=args.fov, yaw=args.yaw, pitch=args.pitch, roll=args.roll)
        inputs.record = {"image": str(args.image), **place}
    elif args.continue_from:
        path = args.continue_from
        inputs.continue_from, fps = video_io.read_video(path)
        height, width = inputs.continue_from.shape[1:3]
        if width != 2 * height:
            raise UserError(f"--continue: {path} is {width}x{height}, not a 2:1 360 (ERP) video")
        if args.num_frames <= len(inputs.continue_from):
            raise UserError(
                f"--num_frames {args.num_frames} must exceed the {len(inputs.continue_from)} "
                f"frames of --continue {path}"
            )
        inputs.fps = fps or inputs.fps
        inputs.record = {"continue": str(path), "source_frames": len(inputs.continue_from)}
    inputs.fps = args.fps or inputs.fps
    return inputs


def generate_request(
    models: Models,
    args: Request,
    settings: sampler.SampleSettings,
    inputs: ConditionInputs,
    progress,
) -> Generation | LongGeneration:
    """One window (`generate`), or window by window when the request asks for more frames than
    the model's clip or continues a video (`generate_long`, `continue_video`)."""
    clip = models.config.data.num_frames
    place = dict(fov_deg=args.fov, yaw_deg=args.yaw, pitch_deg=args.pitch, roll_deg=args.roll)
    common = dict(negative_prompt=args.negative_prompt, progress=progress)
    if inputs.continue_from is not None:
        return continue_video(
            models,
            inputs.continue_from,
            args.prompt,
            settings,
            num_frames=args.num_frames,
            overlap_latent_frames=args.overlap,
            **common,
        )
    # With --video, --num_frames only caps the clip read (the video sets the length).
    if inputs.video is None and args.num_frames is not None and args.num_frames > clip:
        return generate_long(
            models,
            args.prompt,
            settings,
            num_frames=args.num_frames,
            overlap_latent_frames=args.overlap,
            image=inputs.image,
            **place,
            **common,
        )
    return generate(
        models,
        args.prompt,
        settings,
        video=inputs.video,
        image=inputs.image,
        num_frames=args.num_frames,
        **place,
        **common,
    )


def is_long(request: Request, config: ml_collections.ConfigDict) -> bool:
    """Whether a request is made window by window (more frames than the clip, or continued)."""
    longer = (request.num_frames or 0) > config.data.num_frames
    return bool(request.continue_from) or (not request.video and longer)


class StepProgress:
    """The sampler's `progress` callback for many videos: one object, advancing the bar of the
    video being made. The callback is a static argument of the compiled loop, so a new function
    per video would compile the loop again; one of these per model replica keeps it compiled
    once for every prompt and seed."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, step: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)


def run_request(
    models: Models,
    config: ml_collections.ConfigDict,
    request: Request,
    settings: sampler.SampleSettings,
    out: str | os.PathLike,
    *,
    checkpoint: str,
    overwrite: bool = False,
    inputs: ConditionInputs | None = None,
    progress: StepProgress | None = None,
) -> Path:
    """Generates a request (its condition files read here unless `inputs` holds them) and
    writes its outputs into `out` (atomically). Pass the same `progress` for every request of
    a model (see `StepProgress`)."""
    inputs = read_inputs(request, config) if inputs is None else inputs
    settings = dataclasses.replace(settings, seed=request.seed)
    progress = StepProgress() if progress is None else progress
    started = time.time()
    # One window: a bar of the sampling steps; window by window: a running count of steps (in a
    # log, a line a window).
    total = None if is_long(request, config) else settings.num_steps
    every = None if total else settings.num_steps
    with Progress(total, "sampling", unit="step", every=every) as bar:
        progress.bar = bar
        generation = generate_request(models, request, settings, inputs, progress=progress)
    extra = {}
    if isinstance(generation, LongGeneration):
        extra = {"window_starts": list(generation.window_starts), "overlap": request.overlap}
    record = settings_record(
        generation,
        request.prompt,
        request.negative_prompt,
        inputs.record,
        inputs.fps,
        config=json.loads(config.to_json_best_effort()),
        checkpoint=checkpoint,
        seconds=round(time.time() - started, 2),
        **extra,
    )
    return write_outputs(out, generation, inputs.fps, record, overwrite=overwrite)


def run_prompt_file(args: Any, config, settings: sampler.SampleSettings) -> int:
    """--prompts: this process's share of the lines (line i on process i mod count; each
    process holds its own copy of the model on its local devices), split again over its
    device groups (`sampling_meshes`: a `--mesh` smaller than the local devices makes several,
    each with a model replica; the j-th line to make on group j mod groups), skipping finished
    outputs (each is written atomically, so one that exists is complete). A bad line or a
    failed video is reported in one line and the rest go on; exit status 1 if any failed."""
    requests = read_prompt_file(args.prompts, request_from_flags(args))
    mine = requests[jax.process_index() :: jax.process_count()]
    failed = [r for r in mine if isinstance(r, UserError)]
    for error in failed:
        print(f"error: {error}", file=sys.stderr)
    out = Path(args.out)
    todo = [r for r in mine if isinstance(r, Request)]
    done = [r for r in todo if (out / r.name).is_dir() and not args.overwrite]
    todo = [r for r in todo if r not in done]
    print(f"{len(todo)} to generate, {len(done)} finished skipped", file=sys.stderr)
    if not todo:
        return 1 if failed else 0
    meshes = sampling_meshes(args.mesh)[: len(todo)]
    models = load_models(config, args.checkpoint, mesh=meshes[0], dtype=args.dtype)
    models.encode_prompts([p for r in todo for p in (r.prompt, r.negative_prompt)])
    models.release_text_encoder()
    # Data parallel over device groups: a whole model replica per group (restored once, copied
    # device to device), each making its share of the lines in its own thread. Not one mesh
    # with a data axis batching the prompts: lines differ in kind and shape (a video, an image,
    # a continuation, a length), so they cannot share a batch, and a batch would draw each
    # video's noise from the batch's key. A replica runs any line exactly as one group alone
    # would. JAX dispatch is thread-safe and each group's programs run on its own devices, so
    # the groups run concurrently; each compiles its own programs (its own devices).
    replicas = [models, *(models.replica(mesh) for mesh in meshes[1:])]
    shares = [todo[g :: len(replicas)] for g in range(len(replicas))]
    make = functools.partial(_run_share, args=args, config=config, settings=settings)
    if len(replicas) == 1:  # in this thread, so Ctrl-C stops it at once
        failed += make(models, todo)
    else:
        with concurrent.futures.ThreadPoolExecutor(len(replicas)) as pool:
            failed += [error for errors in pool.map(make, replicas, shares) for error in errors]
    return 1 if failed else 0


def _run_share(
    models: Models, requests: list[Request], *, args: Any, config, settings
) -> list[Exception]:
    """Makes `requests` with `models`, one after another; the failures, each reported."""
    failed: list[Exception] = []
    progress = StepProgress()
    for request in requests:
        try:
            written = run_request(
                models, config, request, settings, Path(args.out) / request.name,
                checkpoint=str(args.checkpoint), overwrite=args.overwrite, progress=progress,
            )  # fmt: skip
        except (UserError, ValueError, OSError) as error:
            print(f"error: {args.prompts} ({request.name}): {error}", file=sys.stderr)
            failed.append(error)
            continue
        print(f"wrote {written}", file=sys.stderr)
    return failed


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    check_args(args)
    distributed.initialize_from_flags()
    components = {flag: args[flag].value for flag in COMPONENT_FLAGS}
    config = sampling_config(args.checkpoint, args.config, components)
    settings = sampler.SampleSettings.from_config(
        config.sample,
        num_steps=args.steps,
        shift=args.shift,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        seed=args.seed,
        fuse_every_step=args.fuse_every_step or None,
        keep_known=args.keep_known,
    )
    representation = config_lib.data_representation(config.data)
    if settings.fuse_every_step and representation != Representation.VIEWPOINT:
        raise UserError(
            "--fuse_every_step fuses the ViewPoint map's overlapping subregions; "
            f"config.data.representation {representation.value!r} has none"
        )
    if args.prompts:
        return run_prompt_file(args, config, settings)
    request = request_from_flags(args)
    inputs = read_inputs(request, config)  # a bad file is named before the models load
    mesh = sampling_meshes(args.mesh)[0]  # one video: one group of devices
    models = load_models(config, args.checkpoint, mesh=mesh, dtype=args.dtype)
    # Encode the prompts, then free the text encoder's memory for the denoising loop.
    models.encode_prompts([request.prompt, request.negative_prompt])
    models.release_text_encoder()
    out = run_request(
        models, config, request, settings, args.out,
        checkpoint=str(args.checkpoint), overwrite=args.overwrite, inputs=inputs,
    )  # fmt: skip
    canvas_video = canvas_video_name(representation)
    print(f"wrote {out}/pano.mp4, {canvas_video}, faces.png, viewer.html, settings.json")
    return 0


def console_main() -> None:
    """The console script (pyproject's [project.scripts])."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
