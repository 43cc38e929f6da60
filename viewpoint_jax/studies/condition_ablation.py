"""Condition ablation: does one model trained on every condition kind give up its outpainting? The
evidence for #15.

    python -m viewpoint_jax.condition_ablation --out ablation_output [--train_steps N] [--quick]

On the demo dataset (`demo.ensure_dataset`, the demo's full or `--quick` size) trains
configs/tiny.py twice (studies/ablation.py: `arm_config`, `train_arms`), the same steps and seed,
differing only in `config.data.condition_mixture`:

- `video_only`: `{perspective_video: 1}` (the paper's training);
- `mixture`: the default mixture (`conditions.DEFAULT_CONDITION_MIXTURE`).

Then samples every held-out clip with the untrained model (the same init) and both trained ones,
the same sampling settings and seeds for all, under three conditions, and measures the pixel MSE
where the condition is unknown (`outpainting.clips_with_condition`, `outpainting_error`):

- outpainting: the clip's perspective video, error outside its view;
- text only: no condition, error over the whole map;
- continuation: the first k latent frames of the ground truth known, error on the later frames.

The goal the issue states: the mixture's outpainting error within 10 % of the video-only
model's, and its text-only and continuation errors below the untrained model's.
Writes `ablation.json` and `ablation.md` (the table) into `out`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from viewpoint_jax.common.fileio import atomic_write_text
from viewpoint_jax.data import conditions
from viewpoint_jax.data.conditions import ConditionKind
from viewpoint_jax.diffusion.denoising import SampleSettings
from viewpoint_jax.evaluation import outpainting
from viewpoint_jax.setup import build
from viewpoint_jax.studies import demo
from viewpoint_jax.studies.ablation import arm_config, prepare_demo_data, train_arms
from viewpoint_jax.training import checkpoints

# The two trainings compared: condition_mixture of each.
TRAINING_MIXTURES: dict[str, dict[str, float]] = {
    "video_only": {ConditionKind.PERSPECTIVE_VIDEO.key: 1.0},
    "mixture": dict(conditions.DEFAULT_CONDITION_MIXTURE),
}
MODELS = ("untrained", "video_only", "mixture")
# Evaluated condition -> (its table name, where its error is measured).
EVALUATIONS: dict[ConditionKind, tuple[str, str]] = {
    ConditionKind.PERSPECTIVE_VIDEO: ("outpainting", "outside the perspective view"),
    ConditionKind.NONE: ("text_only", "the whole map"),
    ConditionKind.PREFIX: ("continuation", "the frames after the known prefix"),
}
OUTPAINTING_TOLERANCE = 0.10  # the mixture may be at most 10 % worse than video-only


def condition_arms() -> dict[str, dict[str, Any]]:
    """The condition ablation's arms: each of `TRAINING_MIXTURES` as a config override."""
    return {name: {"data.condition_mixture": m} for name, m in TRAINING_MIXTURES.items()}


def ablation_table(
    errors: dict[str, dict[str, float]], grey: dict[str, float], known_latent_frames: int
) -> dict[str, Any]:
    """Per evaluation: each model's MSE and PSNR, the grey-fill reference; and the goals."""
    rows = {}
    for kind, (name, measured_on) in EVALUATIONS.items():
        where = measured_on
        if kind == ConditionKind.PREFIX:
            where = f"{measured_on} ({known_latent_frames} latent frame(s) known)"
        rows[name] = {
            "condition": kind.key,
            "error_on": where,
            **{
                model: {
                    "mse": errors[name][model],
                    "psnr_db": float(outpainting.psnr(errors[name][model])),
                }
                for model in MODELS
            },
            "grey_fill_mse": grey[name],
        }
    # Not `outpainting`: that name is the module (`outpainting.psnr` above).
    outpainting_row = rows["outpainting"]
    ratio = outpainting_row["mixture"]["mse"] / outpainting_row["video_only"]["mse"]
    goals = {
        "outpainting_mixture_over_video_only": ratio,
        "outpainting_within_10_percent": bool(ratio <= 1.0 + OUTPAINTING_TOLERANCE),
        "text_only_mixture_beats_untrained": bool(
            rows["text_only"]["mixture"]["mse"] < rows["text_only"]["untrained"]["mse"]
        ),
        "continuation_mixture_beats_untrained": bool(
            rows["continuation"]["mixture"]["mse"] < rows["continuation"]["untrained"]["mse"]
        ),
    }
    return {"rows": rows, "goals": goals}


def markdown_table(table: dict[str, Any]) -> str:
    """The table as Markdown: one row per evaluation, MSE (PSNR dB) per model, then the goals."""
    header = "| evaluation | error on | untrained | video-only | mixture | mid-grey fill |"
    lines = [header, "|---|---|---|---|---|---|"]
    for name, row in table["rows"].items():
        cells = [f"{row[m]['mse']:.4f} ({row[m]['psnr_db']:.2f} dB)" for m in MODELS]
        cells.append(f"{row['grey_fill_mse']:.4f}")
        lines.append(f"| {name} | {row['error_on']} | " + " | ".join(cells) + " |")
    goals = table["goals"]
    lines += [
        "",
        "MSE of pixels in [-1, 1] (PSNR = 10 log10(4 / MSE)), mean over held-out clips and seeds.",
        "",
        f"- outpainting, mixture / video-only: {goals['outpainting_mixture_over_video_only']:.3f} "
        f"(goal <= {1 + OUTPAINTING_TOLERANCE:.2f}: "
        f"{'met' if goals['outpainting_within_10_percent'] else 'not met'})",
        "- text only, mixture < untrained: "
        + ("met" if goals["text_only_mixture_beats_untrained"] else "not met"),
        "- continuation, mixture < untrained: "
        + ("met" if goals["continuation_mixture_beats_untrained"] else "not met"),
    ]
    return "\n".join(lines) + "\n"


def condition_ablation(
    out: str | Path,
    *,
    train_steps: int | None = None,
    quick: bool = False,
    known_latent_frames: int = 1,
    seeds: tuple[int, ...] | None = None,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Trains both arms into `out`, evaluates the three models under the three conditions and
    writes `out/ablation.json` and `out/ablation.md`; returns the JSON's contents.

    `seeds`: the sampling noise seeds (default the demo's eval seeds); `known_latent_frames`: k
    of the continuation's prefix; `devices`: those the trainings use (default all).
    """
    out = Path(out).absolute()
    started = time.perf_counter()
    seeds = prepare_demo_data(out, quick, seeds)
    runs = train_arms(out, quick, train_steps, condition_arms(), devices)

    config = arm_config(out, quick, train_steps, condition_arms()["mixture"])
    settings = SampleSettings.from_config(config.sample)
    autoencoder = build.build_autoencoder(config)
    text_encoder = build.build_text_encoder(config)
    clips = outpainting.load_eval_clips(config.data)
    known_frames = conditions.prefix_pixel_frames(known_latent_frames, autoencoder.temporal_factor)
    # The mixture does not enter the model's shape or init: one untrained model serves both.
    models = {
        "untrained": demo.untrained_model(config),
        **{name: checkpoints.restore_model(config, run_dir) for name, run_dir in runs.items()},
    }
    errors: dict[str, dict[str, float]] = {}
    grey: dict[str, float] = {}
    for kind, (name, _) in EVALUATIONS.items():
        kind_clips = outpainting.clips_with_condition(clips, kind, known_frames=known_frames)
        grey[name] = float(np.mean(outpainting.constant_fill_mse(kind_clips)))
        errors[name] = {}
        for model_name in MODELS:
            print(f"evaluating {model_name} on {name} ({len(clips)} clips, seeds {seeds})")
            result = outpainting.outpainting_error(
                models[model_name], autoencoder, text_encoder, kind_clips, settings, seeds
            )
            errors[name][model_name] = float(np.mean(result.mse))
    table = ablation_table(errors, grey, known_latent_frames)
    summary = {
        "metric": "MSE of pixels in [-1, 1] where the condition is unknown (weight 1 - mask), "
        "generated ViewPoint map vs ground truth, mean over clips and seeds",
        "config": demo.config_spec(quick),
        "train_steps": int(config.num_steps),
        "training_mixtures": TRAINING_MIXTURES,
        "clips": len(clips),
        "seeds": list(seeds),
        "known_latent_frames": known_latent_frames,
        "sample_settings": settings.to_dict(),
        **table,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / "ablation.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "ablation.md", markdown_table(table))
    return summary
