"""Generate a 360 video from a prompt and, optionally, a perspective video or image.

    python -m viewpoint_jax.sample --config configs/tiny.py --checkpoint runs/tiny \\
        --prompt "a quiet forest at dawn" [--video in.mp4 --fov 90 --yaw 0 --pitch 0 --roll 0] \\
        --out outputs/forest

writes, atomically (the directory appears complete or not at all):
  pano.mp4       the equirectangular video, H.264, tagged as 360 (Spherical Video V1 + V2)
  viewpoint.mp4  the ViewPoint map the model generated (a model of another
                 config.data.representation: erp.mp4 or cube_2x3.mp4, its own frames)
  faces.png      the six 90-degree views (F R B L U D) at a few times
  viewer.html    a self-contained page that plays the panorama; drag to look around
  settings.json  prompt, condition, sampler settings and seed, config and checkpoint used

A LoRA training run samples as any run: its base is read from the path the run recorded
(RUN_DIR/lora_base.json), or from --lora_base where it moved; --lora_scale weighs its adapters.

The command parses and checks the flags; the work is the library's (viewpoint_jax/generation/:
`models` loads, `requests` reads the conditions, generates and writes, `outputs` the files).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from absl import flags
from ml_collections import config_flags

from viewpoint_jax.common import distributed
from viewpoint_jax.common.cli import UserError, refuse_positional, run
from viewpoint_jax.common.compilation_cache import use_compilation_cache, user_cache_dir
from viewpoint_jax.common.fileio import check_replaceable, check_writable
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.diffusion.denoising import SampleSettings
from viewpoint_jax.generation import models as models_lib
from viewpoint_jax.generation import outputs, requests
from viewpoint_jax.geometry import Representation


def define_flags() -> None:
    """The command's flags (defined by `console_main`, not at import)."""
    config_flags.DEFINE_config_file(
        "config", None, "config file, path.py[:arg] (default: the run's RUN_DIR/config.json)"
    )
    flags.DEFINE_string("checkpoint", None, "training run directory or converted DiT directory")
    flags.DEFINE_string("prompt", None, "what the 360 video shows")
    flags.DEFINE_string(
        "prompts",
        None,
        "a JSON-lines file, one video a line: prompt and optionally name, negative_prompt, video, "
        "image, continue, fov, yaw, pitch, roll, num_frames, overlap, seed (the flags are the "
        "defaults); outputs go to --out/<name>, finished ones are skipped on a rerun",
    )
    flags.DEFINE_string("negative_prompt", "", "what it should not show")
    flags.DEFINE_string("video", None, "perspective video (or image) known at every frame")
    flags.DEFINE_string("image", None, "perspective image known at frame 0 only (image-to-360)")
    flags.DEFINE_string("continue", None, "a 360 (ERP) video to extend to --num_frames frames")
    flags.DEFINE_float("fov", 90.0, "its horizontal field of view, degrees")
    flags.DEFINE_float("yaw", 0.0, "degrees, positive turns right")
    flags.DEFINE_float("pitch", 0.0, "degrees, positive looks up")
    flags.DEFINE_float("roll", 0.0, "degrees")
    flags.DEFINE_integer(
        "num_frames",
        None,
        "frames to generate, 1 + 4k; more than the model's clip (config.data.num_frames) are "
        "made window by window (with --video: the most frames of it to use)",
    )
    flags.DEFINE_integer(
        "overlap", 1, "latent frames each window shares with the previous (long videos)"
    )
    flags.DEFINE_integer("steps", None, "sampling steps (config: sample.steps)")
    flags.DEFINE_float("shift", None, "timestep shift (config: sample.shift)")
    flags.DEFINE_float("guidance_scale", None, "classifier-free guidance scale")
    flags.DEFINE_enum("scheduler", None, ["unipc", "euler"], "sampler (config: sample.scheduler)")
    flags.DEFINE_integer("seed", 0, "noise seed")
    flags.DEFINE_bool("fuse_every_step", False, "fuse map overlaps at every step")
    flags.DEFINE_bool(
        "keep_known",
        None,
        "hold the latent cells the condition covers at its latent at every step, so the input "
        "view comes back exactly (--nokeep_known: the model repaints it; default: config "
        "sample.keep_known)",
    )
    flags.DEFINE_float(
        "lora_scale",
        None,
        "a LoRA run's adapter weight (config: lora.scale; 0: the adapters off, the base with "
        "the run's fully trained parameters, its patch embedding)",
    )
    flags.DEFINE_string(
        "lora_base",
        None,
        "a LoRA run's base DiT where it is now, if it moved (default: the path in "
        "RUN_DIR/lora_base.json; refused unless it is the base the run was trained on)",
    )
    flags.DEFINE_float("fps", None, "output frame rate (default: input's or 16)")
    for flag, key in models_lib.COMPONENT_FLAGS.items():
        flags.DEFINE_string(flag, None, f"overrides config.{key}")
    flags.DEFINE_enum(
        "dtype",
        "bfloat16",
        list(models_lib.SAMPLE_DTYPES),
        "DiT weights and matmuls (bf16: half memory)",
    )
    flags.DEFINE_string(
        "mesh", None, "device mesh, e.g. fsdp=8 or data=2,fsdp=4 (default: FSDP over all devices)"
    )
    flags.DEFINE_string("out", None, "output directory")
    flags.DEFINE_bool("overwrite", False, "replace an existing --out")
    distributed.define_flags()
    flags.mark_flags_as_required(["checkpoint", "out"])


def request_from_flags(args: Any) -> requests.Request:
    """The request the flags make (with --prompts: the defaults of its lines)."""
    return requests.Request(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        video=args.video,
        image=args.image,
        continue_from=args["continue"].value,
        fov=args.fov,
        yaw=args.yaw,
        pitch=args.pitch,
        roll=args.roll,
        num_frames=args.num_frames,
        overlap=args.overlap,
        seed=args.seed,
        fps=args.fps,
    )


def check_args(args: Any) -> None:
    """Cheap checks of the flags before anything heavy is loaded."""
    if bool(args.prompt) == bool(args.prompts):
        raise UserError("pass --prompt (one video) or --prompts FILE.jsonl (many), not both")
    for name in ("shift", "guidance_scale"):  # inf would sample a black video, NaN worse
        if args[name].value is not None and not math.isfinite(args[name].value):
            raise UserError(f"--{name} must be a finite number, got {args[name].value}")
    request_from_flags(args).check()
    if args.prompts:
        if not Path(args.prompts).is_file():
            raise UserError(f"--prompts: no such file {args.prompts}")
    elif Path(args.out).exists() and not args.overwrite:
        raise UserError(f"--out {args.out} exists (pass --overwrite to replace it)")
    elif args.overwrite:  # only a folder this program wrote, never the run or the cwd
        check_replaceable(
            args.out, owned=outputs.OUTPUT_NAMES, marker=outputs.OUTPUT_MARKER,
            keep=[args.checkpoint],
        )  # fmt: skip
    check_writable(args.out)  # before minutes of sampling, not after


def main(argv: list[str]) -> int:
    """One video (--prompt) or a prompt file (--prompts), as the flags ask; the exit status."""
    refuse_positional(argv)
    args = flags.FLAGS
    check_args(args)
    distributed.initialize_from_flags()
    # A second video of the same size loads the compiled sampler instead of compiling it.
    use_compilation_cache(user_cache_dir())
    components = {flag: args[flag].value for flag in models_lib.COMPONENT_FLAGS}
    config = models_lib.sampling_config(
        args.checkpoint, args.config, components,
        lora_base=args.lora_base, lora_scale=args.lora_scale,
    )  # fmt: skip
    settings = SampleSettings.from_config(
        config.sample,
        num_steps=args.steps,
        shift=args.shift,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        seed=args.seed,
        fuse_every_step=args.fuse_every_step or None,
        keep_known=args.keep_known,
    )
    representation = data_config_lib.data_representation(config.data)
    if settings.fuse_every_step and representation != Representation.VIEWPOINT:
        raise UserError(
            "--fuse_every_step fuses the ViewPoint map's overlapping subregions; "
            f"config.data.representation {representation.value!r} has none"
        )
    if args.prompts:
        return requests.run_prompt_file(
            args.prompts, request_from_flags(args), config, settings, args.out,
            checkpoint=args.checkpoint, dtype=args.dtype, mesh=args.mesh,
            overwrite=args.overwrite,
        )  # fmt: skip
    request = request_from_flags(args)
    inputs = requests.read_inputs(request, config)  # a bad file is named before the models load
    requests.check_output(
        args.out, request, config, inputs, checkpoint=args.checkpoint, overwrite=args.overwrite
    )  # room for the outputs, before the models load
    mesh = models_lib.sampling_meshes(args.mesh)[0]  # one video: one group of devices
    models = models_lib.load_models(config, args.checkpoint, mesh=mesh, dtype=args.dtype)
    # Encode the prompts, then free the text encoder's memory for the denoising loop.
    models.encode_prompts([request.prompt, request.negative_prompt])
    models.release_text_encoder()
    out = requests.run_request(
        models, config, request, settings, args.out,
        checkpoint=str(args.checkpoint), overwrite=args.overwrite, inputs=inputs,
    )  # fmt: skip
    canvas_video = outputs.canvas_video_name(representation)
    print(f"wrote {out}/pano.mp4, {canvas_video}, faces.png, viewer.html, settings.json")
    return 0


def console_main() -> None:
    """The console script (pyproject's [project.scripts])."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
