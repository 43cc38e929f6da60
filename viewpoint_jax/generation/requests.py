"""Requests: what one video asks for (the command's flags, or one line of a --prompts file),
its condition files read from disk, generated with loaded `Models` and written as the outputs
(`outputs.write_outputs`); a whole prompt file over this process's device groups.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import check_replaceable, check_writable
from viewpoint_jax.common.progress import Progress
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation import conditioning
from viewpoint_jax.generation.generate import (
    Generation,
    LongGeneration,
    StepCallback,
    continue_video,
    generate,
    generate_long,
)
from viewpoint_jax.generation.models import Models, load_models, sampling_meshes
from viewpoint_jax.generation.outputs import (
    DEFAULT_FPS,
    OUTPUT_MARKER,
    OUTPUT_NAMES,
    condition_record,
    estimated_bytes,
    settings_record,
    write_outputs,
)


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
    line: int = 0  # of its --prompts file (0: the flags), for messages

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
        if self.fps is not None and not (np.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"{prefix}fps must be a finite number > 0, got {self.fps:g}")
        if not -(2**63) <= self.seed < 2**63:
            raise UserError(f"{prefix}seed must be a 64-bit integer, got {self.seed}")


# The keys of a --prompts line (besides "prompt") and the Request fields they set.
PROMPT_FILE_KEYS = {
    **{k: k for k in ("name", "negative_prompt", "video", "image", "fov", "yaw", "pitch")},
    **{k: k for k in ("roll", "num_frames", "overlap", "seed", "fps")},
    "continue": "continue_from",
}


# The JSON types of a --prompts line's values (a 1.5 seed or a 5.0 frame count is a mistake to
# name, not to pass on to the sampler).
_INTEGER_KEYS = ("num_frames", "overlap", "seed")
_NUMBER_KEYS = ("fov", "yaw", "pitch", "roll", "fps")
_TEXT_KEYS = ("negative_prompt", "video", "image", "continue")


def _check_types(record: dict[str, Any]) -> None:
    """UserError naming the first key of a --prompts line whose value has the wrong type."""
    for key, value in record.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _INTEGER_KEYS and not (number and isinstance(value, int)):
            raise UserError(f"{key} must be an integer, got {value!r}")
        if key in _NUMBER_KEYS and not (number and np.isfinite(value)):
            raise UserError(f"{key} must be a finite number, got {value!r}")
        if key in _TEXT_KEYS and not (value is None or isinstance(value, str)):
            raise UserError(f"{key} must be a string, got {value!r}")
        if key == "name" and not (number or isinstance(value, str)):
            raise UserError(f"name must be a string, got {value!r}")


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
            _check_types(record)
            fields = {"name": f"{number:05d}", "prompt": record["prompt"], "line": number}
            fields.update({PROMPT_FILE_KEYS[k]: v for k, v in record.items() if k != "prompt"})
            request = dataclasses.replace(defaults, **fields)
            request = dataclasses.replace(request, name=str(request.name))
            bad = ("/", "\\", "\0")
            if not request.name or any(c in request.name for c in bad) or request.name[0] == ".":
                raise UserError(f"name {request.name!r} is not a folder name")
            if request.name in names:
                raise UserError(f"name {request.name!r} is used by an earlier line")
            request.check(prefix="")
        except (UserError, ValueError, TypeError, OverflowError) as error:
            requests.append(UserError(f"{where}: {error}"))
            continue
        names.add(request.name)
        requests.append(request)
    return requests


def read_condition(path: str, max_frames: int | None) -> tuple[np.ndarray, float]:
    """Reads the condition video/image; trims to 1 + 4k frames (at most `max_frames`)."""
    video, fps = video_io.read_video(path, num_frames=max_frames)
    frames = conditioning.valid_frame_count(len(video))
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


def read_inputs(request: Request, config: ml_collections.ConfigDict) -> ConditionInputs:
    """Reads the condition files a request names (one line naming a bad file)."""
    inputs = ConditionInputs()
    if request.video:
        frames = request.num_frames or config.data.num_frames
        inputs.video, fps = read_condition(request.video, frames)
        source_frames = video_io.frame_count(request.video)
        if source_frames > frames:  # a clip longer than the video made: say what is used
            limit = (
                f"--num_frames {frames}"
                if request.num_frames
                else f"the model's clip, config.data.num_frames = {frames}"
            )
            print(
                f"note: {request.video} has {source_frames} frames; the 360 video follows its "
                f"first {len(inputs.video)} ({limit})",
                file=sys.stderr,
            )
        inputs.fps = fps or inputs.fps
        place = (request.fov, request.yaw, request.pitch, request.roll)
        inputs.record = condition_record(
            str(request.video), len(inputs.video), *place, source_frames=source_frames
        )
    elif request.image:
        inputs.image = video_io.read_video(request.image, num_frames=1)[0][0]
        place = dict(fov=request.fov, yaw=request.yaw, pitch=request.pitch, roll=request.roll)
        inputs.record = {"image": str(request.image), **place}
    elif request.continue_from:
        path = request.continue_from
        inputs.continue_from, fps = video_io.read_video(path)
        height, width = inputs.continue_from.shape[1:3]
        if width != 2 * height:
            raise UserError(f"--continue: {path} is {width}x{height}, not a 2:1 360 (ERP) video")
        if request.num_frames <= len(inputs.continue_from):
            raise UserError(
                f"--num_frames {request.num_frames} must exceed the {len(inputs.continue_from)} "
                f"frames of --continue {path}"
            )
        inputs.fps = fps or inputs.fps
        inputs.record = {"continue": str(path), "source_frames": len(inputs.continue_from)}
    inputs.fps = request.fps or inputs.fps
    return inputs


def generate_request(
    models: Models,
    request: Request,
    settings: denoising.SampleSettings,
    inputs: ConditionInputs,
    progress: StepCallback | None,
) -> Generation | LongGeneration:
    """One window (`generate`), or window by window when the request asks for more frames than
    the model's clip or continues a video (`generate_long`, `continue_video`)."""
    clip = models.config.data.num_frames
    place = dict(
        fov_deg=request.fov, yaw_deg=request.yaw, pitch_deg=request.pitch, roll_deg=request.roll
    )
    common = dict(negative_prompt=request.negative_prompt, progress=progress)
    if inputs.continue_from is not None:
        return continue_video(
            models,
            inputs.continue_from,
            request.prompt,
            settings,
            num_frames=request.num_frames,
            overlap_latent_frames=request.overlap,
            **common,
        )
    # With --video, --num_frames only caps the clip read (the video sets the length).
    if inputs.video is None and request.num_frames is not None and request.num_frames > clip:
        return generate_long(
            models,
            request.prompt,
            settings,
            num_frames=request.num_frames,
            overlap_latent_frames=request.overlap,
            image=inputs.image,
            **place,
            **common,
        )
    return generate(
        models,
        request.prompt,
        settings,
        video=inputs.video,
        image=inputs.image,
        num_frames=request.num_frames,
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


def check_output(
    out: str | os.PathLike,
    request: Request,
    config: ml_collections.ConfigDict,
    inputs: ConditionInputs | None = None,
    *,
    checkpoint: str | os.PathLike,
    overwrite: bool,
) -> None:
    """Before sampling: `out` may be replaced (`--overwrite` replaces only an output folder
    this program wrote, never the checkpoint or the current directory), can be written, and
    its filesystem has room for the outputs (`outputs.estimated_bytes`). UserError naming it."""
    if overwrite:
        check_replaceable(out, owned=OUTPUT_NAMES, marker=OUTPUT_MARKER, keep=[checkpoint])
    frames = request.num_frames or config.data.num_frames
    if inputs is not None and inputs.video is not None:
        frames = len(inputs.video)
    panorama_hw = (config.data.erp_height, config.data.erp_width)
    canvas_hw = data_config_lib.canvas_hw(config.data)
    check_writable(out, expected_bytes=estimated_bytes(frames, panorama_hw, canvas_hw))


def run_request(
    models: Models,
    config: ml_collections.ConfigDict,
    request: Request,
    settings: denoising.SampleSettings,
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
    check_output(out, request, config, inputs, checkpoint=checkpoint, overwrite=overwrite)
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


def run_prompt_file(
    path: str | os.PathLike,
    defaults: Request,
    config: ml_collections.ConfigDict,
    settings: denoising.SampleSettings,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike,
    dtype: str = "bfloat16",
    mesh: str | None = None,
    overwrite: bool = False,
) -> int:
    """A --prompts file (`read_prompt_file`, each line over `defaults`), each video into
    `out/<name>`: this process's share of the lines (line i on process i mod count; each
    process holds its own copy of the model on its local devices), split again over its
    device groups (`sampling_meshes(mesh)`: a mesh smaller than the local devices makes several,
    each with a model replica; the j-th line to make on group j mod groups), skipping finished
    outputs unless `overwrite` (each is written atomically, so one that exists is complete). A
    bad line or a failed video is reported in one line and the rest go on; returns the exit
    status, 1 if any failed."""
    requests = read_prompt_file(path, defaults)
    mine = requests[jax.process_index() :: jax.process_count()]
    failed = [r for r in mine if isinstance(r, UserError)]
    for error in failed:
        print(f"error: {error}", file=sys.stderr)
    out = Path(out)
    todo = [r for r in mine if isinstance(r, Request)]
    done = [r for r in todo if (out / r.name).is_dir() and not overwrite]
    todo = [r for r in todo if r not in done]
    print(f"{len(todo)} to generate, {len(done)} finished skipped", file=sys.stderr)
    if not todo:
        return 1 if failed else 0
    meshes = sampling_meshes(mesh)[: len(todo)]
    models = load_models(config, checkpoint, mesh=meshes[0], dtype=dtype)
    models.encode_prompts([p for r in todo for p in (r.prompt, r.negative_prompt)])
    models.release_text_encoder()
    # Data parallel over device groups: a whole model replica per group (restored once, copied
    # device to device), each making its share of the lines in its own thread. Not one mesh
    # with a data axis batching the prompts: lines differ in kind and shape (a video, an image,
    # a continuation, a length), so they cannot share a batch, and a batch would draw each
    # video's noise from the batch's key. A replica runs any line exactly as one group alone
    # would. JAX dispatch is thread-safe and each group's programs run on its own devices, so
    # the groups run concurrently; each compiles its own programs (its own devices).
    replicas = [models, *(models.replica(group) for group in meshes[1:])]
    shares = [todo[g :: len(replicas)] for g in range(len(replicas))]
    make = functools.partial(
        _run_share, source=path, config=config, settings=settings, out=out,
        checkpoint=str(checkpoint), overwrite=overwrite,
    )  # fmt: skip
    if len(replicas) == 1:  # in this thread, so Ctrl-C stops it at once
        failed += make(models, todo)
    else:
        with concurrent.futures.ThreadPoolExecutor(len(replicas)) as pool:
            failed += [error for errors in pool.map(make, replicas, shares) for error in errors]
    return 1 if failed else 0


def _run_share(
    models: Models,
    requests: list[Request],
    *,
    source: str | os.PathLike,
    config: ml_collections.ConfigDict,
    settings: denoising.SampleSettings,
    out: Path,
    checkpoint: str,
    overwrite: bool,
) -> list[Exception]:
    """Makes `requests` (lines of the prompt file `source`) with `models`, one after another;
    the failures, each reported."""
    failed: list[Exception] = []
    progress = StepProgress()
    for request in requests:
        try:
            written = run_request(
                models, config, request, settings, out / request.name,
                checkpoint=checkpoint, overwrite=overwrite, progress=progress,
            )  # fmt: skip
        except Exception as error:  # any failure of this line: the others go on
            reason = error if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            first = (str(reason).strip().splitlines() or [""])[0]
            where = f"{source} line {request.line} ({request.name})"
            print(f"error: {where}: {first}", file=sys.stderr)
            failed.append(error)
            continue
        print(f"wrote {written}", file=sys.stderr)
    return failed
