"""The whole pipeline on a laptop CPU in minutes: data, training, evaluation, a 360 video.

    python -m viewpoint_jax.demo --out demo_output [--train_steps=N] [--quick]

The paper's story in miniature: a DiT pretrained on ordinary perspective video becomes a
panorama model by fine-tuning on ViewPoint maps.

1. renders the embedded demo dataset (moving procedural panoramas with captions) into
   `out/source` and builds it into `out/data` (the data_dir of configs/tiny.py);
2. fine-tunes the pretrained perspective DiT (the committed viewpoint_jax/assets/tiny_perspective,
   made by `python -m viewpoint_jax.pretrain`; with `--quick` a micro one pretrained here for a
   few steps) into a ViewPoint model: configs/tiny.py in `out/finetuned` (a block-DCT pixel
   transform instead of the Wan VAE, a small randomly initialised umT5 instead of umT5-XXL, a
   4-block DiT);
3. trains the same architecture from scratch, the same steps and seed, in `out/scratch`;
4. draws both loss curves (`loss_curve.png`);
5. outpaints every held-out clip from its condition view and caption with the untrained model
   (the scratch run's initialisation), the scratch and the fine-tuned model, the same noise for
   all, and measures the error outside the condition against two fills that see no input, a
   mid-grey one and the training clips' mean map, and the ceiling: the ground truth through the
   autoencoder (`evaluation.json`, `outpainting.png`: ground truth | condition | autoencoded |
   scratch | fine-tuned);
6. generates a 360 video from a held-out perspective clip and its caption with the fine-tuned
   model (`sample/`: pano.mp4, viewpoint.mp4, faces.png, viewer.html);
7. continues that 360 video by one more window (`continue_video`: the window knows the last frame
   so far), into `continuation/` (the same files; its first frames are the sample's).

Everything is deterministic given the settings. A rerun reuses the dataset and resumes (or
skips) the training; compiled programs are kept in `out/jax_cache`. `--quick` is the test
size: a handful of clips and steps, seconds of work. The work is studies/demo.py's
(`run_demo`); this module is its flags.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.common.compilation_cache import use_compilation_cache
from viewpoint_jax.studies.demo import run_demo


def define_flags() -> None:
    """The CLI's flags; defined only when this module is the program."""
    flags.DEFINE_string("out", "demo_output", "output folder")
    flags.DEFINE_string(
        "config", None, "config file, path.py[:arg] (default: configs/tiny.py, :micro with --quick)"
    )
    flags.DEFINE_integer("train_steps", None, "training steps (default: the config's)")
    flags.DEFINE_bool("quick", False, "test size: a tiny dataset and model, a few steps")


def main(argv: list[str]) -> int:
    """Runs the demo into --out (`run_demo`), its compiled programs cached in --out/jax_cache
    (unless JAX_COMPILATION_CACHE_DIR names another): the scratch run then reuses the
    fine-tuning's train step, the evaluation one sampler for its three models, and a rerun all
    of them (about 33 s a training run on 2 cores, BENCHMARKS.md)."""
    refuse_positional(argv)
    args = flags.FLAGS
    use_compilation_cache(Path(args.out).absolute() / "jax_cache")
    run_demo(args.out, train_steps=args.train_steps, quick=args.quick, config=args.config)
    return 0


def console_main() -> None:
    """The console script (pyproject's [project.scripts])."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
