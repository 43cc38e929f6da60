"""Ablations on the demo data: arms of the tiny model trained at equal steps and seed, compared.

Two studies share the machinery (`arm_config`, `train_arms`: each arm is the demo's config with
some keys overridden):

- the condition ablation (`condition_ablation`, below; tools/condition_ablation.py);
- the representation ablation, the paper's Table 2 at tiny size (`representation_ablation`;
  tools/ablation.py).

Condition ablation: does one model trained on every condition kind give up its outpainting? The
evidence for #15.

    python tools/condition_ablation.py --out ablation_output [--train_steps N] [--quick]

On the demo dataset (`demo.ensure_dataset`, the demo's full or `--quick` size) trains
configs/tiny.py twice, the same steps and seed, differing only in `config.data.condition_mixture`:

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from viewpoint_jax import demo, evaluate
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import atomic_write_text
from viewpoint_jax.data import conditions
from viewpoint_jax.data.conditions import ConditionKind
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.evaluation import outpainting
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models.dit import BlockKind
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import checkpoints, loop

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


def arm_config(
    out: Path, quick: bool, train_steps: int | None, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """The demo's config (`demo.demo_config`) with `overrides` set: dotted keys -> values
    (`{"data.representation": "erp"}`); a mapping value replaces the whole sub-config."""
    config = demo.demo_config(out, quick, train_steps)
    for key, value in overrides.items():
        *path, field = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[field] = (
            ml_collections.ConfigDict(dict(value)) if isinstance(value, Mapping) else value
        )
    return config


def condition_arms() -> dict[str, dict[str, Any]]:
    """The condition ablation's arms: each of `TRAINING_MIXTURES` as a config override."""
    return {name: {"data.condition_mixture": m} for name, m in TRAINING_MIXTURES.items()}


def train_arms(
    out: Path,
    quick: bool,
    train_steps: int | None,
    arms: Mapping[str, Mapping[str, Any]],
    devices: list[jax.Device] | None = None,
) -> dict[str, Path]:
    """Trains (or resumes) each arm (name -> `arm_config` overrides) in `out/run_<name>` on
    `devices` (default all) -> their run dirs."""
    runs = {}
    for name, overrides in arms.items():
        config = arm_config(out, quick, train_steps, overrides)
        run_dir = out / f"run_{name}"
        print(f"training {name} ({dict(overrides)}) for {config.num_steps} steps -> {run_dir}")
        result = loop.train(config, run_dir, devices=devices, progress=True)
        if result["stopped"]:
            raise UserError("training was stopped (SIGTERM); rerun to resume it")
        runs[name] = run_dir
    return runs


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
    outpainting = rows["outpainting"]
    ratio = outpainting["mixture"]["mse"] / outpainting["video_only"]["mse"]
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


def prepare_demo_data(out: Path, quick: bool, seeds: tuple[int, ...] | None) -> tuple[int, ...]:
    """Builds (or reuses) the demo's dataset in `out` (refusing a folder of another demo size)
    -> the sampling seeds (`seeds`, default the demo's eval seeds)."""
    preset = demo.QUICK if quick else demo.FULL
    demo.check_or_write_stamp(
        out,
        {"config": demo.config_spec(quick), "dataset": preset["dataset"], "fps": demo.DATASET_FPS},
    )
    demo.ensure_dataset(out, preset["dataset"])
    return tuple(seeds or preset["eval_seeds"])


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
    settings = sampler.SampleSettings.from_config(config.sample)
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


# --- Representation ablation: the paper's Table 2 at tiny size --------------------------------------

# Table 2's rows: name -> config overrides of the demo's config. Subregion attention exists only
# on the ViewPoint map; "viewpoint_pano" is the paper's "without Perspective attention" row, and
# the ERP and cube rows attend over the whole frame too.
PANO = BlockKind.PANO.value
REPRESENTATION_ARMS: dict[str, dict[str, Any]] = {
    "viewpoint": {},
    "viewpoint_pano": {"model.attention_pattern": PANO},
    "erp": {"data.representation": Representation.ERP.value, "model.attention_pattern": PANO},
    "cube_2x3": {
        "data.representation": Representation.CUBE_2X3.value,
        "model.attention_pattern": PANO,
    },
}
# evaluate.video_metrics' metrics that need no condition file, averaged into each row.
CONSISTENCY_METRICS = (
    "seam_ratio",
    "pole_spread",
    "flicker",
    "flicker_lowpass",
    "overlap_disagreement",
)


def mean_consistency(videos: list[tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
    """`CONSISTENCY_METRICS` (`evaluate.video_metrics`) of (ERP video, map video or None)
    pairs, uint8, each averaged over the videos that have it (None when none has)."""
    metrics = [evaluate.video_metrics(erp, map_video) for erp, map_video in videos]
    means = {}
    for key in CONSISTENCY_METRICS:
        values = [m[key] for m in metrics if m[key] is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


def representation_row(
    config: ml_collections.ConfigDict,
    clips: outpainting.EvalClips,
    result: outpainting.PanoramaOutpainting,
) -> dict[str, Any]:
    """One row of Table 2: the arm's frames and tokens, its ERP-space outpainting error (and the
    round-trip floor of its representation: the ground-truth frames converted to ERP), and its
    panoramas' consistency metrics (overlap disagreement only for the ViewPoint map)."""
    representation = config_lib.data_representation(config.data)
    height, width = config_lib.canvas_hw(config.data)
    token = 2 * config_lib.autoencoder_factors(config)[0]  # 2 x 2 patches of latent cells
    erp_hw = clips.erp.shape[2:4]
    truth = sampler.canvas_to_panorama(clips.target_map, *erp_hw, representation)
    floor = outpainting.erp_outpainted_mse(
        np.asarray(truth), clips, outpainting.erp_condition_masks(clips)
    )
    with_map = representation == Representation.VIEWPOINT
    videos = [
        (pano, map_video if with_map else None)
        for panos, maps in zip(result.panoramas, result.maps)
        for pano, map_video in zip(panos, maps)
    ]
    mse = float(np.mean(result.mse))
    return {
        "representation": representation.value,
        "attention_pattern": build.dit_config(config).attention_pattern,
        "frame_size": [height, width],
        "tokens_per_frame": (height // token) * (width // token),
        "mse": mse,
        "psnr_db": float(outpainting.psnr(mse)),
        "round_trip_mse": float(np.mean(floor)),
        **mean_consistency(videos),
    }


def reference_rows(clips: outpainting.EvalClips) -> dict[str, dict[str, Any]]:
    """Table 2's references: the ground-truth clips' own consistency metrics, and the error of a
    mid-grey fill outside the view."""
    masks = outpainting.erp_condition_masks(clips)
    grey = float(np.mean(outpainting.erp_outpainted_mse(np.zeros_like(clips.erp), clips, masks)))
    truth = [(video_io.to_uint8(erp), None) for erp in clips.erp]
    return {
        "ground_truth": {"mse": 0.0, **mean_consistency(truth)},
        "mid_grey_fill": {"mse": grey, "psnr_db": float(outpainting.psnr(grey))},
    }


def _cell(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def representation_markdown(rows: dict[str, Any], references: dict[str, Any]) -> str:
    """Table 2 as Markdown: one row per arm, then the references."""
    lines = [
        "| row | representation | attention | frame (tokens) | outpainting MSE in ERP (PSNR) "
        "| round-trip floor | seam ratio | pole spread | flicker | flicker low-pass "
        "| overlap disagreement |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        frame = f"{row['frame_size'][0]}x{row['frame_size'][1]} ({row['tokens_per_frame']})"
        lines.append(
            f"| {name} | {row['representation']} | {row['attention_pattern']} | {frame} "
            f"| {row['mse']:.4f} ({row['psnr_db']:.2f} dB) | {_cell(row['round_trip_mse'], 5)} | "
            + " | ".join(_cell(row[key]) for key in CONSISTENCY_METRICS)
            + " |"
        )
    truth, grey = references["ground_truth"], references["mid_grey_fill"]
    lines.append(
        "| ground truth | | | | 0 | | "
        + " | ".join(_cell(truth[key]) for key in CONSISTENCY_METRICS)
        + " |"
    )
    lines.append(
        f"| mid-grey fill | | | | {grey['mse']:.4f} ({grey['psnr_db']:.2f} dB) |"
        + " |" * (len(CONSISTENCY_METRICS) + 1)
    )
    lines += [
        "",
        "Outpainting MSE: pixels in [-1, 1], generated panorama vs the held-out ERP clip outside "
        "the condition view, each ERP pixel weighted by its solid angle; mean over clips and "
        "seeds. Round-trip floor: the same error of the ground-truth frames of the "
        "representation converted to ERP. Consistency metrics on the generated ERP videos "
        "(8-bit levels; seam ratio unitless), lower is better (panorama_metrics.PANORAMA_METRICS).",
    ]
    return "\n".join(lines) + "\n"


def representation_ablation(
    out: str | Path,
    *,
    train_steps: int | None = None,
    quick: bool = False,
    seeds: tuple[int, ...] | None = None,
    arms: Sequence[str] | None = None,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Trains each of `REPRESENTATION_ARMS` into `out` (the same steps, seed and data), samples
    every held-out clip from its perspective condition with each, and writes Table 2
    (`out/table2.json`, `out/table2.md`); returns the JSON's contents.

    `seeds`: the sampling noise seeds (default the demo's eval seeds); `arms`: the names of the
    rows to run (default all); `devices`: those the trainings use (default all).
    """
    unknown = sorted(set(arms or ()) - set(REPRESENTATION_ARMS))
    if unknown:
        raise UserError(f"--arms: unknown {unknown}; the arms are {list(REPRESENTATION_ARMS)}")
    chosen = {name: REPRESENTATION_ARMS[name] for name in (arms or REPRESENTATION_ARMS)}
    out = Path(out).absolute()
    started = time.perf_counter()
    seeds = prepare_demo_data(out, quick, seeds)
    runs = train_arms(out, quick, train_steps, chosen, devices)
    rows, clips = {}, None
    for name, overrides in chosen.items():
        config = arm_config(out, quick, train_steps, overrides)
        settings = sampler.SampleSettings.from_config(config.sample)
        clips = outpainting.load_eval_clips(config.data)  # the same clips, in this arm's frames
        print(f"evaluating {name} ({len(clips)} clips, seeds {seeds})")
        result = outpainting.panorama_outpainting(
            checkpoints.restore_model(config, runs[name]),
            build.build_autoencoder(config),
            build.build_text_encoder(config),
            clips,
            settings,
            seeds,
            config_lib.data_representation(config.data),
        )
        rows[name] = representation_row(config, clips, result)
    references = reference_rows(clips)
    summary = {
        "config": demo.config_spec(quick),
        "train_steps": int(config.num_steps),
        "arms": chosen,
        "clips": len(clips),
        "seeds": list(seeds),
        "sample_settings": settings.to_dict(),
        "rows": rows,
        "references": references,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / "table2.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "table2.md", representation_markdown(rows, references))
    return summary
