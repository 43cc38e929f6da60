"""Tiny stand-ins for Wan2.1's published checkpoints, with the real key names and file layouts.

Each model is a small random instance of its reference implementation, its state dict renamed to
the key layout Wan-AI publishes:

- the DiT: diffusers' `WanTransformer3DModel` -> the original release's keys (`dit_reference`,
  `to_original_dit_layout`, `original_dit_config`, `save_dit`);
- the VAE: diffusers' `AutoencoderKLWan` -> the original `Wan2.1_VAE.pth` keys (`vae_reference`,
  `to_original_vae_layout`);
- umT5: transformers' `UMT5EncoderModel` -> Wan's `T5Encoder` keys (`umt5_reference`,
  `to_wan_umt5_layout`);

and `write_wan_release` puts all of them, with a SentencePiece tokenizer, in the folder layout of
a Wan2.1-T2V release (what `huggingface-cli download Wan-AI/Wan2.1-T2V-14B` writes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A 2-layer DiT (dim 48 = 2 heads x 24) with Wan's patch size; text_dim = the umT5 stand-in's d_model.
DIT_TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=24,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=96,
    num_layers=2,
    cross_attn_norm=True,
    eps=1e-6,
    rope_max_seq_len=1024,
)
# The released Wan2.1 VAE's structure (4 stages, 2 residual blocks) at a tiny width.
VAE_TINY = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
# A 3-layer umT5 encoder (d_model 32 = DIT_TINY's text_dim).
UMT5_TINY = dict(
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=48,
    num_layers=3,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
)
UMT5_VOCAB = 96

# --- DiT ----------------------------------------------------------------------------------------

# diffusers -> original Wan2.1 names (Wan's norm3 is diffusers' norm2: the cross-attn LayerNorm).
_DIT_RENAMES = [
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."),
    ("attn2.to_", "cross_attn."),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    (".norm2.", ".norm3."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]


def dit_reference(seed: int = 0):
    """diffusers' WanTransformer3DModel at DIT_TINY, in eval mode, with random non-trivial norms
    and modulation tables (the defaults are ones and zeros)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**DIT_TINY).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def to_original_dit_layout(state: dict) -> dict:
    """A diffusers WanTransformer3DModel state dict renamed to the original release's keys."""
    out = {}
    for key, value in state.items():
        if key == "scale_shift_table":
            out["head.modulation"] = value
            continue
        new = key.replace("scale_shift_table", "modulation")
        for old, replacement in _DIT_RENAMES:
            new = new.replace(old, replacement)
        out[new] = value
    return out


def original_dit_config(cfg: dict) -> dict:
    """The original release's config.json (the same keys as Wan-AI's) for diffusers' constructor
    arguments `cfg`."""
    return dict(
        _class_name="WanModel",
        _diffusers_version="0.30.0",
        dim=cfg["num_attention_heads"] * cfg["attention_head_dim"],
        eps=cfg["eps"],
        ffn_dim=cfg["ffn_dim"],
        freq_dim=cfg["freq_dim"],
        in_dim=cfg["in_channels"],
        model_type="t2v",
        num_heads=cfg["num_attention_heads"],
        num_layers=cfg["num_layers"],
        out_dim=cfg["out_channels"],
        text_len=512,
    )


def save_dit(state: dict, folder: Path, fmt: str, config: dict, prefix: str = "model") -> None:
    """`state` and its config.json in `folder`: "safetensors" (one file), "sharded" (two
    safetensors files and `<prefix>.safetensors.index.json`) or "pth"."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(state, folder / "diffusion_pytorch_model.safetensors")
    elif fmt == "sharded":
        keys = sorted(state)
        halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
        weight_map = {}
        for i, part in enumerate(halves):
            name = f"{prefix}-{i + 1:05d}-of-00002.safetensors"
            save_file({k: state[k].contiguous() for k in part}, folder / name)
            weight_map.update({k: name for k in part})
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps(index))
    else:
        torch.save(state, folder / "model.pth")


# --- VAE ----------------------------------------------------------------------------------------


def vae_reference(seed: int = 0):
    """diffusers' AutoencoderKLWan at VAE_TINY."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**VAE_TINY)


def to_original_vae_layout(state: dict) -> dict:
    """diffusers keys -> Wan's original keys (module by module, as our converter names them)."""
    from viewpoint_jax.convert import vae as convert_lib
    from viewpoint_jax.models import vae as vae_lib

    sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in VAE_TINY.items()}
    config = vae_lib.WanVAEConfig(**sizes)
    diffusers = convert_lib.torch_module_names(config, convert_lib.DIFFUSERS)
    original = convert_lib.torch_module_names(config, convert_lib.ORIGINAL)
    rename = {d: o for (_, d, _), (_, o, _) in zip(diffusers, original)}
    out = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1)
        out[f"{rename[module]}.{leaf}"] = value
    return out


# --- umT5 ---------------------------------------------------------------------------------------

# transformers key (relative to encoder.block.N.) -> Wan key (relative to blocks.N.)
_UMT5_WAN_NAMES = {
    "layer.0.layer_norm": "norm1",
    "layer.0.SelfAttention.q": "attn.q",
    "layer.0.SelfAttention.k": "attn.k",
    "layer.0.SelfAttention.v": "attn.v",
    "layer.0.SelfAttention.o": "attn.o",
    "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
    "layer.1.layer_norm": "norm2",
    "layer.1.DenseReluDense.wi_0": "ffn.gate.0",
    "layer.1.DenseReluDense.wi_1": "ffn.fc1",
    "layer.1.DenseReluDense.wo": "ffn.fc2",
}


def umt5_reference(vocab_size: int = UMT5_VOCAB, seed: int = 0):
    """transformers' UMT5EncoderModel at UMT5_TINY, in eval mode, with non-trivial norms and
    relative attention biases."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **UMT5_TINY)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
            elif "relative_attention_bias" in name:
                param.copy_(torch.randn_like(param))
    return model


def to_wan_umt5_layout(state: dict) -> dict:
    """A transformers UMT5EncoderModel state dict renamed to Wan's T5Encoder keys."""
    out = {}
    for key, value in state.items():
        if key == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight
        if key == "shared.weight":
            new = "token_embedding.weight"
        elif key == "encoder.final_layer_norm.weight":
            new = "norm.weight"
        else:
            _, _, index, rest = key.split(".", 3)
            new = f"blocks.{index}.{_UMT5_WAN_NAMES[rest.removesuffix('.weight')]}.weight"
        out[new] = value.clone()
    return out


# --- A whole release ----------------------------------------------------------------------------

TOKENIZER_CORPUS = [
    "waves roll onto a sandy beach under a clear sky",
    "a stone plaza with a fountain",
    "a busy market street at dusk with lanterns and people",
    "the camera slowly turns in a room with tiled walls",
] * 10


def write_wan_release(folder: Path) -> Path:
    """A Wan2.1-T2V release at stand-in size in `folder`, laid out as Wan-AI publishes it:

        config.json                                       the DiT's sizes (original keys)
        diffusion_pytorch_model-0000k-of-00002.safetensors
        diffusion_pytorch_model.safetensors.index.json    the DiT, original keys, sharded
        Wan2.1_VAE.pth                                    the VAE, original keys
        models_t5_umt5-xxl-enc-bf16.pth                   umT5's encoder, Wan's keys, bf16
        google/umt5-xxl/spiece.model                      the SentencePiece tokenizer

    Returns `folder`."""
    from viewpoint_jax.models.tokenizer import train_sentencepiece

    state = {k: v.detach().clone() for k, v in dit_reference().state_dict().items()}
    save_dit(
        to_original_dit_layout(state),
        folder,
        "sharded",
        original_dit_config(DIT_TINY),
        prefix="diffusion_pytorch_model",
    )
    vae_state = {k: v.detach().clone() for k, v in vae_reference().state_dict().items()}
    torch.save(to_original_vae_layout(vae_state), folder / "Wan2.1_VAE.pth")
    umt5_state = to_wan_umt5_layout(umt5_reference().state_dict())
    torch.save(
        {k: v.bfloat16() for k, v in umt5_state.items()},
        folder / "models_t5_umt5-xxl-enc-bf16.pth",
    )
    tokenizer = folder / "google" / "umt5-xxl"
    train_sentencepiece(TOKENIZER_CORPUS, tokenizer / "spiece", vocab_size=UMT5_VOCAB)
    return folder
