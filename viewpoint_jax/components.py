"""The parts a config names, built in one place for training and sampling.

    build_model(config, rngs)          -> WanDiT sized for the config's autoencoder and text encoder
    build_autoencoder(config)          -> SpaceToDepthAutoencoder | WanVAE
    build_text_encoder(config)         -> TextEncoder (tokenizer + umT5), `encode_text(prompts)`
    abstract_autoencoder(config), abstract_text_model(config): the same modules with
                                          `jax.ShapeDtypeStruct` weights, no checkpoint read
    restore_model(config, run_dir)     -> the trained WanDiT of a training run (EMA if it has one)
    restore_model_for_inference(path, config): a run directory or a converted DiT checkpoint

The DiT's input is concat[noisy latent, condition latent, mask] (2 C + 1 channels, 33 for the
Wan VAE's C = 16) and its output the velocity (C channels); its text width is the encoder's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from viewpoint_jax.config_validation import DIT_FIELDS
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.models import dit as dit_lib

WAN_LATENT_CHANNELS = 16
UMT5_XXL_WIDTH = 4096


# --- Sizes -------------------------------------------------------------------------------------


def latent_channels(config: ml_collections.ConfigDict) -> int:
    """C of the autoencoder's latents (without building it)."""
    if config.autoencoder.kind == "space_to_depth":
        return 3 * int(config.autoencoder.factor) ** 2
    return WAN_LATENT_CHANNELS


def _tiny_umt5_config(config: ml_collections.ConfigDict):
    from viewpoint_jax.models import umt5

    tiny = umt5.UMT5Config.tiny()
    # The byte tokenizer's ids reach 256 + offset; keep the vocabulary large enough for them.
    if tiny.vocab_size < ByteTokenizer.vocab_size:
        tiny = dataclasses.replace(tiny, vocab_size=ByteTokenizer.vocab_size)
    return tiny


def _checkpoint_config_file(checkpoint: str) -> Path | None:
    path = Path(checkpoint) / "config.json" if checkpoint else None
    return path if path is not None and path.is_file() else None


def text_width(config: ml_collections.ConfigDict) -> int:
    """d_model of the text encoder (the DiT's text_dim)."""
    if config.text_encoder.kind == "tiny_random":
        return int(_tiny_umt5_config(config).d_model)
    config_file = _checkpoint_config_file(config.text_encoder.checkpoint)
    if config_file is not None:
        return int(json.loads(config_file.read_text()).get("d_model", UMT5_XXL_WIDTH))
    return UMT5_XXL_WIDTH


def dit_config(config: ml_collections.ConfigDict) -> dit_lib.DiTConfig:
    """The DiTConfig of a training config: preset, overrides, and the derived in/out/text dims."""
    presets = {
        "tiny": dit_lib.DiTConfig.tiny,
        "wan_1_3b": dit_lib.DiTConfig.wan_1_3b,
        "wan_14b": dit_lib.DiTConfig.wan_14b,
    }
    if config.model.preset not in presets:
        raise ValueError(f"config.model.preset must be one of {list(presets)}")
    overrides = {k: config.model[k] for k in DIT_FIELDS if config.model.get(k) is not None}
    if isinstance(overrides.get("attention_pattern"), list):
        overrides["attention_pattern"] = tuple(overrides["attention_pattern"])
    channels = latent_channels(config)
    return presets[config.model.preset](
        in_dim=2 * channels + 1, out_dim=channels, text_dim=text_width(config), **overrides
    )


# --- Builders ----------------------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> dit_lib.WanDiT:
    """A freshly initialised DiT for `config` (see `dit_config`)."""
    return dit_lib.WanDiT(dit_config(config), rngs=rngs)


def build_autoencoder(config: ml_collections.ConfigDict) -> autoencoder_lib.Autoencoder:
    kind = config.autoencoder.kind
    if kind == "space_to_depth":
        return autoencoder_lib.SpaceToDepthAutoencoder(int(config.autoencoder.factor))
    if kind == "wan_vae":
        from viewpoint_jax.models import vae

        if not Path(config.autoencoder.checkpoint).is_dir():
            raise FileNotFoundError(
                f"config.autoencoder.checkpoint: no converted VAE at {config.autoencoder.checkpoint!r}"
            )
        return vae.load_vae(config.autoencoder.checkpoint)
    raise ValueError(f"config.autoencoder.kind {kind!r} is not 'space_to_depth' or 'wan_vae'")


class ByteTokenizer:
    """UTF-8 bytes as token ids (byte + 2; 0 = pad, 1 = end), for the tiny random text encoder.

    Needs no files, so a CPU run and its sampler agree without sharing a tokenizer model.
    `__call__(prompts) -> (ids (B, max_length) int32, mask (B, max_length) int32)`.
    """

    vocab_size = 258

    def __init__(self, max_length: int = 512):
        self.max_length = int(max_length)

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(prompts), self.max_length), np.int32)
        for row, prompt in enumerate(prompts):
            tokens = [b + 2 for b in " ".join(prompt.split()).encode("utf-8")]
            tokens = [*tokens[: self.max_length - 1], 1]
            ids[row, : len(tokens)] = tokens
        return ids, (ids > 0).astype(np.int32)


def build_text_encoder(config: ml_collections.ConfigDict) -> Any:
    """The config's text encoder: `.encode_text(prompts) -> (embeddings (B, L, D), mask (B, L))`.

    "tiny_random": a small umT5 initialised from `config.text_encoder.seed` (the same encoder
    at training and sampling time) with a byte tokenizer. "umt5": a converted umT5-XXL and its
    SentencePiece tokenizer.
    """
    from viewpoint_jax.models import text_encoder as text_lib
    from viewpoint_jax.models import umt5

    te = config.text_encoder
    if te.kind == "tiny_random":
        encoder = umt5.UMT5Encoder(_tiny_umt5_config(config), rngs=nnx.Rngs(int(te.seed)))
        tokenizer = ByteTokenizer(int(te.max_length))
    elif te.kind == "umt5":
        from viewpoint_jax.models import tokenizer as tokenizer_lib

        for key in ("checkpoint", "tokenizer"):
            if not Path(te[key]).exists():
                raise FileNotFoundError(f"config.text_encoder.{key}: {te[key]!r} does not exist")
        encoder = umt5.load_umt5(te.checkpoint)
        tokenizer = tokenizer_lib.Tokenizer(te.tokenizer, max_length=int(te.max_length))
    else:
        raise ValueError(f"config.text_encoder.kind {te.kind!r} is not 'tiny_random' or 'umt5'")
    return text_lib.TextEncoder(encoder, tokenizer)


def abstract_autoencoder(config: ml_collections.ConfigDict) -> autoencoder_lib.Autoencoder:
    """The config's autoencoder with `jax.ShapeDtypeStruct` weights: traced and compiled, never
    run (memory plans, shardings). A Wan VAE takes its sizes from the checkpoint's config.json
    when there is one, else the released Wan2.1 VAE's (`WanVAEConfig()`, float32 as converted).
    """
    if config.autoencoder.kind != "wan_vae":
        return build_autoencoder(config)  # weightless
    from viewpoint_jax.models import vae

    config_file = _checkpoint_config_file(config.autoencoder.checkpoint)
    vae_config = (
        vae.WanVAEConfig.from_dict(json.loads(config_file.read_text()))
        if config_file
        else vae.WanVAEConfig()
    )
    return nnx.eval_shape(lambda: vae.WanVAE(vae_config, rngs=nnx.Rngs(0)))


def abstract_text_model(config: ml_collections.ConfigDict) -> Any:
    """The config's umT5 encoder (the module of `build_text_encoder(config).encoder`) with
    `jax.ShapeDtypeStruct` weights; "umt5" takes its sizes from the checkpoint's config.json when
    there is one, else umT5-XXL's (bf16, as Wan ships it)."""
    from viewpoint_jax.models import umt5

    te = config.text_encoder
    if te.kind == "tiny_random":
        umt5_config = _tiny_umt5_config(config)
    elif te.kind == "umt5":
        config_file = _checkpoint_config_file(te.checkpoint)
        umt5_config = (
            umt5.read_config(config_file.parent) if config_file else umt5.UMT5Config.umt5_xxl()
        )
    else:
        raise ValueError(f"config.text_encoder.kind {te.kind!r} is not 'tiny_random' or 'umt5'")
    return umt5.abstract_model(umt5_config)


# --- Pretrained and trained weights ------------------------------------------------------------


def inflate_patch_kernel(kernel: jax.Array, in_dim: int) -> jax.Array:
    """(pt, ph, pw, C_old, D) -> (pt, ph, pw, in_dim, D): old input channels kept, new ones zero.

    A text-to-video Wan checkpoint takes the 16 noisy-latent channels; ViewPoint appends the
    condition latent and mask. Zero weights on them make the inflated model compute exactly what
    the pretrained one did until training teaches it to use the condition.
    """
    old = kernel.shape[3]
    if in_dim < old:
        raise ValueError(f"cannot inflate a patch embedding of {old} channels to {in_dim}")
    pad = [(0, 0)] * kernel.ndim
    pad[3] = (0, in_dim - old)
    return jnp.pad(kernel, pad)


def load_pretrained_params(
    path: str | os.PathLike, model_config: dit_lib.DiTConfig, shardings: Any | None = None
) -> nnx.State:
    """Params of a converted Wan DiT, inflated to `model_config.in_dim` input channels.

    The checkpoint's sizes must match the model's except for in_dim (fewer channels are inflated
    with zeros, see `inflate_patch_kernel`).
    """
    source = dit_lib.read_config(path)
    for field in ("dim", "ffn_dim", "num_heads", "num_layers", "out_dim", "text_dim", "patch_size"):
        if getattr(source, field) != getattr(model_config, field):
            raise ValueError(
                f"config.model.init_checkpoint {path}: {field} is {getattr(source, field)} in the "
                f"checkpoint but {getattr(model_config, field)} in the config"
            )
    source_config = dataclasses.replace(model_config, in_dim=source.in_dim)
    _, abstract = nnx.split(dit_lib.abstract_model(source_config), nnx.Param)
    # Shardings do not depend on the channel count of the patch embedding: reuse the model's.
    params = dit_lib.load_dit_state(path, abstract, shardings)
    kernel = params["patch_kernel"]
    inflated = inflate_patch_kernel(kernel[...], model_config.in_dim)
    if shardings is not None:
        inflated = jax.device_put(inflated, shardings["patch_kernel"].get_value())
    kernel.set_value(inflated)
    return params


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def restore_model(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, use_ema: bool = True
) -> dit_lib.WanDiT:
    """The DiT of the latest checkpoint of a training run (its EMA weights if it keeps them)."""
    from viewpoint_jax import checkpointing

    model_config = dit_config(config)
    graphdef, abstract = nnx.split(dit_lib.abstract_model(model_config), nnx.Param)
    params = checkpointing.restore_params(checkpoint_dir(workdir), abstract, use_ema=use_ema)
    return nnx.merge(graphdef, params)


def restore_model_for_inference(
    workdir_or_checkpoint: str | os.PathLike, config: ml_collections.ConfigDict
) -> dit_lib.WanDiT:
    """A training run directory, or a converted DiT checkpoint (config.json + params/)."""
    path = Path(workdir_or_checkpoint)
    if (path / "config.json").is_file() and (path / "params").is_dir():
        return dit_lib.load_dit(path)
    if not checkpoint_dir(path).is_dir():
        raise FileNotFoundError(
            f"{path} is neither a training run (no checkpoints/) nor a converted DiT checkpoint"
        )
    return restore_model(config, path)
