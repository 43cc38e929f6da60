"""The demo's fine-tuning with LoRA vs in full: the same pretrained tiny DiT, steps, seed and data.

    python tools/lora_study.py --out lora_study [--train_steps 600]

Builds the demo dataset into `<out>/data` (as `make demo`), fine-tunes configs/tiny.py in full
(`<out>/full`) and configs/tiny.py:lora (`<out>/lora`) from the committed pretrained DiT,
outpaints the demo's held-out clips with both (the demo's metric and noise) and writes
`<out>/lora_study.json`: trainable parameters, the checkpoint's size, the median step time of
each (measured in this one process), the last losses and the outpainting error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import flags

from viewpoint_jax.common import cli
from viewpoint_jax.common.cli import UserError, refuse_positional


def checkpoint_bytes(run_dir: Path) -> int:
    step_dirs = sorted((run_dir / "checkpoints").iterdir(), key=lambda p: p.name)
    return sum(f.stat().st_size for f in (step_dirs[-1] / "state").rglob("*") if f.is_file())


def run(out: Path, train_steps: int) -> dict:
    from viewpoint_jax.diffusion.denoising import SampleSettings
    from viewpoint_jax.evaluation import outpainting
    from viewpoint_jax.setup import build
    from viewpoint_jax.studies import demo
    from viewpoint_jax.training import checkpoints, telemetry

    demo.ensure_dataset(out, demo.FULL["dataset"])
    configs = {
        "full": demo.demo_config(out, False, train_steps),
        "lora": demo.demo_config(out, False, train_steps, f"{demo.CONFIG_FILE}:lora"),
    }
    results = {}
    for name, config in configs.items():
        demo.train_run(config, out / name)
        records = [
            json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()
        ]
        times = [r["step_time_s"] for r in records[10:] if "step_time_s" in r]
        losses = telemetry.read_losses(out / name / "metrics.jsonl")
        results[name] = {
            "median_step_time_s": float(np.median(times)),
            "last_50_mean_loss": float(np.mean([losses[s] for s in sorted(losses)[-50:]])),
            "checkpoint_bytes": checkpoint_bytes(out / name),
        }
    first = configs["full"]
    clips = outpainting.load_eval_clips(first.data)
    settings = SampleSettings.from_config(first.sample)
    for name, config in configs.items():
        model = checkpoints.restore_model(config, out / name)
        error = outpainting.outpainting_error(
            model,
            build.build_autoencoder(config),
            build.build_text_encoder(config),
            clips,
            settings,
            demo.FULL["eval_seeds"],
        )
        results[name]["outpainting"] = error.summary()
    results["lora_over_full_step_time"] = (
        results["lora"]["median_step_time_s"] / results["full"]["median_step_time_s"]
    )
    (out / "lora_study.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


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
