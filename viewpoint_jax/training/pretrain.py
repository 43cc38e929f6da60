"""Pretraining a plain text-to-video DiT, published as a converted Wan checkpoint.

ViewPoint starts from Wan2.1, a DiT pretrained on perspective video, and fine-tunes it on
ViewPoint maps. `pretrain` makes such a starting point at any size: it trains a config whose
data are perspective clips without a condition (`config.data.source = "demo_scenes"`, e.g.
configs/tiny.py:pretrain) with the trainer of training/loop.py in `workdir` (a rerun resumes it),
then writes the final weights to `out` in the layout of a converted Wan DiT (`dit.save_dit`:
config.json + params/), beside the run's metrics.jsonl and a README.md that states the command
(`pretrained_readme`). A ViewPoint config fine-tunes from it with
`config.model.init_checkpoint = out`, through the restore path of converted Wan weights
(`dit.load_pretrained_params`: the patch embedding gains the condition channels, their weights
zero). Its command: `python -m viewpoint_jax.pretrain`.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np

from viewpoint_jax.common.cli import UserError
from viewpoint_jax.data.config import data_source
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.setup.config import diffusion_loss, packaged_config, takes_condition
from viewpoint_jax.training import checkpoints, loop, telemetry

DEFAULT_CONFIG = packaged_config("tiny.py")


def pretrain(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    command: str,
    progress: bool = True,
    devices: list[jax.Device] | None = None,
) -> dict:
    """Trains `config` (a plain text-to-video config) in `workdir` up to `config.num_steps`, then
    writes its weights to `out` (replaced) with metrics.jsonl and a README.md naming `command`.
    `devices`: the mesh's (default all, as `loop.train`). Returns `loop.train`'s result."""
    if takes_condition(config):
        raise UserError(
            f"config.data.source {data_source(config.data).value!r} trains a ViewPoint model; "
            "pretraining needs a plain text-to-video source ('demo_scenes')"
        )
    workdir = Path(workdir).absolute()
    result = loop.train(config, workdir, progress=progress, devices=devices)
    if result["stopped"]:
        raise UserError("pretraining was stopped (SIGTERM); rerun the same command to resume it")
    model = checkpoints.restore_model(config, workdir)
    metrics = (workdir / "metrics.jsonl").read_text()
    readme = pretrained_readme(config, command, workdir / "metrics.jsonl", model.config)
    dit_lib.save_dit(
        out, model, extra_files={"metrics.jsonl": metrics, "README.md": readme}, overwrite=True
    )
    return result


def pretrained_readme(
    config: ml_collections.ConfigDict,
    command: str,
    metrics_file: Path,
    model: dit_lib.DiTConfig,
) -> str:
    """What the checkpoint is (`model`: its DiTConfig, the restored model's), the command that
    made it and how its run went (Markdown)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    step_seconds = sum(row.get("step_time_s", 0.0) for row in rows)
    steps, losses = telemetry.read_losses(metrics_file)
    tail = losses[-min(100, len(losses)) :]
    # The run's last logged step, not this export (a rerun of the command only re-exports).
    finished = datetime.datetime.fromtimestamp(metrics_file.stat().st_mtime, datetime.UTC)
    scenes = config.data.scenes
    return f"""# A pretrained plain text-to-video DiT (Wan layout)

Made by (from the repository root; deterministic on CPU, fixed seed {config.seed}):

```bash
{command}
```

- model: Wan DiT, {model.num_layers} blocks of pano attention, dim {model.dim}, \
{model.in_dim} input channels (the noisy latent alone: no condition; autoencoder \
{config.autoencoder.kind!r}), text width {model.text_dim};
- data: text-to-video on perspective clips of {scenes.count} procedural demo scenes (seed \
{scenes.seed}; the demo dataset's scenes are seed 0), {config.data.num_frames} frames of \
{tuple(scenes.size)} pixels, fov {tuple(scenes.fov_range)} deg, pitch \
{tuple(scenes.pitch_range)} deg, with their captions;
- {int(steps[-1])} steps of batch {config.data.batch_size}; loss (flow matching, \
{diffusion_loss(config.diffusion).description}, `diffusion.loss`) {losses[0]:.4f} at step \
{int(steps[0])}, mean of the last {len(tail)} steps {np.mean(tail):.4f} (`metrics.jsonl`: every \
step);
- the steps took {step_seconds / 60:.1f} min in all (`step_time_s` of metrics.jsonl; compiling \
and start-up not counted) on {os.cpu_count()} CPU cores, finished \
{finished:%Y-%m-%d %H:%M} UTC.

`config.json` + `params/` are the layout `python -m viewpoint_jax.convert_wan dit` writes for a
Wan DiT, so `configs/tiny.py` fine-tunes from this folder as from converted Wan weights
(`config.model.init_checkpoint`; the patch embedding gains the condition channels, zero).
"""
