"""Generate a 360 video from a prompt and, optionally, a perspective video or image.

    python -m viewpoint_jax.sample --config configs/tiny.py --checkpoint runs/tiny \\
        --prompt "a quiet forest at dawn" [--video in.mp4 --fov 90 --yaw 0 --pitch 0 --roll 0] \\
        --out outputs/forest

writes, atomically (the directory appears complete or not at all):
  pano.mp4       the equirectangular video, H.264, tagged as 360 (Spherical Video V1 + V2)
  viewpoint.mp4  the ViewPoint map the model generated
  faces.png      the six 90-degree views (F R B L U D) at a few times
  viewer.html    a self-contained page that plays the panorama; drag to look around
  settings.json  prompt, condition, sampler settings and seed, config and checkpoint used
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
import numpy as np
from flax import nnx

from viewpoint_jax import build, geometry, sharding, video_io, viewer
from viewpoint_jax import config as config_lib
from viewpoint_jax.cli import UserError, run_main
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.io_utils import atomic_directory, atomic_path, atomic_write_text

DEFAULT_FPS = 16.0  # Wan2.1's frame rate


@dataclasses.dataclass
class Models:
    """Everything generation needs: the DiT, the autoencoder, the text encoder and the config.

    mesh, rules: where the DiT's (and text encoder's) weights are sharded, by `rules` (None: one
    device). prompt_embeddings: prompt -> its `(L, D)` float32 text embeddings on the host, filled
    by `encode_prompts`; generation reads them from here, so after `release_text_encoder()` the
    prompts encoded before can still be sampled.
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


@dataclasses.dataclass
class Generation:
    """One result: uint8 RGB videos of the map `(F, M, M, 3)` and of the ERP `(F, H, W, 3)`."""

    map_video: np.ndarray
    panorama: np.ndarray
    latents: np.ndarray
    settings: sampler.SampleSettings


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


def config_rules(config) -> sharding.LogicalRules:
    """`config.sharding_rules` as a rules tuple (JSON lists of mesh axes become tuples)."""
    return tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes)
        for name, axes in config.sharding_rules
    )


def latent_shape(config, num_frames: int | None = None) -> tuple[int, int, int, int, int]:
    """The `(1, f, h, w, C)` map latent of one sample of `config.data` (without building the
    autoencoder)."""
    data = config.data
    if config.autoencoder.kind == "wan_vae":
        spatial, temporal = 8, 4
    else:
        spatial, temporal = int(config.autoencoder.factor), 1
    frames = 1 + ((num_frames or data.num_frames) - 1) // temporal
    side = data.map_size // spatial
    return (1, frames, side, side, build.latent_channels(config))


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
    the prompts are encoded. The autoencoder stays on the first device (it decodes after
    denoising; its weights are small).

    Raises:
      UserError: no checkpoint directory. ValueError: an unknown dtype, or a mesh that does not
        divide the DiT (heads by tensor, the config's tokens by sequence), naming the axis.
    """
    if dtype not in SAMPLE_DTYPES:
        raise ValueError(f"dtype must be one of {SAMPLE_DTYPES}, got {dtype!r}")
    if not Path(checkpoint).is_dir():
        raise UserError(f"--checkpoint: no such directory {checkpoint}")
    mesh = sampling_mesh() if mesh is None else mesh
    rules = config_rules(config)
    # Checked on the config's sizes before any weight is read (a 14B restore takes minutes).
    sampler.check_mesh_fits(build.dit_config(config), mesh, latent_shape(config))
    model = build.restore_model_for_inference(
        checkpoint, config, mesh=mesh, rules=rules, dtype=dtype, param_dtype=dtype
    )
    sampler.check_mesh_fits(model.config, mesh, latent_shape(config))  # a checkpoint's own sizes
    return Models(
        model=model,
        autoencoder=build.build_autoencoder(config),
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
) -> Generation:
    """Prompt (+ optional perspective video `(F, h, w, 3)` uint8, F = 1 + 4k) -> 360 video.

    Denoises on `models.mesh` (see `sampler.sample`); the prompts' embeddings come from
    `models.encode_prompts` (already encoded ones are reused, so a released text encoder is fine).
    """
    data = models.config.data
    context, negative_context = models.encode_prompts([prompt, negative_prompt])[:, None]
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
    )
    with contextlib.ExitStack() as stack:
        if models.mesh is not None:
            stack.enter_context(sharding.use_mesh(models.mesh, models.rules))
        latents = sampler.sample(
            models.model, conditions, jax.random.key(settings.seed), settings, progress=progress
        )
    # To the host: the autoencoder decodes on its own device, not on the DiT's mesh.
    latents = jax.device_get(latents)
    map_video, panorama = sampler.decode_to_panorama(
        models.autoencoder, latents, data.erp_height, data.erp_width
    )
    return Generation(
        map_video=video_io.to_uint8(map_video[0]),
        panorama=video_io.to_uint8(panorama[0]),
        latents=np.asarray(latents),
        settings=settings,
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
        **extra,
    }


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
        video_io.write_video(tmp / "viewpoint.mp4", generation.map_video, fps)
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m viewpoint_jax.sample",
        description="Generate a 360 video (equirectangular) from a prompt and, optionally, a "
        "perspective video or image placed at a viewing direction.",
    )
    parser.add_argument("--config", required=True, help="config file, path.py[:arg]")
    parser.add_argument("--checkpoint", required=True, help="trained or converted model dir")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--video", help="perspective video or image to extend to 360 degrees")
    parser.add_argument("--fov", type=float, default=90.0, help="its horizontal field of view")
    parser.add_argument("--yaw", type=float, default=0.0, help="degrees, positive turns right")
    parser.add_argument("--pitch", type=float, default=0.0, help="degrees, positive looks up")
    parser.add_argument("--roll", type=float, default=0.0, help="degrees")
    parser.add_argument(
        "--num-frames", type=int, help="frames to generate, 1 + 4k (with --video: at most)"
    )
    parser.add_argument("--steps", type=int, help="sampling steps (config: sample.steps)")
    parser.add_argument("--shift", type=float, help="timestep shift (config: sample.shift)")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    parser.add_argument("--scheduler", choices=("unipc", "euler"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fuse-every-step", action="store_true", help="fuse map overlaps at every step"
    )
    parser.add_argument("--fps", type=float, help="output frame rate (default: input's or 16)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Cheap checks before anything heavy is loaded."""
    if not 0 < args.fov < 180:
        raise UserError(f"--fov must be in (0, 180) degrees, got {args.fov:g}")
    for name in ("yaw", "pitch", "roll"):
        if not np.isfinite(getattr(args, name)):
            raise UserError(f"--{name} must be a finite angle, got {getattr(args, name)}")
    if not -90 <= args.pitch <= 90:
        raise UserError(f"--pitch must be in [-90, 90] degrees, got {args.pitch:g}")
    if args.num_frames is not None and (args.num_frames < 1 or (args.num_frames - 1) % 4):
        raise UserError(f"--num-frames must be 1 + 4k (1, 5, 9, ..., 49), got {args.num_frames}")
    if args.fps is not None and not args.fps > 0:
        raise UserError(f"--fps must be > 0, got {args.fps:g}")
    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"--out {args.out} exists (pass --overwrite to replace it)")


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


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    check_args(args)
    config = load_config(args.config)
    settings = sampler.SampleSettings.from_config(
        config.sample,
        num_steps=args.steps,
        shift=args.shift,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        seed=args.seed,
        fuse_every_step=args.fuse_every_step or None,
    )
    video, fps = None, DEFAULT_FPS
    if args.video:
        video, video_fps = read_condition(args.video, args.num_frames or config.data.num_frames)
        fps = video_fps or fps
    fps = args.fps or fps
    models = load_models(config, args.checkpoint)

    started = time.time()
    with tqdm(total=settings.num_steps, desc="sampling", unit="step", file=sys.stderr) as bar:
        generation = generate(
            models,
            args.prompt,
            settings,
            negative_prompt=args.negative_prompt,
            video=video,
            fov_deg=args.fov,
            yaw_deg=args.yaw,
            pitch_deg=args.pitch,
            roll_deg=args.roll,
            num_frames=args.num_frames,
            progress=lambda step: bar.update(1),
        )
    condition = None
    if video is not None:
        condition = condition_record(
            str(args.video), len(video), args.fov, args.yaw, args.pitch, args.roll
        )
    record = settings_record(
        generation,
        args.prompt,
        args.negative_prompt,
        condition,
        fps,
        config=args.config,
        checkpoint=str(args.checkpoint),
        seconds=round(time.time() - started, 2),
    )
    out = write_outputs(args.out, generation, fps, record, overwrite=args.overwrite)
    print(f"wrote {out}/pano.mp4, viewpoint.mp4, faces.png, viewer.html, settings.json")
    return 0


if __name__ == "__main__":
    run_main(main)
