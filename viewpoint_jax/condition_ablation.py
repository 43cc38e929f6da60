"""Video-only vs condition-mixture training on the demo data: outpainting, text-only and
continuation errors of both models and the untrained one.

    python -m viewpoint_jax.condition_ablation --out ablation_output [--train_steps 300] [--quick]
        [--known_latent_frames 1] [--seeds 0,1]

Writes `ablation.json` and `ablation.md` (the table) into --out; a rerun reuses the dataset and
resumes (or skips) the trainings. The work is studies/condition_ablation.py's; this module is
its flags.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from viewpoint_jax.common.cli import refuse_positional, run


def define_flags() -> None:
    """The command's flags; defined only when this module is the program."""
    flags.DEFINE_string("out", "ablation_output", "output folder (dataset, runs, table)")
    flags.DEFINE_integer("train_steps", None, "training steps of each model (default: config's)")
    flags.DEFINE_bool("quick", False, "test size: the demo's --quick dataset and micro model")
    flags.DEFINE_integer("known_latent_frames", 1, "latent frames known to the continuation")
    flags.DEFINE_list("seeds", None, "sampling noise seeds (default: the demo's)")


def main(argv: list[str]) -> int:
    """Trains and evaluates both models into --out, then prints the table."""
    from viewpoint_jax.studies import condition_ablation  # lazy: --help needs no jax

    refuse_positional(argv)
    values = flags.FLAGS
    seeds = tuple(int(s) for s in values.seeds) if values.seeds else None
    summary = condition_ablation.condition_ablation(
        values.out,
        train_steps=values.train_steps,
        quick=values.quick,
        known_latent_frames=values.known_latent_frames,
        seeds=seeds,
    )
    print()
    print((Path(values.out) / "ablation.md").read_text(), end="")
    print(f"\n{summary['seconds']:.0f} s; wrote {Path(values.out) / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    run(main, define_flags)
