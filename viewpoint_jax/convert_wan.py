"""Converts published PyTorch Wan2.1 weights into Orbax checkpoint directories.

    viewpoint-convert dit  --src Wan2.1-T2V-1.3B/ --dst ckpt/dit [--in_dim=33] [--dtype=bfloat16]
    viewpoint-convert vae  --src Wan2.1_VAE.pth --dst ckpt/vae
    viewpoint-convert umt5 --src models_t5_umt5-xxl-enc-bf16.pth --dst ckpt/umt5
    viewpoint-convert merge --src runs/vp14b_lora --dst ckpt/vp14b_merged [--lora_scale=1] \
        [--lora_base=/new/mount/wan14b_dit]

`merge` folds a LoRA training run's adapters into its base (the path in the run's lora_base.json,
or --lora_base where it moved) and writes a converted DiT without adapters, which samples as the
run does (`sample --checkpoint`).

(`python -m viewpoint_jax.convert_wan` is the same command.)
"""

from __future__ import annotations

import json
import sys
import time

import jax
from absl import flags
from flax import nnx

from viewpoint_jax.common.cli import UserError, run
from viewpoint_jax.convert.dit import convert_dit
from viewpoint_jax.convert.umt5 import convert_umt5
from viewpoint_jax.convert.vae import convert_vae
from viewpoint_jax.generation.models import sampling_config
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models.lora import merge_lora
from viewpoint_jax.setup.config import lora_enabled
from viewpoint_jax.training.checkpoints import restore_model_for_inference

COMPONENTS = {
    "dit": "the video DiT (original or diffusers layout)",
    "vae": "the Wan VAE",
    "umt5": "the umT5-XXL text encoder",
    "merge": "a LoRA run's adapters folded into its base DiT",
}
# DiT sizes a flag may override (None: the source's config.json).
DIT_SIZES = ("dim", "ffn_dim", "num_heads", "num_layers", "out_dim", "text_dim", "freq_dim")


def define_flags() -> None:
    flags.DEFINE_string("src", None, "checkpoint file or folder", required=True)
    flags.DEFINE_string("dst", None, "output directory (written atomically)", required=True)
    flags.DEFINE_enum(
        "dtype", None, ["float32", "bfloat16"], "stored dtype (default: float32; umt5: bf16)"
    )
    flags.DEFINE_bool("overwrite", False, "replace an existing --dst")
    flags.DEFINE_integer("in_dim", None, "dit: input channels (33 for ViewPoint)")
    flags.DEFINE_string("attention_pattern", None, "dit: alternate | pano | subregion")
    flags.DEFINE_float("lora_scale", None, "merge: the adapters' weight (default: the run's, 1)")
    flags.DEFINE_string("lora_base", None, "merge: the run's base DiT where it is now, if it moved")
    for size in DIT_SIZES:
        flags.DEFINE_integer(size, None, "dit: overrides the source's config.json")


def convert(component: str, values: flags.FlagValues) -> None:
    """Runs one conversion with the parsed flags."""
    # umT5 ships in bf16 and stays so by default (fp32 would double its 11 GB).
    dtype = values.dtype or (None if component == "umt5" else "float32")
    if component == "dit":
        overrides = {n: values[n].value for n in DIT_SIZES if values[n].value is not None}
        if values.attention_pattern:
            overrides["attention_pattern"] = values.attention_pattern
        config = convert_dit(
            values.src,
            values.dst,
            in_dim=values.in_dim,
            dtype=dtype,
            overwrite=values.overwrite,
            **overrides,
        )
        print(json.dumps(config.to_dict()))
    elif component == "merge":
        merge(values, values.dtype)
    elif component == "vae":
        convert_vae(values.src, values.dst, dtype=dtype, overwrite=values.overwrite)
    else:
        convert_umt5(values.src, values.dst, dtype=dtype, overwrite=values.overwrite)


def merge(values: flags.FlagValues, dtype: str | None) -> None:
    """Writes the DiT of the LoRA run --src, its adapters merged at --lora_scale
    (`models.lora.merge_lora`, in fp32), as a converted checkpoint --dst (all weights in `dtype`
    if given); its base as `sample` finds it (--lora_base)."""
    run_dir = values.src
    config = sampling_config(run_dir, lora_base=values.lora_base, lora_scale=values.lora_scale)
    if not lora_enabled(config):
        raise UserError(f"--src {run_dir}: not a LoRA run (its config.lora.rank is 0)")
    model = merge_lora(restore_model_for_inference(run_dir, config, param_dtype="float32"))
    if dtype is not None:
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), params))
    dit_lib.save_dit(values.dst, model, overwrite=values.overwrite)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMPONENTS:
        given = f", got {' '.join(argv[1:])!r}" if len(argv) > 1 else ""
        raise UserError(f"name one component to convert: {' | '.join(COMPONENTS)}{given}")
    start = time.perf_counter()
    convert(argv[1], flags.FLAGS)
    print(f"wrote {flags.FLAGS.dst} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def console_main() -> None:
    """The `viewpoint-convert` console script."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
