"""The representation ablation, the paper's Table 2 at tiny size: the ViewPoint map with and
without subregion (Perspective) attention, ERP, a 2 x 3 cube-map raster (CP-ICLoRA's layout, fully
fine-tuned here, not LoRA) and the same raster with per-face 4D RoPE (CP-4DRoPE), each trained on the
demo data with the same steps and seed (studies/ablation.py), then compared on held-out
outpainting (error in ERP space outside the condition, `outpainting.panorama_outpainting`) and
panorama consistency (`report.video_metrics`).

    python -m viewpoint_jax.ablation --out representation_ablation [--train_steps N] [--quick]

Writes `table2.json` and `table2.md` (the table) into `out`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import atomic_write_text
from viewpoint_jax.data.config import canvas_hw, data_representation
from viewpoint_jax.diffusion.denoising import SampleSettings
from viewpoint_jax.evaluation import outpainting, report
from viewpoint_jax.generation import decoding
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models.dit import BlockKind, DiTConfig, RopeLayout
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.studies import demo
from viewpoint_jax.studies.ablation import arm_config, prepare_demo_data, train_arms
from viewpoint_jax.training import checkpoints

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
    # CP-4DRoPE: the same raster, each face with its own 2D positions and the face index as a
    # fourth RoPE axis (models.dit.RopeLayout.CUBE_FACES).
    "cube_4drope": {
        "data.representation": Representation.CUBE_2X3.value,
        "model.attention_pattern": PANO,
        "model.rope_layout": RopeLayout.CUBE_FACES.value,
    },
}
# report.video_metrics' metrics that need no condition file, averaged into each row.
CONSISTENCY_METRICS = (
    "seam_ratio",
    "pole_spread",
    "flicker",
    "flicker_lowpass",
    "overlap_disagreement",
)


def mean_consistency(videos: list[tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
    """`CONSISTENCY_METRICS` (`report.video_metrics`) of (ERP video, map video or None)
    pairs, uint8, each averaged over the videos that have it (None when none has)."""
    metrics = [report.video_metrics(erp, map_video) for erp, map_video in videos]
    means = {}
    for key in CONSISTENCY_METRICS:
        values = [m[key] for m in metrics if m[key] is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


def representation_row(
    config: ml_collections.ConfigDict,
    clips: outpainting.EvalClips,
    result: outpainting.PanoramaOutpainting,
    model_config: DiTConfig,
) -> dict[str, Any]:
    """One row of Table 2: the arm's frames and tokens, its ERP-space outpainting error (and the
    round-trip floor of its representation: the ground-truth frames converted to ERP), and its
    panoramas' consistency metrics (overlap disagreement only for the ViewPoint map).
    `model_config`: the arm's DiT's (the restored model's), for its attention pattern."""
    representation = data_representation(config.data)
    height, width = canvas_hw(config.data)
    token = 2 * config_lib.autoencoder_factors(config)[0]  # 2 x 2 patches of latent cells
    erp_hw = clips.erp.shape[2:4]
    truth = decoding.canvas_to_panorama(clips.target_map, *erp_hw, representation)
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
        "attention_pattern": model_config.attention_pattern,
        "rope_layout": model_config.rope_layout,
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
        attention = str(row["attention_pattern"])
        if row.get("rope_layout") == RopeLayout.CUBE_FACES:
            attention += ", 4D RoPE (face index)"
        lines.append(
            f"| {name} | {row['representation']} | {attention} | {frame} "
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
        settings = SampleSettings.from_config(config.sample)
        clips = outpainting.load_eval_clips(config.data)  # the same clips, in this arm's frames
        print(f"evaluating {name} ({len(clips)} clips, seeds {seeds})")
        model = checkpoints.restore_model(config, runs[name])
        result = outpainting.panorama_outpainting(
            model,
            build.build_autoencoder(config),
            build.build_text_encoder(config),
            clips,
            settings,
            seeds,
            data_representation(config.data),
        )
        rows[name] = representation_row(config, clips, result, model.config)
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
