"""The representation ablation, the paper's Table 2 at tiny size: the ViewPoint map with and
without subregion (Perspective) attention, ERP, a 2 x 3 cube-map raster and the same raster with
per-face 4D RoPE (CP-4DRoPE), each trained on the
demo data with the same steps and seed, then compared on held-out outpainting (error in ERP
space outside the condition) and panorama consistency.

    python -m viewpoint_jax.ablation --out representation_ablation [--train_steps 300] [--quick]
        [--seeds 0,1] [--arms viewpoint,erp]

Writes `table2.json` and `table2.md` (the table) into --out; a rerun reuses the dataset and
resumes (or skips) the trainings. The work is studies/representation_ablation.py's; this module
is its flags.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from viewpoint_jax.common.cli import refuse_positional, run


def define_flags() -> None:
    """The command's flags; defined only when this module is the program."""
    flags.DEFINE_string("out", "representation_ablation", "output folder (dataset, runs, table)")
    flags.DEFINE_integer("train_steps", None, "training steps of each arm (default: config's)")
    flags.DEFINE_bool("quick", False, "test size: the demo's --quick dataset and micro model")
    flags.DEFINE_list("seeds", None, "sampling noise seeds (default: the demo's)")
    flags.DEFINE_list(
        "arms", None, "rows to run (default: viewpoint,viewpoint_pano,erp,cube_2x3,cube_4drope)"
    )


def main(argv: list[str]) -> int:
    """Trains and evaluates the arms into --out, then prints Table 2."""
    from viewpoint_jax.studies import representation_ablation  # lazy: --help needs no jax

    refuse_positional(argv)
    values = flags.FLAGS
    seeds = tuple(int(s) for s in values.seeds) if values.seeds else None
    summary = representation_ablation.representation_ablation(
        values.out,
        train_steps=values.train_steps,
        quick=values.quick,
        seeds=seeds,
        arms=values.arms,
    )
    print()
    print((Path(values.out) / "table2.md").read_text(), end="")
    print(f"\n{summary['seconds']:.0f} s; wrote {Path(values.out) / 'table2.json'}")
    return 0


if __name__ == "__main__":
    run(main, define_flags)
