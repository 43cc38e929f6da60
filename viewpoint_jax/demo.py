"""The whole pipeline on a laptop CPU in minutes: data, training, evaluation, a 360 video.

    python -m viewpoint_jax.demo --out demo_output [--train_steps=N] [--quick]

The paper's story in miniature: a DiT pretrained on ordinary perspective video becomes a
panorama model by fine-tuning on ViewPoint maps.

1. renders the embedded demo dataset (moving procedural panoramas with captions) into
   `out/source` and builds it into `out/data` (the data_dir of configs/tiny.py);
2. fine-tunes the pretrained perspective DiT (the committed viewpoint_jax/assets/tiny_perspective,
   made by tools/pretrain_tiny.py; with `--quick` a micro one pretrained here for a few steps)
   into a ViewPoint model: configs/tiny.py in `out/finetuned` (a block-DCT pixel transform
   instead of the Wan VAE, a small randomly initialised umT5 instead of umT5-XXL, a 4-block DiT);
3. trains the same architecture from scratch, the same steps and seed, in `out/scratch`;
4. draws both loss curves (`loss_curve.png`);
5. outpaints every held-out clip from its condition view and caption with the untrained model
   (the scratch run's initialisation), the scratch and the fine-tuned model, the same noise for
   all, and measures the error outside the condition against two fills that see no input, a
   mid-grey one and the training clips' mean map, and the ceiling: the ground truth through the
   autoencoder (`outpainting.json`, `outpainting.png`: ground truth | condition | autoencoded |
   scratch | fine-tuned);
6. generates a 360 video from a held-out perspective clip and its caption with the fine-tuned
   model (`sample/`: pano.mp4, viewpoint.mp4, faces.png, viewer.html);
7. continues that 360 video by one more window (`continue_video`: the window knows the last frame
   so far), into `continuation/` (the same files; its first frames are the sample's).

Everything is deterministic given the settings. A rerun reuses the dataset and resumes (or
skips) the training; compiled programs are kept in `out/jax_cache`. `--quick` is the test
size: a handful of clips and steps, seconds of work.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from viewpoint_jax import pretrain as pretrain_lib
from viewpoint_jax import sample as sample_lib
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError, refuse_positional, run
from viewpoint_jax.common.fileio import atomic_write_text
from viewpoint_jax.data import builder, conditions, demo_dataset
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.diffusion.flow_matching import Loss
from viewpoint_jax.evaluation import outpainting
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import checkpoints, loop, optim, step, telemetry

CONFIG_FILE = config_lib.packaged_config("tiny.py")
DATASET_NAME = "demo"
DATASET_FPS = 8.0
# Full: every test clip; quick: the test size (see tests/test_demo.py).
FULL = {
    "config_arg": None,
    "dataset": dict(num_train=48, num_test=8, num_images=8, height=64, num_frames=17),
    "eval_seeds": (0, 1),
    "sample_steps": None,  # the config's
}
QUICK = {
    "config_arg": "micro",
    "dataset": dict(num_train=4, num_test=2, num_images=0, height=32, num_frames=9),
    "eval_seeds": (0,),
    "sample_steps": 4,
}
# The runs the demo trains and compares, by name (their folders under `out`).
FINETUNED, SCRATCH = "finetuned", "scratch"
# The picture's column of the ground truth through the autoencoder: what a model can reach.
AUTOENCODED = "autoencoded"


# --- Settings ---------------------------------------------------------------------------------


def config_spec(quick: bool) -> str:
    """configs/tiny.py, or configs/tiny.py:micro with `quick`."""
    arg = (QUICK if quick else FULL)["config_arg"]
    return str(CONFIG_FILE) + (f":{arg}" if arg else "")


def demo_config(
    out: Path, quick: bool, train_steps: int | None, spec: str | None = None
) -> ml_collections.ConfigDict:
    """The config `spec` (`path.py[:arg]`, default `config_spec(quick)`) reading the dataset
    under `out/data`."""
    preset = QUICK if quick else FULL
    spec = spec or config_spec(quick)
    config = sample_lib.load_config(spec)
    config.data.data_dir = str(out / "data")
    config.data.name = DATASET_NAME
    if train_steps is not None:
        if train_steps < 1:
            raise UserError(f"--train_steps must be >= 1, got {train_steps}")
        config.num_steps = int(train_steps)
    if preset["sample_steps"]:
        config.sample.steps = preset["sample_steps"]
    return config


def check_or_write_stamp(out: Path, record: dict[str, Any]) -> None:
    """An output folder holds one demo's dataset and run: refuse to mix in another's."""
    stamp = out / "demo.json"
    if stamp.is_file():
        previous = json.loads(stamp.read_text())
        if previous != record:
            raise UserError(
                f"{out} holds a demo made with other settings ({stamp}: {previous}); "
                "delete it or pass another --out"
            )
        return
    atomic_write_text(stamp, json.dumps(record, indent=2) + "\n")


# --- Steps ------------------------------------------------------------------------------------


def ensure_pretrained(out: Path, config: ml_collections.ConfigDict, spec: str) -> Path:
    """The pretrained perspective DiT the fine-tuning starts from: the config's
    `model.init_checkpoint` (configs/tiny.py: the committed one), or, for a config without one
    (the quick test size), a plain text-to-video DiT of its size pretrained here for a few steps
    (its `_pretrain` variant, e.g. configs/tiny.py:micro_pretrain) into `out/pretrained`."""
    if config.model.init_checkpoint:
        path = Path(config.model.init_checkpoint)
        if not (path / "config.json").is_file():
            raise UserError(
                f"config.model.init_checkpoint: no pretrained DiT at {path} (make it with "
                "`python tools/pretrain_tiny.py`, see configs/tiny.py)"
            )
        return path
    path = out / "pretrained"
    if (path / "config.json").is_file():
        print(f"  reusing the pretrained DiT in {path}")
        return path
    pretrain_spec = f"{spec}_pretrain" if ":" in spec else f"{spec}:pretrain"
    pretrain_config = sample_lib.load_config(pretrain_spec)
    command = f"viewpoint_jax.pretrain.pretrain({pretrain_spec!r}) in the demo"
    pretrain_lib.pretrain(pretrain_config, out / "pretrain_run", path, command=command)
    return path


def train_run(config: ml_collections.ConfigDict, run_dir: Path) -> int:
    """Trains (or resumes) `config` in `run_dir`; returns the steps trained."""
    result = loop.train(config, run_dir, progress=True)
    if result["stopped"]:
        raise UserError("training was stopped (SIGTERM); rerun the demo to resume it")
    return int(result["step"])


def ensure_dataset(out: Path, dataset: dict[str, Any]) -> None:
    try:
        builder.dataset_dir(out / "data", DATASET_NAME)
        print(f"  reusing the dataset in {out / 'data'}")
        return
    except ValueError:
        pass
    demo_dataset.build_demo_dataset(out, DATASET_NAME, fps=DATASET_FPS, **dataset)


def untrained_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The DiT exactly as training initialises it (`train.init_state`, the same seed, jitted as
    the trainer jits it), before any step."""
    tx, _ = optim.make_optimizer(config.optim, config.num_steps)
    init = jax.jit(functools.partial(step.init_state, config, tx))
    params = init(jax.random.key(config.seed))["params"]
    graphdef, _ = nnx.split(dit_lib.abstract_model(build.dit_config(config)), nnx.Param)
    return nnx.merge(graphdef, params)


# --- Pictures ---------------------------------------------------------------------------------

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (40, 40, 40)
_GRID = (225, 225, 225)
_AA = cv2.LINE_AA


def _nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """Round tick values covering [low, high]."""
    span = max(high - low, 1e-12)
    raw = span / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = magnitude * min((1, 2, 2.5, 5, 10), key=lambda m: abs(m * magnitude - raw))
    return np.arange(np.ceil(low / step) * step, high + step * 1e-6, step)


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (shorter at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    index = np.arange(1, len(values) + 1)
    start = np.maximum(0, index - window)
    return (sums[index] - sums[start]) / (index - start)


# Per curve: (per-step colour, moving-average colour), RGB.
CURVE_COLOURS = (((150, 190, 235), (20, 80, 180)), ((245, 195, 150), (200, 90, 20)))


def loss_curve_image(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    width: int = 900,
    height: int = 500,
    loss: Loss = Loss.VELOCITY,
) -> np.ndarray:
    """Training losses, `curves`: name -> (steps, losses) (at most two runs), each per step
    (thin) and as a moving average (thick), with axes, ticks, a legend and the `loss` named in
    the title -> RGB uint8 `(height, width, 3)`."""
    if not curves or any(len(steps) == 0 for steps, _ in curves.values()):
        raise ValueError("no losses to plot")
    if len(curves) > len(CURVE_COLOURS):
        raise ValueError(f"at most {len(CURVE_COLOURS)} curves, got {len(curves)}")
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 80, 30, 50, 60
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    step_lo = min(0.0, *(float(steps[0]) for steps, _ in curves.values()))
    step_hi = max(step_lo + 1, *(float(steps[-1]) for steps, _ in curves.values()))
    loss_lo = 0.0
    loss_hi = max(float(np.max(losses)) for _, losses in curves.values()) * 1.05

    def px(step, loss):
        x = x0 + (np.asarray(step, np.float64) - step_lo) / (step_hi - step_lo) * (x1 - x0)
        y = y1 - (np.asarray(loss, np.float64) - loss_lo) / (loss_hi - loss_lo) * (y1 - y0)
        return np.stack([x, y], -1).round().astype(np.int32)

    for tick in _nice_ticks(loss_lo, loss_hi):
        (_, y) = px(step_lo, tick)
        cv2.line(image, (x0, int(y)), (x1, int(y)), _GRID, 1)
        text = _label(tick)
        size = cv2.getTextSize(text, _FONT, 0.45, 1)[0]
        cv2.putText(image, text, (x0 - 8 - size[0], int(y) + 5), _FONT, 0.45, _INK, 1, _AA)
    for tick in _nice_ticks(step_lo, step_hi):
        (x, _) = px(tick, loss_lo)
        cv2.line(image, (int(x), y1), (int(x), y1 + 5), _INK, 1)
        text = f"{round(float(tick))}"
        size = cv2.getTextSize(text, _FONT, 0.45, 1)[0]
        cv2.putText(image, text, (int(x) - size[0] // 2, y1 + 22), _FONT, 0.45, _INK, 1, _AA)
    for k, (name, (steps, losses)) in enumerate(curves.items()):
        raw, smooth = CURVE_COLOURS[k]
        window = max(1, len(losses) // 20)
        cv2.polylines(image, [px(steps, losses)], False, raw, 1, _AA)
        cv2.polylines(image, [px(steps, moving_average(losses, window))], False, smooth, 2, _AA)
        y = y0 + 20 + 22 * k
        cv2.line(image, (x1 - 330, y - 5), (x1 - 315, y - 5), raw, 1, _AA)
        cv2.line(image, (x1 - 315, y - 5), (x1 - 300, y - 5), smooth, 2, _AA)
        text = f"{name} (thin: per step, thick: mean of {window})"
        cv2.putText(image, text, (x1 - 290, y), _FONT, 0.45, _INK, 1, _AA)
    cv2.line(image, (x0, y1), (x1, y1), _INK, 1)
    cv2.line(image, (x0, y0), (x0, y1), _INK, 1)
    title = f"training loss (flow matching, {loss.description})"
    cv2.putText(image, title, (x0, 30), _FONT, 0.65, _INK, 1, _AA)
    cv2.putText(image, "step", ((x0 + x1) // 2 - 15, height - 15), _FONT, 0.55, _INK, 1, _AA)
    cv2.putText(image, "loss", (10, y0 - 10), _FONT, 0.55, _INK, 1, _AA)
    return image


def _tile(map_frame: np.ndarray, scale: int) -> np.ndarray:
    tile = video_io.to_uint8(map_frame)
    return cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def _psnr_text(mse: float) -> str:
    """PSNR of an MSE for people: "exact" for 0 (the lossless ceiling), else in dB."""
    return "exact" if mse <= 0 else f"{float(outpainting.psnr(mse)):.2f} dB"


def _mean_text(name: str, mse: float) -> str:
    return f"{name} {mse:.3f} ({_psnr_text(mse)})"


def comparison_image(
    clips: outpainting.EvalClips,
    models: dict[str, outpainting.OutpaintingResult],
    references: dict[str, float],
    frame: int = -1,
    scale: int = 2,
) -> np.ndarray:
    """One row per clip: ground truth | condition | each of `models` (one frame of each map,
    enlarged `scale` times) with the model's outpainting MSE of the clip; below, the mean MSE
    (and PSNR) of each model and of the `references` (name -> mean MSE) -> RGB uint8."""
    columns = ("ground truth", "condition", *models)
    gap, header, footer = 6, 28, 20
    side = clips.target_map.shape[2] * scale
    width = len(columns) * side + (len(columns) - 1) * gap
    rows = []
    for n in range(len(clips)):
        tiles = [clips.target_map[n, frame], clips.condition_map[n, frame]]
        tiles += [result.maps[n, frame] for result in models.values()]
        row = np.full((side + footer, width, 3), 255, np.uint8)
        for k, tile in enumerate(tiles):
            x = k * (side + gap)
            row[:side, x : x + side] = _tile(tile, scale)
        for k, result in enumerate(models.values(), start=2):
            x = k * (side + gap)
            text = f"MSE {result.mse[n]:.3f}"
            cv2.putText(row, text, (x + 4, side + 15), _FONT, 0.45, _INK, 1, _AA)
        rows.append(row)
    head = np.full((header, width, 3), 255, np.uint8)
    for k, name in enumerate(columns):
        cv2.putText(head, name, (k * (side + gap) + 4, 19), _FONT, 0.5, _INK, 1, _AA)
    lines = (
        "mean MSE outside the condition (pixels in [-1, 1]):",
        ", ".join(_mean_text(name, float(np.mean(r.mse))) for name, r in models.items()),
        *(_mean_text(name, mse) for name, mse in references.items()),
        f"(frame {frame % clips.target_map.shape[1]} of each clip shown)",
    )
    foot = np.full((8 + 20 * len(lines), width, 3), 255, np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(foot, line, (4, 16 + 20 * k), _FONT, 0.42, _INK, 1, _AA)
    spacer = np.full((gap, width, 3), 255, np.uint8)
    body = [head]
    for row in rows:
        body += [row, spacer]
    image = np.concatenate([*body, foot], axis=0)
    return np.pad(image, ((8, 8), (8, 8), (0, 0)), constant_values=255)


# --- The demo ---------------------------------------------------------------------------------


def _step(index: int, total: int, text: str) -> float:
    print(f"[{index}/{total}] {text}", flush=True)
    return time.perf_counter()


def evaluate_outpainting(
    out: Path, config: ml_collections.ConfigDict, run_dirs: dict[str, Path], seeds: tuple[int, ...]
) -> tuple[dict, sample_lib.Models, outpainting.EvalClips]:
    """Outpaints the held-out clips with the untrained model (the scratch run's initialisation),
    the scratch and the fine-tuned model (same noise for all), against two fills that see no
    input (mid-grey and the training clips' mean map) and the ground truth through the
    autoencoder (the ceiling); writes outpainting.png; returns the summary, the fine-tuned
    models and the clips."""
    settings = sampler.SampleSettings.from_config(config.sample)
    autoencoder = build.build_autoencoder(config)
    text_encoder = build.build_text_encoder(config)
    clips = outpainting.load_eval_clips(config.data)
    models = {"untrained": untrained_model(scratch_config(config))}
    models.update(
        {name: checkpoints.restore_model(config, path) for name, path in run_dirs.items()}
    )
    results = {
        name: outpainting.outpainting_error(
            model, autoencoder, text_encoder, clips, settings, seeds
        )
        for name, model in models.items()
    }
    grey = float(np.mean(outpainting.constant_fill_mse(clips)))
    training_maps = outpainting.load_eval_clips(config.data, split=config.data.train_split)
    training_mean = float(np.mean(outpainting.mean_map_fill_mse(clips, training_maps.target_map)))
    ceiling = outpainting.autoencoder_ceiling(autoencoder, clips)
    finetuned, scratch = (float(np.mean(results[k].mse)) for k in (FINETUNED, SCRATCH))
    summary = {
        "metric": "MSE of pixels in [-1, 1] outside the condition mask (the outpainted region), "
        "generated ViewPoint map vs ground truth; PSNR = 10 log10(4 / MSE)",
        "clips": [{"source": s, "caption": c} for s, c in zip(clips.sources, clips.captions)],
        "sample_settings": settings.to_dict(),
        **{name: result.summary() for name, result in results.items()},
        "grey_fill": {"mse": grey, "psnr_db": float(outpainting.psnr(grey))},
        "training_mean_fill": {
            "mse": training_mean,
            "psnr_db": float(outpainting.psnr(training_mean)),
            "clips": len(training_maps.target_map),
        },
        "autoencoder_ceiling": ceiling.summary(),
        "finetuned_beats_scratch": bool(finetuned < scratch),
        "finetuned_over_grey_db": float(outpainting.psnr(finetuned) - outpainting.psnr(grey)),
    }
    shown = {
        AUTOENCODED: ceiling,
        "from scratch": results[SCRATCH],
        "fine-tuned": results[FINETUNED],
    }
    references = {
        "untrained": float(np.mean(results["untrained"].mse)),
        "mid-grey fill": grey,
        "training clips' mean map": training_mean,
    }
    video_io.write_png(out / "outpainting.png", comparison_image(clips, shown, references))
    finetuned_models = sample_lib.Models(
        model=models[FINETUNED], autoencoder=autoencoder, text_encoder=text_encoder, config=config
    )
    return summary, finetuned_models, clips


def scratch_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` starting from a random initialisation instead of its pretrained DiT."""
    scratch = config.copy_and_resolve_references()
    scratch.model.init_checkpoint = ""
    return scratch


def generate_sample(
    out: Path, models: sample_lib.Models, clips: outpainting.EvalClips, spec: str, run_dir: Path
) -> tuple[Path, sample_lib.Generation]:
    """A 360 video from the first held-out clip's condition view and caption -> out/sample;
    returns the folder and the generation."""
    fov, yaw, pitch, roll = (float(v) for v in clips.view[0])
    generation = sample_lib.generate(
        models,
        clips.captions[0],
        sampler.SampleSettings.from_config(models.config.sample),
        video=video_io.to_uint8(clips.perspective[0]),
        fov_deg=fov,
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
    )
    condition = sample_lib.condition_record(
        clips.sources[0], int(clips.perspective.shape[1]), fov, yaw, pitch, roll
    )
    record = sample_lib.settings_record(
        generation,
        clips.captions[0],
        "",
        condition,
        DATASET_FPS,
        config=spec,
        checkpoint=str(run_dir),
    )
    sample_dir = sample_lib.write_outputs(
        out / "sample", generation, DATASET_FPS, record, overwrite=True
    )
    return sample_dir, generation


def generate_continuation(
    out: Path,
    models: sample_lib.Models,
    sample_dir: Path,
    generation: sample_lib.Generation,
    prompt: str,
    spec: str,
    run_dir: Path,
) -> Path:
    """The sample's 360 video `generation.panorama` `(T, H, W, 3)` extended by one window of the
    model's clip length -> out/continuation, `T + window - P` frames (P = the pixel frames of the
    one known latent frame the window starts from, `continue_video`'s default overlap)."""
    temporal = models.autoencoder.temporal_factor
    window = int(models.config.data.num_frames)
    known_frames = conditions.prefix_pixel_frames(1, temporal)
    source_frames = len(generation.panorama)
    continuation = sample_lib.continue_video(
        models,
        generation.panorama,
        prompt,
        sampler.SampleSettings.from_config(models.config.sample),
        num_frames=source_frames + window - known_frames,
    )
    condition = {"continues": str(sample_dir / "pano.mp4"), "source_frames": source_frames}
    record = sample_lib.settings_record(
        continuation,
        prompt,
        "",
        condition,
        DATASET_FPS,
        config=spec,
        checkpoint=str(run_dir),
        window_starts=continuation.window_starts,
    )
    return sample_lib.write_outputs(
        out / "continuation", continuation, DATASET_FPS, record, overwrite=True
    )


def run_demo(
    out: str | os.PathLike,
    *,
    train_steps: int | None = None,
    quick: bool = False,
    config: str | None = None,
) -> dict:
    """Runs the seven steps into `out` with the config file `config` (`path.py[:arg]`, default
    configs/tiny.py); returns the summary also written to `out/outpainting.json`."""
    out = Path(out).absolute()
    preset = QUICK if quick else FULL
    spec = config or config_spec(quick)
    config = demo_config(out, quick, train_steps, spec)
    stamp = {"config": spec, "dataset": preset["dataset"], "fps": DATASET_FPS}
    check_or_write_stamp(out, {**stamp, "init_checkpoint": config.model.init_checkpoint})
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    t = _step(1, 7, f"demo dataset -> {out / 'data'}")
    ensure_dataset(out, preset["dataset"])
    seconds["dataset"] = time.perf_counter() - t

    run_dirs = {FINETUNED: out / FINETUNED, SCRATCH: out / SCRATCH}
    t = _step(2, 7, f"fine-tuning the pretrained DiT for {config.num_steps} steps")
    config.model.init_checkpoint = str(ensure_pretrained(out, config, spec))
    print(f"  from {config.model.init_checkpoint} -> {run_dirs[FINETUNED]}", flush=True)
    steps = {FINETUNED: train_run(config, run_dirs[FINETUNED])}
    seconds["finetune"] = time.perf_counter() - t
    t = _step(3, 7, f"the same from scratch -> {run_dirs[SCRATCH]}")
    steps[SCRATCH] = train_run(scratch_config(config), run_dirs[SCRATCH])
    seconds["scratch"] = time.perf_counter() - t

    t = _step(4, 7, "loss curves")
    curves = {
        name: telemetry.read_losses(run_dirs[key] / "metrics.jsonl")
        for name, key in (("fine-tuned", FINETUNED), ("from scratch", SCRATCH))
    }
    loss = config_lib.diffusion_loss(config.diffusion)
    video_io.write_png(out / "loss_curve.png", loss_curve_image(curves, loss=loss))
    seconds["loss_curve"] = time.perf_counter() - t

    t = _step(5, 7, "outpainting held-out clips: untrained, scratch, fine-tuned; same noise")
    summary, models, clips = evaluate_outpainting(out, config, run_dirs, preset["eval_seeds"])
    summary["trained_steps"] = steps
    summary["pretrained"] = config.model.init_checkpoint
    seconds["evaluation"] = time.perf_counter() - t

    t = _step(6, 7, "a 360 video from a held-out perspective clip and its caption")
    run_dir = run_dirs[FINETUNED]
    sample_dir, generation = generate_sample(out, models, clips, spec, run_dir)
    seconds["generation"] = time.perf_counter() - t

    t = _step(7, 7, "the 360 video continued by one more window")
    continuation_dir = generate_continuation(
        out, models, sample_dir, generation, clips.captions[0], spec, run_dir
    )
    seconds["continuation"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    atomic_write_text(out / "outpainting.json", json.dumps(summary, indent=2) + "\n")
    _print_summary(out, summary, sample_dir, continuation_dir)
    return summary


def _print_summary(out: Path, summary: dict, sample_dir: Path, continuation_dir: Path) -> None:
    print()
    print(f"Outpainting error on {len(summary['clips'])} held-out clips (outside the condition):")
    for key, name in (
        ("untrained", "untrained model"),
        (SCRATCH, f"from scratch ({summary['trained_steps'][SCRATCH]} steps)"),
        (FINETUNED, f"fine-tuned ({summary['trained_steps'][FINETUNED]} steps)"),
        ("grey_fill", "(mid-grey fill)"),
        ("training_mean_fill", "(training clips' mean)"),
        ("autoencoder_ceiling", "(ceiling: autoencoded)"),
    ):
        mse = summary[key]["mse"]
        print(f"  {name:26s} MSE {mse:.4f}   PSNR {_psnr_text(mse)}")
    if not summary["finetuned_beats_scratch"]:
        print("  warning: the fine-tuned model is not better than the scratch one", file=sys.stderr)
    print(f"\nDone in {summary['seconds']['total']:.0f} s. Open:")
    for path, what in (
        (sample_dir / "viewer.html", "the 360 video in a browser (drag to look around)"),
        (sample_dir / "pano.mp4", "the equirectangular video (tagged 360)"),
        (sample_dir / "viewpoint.mp4", "the ViewPoint map the model generated"),
        (sample_dir / "faces.png", "the six cube faces at a few times"),
        (continuation_dir / "viewer.html", "the 360 video continued by one more window"),
        (out / "loss_curve.png", "the training losses, fine-tuned and from scratch"),
        (
            out / "outpainting.png",
            "ground truth | condition | autoencoded | from scratch | fine-tuned",
        ),
        (out / "outpainting.json", "the numbers"),
    ):
        print(f"  {path}  {what}")


def define_flags() -> None:
    """The CLI's flags; defined only when this module is the program."""
    flags.DEFINE_string("out", "demo_output", "output folder")
    flags.DEFINE_string(
        "config", None, "config file, path.py[:arg] (default: configs/tiny.py, :micro with --quick)"
    )
    flags.DEFINE_integer("train_steps", None, "training steps (default: the config's)")
    flags.DEFINE_bool("quick", False, "test size: a tiny dataset and model, a few steps")


def use_compilation_cache(directory: Path) -> None:
    """Keeps compiled programs in `directory` (unless JAX_COMPILATION_CACHE_DIR names another):
    the scratch run then reuses the fine-tuning's train step, the evaluation one sampler for
    its three models, and a rerun all of them (about 33 s a training run on 2 cores,
    BENCHMARKS.md). Process-wide, so the CLI sets it, not `run_demo`."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(directory))


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    use_compilation_cache(Path(args.out).absolute() / "jax_cache")
    run_demo(args.out, train_steps=args.train_steps, quick=args.quick, config=args.config)
    return 0


def console_main() -> None:
    """The console script (pyproject's [project.scripts])."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
