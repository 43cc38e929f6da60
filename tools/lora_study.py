"""The demo's fine-tuning with LoRA vs in full: the same pretrained tiny DiT, steps, seed and data.

    python tools/lora_study.py --out lora_study [--train_steps 600]

Builds the demo dataset into `<out>/data` (as `make demo`), fine-tunes configs/tiny.py:lora
(`<out>/lora`) and configs/tiny.py in full (`<out>/full`) from the committed pretrained DiT,
outpaints the demo's held-out clips with each (the demo's metric and noise) and writes
`<out>/lora_study.json`: per arm the checkpoint's size, the median step time, the last losses
and the outpainting error (tools/bench_lora.py times the two steps interleaved).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import flags

from viewpoint_jax.common import cli
from viewpoint_jax.common.cli import UserError, refuse_positional
from viewpoint_jax.common.fileio import atomic_write_text


def checkpoint_bytes(run_dir: Path) -> int:
    step_dirs = sorted((run_dir / "checkpoints").iterdir(), key=lambda p: p.name)
    return sum(f.stat().st_size for f in (step_dirs[-1] / "state").rglob("*") if f.is_file())


def run(out: Path, train_steps: int) -> dict:
    """Trains and evaluates the LoRA arm, then the full one; the summary is rewritten after
    each arm (`<out>/lora_study.json`)."""
    from viewpoint_jax.studies import demo

    demo.ensure_dataset(out, demo.FULL["dataset"])
    configs = {
        "lora": demo.demo_config(out, False, train_steps, f"{demo.CONFIG_FILE}:lora"),
        "full": demo.demo_config(out, False, train_steps),
    }
    results = {}
    for name, config in configs.items():
        results[name] = train_and_evaluate(config, out / name)
        if len(results) == 2:
            results["lora_over_full_step_time"] = (
                results["lora"]["median_step_time_s"] / results["full"]["median_step_time_s"]
            )
        atomic_write_text(out / "lora_study.json", json.dumps(results, indent=2) + "\n")
    return results


def train_and_evaluate(config, run_dir: Path) -> dict:
    """One arm: trained (or resumed) in `run_dir`, then the demo's outpainting error."""
    from viewpoint_jax.diffusion.denoising import SampleSettings
    from viewpoint_jax.evaluation import outpainting
    from viewpoint_jax.setup import build
    from viewpoint_jax.studies import demo
    from viewpoint_jax.training import checkpoints

    demo.train_run(config, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records[10:] if "step_time_s" in r]
    error = outpainting.outpainting_error(
        checkpoints.restore_model(config, run_dir),
        build.build_autoencoder(config),
        build.build_text_encoder(config),
        outpainting.load_eval_clips(config.data),
        SampleSettings.from_config(config.sample),
        demo.FULL["eval_seeds"],
    )
    return {
        "median_step_time_s": float(np.median(times)),
        "last_50_mean_loss": float(np.mean([r["loss"] for r in records[-50:]])),
        "checkpoint_bytes": checkpoint_bytes(run_dir),
        "outpainting": error.summary(),
    }


def define_flags() -> None:
    flags.DEFINE_string("out", None, "output folder (the dataset, both runs, the summary)")
    flags.DEFINE_integer("train_steps", 600, "steps of each run", lower_bound=1)


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    if not flags.FLAGS.out:
        raise UserError("--out is required")
    results = run(Path(flags.FLAGS.out).absolute(), flags.FLAGS.train_steps)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags)
