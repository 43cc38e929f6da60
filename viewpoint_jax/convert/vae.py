"""Wan2.1 VAE: PyTorch checkpoint -> Orbax checkpoint loadable with `load_vae`.

Two source layouts are accepted, detected from the key names:

* Wan's original `Wan2.1_VAE.pth`: `encoder.conv1`, `encoder.downsamples.N.residual.{0,2,3,6}`,
  `encoder.middle.{0,1,2}`, `encoder.head.{0,2}`, `conv1`/`conv2` (quant convs),
  `decoder.upsamples.N...` (one flat list per network);
* diffusers' `AutoencoderKLWan` (a `vae/` folder): `encoder.conv_in`, `encoder.down_blocks.N.norm1`,
  `mid_block.resnets/attentions`, `quant_conv`, `decoder.up_blocks.I.resnets.J`,
  `decoder.up_blocks.I.upsamplers.0...`.

Sizes (base_dim, z_dim, dim_mult, num_res_blocks, temporal_downsample) are inferred from the tensor
shapes; the latent statistics come from diffusers' config.json when present, else Wan2.1's values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax.convert import core
from viewpoint_jax.models import vae as vae_lib
from viewpoint_jax.models import weights
from viewpoint_jax.models.vae import WanVAEConfig

ORIGINAL, DIFFUSERS = "original", "diffusers"

# A residual block's parameterised parts, and their torch module names in each layout.
_RESIDUAL_PARTS = (
    ("norm1", "norm"),
    ("conv1", "conv3d"),
    ("norm2", "norm"),
    ("conv2", "conv3d"),
    ("shortcut", "conv3d"),
)
_RESIDUAL_MODULES = {
    ORIGINAL: ("residual.0", "residual.2", "residual.3", "residual.6", "shortcut"),
    DIFFUSERS: ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"),
}


def _norm_scale(gamma: np.ndarray) -> np.ndarray:
    return gamma.reshape(-1)


def _conv2d_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d (out, in, kh, kw) -> (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def detect_layout(keys: set[str], src: str | os.PathLike) -> str:
    if "encoder.conv1.weight" in keys:
        return ORIGINAL
    if "encoder.conv_in.weight" in keys:
        return DIFFUSERS
    raise core.ConversionError(
        f"{src} is not a Wan2.1 VAE checkpoint: found neither 'encoder.conv1.weight' (Wan's "
        f"Wan2.1_VAE.pth) nor 'encoder.conv_in.weight' (diffusers AutoencoderKLWan)",
        missing=["encoder.conv1.weight | encoder.conv_in.weight"],
    )


def infer_config(source: core.TensorSource, layout: str) -> WanVAEConfig:
    """Reads the VAE sizes off the encoder's tensor shapes (and diffusers' config.json)."""
    keys = set(source.keys())
    names = {
        ORIGINAL: ("encoder.conv1.weight", "conv2.weight", r"encoder\.downsamples\.(\d+)\."),
        DIFFUSERS: ("encoder.conv_in.weight", "post_quant_conv.weight",
                    r"encoder\.down_blocks\.(\d+)\."),
    }[layout]  # fmt: skip
    conv_in, post_quant, block_re = names
    for key in (conv_in, post_quant):
        if key not in keys:
            raise core.ConversionError(f"{source.path}: cannot infer the VAE sizes", missing=[key])
    base_dim = source.shape(conv_in)[0]
    z_dim = source.shape(post_quant)[0]
    prefix = "encoder.downsamples." if layout == ORIGINAL else "encoder.down_blocks."
    indices = sorted({int(m.group(1)) for k in keys if (m := re.match(block_re, k))})
    if not indices:
        raise core.ConversionError(f"{source.path}: no encoder blocks", missing=[prefix + "0..."])
    resample = [i for i in indices if f"{prefix}{i}.resample.1.weight" in keys]
    temporal = tuple(f"{prefix}{i}.time_conv.weight" in keys for i in resample)
    num_res_blocks = resample[0] if resample else len(indices)
    stage_dims = []
    stage_starts = [0] + [i + 1 for i in resample]
    conv_name = "residual.2.weight" if layout == ORIGINAL else "conv1.weight"
    for start in stage_starts:
        key = f"{prefix}{start}.{conv_name}"
        if key not in keys:
            raise core.ConversionError(f"{source.path}: cannot infer dim_mult", missing=[key])
        stage_dims.append(source.shape(key)[0])
    if any(d % base_dim for d in stage_dims):
        raise ValueError(f"{source.path}: stage widths {stage_dims} not multiples of {base_dim}")
    extra = {}
    cfg = source.config or {}
    if cfg.get("is_residual") or cfg.get("patch_size") or cfg.get("attn_scales"):
        raise ValueError(
            f"{source.path}: only the Wan2.1 VAE is supported (config has is_residual="
            f"{cfg.get('is_residual')}, patch_size={cfg.get('patch_size')}, attn_scales="
            f"{cfg.get('attn_scales')})"
        )
    if cfg.get("latents_mean") is not None and len(cfg["latents_mean"]) == z_dim:
        extra = {"latents_mean": cfg["latents_mean"], "latents_std": cfg["latents_std"]}
    elif z_dim != 16:
        raise ValueError(
            f"{source.path}: z_dim={z_dim} and no latents_mean/latents_std in config.json "
            "(Wan2.1's published statistics are for z_dim=16)"
        )
    return WanVAEConfig(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=tuple(d // base_dim for d in stage_dims),
        num_res_blocks=num_res_blocks,
        temporal_downsample=temporal,
        **extra,
    )


def torch_module_names(config: WanVAEConfig, layout: str) -> list[tuple[str, str, str]]:
    """(target module path, torch module prefix, kind) for every parameterised module."""
    orig = layout == ORIGINAL
    out = []

    def res(target: str, src: str):
        names = _RESIDUAL_MODULES[layout]
        for (part, kind), name in zip(_RESIDUAL_PARTS, names, strict=True):
            out.append((f"{target}/{part}", f"{src}.{name}", kind))

    def resample(target: str, src: str):
        out.append((f"{target}/resample", f"{src}.resample.1", "conv2d"))
        out.append((f"{target}/time_conv", f"{src}.time_conv", "conv3d"))

    def mid(target: str, src: str):
        if orig:
            res(f"{target}/resnets/0", f"{src}.middle.0")
            res(f"{target}/resnets/1", f"{src}.middle.2")
            attn = f"{src}.middle.1"
        else:
            res(f"{target}/resnets/0", f"{src}.mid_block.resnets.0")
            res(f"{target}/resnets/1", f"{src}.mid_block.resnets.1")
            attn = f"{src}.mid_block.attentions.0"
        out.extend([
            (f"{target}/attention/norm", f"{attn}.norm", "norm"),
            (f"{target}/attention/to_qkv", f"{attn}.to_qkv", "conv2d"),
            (f"{target}/attention/proj", f"{attn}.proj", "conv2d"),
        ])  # fmt: skip

    for net in ("encoder", "decoder"):
        conv_in = f"{net}.conv1" if orig else f"{net}.conv_in"
        out.append((f"{net}/conv_in", conv_in, "conv3d"))
        mid(f"{net}/mid", net)
        norm_out, conv_out = (f"{net}.head.0", f"{net}.head.2") if orig else (
            f"{net}.norm_out", f"{net}.conv_out")  # fmt: skip
        out.append((f"{net}/norm_out", norm_out, "norm"))
        out.append((f"{net}/conv_out", conv_out, "conv3d"))
    out.append(("quant_conv", "conv1" if orig else "quant_conv", "conv3d"))
    out.append(("post_quant_conv", "conv2" if orig else "post_quant_conv", "conv3d"))

    # Encoder blocks: one flat list in both layouts.
    n = 0
    for i in range(len(config.dim_mult)):
        for _ in range(config.num_res_blocks):
            src = f"encoder.downsamples.{n}" if orig else f"encoder.down_blocks.{n}"
            res(f"encoder/down_blocks/{n}", src)
            n += 1
        if i < len(config.dim_mult) - 1:
            src = f"encoder.downsamples.{n}" if orig else f"encoder.down_blocks.{n}"
            resample(f"encoder/down_blocks/{n}", src)
            n += 1
    # Decoder blocks: flat in Wan, grouped per stage in diffusers.
    n = 0
    for i in range(len(config.dim_mult)):
        for j in range(config.num_res_blocks + 1):
            src = f"decoder.upsamples.{n}" if orig else f"decoder.up_blocks.{i}.resnets.{j}"
            res(f"decoder/up_blocks/{n}", src)
            n += 1
        if i < len(config.dim_mult) - 1:
            src = f"decoder.upsamples.{n}" if orig else f"decoder.up_blocks.{i}.upsamplers.0"
            resample(f"decoder/up_blocks/{n}", src)
            n += 1
    return out


def vae_rules(
    config: WanVAEConfig, layout: str, targets: dict[str, jax.ShapeDtypeStruct]
) -> list[core.TensorRule]:
    """Rules for every target leaf; the source shapes follow from the target shapes."""
    rules = []
    for target, src, kind in torch_module_names(config, layout):
        if kind == "norm":
            # torch RMS_norm gammas broadcast over (C, T, H, W), or (C, H, W) in attention.
            dim = targets[f"{target}/scale"].shape[0]
            shape = (dim, 1, 1) if "/attention/" in target else (dim, 1, 1, 1)
            rules.append(core.TensorRule(f"{src}.gamma", f"{target}/scale",
                                         transform=_norm_scale, source_shape=shape))  # fmt: skip
            continue
        kernel = f"{target}/kernel"
        if kernel not in targets:  # e.g. no shortcut / no time_conv in this block
            continue
        shape = targets[kernel].shape
        if kind == "conv3d":
            torch_shape = (shape[4], shape[3], *shape[:3])
            transform = core.conv_kernel
        else:
            torch_shape = (shape[3], shape[2], *shape[:2])
            transform = _conv2d_kernel
        rules.append(core.TensorRule(f"{src}.weight", kernel, transform=transform,
                                     source_shape=torch_shape))  # fmt: skip
        rules.append(core.TensorRule(f"{src}.bias", f"{target}/bias",
                                     source_shape=targets[f"{target}/bias"].shape))  # fmt: skip
    return rules


def convert_vae(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Converts a Wan2.1 VAE (Wan's .pth or a diffusers vae/ folder) into `dst`.

    Args:
      src: `Wan2.1_VAE.pth`, a diffusers `vae/` folder (safetensors + config.json), or a file.
      dst: output directory: config.json + params/ (Orbax), written atomically.
      dtype: stored parameter dtype (default float32).
      overwrite: replace an existing `dst`.
    Raises:
      ConversionError listing every missing / unexpected / misshapen tensor.
    """
    source = core.open_checkpoint(src)
    layout = detect_layout(set(source.keys()), src)
    config = infer_config(source, layout)
    if dtype is not None:
        config = dataclasses.replace(config, param_dtype=str(jnp.dtype(dtype)))
    targets = weights.param_targets(vae_lib.abstract_model(config))
    rules = vae_rules(config, layout, targets)
    return core.convert_checkpoint(
        source,
        rules,
        targets,
        dst,
        extra_files={"config.json": json.dumps(config.to_dict(), indent=2)},
        overwrite=overwrite,
    )


def vae_from_state_dict(
    state: dict[str, np.ndarray], config: WanVAEConfig | None = None
) -> vae_lib.WanVAE:
    """Builds a `WanVAE` straight from an in-memory torch state dict (either layout).

    For tools and tests that already hold the torch model; checkpoints on disk go through
    `convert_vae` + `load_vae`. `state` values may be torch tensors or numpy arrays.
    """
    from flax import nnx

    state = {k: np.asarray(v.detach().float().numpy() if hasattr(v, "detach") else v)
             for k, v in state.items()}  # fmt: skip
    layout = detect_layout(set(state), "state dict")
    if config is None:
        source = _DictSource(state)
        config = infer_config(source, layout)
    targets = weights.param_targets(vae_lib.abstract_model(config))
    rules = vae_rules(config, layout, targets)
    missing = sorted(r.source for r in rules if r.source not in state)
    unexpected = sorted(set(state) - {r.source for r in rules})
    if missing or unexpected:
        raise core.ConversionError(missing=missing, unexpected=unexpected, source="state dict")
    values = {r.target: r.transform(state[r.source]) for r in rules}
    graphdef, params = nnx.split(vae_lib.abstract_model(config))
    flat = []
    for path, var in nnx.to_flat_state(params):
        key = "/".join(str(p) for p in path)
        flat.append((path, var.replace(jnp.asarray(values[key], targets[key].dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


class _DictSource:
    """The part of `core.TensorSource` that `infer_config` reads, over a dict."""

    def __init__(self, state: dict[str, np.ndarray]):
        self._state, self.path, self.config = state, "state dict", None

    def keys(self):
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)
