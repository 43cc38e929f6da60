"""The whole pipeline on a laptop CPU in minutes: data, training, evaluation, a 360 video (the
library of `python -m viewpoint_jax.demo`; `run_demo` runs it).

The paper's story in miniature: a DiT pretrained on ordinary perspective video becomes a
panorama model by fine-tuning on ViewPoint maps.

1. renders the embedded demo dataset (moving procedural panoramas with captions) into
   `out/source` and builds it into `out/data` (the data_dir of configs/tiny.py; `ensure_dataset`);
2. fine-tunes the pretrained perspective DiT (the committed viewpoint_jax/assets/tiny_perspective,
   made by `python -m viewpoint_jax.pretrain`; with `--quick` a micro one pretrained here for a
   few steps, `ensure_pretrained`) into a ViewPoint model: configs/tiny.py in `out/finetuned` (a
   block-DCT pixel transform instead of the Wan VAE, a small randomly initialised umT5 instead of
   umT5-XXL, a 4-block DiT);
3. trains the same architecture from scratch, the same steps and seed, in `out/scratch`;
4. draws both loss curves (`loss_curve.png`, `figures.loss_curve_image`);
5. outpaints every held-out clip from its condition view and caption with the untrained model
   (the scratch run's initialisation), the scratch and the fine-tuned model, the same noise for
   all, and measures the error outside the condition against two fills that see no input, a
   mid-grey one and the training clips' mean map, and the ceiling: the ground truth through the
   autoencoder (`evaluate_outpainting`: `evaluation.json`, `outpainting.png`: ground truth |
   condition | autoencoded | scratch | fine-tuned);
6. generates a 360 video from a held-out perspective clip and its caption with the fine-tuned
   model (`generate_sample`: `sample/`: pano.mp4, viewpoint.mp4, faces.png, viewer.html);
7. continues that 360 video by one more window (`generate_continuation`, `continue_video`: the
   window knows the last frame so far), into `continuation/` (the same files; its first frames
   are the sample's).

Everything is deterministic given the settings. A rerun reuses the dataset and resumes (or
skips) the training. `quick` is the test size: a handful of clips and steps, seconds of work.
The ablations (studies/ablation.py) reuse its config, dataset and untrained model.
"""

from __future__ import annotations

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
from flax import nnx

from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import atomic_write_text
from viewpoint_jax.data import conditions, demo_dataset, panoramic_videos
from viewpoint_jax.diffusion.denoising import SampleSettings
from viewpoint_jax.evaluation import outpainting
from viewpoint_jax.generation import outputs
from viewpoint_jax.generation.generate import Generation, continue_video, generate
from viewpoint_jax.generation.models import Models, load_config
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.studies import figures
from viewpoint_jax.training import checkpoints, loop, optim, step, telemetry
from viewpoint_jax.training.pretrain import pretrain

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
    config = load_config(spec)
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
                "`python -m viewpoint_jax.pretrain`, see configs/tiny.py)"
            )
        return path
    path = out / "pretrained"
    if (path / "config.json").is_file():
        print(f"  reusing the pretrained DiT in {path}")
        return path
    pretrain_spec = f"{spec}_pretrain" if ":" in spec else f"{spec}:pretrain"
    pretrain_config = load_config(pretrain_spec)
    command = f"viewpoint_jax.training.pretrain.pretrain({pretrain_spec!r}) in the demo"
    pretrain(pretrain_config, out / "pretrain_run", path, command=command)
    return path


def train_run(config: ml_collections.ConfigDict, run_dir: Path) -> int:
    """Trains (or resumes) `config` in `run_dir`; returns the steps trained."""
    result = loop.train(config, run_dir, progress=True)
    if result["stopped"]:
        raise UserError("training was stopped (SIGTERM); rerun the demo to resume it")
    return int(result["step"])


def ensure_dataset(out: Path, dataset: dict[str, Any]) -> None:
    """Builds the demo dataset (`dataset`: the sizes of `FULL` or `QUICK`) into `out/data`,
    unless it is there already."""
    try:
        panoramic_videos.dataset_dir(out / "data", DATASET_NAME)
        print(f"  reusing the dataset in {out / 'data'}")
        return
    except ValueError:
        pass
    demo_dataset.build_demo_dataset(out, DATASET_NAME, fps=DATASET_FPS, **dataset)


def untrained_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The DiT exactly as training initialises it (`step.init_state`, the same seed, jitted as
    the trainer jits it), before any step."""
    tx, _ = optim.make_optimizer(config.optim, config.num_steps)
    init = jax.jit(functools.partial(step.init_state, config, tx))
    params = init(jax.random.key(config.seed))["params"]
    graphdef, _ = nnx.split(dit_lib.abstract_model(build.dit_config(config)), nnx.Param)
    return nnx.merge(graphdef, params)


# --- The demo ---------------------------------------------------------------------------------


def _step(index: int, total: int, text: str) -> float:
    print(f"[{index}/{total}] {text}", flush=True)
    return time.perf_counter()


def evaluate_outpainting(
    out: Path, config: ml_collections.ConfigDict, run_dirs: dict[str, Path], seeds: tuple[int, ...]
) -> tuple[dict, Models, outpainting.EvalClips]:
    """Outpaints the held-out clips with the untrained model (the scratch run's initialisation),
    the scratch and the fine-tuned model (same noise for all), against two fills that see no
    input (mid-grey and the training clips' mean map) and the ground truth through the
    autoencoder (the ceiling); writes outpainting.png; returns the summary, the fine-tuned
    models and the clips."""
    settings = SampleSettings.from_config(config.sample)
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
    video_io.write_png(out / "outpainting.png", figures.comparison_image(clips, shown, references))
    finetuned_models = Models(
        model=models[FINETUNED], autoencoder=autoencoder, text_encoder=text_encoder, config=config
    )
    return summary, finetuned_models, clips


def scratch_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` starting from a random initialisation instead of its pretrained DiT."""
    scratch = config.copy_and_resolve_references()
    scratch.model.init_checkpoint = ""
    return scratch


def generate_sample(
    out: Path, models: Models, clips: outpainting.EvalClips, spec: str, run_dir: Path
) -> tuple[Path, Generation]:
    """A 360 video from the first held-out clip's condition view and caption -> out/sample;
    returns the folder and the generation."""
    fov, yaw, pitch, roll = (float(v) for v in clips.view[0])
    generation = generate(
        models,
        clips.captions[0],
        SampleSettings.from_config(models.config.sample),
        video=video_io.to_uint8(clips.perspective[0]),
        fov_deg=fov,
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
    )
    condition = outputs.condition_record(
        clips.sources[0], int(clips.perspective.shape[1]), fov, yaw, pitch, roll
    )
    record = outputs.settings_record(
        generation,
        clips.captions[0],
        "",
        condition,
        DATASET_FPS,
        config=spec,
        checkpoint=str(run_dir),
    )
    sample_dir = outputs.write_outputs(
        out / "sample", generation, DATASET_FPS, record, overwrite=True
    )
    return sample_dir, generation


def generate_continuation(
    out: Path,
    models: Models,
    sample_dir: Path,
    generation: Generation,
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
    continuation = continue_video(
        models,
        generation.panorama,
        prompt,
        SampleSettings.from_config(models.config.sample),
        num_frames=source_frames + window - known_frames,
    )
    condition = {"continues": str(sample_dir / "pano.mp4"), "source_frames": source_frames}
    record = outputs.settings_record(
        continuation,
        prompt,
        "",
        condition,
        DATASET_FPS,
        config=spec,
        checkpoint=str(run_dir),
        window_starts=continuation.window_starts,
    )
    return outputs.write_outputs(
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
    configs/tiny.py); returns the summary also written to `out/evaluation.json`."""
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
    video_io.write_png(out / "loss_curve.png", figures.loss_curve_image(curves, loss=loss))
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
    atomic_write_text(out / "evaluation.json", json.dumps(summary, indent=2) + "\n")
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
        print(f"  {name:26s} MSE {mse:.4f}   PSNR {figures.psnr_text(mse)}")
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
        (out / "evaluation.json", "the numbers"),
    ):
        print(f"  {path}  {what}")
