"""Ablations on the demo data: arms of the tiny model trained at equal steps and seed, compared.

Two studies share this machinery (each arm is the demo's config with some keys overridden,
`arm_config`; `train_arms` trains them on the demo's dataset, `prepare_demo_data`):

- the condition ablation (studies/condition_ablation.py; `python -m
  viewpoint_jax.condition_ablation`): video-only vs condition-mixture training;
- the representation ablation, the paper's Table 2 at tiny size
  (studies/representation_ablation.py; `python -m viewpoint_jax.ablation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections

from viewpoint_jax.common.cli import UserError
from viewpoint_jax.studies import demo
from viewpoint_jax.training import loop


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
