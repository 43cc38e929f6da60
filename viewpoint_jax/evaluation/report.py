"""The evaluation report of generated 360 videos: perspective views for VBench, and panorama
metrics (the library of `python -m viewpoint_jax.evaluate`).

    inputs = find_inputs(["outputs/"])           # output folders, folders of them, ERP videos
    report = evaluate(inputs, "eval/run1", view_size=512)

`find_inputs` resolves sampler output folders (pano.mp4, viewpoint.mp4, settings.json), folders
holding such folders or ERP videos, and ERP video files; an output folder's settings.json names
its condition (`condition_from_settings`). `evaluate` writes, atomically (the folder appears
complete or not at all):

  views/<video>_<face>.mp4  the six 90-degree views F R B L U D of every video (`export_views`),
                            view_size square, in one flat folder: VBench's custom-input mode
                            reads all of it
  metrics.json              panorama metrics per video (`video_metrics`) and their mean, each
                            with its direction (lower/higher is better) and unit
  metrics.md                the same as a Markdown table (`metrics_markdown`)

Videos are `(F, H, W, 3)` uint8, channels last; an ERP has W = 2 H.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from viewpoint_jax import geometry
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import atomic_directory, atomic_write_text
from viewpoint_jax.evaluation import panorama_metrics

DEFAULT_FPS = 16.0  # Wan2.1's frame rate, for inputs whose frame rate is unknown
FRAMES_PER_CHUNK = 8  # frames projected per call: bounds the float copies of a large video

# (yaw, pitch) in degrees of the six 90-degree views: the cube faces of `geometry.erp_to_cubemap`
# (F R B L U D, camera bases of spec section 2), as perspective cameras.
FACE_VIEWS = {
    "F": (0.0, 0.0),
    "R": (90.0, 0.0),
    "B": (180.0, 0.0),
    "L": (-90.0, 0.0),
    "U": (0.0, 90.0),
    "D": (0.0, -90.0),
}
VIEWS_FOLDER = "views"
# What `evaluate` writes into --out (`--overwrite` replaces only such a folder).
REPORT_NAMES = frozenset([VIEWS_FOLDER, "metrics.json", "metrics.md"])
VBENCH_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
)


@dataclasses.dataclass(frozen=True)
class Condition:
    """A perspective condition video and the camera it was placed at (degrees)."""

    video: Path
    fov: float = 90.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0


@dataclasses.dataclass(frozen=True)
class EvalInput:
    """One video to evaluate: its ERP file, the map video beside it (if any), its condition."""

    name: str
    panorama: Path
    map_video: Path | None = None
    condition: Condition | None = None


# --- Finding the inputs --------------------------------------------------------------------------


def condition_from_settings(folder: Path) -> Condition | None:
    """The condition named by an output folder's settings.json (None when there is none).

    A relative video path is looked up from the current directory (where the sampler ran), then
    from the folder. A named video that cannot be found is reported on stderr and skipped.
    """
    path = folder / "settings.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    condition = record.get("condition") if isinstance(record, dict) else None
    if not condition or not condition.get("video"):
        return None
    video = Path(condition["video"])
    found = next((p for p in (video, folder / video) if p.exists()), None)
    if found is None:
        print(
            f"warning: {path} names condition video {video}, which is not found; "
            "no condition metrics for it",
            file=sys.stderr,
        )
        return None
    return Condition(
        video=found,
        fov=float(condition.get("fov", 90.0)),
        yaw=float(condition.get("yaw", 0.0)),
        pitch=float(condition.get("pitch", 0.0)),
        roll=float(condition.get("roll", 0.0)),
    )


def _output_folder(folder: Path, condition: Condition | None) -> EvalInput:
    map_video = folder / "viewpoint.mp4"
    return EvalInput(
        name=folder.resolve().name,
        panorama=folder / "pano.mp4",
        map_video=map_video if map_video.exists() else None,
        condition=condition or condition_from_settings(folder),
    )


def find_inputs(
    paths: Sequence[str | os.PathLike], condition: Condition | None = None
) -> list[EvalInput]:
    """Resolves `--inputs` to a list of `EvalInput`, in order, names made unique.

    A folder with pano.mp4 is a sampler output folder; any other folder contributes its output
    subfolders and its video files (sorted); a file is an ERP video. `condition`, if given,
    applies to every input (else an output folder's settings.json names it).
    """
    found: list[EvalInput] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir() and (path / "pano.mp4").exists():
            found.append(_output_folder(path, condition))
        elif path.is_dir():
            before = len(found)
            for child in sorted(path.iterdir()):
                if child.is_dir() and (child / "pano.mp4").exists():
                    found.append(_output_folder(child, condition))
                elif child.is_file() and child.suffix.lower() in video_io.VIDEO_SUFFIXES:
                    found.append(EvalInput(child.stem, child, condition=condition))
            if len(found) == before:
                raise UserError(f"{path}: no pano.mp4 output folders or videos in it")
        elif path.is_file():
            found.append(EvalInput(path.stem, path, condition=condition))
        else:
            raise UserError(f"{path}: no such file or folder")
    if not found:
        raise UserError("no inputs: pass --inputs (output folders or ERP videos)")
    seen: dict[str, int] = {}
    unique = []
    for item in found:
        count = seen.get(item.name, 0) + 1
        seen[item.name] = count
        name = item.name if count == 1 else f"{item.name}_{count}"
        unique.append(dataclasses.replace(item, name=name))
    return unique


# --- Views ---------------------------------------------------------------------------------------


def _chunked(video: np.ndarray, project: Callable[[np.ndarray], Any]) -> np.ndarray:
    """Applies an array -> array projection `FRAMES_PER_CHUNK` frames at a time."""
    parts = [
        np.asarray(project(video[start : start + FRAMES_PER_CHUNK]))
        for start in range(0, len(video), FRAMES_PER_CHUNK)
    ]
    return np.concatenate(parts)


def face_view(erp: np.ndarray, face: str, view_size: int) -> np.ndarray:
    """ERP video `(F, H, 2H, 3)` uint8 -> the 90-degree view of cube face `face`
    `(F, view_size, view_size, 3)` uint8 (`geometry.erp_to_perspective`, bilinear)."""
    yaw, pitch = FACE_VIEWS[face]
    return _chunked(
        erp,
        lambda frames: geometry.erp_to_perspective(
            frames, 90.0, yaw, pitch, 0.0, out_hw=(view_size, view_size)
        ),
    )


def export_views(
    erp: np.ndarray, name: str, folder: Path, view_size: int, fps: float, crf: int = 18
) -> list[Path]:
    """Writes `<name>_<face>.mp4` for the six faces into `folder`; returns the paths."""
    paths = []
    for face in FACE_VIEWS:
        path = folder / f"{name}_{face}.mp4"
        video_io.write_video(path, face_view(erp, face, view_size), fps, crf=crf)
        paths.append(path)
    return paths


# --- Metrics -------------------------------------------------------------------------------------


def read_erp(path: Path) -> tuple[np.ndarray, float]:
    """Reads an ERP video `(F, H, 2H, 3)` uint8 and its fps; UserError naming a file that is not
    one."""
    video, fps = video_io.read_video(path)
    check_erp_size(path, video)
    return video, fps


def read_map(path: Path) -> np.ndarray:
    """Reads a ViewPoint map video `(F, M, M, 3)` uint8; UserError naming a file that is not one."""
    video, _ = video_io.read_video(path)
    check_map_size(path, video)
    return video


def check_erp_size(path: Path, video: np.ndarray) -> None:
    """UserError naming `path` unless `video` `(F, H, W, 3)` is equirectangular (W = 2 H)."""
    height, width = video.shape[1:3]
    if width != 2 * height:
        raise UserError(
            f"{path}: not an equirectangular video (width must be 2 x height, got {width}x{height})"
        )


def check_map_size(path: Path, video: np.ndarray) -> None:
    """UserError naming `path` unless `video` `(F, M, M, 3)` is a ViewPoint map (square, M even)."""
    height, width = video.shape[1:3]
    if height != width or height % 2:
        raise UserError(
            f"{path}: not a ViewPoint map video (square, even side; got {width}x{height})"
        )


def check_inputs(inputs: Sequence[EvalInput]) -> None:
    """Reads the first frame of every file the evaluation will read: a bad file is reported
    before minutes are spent on the videos before it."""
    for item in inputs:
        check_erp_size(item.panorama, video_io.read_video(item.panorama, num_frames=1)[0])
        if item.map_video is not None:
            check_map_size(item.map_video, video_io.read_video(item.map_video, num_frames=1)[0])
        if item.condition is not None:
            video_io.read_video(item.condition.video, num_frames=1)


def condition_metrics(erp: np.ndarray, condition: Condition) -> dict[str, float]:
    """PSNR and SSIM of the panorama seen through the condition camera, at the condition's
    resolution, vs the condition video (their common first frames)."""
    reference, _ = video_io.read_video(condition.video, num_frames=len(erp))
    frames = min(len(reference), len(erp))
    reference = reference[:frames]
    seen = _chunked(
        erp[:frames],
        lambda chunk: geometry.erp_to_perspective(
            chunk,
            condition.fov,
            condition.yaw,
            condition.pitch,
            condition.roll,
            out_hw=tuple(reference.shape[1:3]),
        ),
    )
    return {
        "condition_psnr": panorama_metrics.view_psnr(seen, reference),
        "condition_ssim": panorama_metrics.view_ssim(seen, reference),
    }


def video_metrics(
    erp: np.ndarray,
    map_video: np.ndarray | None = None,
    condition: Condition | None = None,
    pole_cap_deg: float = 3.0,
) -> dict[str, float | None]:
    """Every metric of `panorama_metrics.PANORAMA_METRICS` for one video (None where it needs an input
    that is missing: a map video, a condition, or two frames)."""
    results: dict[str, float | None] = dict.fromkeys(panorama_metrics.PANORAMA_METRICS)
    if erp.shape[2] >= panorama_metrics.SEAM_MIN_WIDTH:  # None for a thumbnail
        results["seam_ratio"] = panorama_metrics.seam_ratio(erp)
    results["end_continuity"] = panorama_metrics.end_continuity(erp)
    results["pole_spread"] = panorama_metrics.pole_spread(erp, pole_cap_deg)
    results["flicker"] = panorama_metrics.temporal_flicker(erp)
    results["flicker_lowpass"] = panorama_metrics.temporal_flicker(erp, block=8)
    if map_video is not None:
        results["overlap_disagreement"] = panorama_metrics.overlap_disagreement(map_video)
    if condition is not None:
        results.update(condition_metrics(erp, condition))
    return {k: (v if v is not None and math.isfinite(v) else None) for k, v in results.items()}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def vbench_command(views: str | os.PathLike) -> str:
    """The shell loop that runs VBench's custom-input dimensions on the views folder."""
    return (
        "for d in " + " ".join(VBENCH_DIMENSIONS) + "; do\n"
        f"  vbench evaluate --dimension $d --videos_path {views} --mode=custom_input\ndone"
    )


def metrics_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per video, the mean, then what each column means."""
    names = list(panorama_metrics.PANORAMA_METRICS)
    arrow = {"lower": "↓", "higher": "↑"}

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.4g}"

    lines = [
        "| video | "
        + " | ".join(f"{n} {arrow[panorama_metrics.PANORAMA_METRICS[n].better]}" for n in names)
        + " |",
        "|---|" + "---:|" * len(names),
    ]
    for video in report["videos"]:
        lines.append(f"| {video['name']} | " + " | ".join(cell(video[n]) for n in names) + " |")
    lines.append("| **mean** | " + " | ".join(cell(report["mean"][n]) for n in names) + " |")
    lines += ["", "| metric | better | unit | meaning |", "|---|---|---|---|"]
    for name, info in panorama_metrics.PANORAMA_METRICS.items():
        lines.append(f"| {name} | {info.better} | {info.unit} | {info.meaning} |")
    lines.append("")
    lines.append("– : not measured (no map video, no condition, or a single frame).")
    if report.get("views"):
        lines += [
            "",
            f"Perspective views for VBench: `{report['views']['folder']}/`.",
            "",
            "```bash",
            vbench_command(report["views"]["folder"]),
            "```",
        ]
    return "\n".join(lines) + "\n"


def video_record(
    item: EvalInput, erp: np.ndarray, views: list[Path], metrics: dict, out: Path
) -> dict[str, Any]:
    """The report's entry of one video: its files, condition, size `(F, H, 2H, 3)` of `erp`, the
    paths its views will have under `out` (written into a temporary folder renamed to it), and
    its metrics."""
    return {
        "name": item.name,
        "panorama": str(item.panorama),
        "map_video": None if item.map_video is None else str(item.map_video),
        "condition": None
        if item.condition is None
        else {
            **dataclasses.asdict(item.condition),
            "video": str(item.condition.video),
        },
        "frames": len(erp),
        "size": [int(erp.shape[1]), int(erp.shape[2])],
        "views": [str(out / VIEWS_FOLDER / p.name) for p in views],
        **metrics,
    }


def evaluate(
    inputs: Sequence[EvalInput],
    out: str | os.PathLike,
    *,
    view_size: int = 512,
    export: bool = True,
    crf: int = 18,
    pole_cap_deg: float = 3.0,
    overwrite: bool = False,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Exports every input's six views (if `export`) and measures it; writes the output folder
    `out` (views/, metrics.json, metrics.md) in one atomic rename. Returns the report."""
    out = Path(out)
    check_inputs(inputs)
    videos = []
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for item in inputs:
            erp, fps = read_erp(item.panorama)
            map_video = read_map(item.map_video) if item.map_video else None
            views = []
            if export:
                views = export_views(
                    erp, item.name, tmp / VIEWS_FOLDER, view_size, fps or DEFAULT_FPS, crf
                )
            metrics = video_metrics(erp, map_video, item.condition, pole_cap_deg)
            videos.append(video_record(item, erp, views, metrics, out))
            log(
                f"{item.name}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if v is not None)
            )
        report = {
            "metrics": {k: v.to_dict() for k, v in panorama_metrics.PANORAMA_METRICS.items()},
            "mean": {k: _mean([v[k] for v in videos]) for k in panorama_metrics.PANORAMA_METRICS},
            "videos": videos,
            "views": {
                "folder": str(out / VIEWS_FOLDER),
                "size": view_size,
                "faces": list(FACE_VIEWS),
                "face_views_yaw_pitch_deg": {k: list(v) for k, v in FACE_VIEWS.items()},
            }
            if export
            else None,
            "pole_cap_deg": pole_cap_deg,
        }
        atomic_write_text(
            tmp / "metrics.json", json.dumps(report, indent=2, allow_nan=False) + "\n"
        )
        atomic_write_text(tmp / "metrics.md", metrics_markdown(report))
    return report
