"""The whole pipeline on a laptop CPU in minutes: data, training, evaluation, a 360 video.

    python -m viewpoint_jax.demo --out demo_output [--train_steps=N] [--quick]

1. renders the embedded demo dataset (moving procedural panoramas with captions) into
   `out/source` and builds it into `out/data` (the data_dir of configs/tiny.py);
2. trains configs/tiny.py in `out/run` (a space-to-depth pixel transform instead of the Wan VAE,
   a small randomly initialised umT5 instead of umT5-XXL, a 4-block DiT);
3. draws the loss curve (`loss_curve.png`);
4. outpaints every held-out clip from its condition view and caption with the untrained model
   (the same init seed) and with the trained one, the same noise for both, and measures the error
   outside the condition (`evaluation.json`, `outpainting.png`: ground truth | condition |
   untrained | trained);
5. generates a 360 video from a held-out perspective clip and its caption with the trained model
   (`sample/`: pano.mp4, viewpoint.mp4, faces.png, viewer.html);
6. continues that 360 video by one more window (`continue_video`: the window knows the last frame
   so far), into `continuation/` (the same files; its first frames are the sample's).

Everything is deterministic given the settings. A rerun reuses the dataset and resumes (or
skips) the training. `--quick` is the test size: a handful of clips and steps, seconds of work.
"""

from __future__ import annotations

import functools
import json
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

from viewpoint_jax import build, evaluation, video_io
from viewpoint_jax import config as config_lib
from viewpoint_jax import sample as sample_lib
from viewpoint_jax import train as train_lib
from viewpoint_jax.cli import UserError, refuse_positional, run
from viewpoint_jax.data import builder, conditions, demo_dataset
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.io_utils import atomic_write_text
from viewpoint_jax.models import dit as dit_lib

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


def ensure_dataset(out: Path, dataset: dict[str, Any]) -> None:
    try:
        builder.dataset_dir(out / "data", DATASET_NAME)
        print(f"  reusing the dataset in {out / 'data'}")
        return
    except ValueError:
        pass
    demo_dataset.build_demo_dataset(out, DATASET_NAME, fps=DATASET_FPS, **dataset)


def read_losses(metrics_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) from a run's metrics.jsonl; a resumed run's repeated steps: last wins."""
    by_step: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = float(row["loss"])
    steps = np.asarray(sorted(by_step), np.int64)
    return steps, np.asarray([by_step[s] for s in steps], np.float64)


def untrained_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The DiT exactly as training initialises it (`train.init_state`, the same seed, jitted as
    the trainer jits it), before any step."""
    tx, _ = train_lib.make_optimizer(config.optim, config.num_steps)
    init = jax.jit(functools.partial(train_lib.init_state, config, tx))
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


def loss_curve_image(
    steps: np.ndarray, losses: np.ndarray, width: int = 900, height: int = 500
) -> np.ndarray:
    """The training loss per step (thin) and its moving average (thick), with axes, ticks and
    labels -> RGB uint8 `(height, width, 3)`."""
    if len(steps) == 0:
        raise ValueError("no losses to plot")
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 80, 30, 50, 60
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    step_lo = min(0.0, float(steps[0]))
    step_hi = float(max(steps[-1], step_lo + 1))
    window = max(1, len(losses) // 20)
    smooth = moving_average(losses, window)
    loss_lo, loss_hi = 0.0, float(np.max(losses)) * 1.05

    def px(step, loss):
        x = x0 + (np.asarray(step, np.float64) - step_lo) / (step_hi - step_lo) * (x1 - x0)
        y = y1 - (np.asarray(loss, np.float64) - loss_lo) / (loss_hi - loss_lo) * (y1 - y0)
        return np.stack([x, y], -1).round().astype(np.int32)

    for tick in _nice_ticks(loss_lo, loss_hi):
        (_, y) = px(step_lo, tick)
        cv2.line(image, (x0, int(y)), (x1, int(y)), _GRID, 1)
        text = _label(tick)
        size = cv2.getTextSize(text, _FONT, 0.45, 1)[0]
        cv2.putText(image, text, (x0 - 8 - size[0], int(y) + 5), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    for tick in _nice_ticks(step_lo, step_hi):
        (x, _) = px(tick, loss_lo)
        cv2.line(image, (int(x), y1), (int(x), y1 + 5), _INK, 1)
        text = f"{round(float(tick))}"
        size = cv2.getTextSize(text, _FONT, 0.45, 1)[0]
        cv2.putText(
            image, text, (int(x) - size[0] // 2, y1 + 22), _FONT, 0.45, _INK, 1, cv2.LINE_AA
        )
    cv2.polylines(image, [px(steps, losses)], False, (150, 190, 235), 1, cv2.LINE_AA)
    cv2.polylines(image, [px(steps, smooth)], False, (20, 80, 180), 2, cv2.LINE_AA)
    cv2.line(image, (x0, y1), (x1, y1), _INK, 1)
    cv2.line(image, (x0, y0), (x0, y1), _INK, 1)
    title = "training loss (flow-matching velocity MSE)"
    cv2.putText(image, title, (x0, 30), _FONT, 0.65, _INK, 1, cv2.LINE_AA)
    cv2.putText(image, "step", ((x0 + x1) // 2 - 15, height - 15), _FONT, 0.55, _INK, 1, _AA)
    cv2.putText(image, "loss", (10, y0 - 10), _FONT, 0.55, _INK, 1, cv2.LINE_AA)
    legend = [("per step", (150, 190, 235), 1), (f"mean of {window}", (20, 80, 180), 2)]
    for k, (text, colour, thickness) in enumerate(legend):
        y = y0 + 20 + 22 * k
        cv2.line(image, (x1 - 170, y - 5), (x1 - 140, y - 5), colour, thickness, cv2.LINE_AA)
        cv2.putText(image, text, (x1 - 130, y), _FONT, 0.5, _INK, 1, cv2.LINE_AA)
    return image


def _tile(map_frame: np.ndarray, scale: int) -> np.ndarray:
    tile = video_io.to_uint8(map_frame)
    return cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def comparison_image(
    clips: evaluation.EvalClips,
    untrained: evaluation.OutpaintingResult,
    trained: evaluation.OutpaintingResult,
    grey_mse: float,
    frame: int = -1,
    scale: int = 2,
) -> np.ndarray:
    """One row per clip: ground truth | condition | untrained | trained (one frame of each map,
    enlarged `scale` times) with each model's outpainting MSE; the means below -> RGB uint8."""
    columns = ("ground truth", "condition", "untrained", "trained")
    gap, header, footer = 6, 28, 20
    side = clips.target_map.shape[2] * scale
    width = 4 * side + 3 * gap
    rows = []
    for n in range(len(clips)):
        tiles = [
            clips.target_map[n, frame],
            clips.condition_map[n, frame],
            untrained.maps[n, frame],
            trained.maps[n, frame],
        ]
        row = np.full((side + footer, width, 3), 255, np.uint8)
        for k, tile in enumerate(tiles):
            x = k * (side + gap)
            row[:side, x : x + side] = _tile(tile, scale)
        for k, result in ((2, untrained), (3, trained)):
            x = k * (side + gap)
            text = f"MSE {result.mse[n]:.3f}"
            cv2.putText(row, text, (x + 4, side + 15), _FONT, 0.45, _INK, 1, _AA)
        rows.append(row)
    head = np.full((header, width, 3), 255, np.uint8)
    for k, name in enumerate(columns):
        cv2.putText(head, name, (k * (side + gap) + 4, 19), _FONT, 0.5, _INK, 1, _AA)
    foot = np.full((44, width, 3), 255, np.uint8)
    lines = (
        f"mean MSE outside the condition: untrained {np.mean(untrained.mse):.3f}, "
        f"trained {np.mean(trained.mse):.3f}",
        f"(mid-grey fill {grey_mse:.3f}; pixels in [-1, 1]; frame {frame % clips.target_map.shape[1]})",
    )
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
    out: Path, config: ml_collections.ConfigDict, run_dir: Path, seeds: tuple[int, ...]
) -> tuple[dict, sample_lib.Models, evaluation.EvalClips]:
    """Outpaints the held-out clips with the untrained and the trained model (same noise);
    writes outpainting.png; returns the summary, the trained models and the clips."""
    settings = sampler.SampleSettings.from_config(config.sample)
    autoencoder = build.build_autoencoder(config)
    text_encoder = build.build_text_encoder(config)
    clips = evaluation.load_eval_clips(config.data)
    trained_model = build.restore_model(config, run_dir)
    results = {
        name: evaluation.outpainting_error(model, autoencoder, text_encoder, clips, settings, seeds)
        for name, model in (("untrained", untrained_model(config)), ("trained", trained_model))
    }
    grey = evaluation.constant_fill_mse(clips)
    summary = {
        "metric": "MSE of pixels in [-1, 1] outside the condition mask (the outpainted region), "
        "generated ViewPoint map vs ground truth; PSNR = 10 log10(4 / MSE)",
        "clips": [{"source": s, "caption": c} for s, c in zip(clips.sources, clips.captions)],
        "sample_settings": settings.to_dict(),
        "untrained": results["untrained"].summary(),
        "trained": results["trained"].summary(),
        "grey_fill": {"mse": float(np.mean(grey)), "psnr_db": float(evaluation.psnr(grey.mean()))},
        "trained_is_better": bool(
            np.mean(results["trained"].mse) < np.mean(results["untrained"].mse)
        ),
    }
    video_io.write_png(
        out / "outpainting.png",
        comparison_image(clips, results["untrained"], results["trained"], float(np.mean(grey))),
    )
    models = sample_lib.Models(
        model=trained_model, autoencoder=autoencoder, text_encoder=text_encoder, config=config
    )
    return summary, models, clips


def generate_sample(
    out: Path, models: sample_lib.Models, clips: evaluation.EvalClips, spec: str, run_dir: Path
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
    out: str | Path,
    *,
    train_steps: int | None = None,
    quick: bool = False,
    config: str | None = None,
) -> dict:
    """Runs the six steps into `out` with the config file `config` (`path.py[:arg]`, default
    configs/tiny.py); returns the summary also written to `out/evaluation.json`."""
    out = Path(out).absolute()
    preset = QUICK if quick else FULL
    spec = config or config_spec(quick)
    config = demo_config(out, quick, train_steps, spec)
    stamp = {"config": spec, "dataset": preset["dataset"]}
    check_or_write_stamp(out, {**stamp, "fps": DATASET_FPS})
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    t = _step(1, 6, f"demo dataset -> {out / 'data'}")
    ensure_dataset(out, preset["dataset"])
    seconds["dataset"] = time.perf_counter() - t

    run_dir = out / "run"
    t = _step(2, 6, f"training {Path(spec).name} for {config.num_steps} steps -> {run_dir}")
    result = train_lib.train(config, run_dir, progress=True)
    if result["stopped"]:
        raise UserError("training was stopped (SIGTERM); rerun the demo to resume it")
    trained_steps = int(result["step"])
    seconds["train"] = time.perf_counter() - t

    t = _step(3, 6, "loss curve")
    steps, losses = read_losses(run_dir / "metrics.jsonl")
    video_io.write_png(out / "loss_curve.png", loss_curve_image(steps, losses))
    seconds["loss_curve"] = time.perf_counter() - t

    t = _step(4, 6, "outpainting held-out clips: untrained vs trained model, same noise")
    summary, models, clips = evaluate_outpainting(out, config, run_dir, preset["eval_seeds"])
    summary["trained_steps"] = trained_steps
    seconds["evaluation"] = time.perf_counter() - t

    t = _step(5, 6, "a 360 video from a held-out perspective clip and its caption")
    sample_dir, generation = generate_sample(out, models, clips, spec, run_dir)
    seconds["generation"] = time.perf_counter() - t

    t = _step(6, 6, "the 360 video continued by one more window")
    continuation_dir = generate_continuation(
        out, models, sample_dir, generation, clips.captions[0], spec, run_dir
    )
    seconds["continuation"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    atomic_write_text(out / "evaluation.json", json.dumps(summary, indent=2) + "\n")
    _print_summary(out, summary, sample_dir, continuation_dir)
    return summary


def _print_summary(out: Path, summary: dict, sample_dir: Path, continuation_dir: Path) -> None:
    untrained, trained = summary["untrained"], summary["trained"]
    print()
    print(f"Outpainting error on {len(summary['clips'])} held-out clips (outside the condition):")
    print(f"  untrained model   MSE {untrained['mse']:.4f}   PSNR {untrained['psnr_db']:.2f} dB")
    print(
        f"  trained ({summary['trained_steps']} steps)  MSE {trained['mse']:.4f}   "
        f"PSNR {trained['psnr_db']:.2f} dB"
    )
    grey = summary["grey_fill"]
    print(f"  (mid-grey fill    MSE {grey['mse']:.4f}   PSNR {grey['psnr_db']:.2f} dB)")
    if not summary["trained_is_better"]:
        print("  warning: the trained model is not better than the untrained one", file=sys.stderr)
    print(f"\nDone in {summary['seconds']['total']:.0f} s. Open:")
    for path, what in (
        (sample_dir / "viewer.html", "the 360 video in a browser (drag to look around)"),
        (sample_dir / "pano.mp4", "the equirectangular video (tagged 360)"),
        (sample_dir / "viewpoint.mp4", "the ViewPoint map the model generated"),
        (sample_dir / "faces.png", "the six cube faces at a few times"),
        (continuation_dir / "viewer.html", "the 360 video continued by one more window"),
        (out / "loss_curve.png", "the training loss"),
        (out / "outpainting.png", "ground truth | condition | untrained | trained"),
        (out / "evaluation.json", "the numbers"),
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


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    run_demo(args.out, train_steps=args.train_steps, quick=args.quick, config=args.config)
    return 0


def console_main() -> None:
    """The console script (pyproject's [project.scripts])."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
