"""The parts a config names, built in one place for training and sampling.

    dit_config(config)                 -> the DiTConfig: preset + overrides + derived dims, sized
                                          for the config's autoencoder and text encoder (a
                                          command derives it once and hands it down)
    build_autoencoder(config)          -> SpaceToDepthAutoencoder | BlockDCTAutoencoder | WanVAE
    build_text_encoder(config)         -> TextEncoder (tokenizer + umT5), `encode_text(prompts)`
    abstract_autoencoder(config), abstract_text_model(config): the same modules with
                                          `jax.ShapeDtypeStruct` weights, no checkpoint read
    (build_text_encoder restores straight into a mesh's shardings when given one)

The trained DiT of a run is restored by training/checkpoints.py (`restore_model`).

The DiT's input is concat[noisy latent, condition latent, mask] (2 C + 1 channels, 33 for the
Wan VAE's C = 16), or the noisy latent alone for a plain text-to-video DiT (`config.data.source`
"demo_scenes", `config.takes_condition`); its output is the velocity (C channels); its text width
is the encoder's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from viewpoint_jax.common import sharding
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import text_encoder as text_lib
from viewpoint_jax.models import tokenizer as tokenizer_lib
from viewpoint_jax.models import umt5, vae
from viewpoint_jax.setup.config import (
    AUTOENCODERS,
    lora_settings,
    model_overrides,
    takes_condition,
)

WAN_LATENT_CHANNELS = 16
UMT5_XXL_WIDTH = 4096


# --- Sizes -------------------------------------------------------------------------------------


def latent_channels(config: ml_collections.ConfigDict) -> int:
    """C of the autoencoder's latents (without building it)."""
    if config.autoencoder.kind == "space_to_depth":
        return 3 * int(config.autoencoder.factor) ** 2
    if config.autoencoder.kind == "block_dct":
        return int(config.autoencoder.channels)
    return WAN_LATENT_CHANNELS


def _tiny_umt5_config() -> umt5.UMT5Config:
    tiny = umt5.UMT5Config.tiny()
    # The byte tokenizer's ids reach 256 + offset; keep the vocabulary large enough for them.
    vocab_size = tokenizer_lib.ByteTokenizer.vocab_size
    if tiny.vocab_size < vocab_size:
        tiny = dataclasses.replace(tiny, vocab_size=vocab_size)
    return tiny


def _checkpoint_config_file(checkpoint: str) -> Path | None:
    path = Path(checkpoint) / "config.json" if checkpoint else None
    return path if path is not None and path.is_file() else None


def text_width(config: ml_collections.ConfigDict) -> int:
    """d_model of the text encoder (the DiT's text_dim)."""
    if config.text_encoder.kind == "tiny_random":
        return int(_tiny_umt5_config().d_model)
    config_file = _checkpoint_config_file(config.text_encoder.checkpoint)
    if config_file is not None:
        return int(json.loads(config_file.read_text()).get("d_model", UMT5_XXL_WIDTH))
    return UMT5_XXL_WIDTH


def dit_config(config: ml_collections.ConfigDict) -> dit_lib.DiTConfig:
    """The DiTConfig of a training config: preset, overrides, and the derived in/out/text dims."""
    channels = latent_channels(config)
    return dit_lib.DiTConfig.preset(
        config.model.preset,
        in_dim=2 * channels + 1 if takes_condition(config) else channels,
        out_dim=channels,
        text_dim=text_width(config),
        **model_overrides(config),
        **lora_settings(config),
    )


# --- Builders ----------------------------------------------------------------------------------


def build_autoencoder(config: ml_collections.ConfigDict) -> autoencoder_lib.Autoencoder:
    kind = config.autoencoder.kind
    if kind == "space_to_depth":
        return autoencoder_lib.SpaceToDepthAutoencoder(int(config.autoencoder.factor))
    if kind == "block_dct":
        ae = config.autoencoder
        return autoencoder_lib.BlockDCTAutoencoder(int(ae.factor), int(ae.channels))
    if kind == "wan_vae":
        if not Path(config.autoencoder.checkpoint).is_dir():
            raise FileNotFoundError(
                f"config.autoencoder.checkpoint: no converted VAE at {config.autoencoder.checkpoint!r}"
            )
        return vae.load_vae(config.autoencoder.checkpoint)
    raise ValueError(f"config.autoencoder.kind {kind!r}: not one of {AUTOENCODERS}")


def build_text_encoder(
    config: ml_collections.ConfigDict,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding.LogicalRules = sharding.DEFAULT_RULES,
) -> Any:
    """The config's text encoder: `.encode_text(prompts) -> (embeddings (B, L, D), mask (B, L))`,
    its weights sharded over `mesh` by their logical axes and `rules` if given.

    "tiny_random": a small umT5 initialised from `config.text_encoder.seed` (the same encoder
    at training and sampling time) with a byte tokenizer. "umt5": a converted umT5-XXL and its
    SentencePiece tokenizer.
    """
    te = config.text_encoder
    if te.kind == "tiny_random":
        encoder = umt5.UMT5Encoder(_tiny_umt5_config(), rngs=nnx.Rngs(int(te.seed)))
        if mesh is not None:
            state = nnx.state(encoder)
            nnx.update(encoder, jax.device_put(state, sharding.state_shardings(state, mesh, rules)))
        tokenizer = tokenizer_lib.ByteTokenizer(int(te.max_length))
    elif te.kind == "umt5":
        for key in ("checkpoint", "tokenizer"):
            if not Path(te[key]).exists():
                raise FileNotFoundError(f"config.text_encoder.{key}: {te[key]!r} does not exist")
        encoder = umt5.load_umt5(te.checkpoint, mesh=mesh, rules=rules)
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
    config_file = _checkpoint_config_file(config.autoencoder.checkpoint)
    vae_config = vae.read_config(config_file.parent) if config_file else vae.WanVAEConfig()
    return vae.abstract_model(vae_config)


def abstract_text_model(config: ml_collections.ConfigDict) -> Any:
    """The config's umT5 encoder (the module of `build_text_encoder(config).encoder`) with
    `jax.ShapeDtypeStruct` weights; "umt5" takes its sizes from the checkpoint's config.json when
    there is one, else umT5-XXL's (bf16, as Wan ships it)."""
    te = config.text_encoder
    if te.kind == "tiny_random":
        umt5_config = _tiny_umt5_config()
    elif te.kind == "umt5":
        config_file = _checkpoint_config_file(te.checkpoint)
        umt5_config = (
            umt5.read_config(config_file.parent) if config_file else umt5.UMT5Config.umt5_xxl()
        )
    else:
        raise ValueError(f"config.text_encoder.kind {te.kind!r} is not 'tiny_random' or 'umt5'")
    return umt5.abstract_model(umt5_config)
