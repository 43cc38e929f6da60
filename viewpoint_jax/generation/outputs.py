"""What a generated video is written as, into one folder (atomically: it appears complete or
not at all):

  pano.mp4       the equirectangular video, H.264, tagged as 360 (Spherical Video V1 + V2)
  viewpoint.mp4  the ViewPoint map the model generated (a model of another
                 config.data.representation: erp.mp4 or cube_2x3.mp4, its own frames)
  faces.png      the six 90-degree views (F R B L U D) at a few times
  viewer.html    a self-contained page that plays the panorama; drag to look around
  settings.json  prompt, condition, sampler settings and seed, config and checkpoint used
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import jax.numpy as jnp
import numpy as np

from viewpoint_jax import geometry
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import atomic_directory, atomic_path, atomic_write_text
from viewpoint_jax.generation import viewer
from viewpoint_jax.generation.generate import Generation, LongGeneration
from viewpoint_jax.geometry import Representation

DEFAULT_FPS = 16.0  # Wan2.1's frame rate


def faces_contact_sheet(
    panorama: np.ndarray, max_rows: int = 6, face_size: int = 160
) -> np.ndarray:
    """ERP video `(F, H, W, 3)` uint8 -> one image: a row of the six 90-degree views (F R B L U
    D) for each of up to `max_rows` evenly spaced frames, labelled, `(h, w, 3)` uint8."""
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
    video: str,
    frames: int,
    fov: float,
    yaw: float,
    pitch: float,
    roll: float,
    source_frames: int | None = None,
) -> dict[str, Any]:
    """How the condition view was placed, as settings.json records it: `frames` of the clip
    used (its first), of its `source_frames`."""
    record = {"video": video, "frames": frames, "fov": fov, "yaw": yaw, "pitch": pitch}
    record["roll"] = roll
    if source_frames is not None:
        record["source_frames"] = source_frames
    return record


def settings_record(
    generation: Generation | LongGeneration,
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


# What `write_outputs` puts in a folder; settings.json marks a folder it wrote (`--overwrite`
# replaces only such a folder, `fileio.check_replaceable`).
OUTPUT_NAMES = frozenset(
    ["pano.mp4", "faces.png", "viewer.html", "settings.json"]
    + [canvas_video_name(representation) for representation in Representation]
)
OUTPUT_MARKER = "settings.json"


def estimated_bytes(num_frames: int, panorama_hw: tuple[int, int], canvas_hw: tuple[int, int]):
    """A generous bound on the size of one output folder: the raw uint8 frames of the panorama
    and the canvas (H.264 is far smaller; the viewer embeds pano.mp4 once more), plus 1 MiB."""
    pixels = np.prod(panorama_hw) + np.prod(canvas_hw)
    return int(num_frames * pixels * 3 + 2**20)


def write_outputs(
    out: str | os.PathLike,
    generation: Generation | LongGeneration,
    fps: float,
    record: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Writes the five outputs into `out` (one atomic directory rename). UserError naming `out`
    if a write fails (a full disk, ffmpeg): nothing is left under `out`'s name, an earlier
    folder there stays as it was."""
    try:
        _write_files(out, generation, fps, record, overwrite)
    except (OSError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        kept = " (the earlier one is kept)" if Path(out).exists() else ""
        raise UserError(f"cannot write {out}: {reason}; nothing was written{kept}") from None
    return Path(out)


def _write_files(
    out: str | os.PathLike,
    generation: Generation | LongGeneration,
    fps: float,
    record: dict[str, Any],
    overwrite: bool,
) -> None:
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
        # allow_nan=False: settings.json stays valid JSON (the flags refuse non-finite numbers).
        text = json.dumps(record, indent=2, allow_nan=False)
        atomic_write_text(tmp / "settings.json", text + "\n")
