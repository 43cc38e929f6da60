"""Wan2.1 DiT checkpoints (original release or diffusers layout) -> a `load_dit` directory.

Original layout (Wan2.1 repo, `WanModel`): `patch_embedding.*`, `text_embedding.{0,2}.*`,
`time_embedding.{0,2}.*`, `time_projection.1.*`, `blocks.N.self_attn.{q,k,v,o,norm_q,norm_k}.*`,
`blocks.N.norm3.*` (the affine LayerNorm before cross-attention), `blocks.N.cross_attn.*`,
`blocks.N.ffn.{0,2}.*`, `blocks.N.modulation` (1, 6, dim), `head.head.*`, `head.modulation`.
Diffusers layout (`WanTransformer3DModel`): `condition_embedder.*`, `blocks.N.attn1.to_q...`,
`blocks.N.norm2.*`, `blocks.N.ffn.net.{0.proj,2}.*`, `blocks.N.scale_shift_table`, `proj_out.*`,
`scale_shift_table`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from viewpoint_jax.convert import core
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import weights

LAYOUTS = ("original (Wan2.1 release, WanModel)", "diffusers (WanTransformer3DModel)")

# Per-block names: our path -> (original key, diffusers key), relative to `blocks.N.`.
_BLOCK_LINEARS = {
    "self_attn/q": ("self_attn.q", "attn1.to_q"),
    "self_attn/k": ("self_attn.k", "attn1.to_k"),
    "self_attn/v": ("self_attn.v", "attn1.to_v"),
    "self_attn/o": ("self_attn.o", "attn1.to_out.0"),
    "cross_attn/q": ("cross_attn.q", "attn2.to_q"),
    "cross_attn/k": ("cross_attn.k", "attn2.to_k"),
    "cross_attn/v": ("cross_attn.v", "attn2.to_v"),
    "cross_attn/o": ("cross_attn.o", "attn2.to_out.0"),
    "ffn_in": ("ffn.0", "ffn.net.0.proj"),
    "ffn_out": ("ffn.2", "ffn.net.2"),
}
_BLOCK_NORMS = {  # our path -> (original, diffusers) prefix of a `.weight`
    "self_attn/norm_q/scale": ("self_attn.norm_q", "attn1.norm_q"),
    "self_attn/norm_k/scale": ("self_attn.norm_k", "attn1.norm_k"),
    "cross_attn/norm_q/scale": ("cross_attn.norm_q", "attn2.norm_q"),
    "cross_attn/norm_k/scale": ("cross_attn.norm_k", "attn2.norm_k"),
    "cross_norm/scale": ("norm3", "norm2"),
}
_TOP_LINEARS = {
    "text_in": ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    "text_out": ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    "time_in": ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    "time_out": ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    "time_projection": ("time_projection.1", "condition_embedder.time_proj"),
    "head": ("head.head", "proj_out"),
}


def detect_layout(keys: Any) -> int:
    """0 for the original layout, 1 for diffusers; ValueError naming both otherwise."""
    keys = set(keys)
    if "time_projection.1.weight" in keys:
        return 0
    if "condition_embedder.time_proj.weight" in keys:
        return 1
    raise ValueError(
        "unknown DiT checkpoint layout (neither 'time_projection.1.weight' nor "
        f"'condition_embedder.time_proj.weight' found); supported layouts: {', '.join(LAYOUTS)}"
    )


def config_from_source(source: core.TensorSource, layout: int) -> dict[str, Any]:
    """DiTConfig fields from the config.json beside the weights, else inferred from shapes."""
    cfg = source.config or {}
    if layout == 1 and cfg:
        if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
            raise ValueError(f"{source.path}: image-conditioned (I2V) Wan is not supported")
        heads = cfg["num_attention_heads"]
        return dict(
            dim=heads * cfg["attention_head_dim"],
            num_heads=heads,
            ffn_dim=cfg["ffn_dim"],
            num_layers=cfg["num_layers"],
            in_dim=cfg["in_channels"],
            out_dim=cfg["out_channels"],
            text_dim=cfg["text_dim"],
            freq_dim=cfg["freq_dim"],
            eps=cfg.get("eps", 1e-6),
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
        )
    if layout == 0 and cfg:
        if cfg.get("model_type", "t2v") not in ("t2v", "ti2v"):
            raise ValueError(f"{source.path}: model_type {cfg['model_type']!r} is not supported")
        fields = (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "freq_dim",
            "eps",
        )
        out = {k: cfg[k] for k in fields if k in cfg}
        # Wan's config.json has no text_dim (its text encoder is umT5-XXL): the embedding has it.
        out["text_dim"] = cfg.get("text_dim") or source.shape("text_embedding.0.weight")[1]
        out["patch_size"] = tuple(cfg.get("patch_size", (1, 2, 2)))
        return out
    # No config.json: read the sizes off the tensors (Wan's head dim is always 128).
    names = ("patch_embedding.weight", "ffn.0.weight" if layout == 0 else "ffn.net.0.proj.weight")
    dim, in_dim, *patch = source.shape(names[0])
    first = (
        "text_embedding.0.weight"
        if layout == 0
        else ("condition_embedder.text_embedder.linear_1.weight")
    )
    time_in = (
        "time_embedding.0.weight"
        if layout == 0
        else ("condition_embedder.time_embedder.linear_1.weight")
    )
    head = "head.head.weight" if layout == 0 else "proj_out.weight"
    num_layers = 1 + max(int(k.split(".")[1]) for k in source.keys() if k.startswith("blocks."))
    return dict(
        dim=dim,
        in_dim=in_dim,
        patch_size=tuple(patch),
        num_heads=max(dim // 128, 1),
        ffn_dim=source.shape(f"blocks.0.{names[1]}")[0],
        num_layers=num_layers,
        text_dim=source.shape(first)[1],
        freq_dim=source.shape(time_in)[1],
        out_dim=source.shape(head)[0] // int(np.prod(patch)),
    )


def dit_rules(config: dit_lib.DiTConfig, layout: int, source_in_dim: int) -> list[core.TensorRule]:
    """All rules for one layout; stacked block params get `index` = block number."""
    d, f = config.dim, config.ffn_dim
    pt, ph, pw = config.patch_size
    rules = []

    def linear(path, key, shape, index=None):
        rules.append(
            core.TensorRule(
                f"{key}.weight", f"{path}/kernel", index, core.linear_kernel, tuple(shape)
            )
        )
        rules.append(core.TensorRule(f"{key}.bias", f"{path}/bias", index, source_shape=shape[:1]))

    extra = config.in_dim - source_in_dim
    if extra < 0:
        raise ValueError(f"in_dim {config.in_dim} is smaller than the checkpoint's {source_in_dim}")

    def patch_kernel(w: np.ndarray) -> np.ndarray:
        # Inflation: the extra input channels start at zero, so they do not change the output.
        kernel = core.conv_kernel(w)
        return np.pad(kernel, [(0, 0)] * 3 + [(0, extra), (0, 0)])

    rules.append(
        core.TensorRule(
            "patch_embedding.weight",
            "patch_kernel",
            None,
            patch_kernel,
            (d, source_in_dim, pt, ph, pw),
        )
    )
    rules.append(core.TensorRule("patch_embedding.bias", "patch_bias", source_shape=(d,)))
    top_shapes = {
        "text_in": (d, config.text_dim),
        "text_out": (d, d),
        "time_in": (d, config.freq_dim),
        "time_out": (d, d),
        "time_projection": (6 * d, d),
        "head": (pt * ph * pw * config.out_dim, d),
    }
    for path, keys in _TOP_LINEARS.items():
        linear(path, keys[layout], top_shapes[path])
    head_mod = ("head.modulation", "scale_shift_table")[layout]
    rules.append(core.TensorRule(head_mod, "head_modulation", None, lambda x: x[0], (1, 2, d)))

    block_shapes = {"ffn_in": (f, d), "ffn_out": (d, f)}
    for i in range(config.num_layers):
        prefix = f"blocks.{i}."
        for path, keys in _BLOCK_LINEARS.items():
            linear(f"blocks/{path}", prefix + keys[layout], block_shapes.get(path, (d, d)), i)
        for path, keys in _BLOCK_NORMS.items():
            rules.append(
                core.TensorRule(
                    f"{prefix}{keys[layout]}.weight", f"blocks/{path}", i, source_shape=(d,)
                )
            )
        cross_norm = _BLOCK_NORMS["cross_norm/scale"][layout]
        rules.append(
            core.TensorRule(
                f"{prefix}{cross_norm}.bias", "blocks/cross_norm/bias", i, source_shape=(d,)
            )
        )
        modulation = prefix + ("modulation", "scale_shift_table")[layout]
        rules.append(core.TensorRule(modulation, "blocks/modulation", i, lambda x: x[0], (1, 6, d)))
    return rules


def convert_dit(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    in_dim: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    **config_overrides: Any,
) -> dit_lib.DiTConfig:
    """Converts a Wan2.1 DiT checkpoint (file or folder, either layout) into `dst`.

    Args:
      src: safetensors file / sharded index / .pth, or the folder holding it and config.json.
      dst: output directory (written atomically): `config.json` + Orbax `params/`.
      in_dim: model input channels; more than the checkpoint's inflates the patch embedding with
        zero-initialised channels (33 for ViewPoint).
      dtype: stored parameter dtype ("float32" | "bfloat16").
      config_overrides: DiTConfig fields, override the sizes read from config.json and set
        execution options (attention_pattern, attention_backend, ...).
    Returns:
      the written DiTConfig.
    """
    source = core.open_checkpoint(src)
    layout = detect_layout(source.keys())
    sizes = config_from_source(source, layout)
    source_in_dim = sizes["in_dim"]
    fields = {**sizes, **config_overrides, "param_dtype": str(np.dtype(dtype))}
    if in_dim is not None:
        fields["in_dim"] = in_dim
    config = dit_lib.DiTConfig(**fields)
    rules = dit_rules(config, layout, source_in_dim)
    core.convert_checkpoint(
        source,
        rules,
        weights.param_targets(dit_lib.abstract_model(config), config.param_dtype),
        dst,
        extra_files={"config.json": json.dumps(config.to_dict(), indent=2)},
        overwrite=overwrite,
    )
    return config
