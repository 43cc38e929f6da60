"""umT5 encoder checkpoints (Wan2.1 release or transformers) -> a `load_umt5` directory.

Wan layout (`models_t5_umt5-xxl-enc-bf16.pth`, `wan/modules/t5.py` T5Encoder): `token_embedding`,
`blocks.N.norm1`, `blocks.N.attn.{q,k,v,o}`, `blocks.N.norm2`, `blocks.N.ffn.gate.0` (the GELU
branch), `blocks.N.ffn.fc1` (the linear branch), `blocks.N.ffn.fc2`,
`blocks.N.pos_embedding.embedding` (num_buckets, num_heads), `norm`; all `.weight`.
Transformers layout (`UMT5EncoderModel`, or the encoder of `UMT5ForConditionalGeneration` /
`UMT5Model`, whose decoder is skipped): `shared` (or `encoder.embed_tokens`),
`encoder.block.N.layer.0.{layer_norm,SelfAttention.{q,k,v,o,relative_attention_bias}}`,
`encoder.block.N.layer.1.{layer_norm,DenseReluDense.{wi_0,wi_1,wo}}`, `encoder.final_layer_norm`.

Sizes come from the tensors; eps and max_distance from a transformers config.json if there is
one (Wan's file has none: 1e-6 and 128, as `umt5_xxl` hard-codes them).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from viewpoint_jax.convert import core
from viewpoint_jax.models import umt5 as umt5_lib
from viewpoint_jax.models import weights

LAYOUTS = ("wan (models_t5_umt5-xxl-enc-bf16.pth)", "transformers (UMT5EncoderModel)")
WAN, TRANSFORMERS = 0, 1

# Per-block names: our path -> (Wan key, transformers key), relative to the block prefix.
_BLOCK_WEIGHTS = {
    "attn_norm/scale": ("norm1", "layer.0.layer_norm"),
    "q/kernel": ("attn.q", "layer.0.SelfAttention.q"),
    "k/kernel": ("attn.k", "layer.0.SelfAttention.k"),
    "v/kernel": ("attn.v", "layer.0.SelfAttention.v"),
    "o/kernel": ("attn.o", "layer.0.SelfAttention.o"),
    "relative_bias": ("pos_embedding.embedding", "layer.0.SelfAttention.relative_attention_bias"),
    "ffn_norm/scale": ("norm2", "layer.1.layer_norm"),
    "ffn_gate/kernel": ("ffn.gate.0", "layer.1.DenseReluDense.wi_0"),
    "ffn_linear/kernel": ("ffn.fc1", "layer.1.DenseReluDense.wi_1"),
    "ffn_out/kernel": ("ffn.fc2", "layer.1.DenseReluDense.wo"),
}
_BLOCK_PREFIX = ("blocks.{}.", "encoder.block.{}.")
_FINAL_NORM = ("norm.weight", "encoder.final_layer_norm.weight")
_HF_EMBEDDINGS = ("shared.weight", "encoder.embed_tokens.weight")


def detect_layout(keys: Any) -> int:
    """WAN or TRANSFORMERS; ValueError naming both layouts otherwise."""
    keys = set(keys)
    if "token_embedding.weight" in keys:
        return WAN
    if keys & set(_HF_EMBEDDINGS):
        return TRANSFORMERS
    raise ValueError(
        "unknown umT5 checkpoint layout (none of 'token_embedding.weight', 'shared.weight', "
        f"'encoder.embed_tokens.weight' found); supported layouts: {', '.join(LAYOUTS)}"
    )


def _embedding_key(source: core.TensorSource, layout: int) -> str:
    if layout == WAN:
        return "token_embedding.weight"
    return next(k for k in _HF_EMBEDDINGS if k in source)


def config_from_source(source: core.TensorSource, layout: int) -> dict[str, Any]:
    """UMT5Config sizes read off the tensors (and eps / max_distance off a config.json)."""
    prefix = _BLOCK_PREFIX[layout]
    block_pattern = re.compile(re.escape(prefix).replace(r"\{\}", r"(\d+)"))
    indices = {int(m.group(1)) for k in source.keys() if (m := block_pattern.match(k))}
    if not indices:
        raise ValueError(f"{source.path}: no encoder blocks ({prefix.format('N')}*) found")
    vocab_size, d_model = source.shape(_embedding_key(source, layout))
    first = prefix.format(0)

    def shape(name: str) -> tuple[int, ...]:
        key = f"{first}{_BLOCK_WEIGHTS[name][layout]}.weight"
        if key not in source:
            raise core.ConversionError(
                "cannot infer the encoder's sizes", missing=[key], source=source.path
            )
        return source.shape(key)

    num_buckets, num_heads = shape("relative_bias")
    inner = shape("q/kernel")[0]
    if inner % num_heads:
        raise ValueError(
            f"{source.path}: attention width {inner} is not a multiple of the "
            f"{num_heads} heads of the relative position bias"
        )
    fields = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        num_heads=num_heads,
        d_kv=inner // num_heads,
        d_ff=shape("ffn_linear/kernel")[0],
        num_layers=max(indices) + 1,
        num_buckets=num_buckets,
    )
    cfg = source.config or {}
    if layout == TRANSFORMERS and cfg:
        if cfg.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
            raise ValueError(
                f"{source.path}: feed_forward_proj {cfg['feed_forward_proj']!r} is "
                "not umT5's 'gated-gelu'"
            )
        fields["eps"] = float(cfg.get("layer_norm_epsilon", 1e-6))
        fields["max_distance"] = int(cfg.get("relative_attention_max_distance", 128))
    return fields


def umt5_rules(
    config: umt5_lib.UMT5Config, layout: int, embedding_key: str
) -> list[core.TensorRule]:
    """All rules for one layout; stacked block params get `index` = block number."""
    d, inner, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
    shapes = {  # torch shapes
        "attn_norm/scale": (d,), "q/kernel": (inner, d), "k/kernel": (inner, d),
        "v/kernel": (inner, d), "o/kernel": (d, inner),
        "relative_bias": (config.num_buckets, config.num_heads), "ffn_norm/scale": (d,),
        "ffn_gate/kernel": (f, d), "ffn_linear/kernel": (f, d), "ffn_out/kernel": (d, f),
    }  # fmt: skip
    rules = [
        core.TensorRule(embedding_key, "token_embedding", source_shape=(config.vocab_size, d)),
        core.TensorRule(_FINAL_NORM[layout], "final_norm/scale", source_shape=(d,)),
    ]
    for i in range(config.num_layers):
        prefix = _BLOCK_PREFIX[layout].format(i)
        for path, names in _BLOCK_WEIGHTS.items():
            transform = core.linear_kernel if path.endswith("kernel") else core.identity
            rules.append(core.TensorRule(
                f"{prefix}{names[layout]}.weight", f"blocks/{path}", i, transform, shapes[path]
            ))  # fmt: skip
    return rules


def _ignored(layout: int, embedding_key: str):
    """Source keys that may be present without a rule."""

    def ignore(key: str) -> bool:
        if layout == WAN:
            return False
        # The tied copy of the embedding, and the decoder / LM head of a full seq2seq model.
        return (
            (key in _HF_EMBEDDINGS and key != embedding_key)
            or key.startswith("decoder.")
            or key == "lm_head.weight"
        )

    return ignore


def _t5_hint(error: core.ConversionError) -> core.ConversionError:
    """T5 (not umT5) keeps a relative bias only in layer 0: say so instead of just listing."""
    if error.missing and all(
        "relative_attention_bias" in k or "pos_embedding" in k for k in error.missing
    ):
        return core.ConversionError(
            "this looks like a T5 checkpoint (relative position bias only in the first layer); "
            "umT5 has one per layer",
            missing=error.missing, unexpected=error.unexpected, misshapen=error.misshapen,
        )  # fmt: skip
    return error


def convert_umt5(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> umt5_lib.UMT5Config:
    """Converts an umT5 encoder checkpoint (file or folder, Wan or transformers layout) into `dst`.

    Args:
      src: Wan's `models_t5_umt5-xxl-enc-bf16.pth`; a transformers model folder (safetensors,
        sharded or not, or pytorch_model.bin, with its config.json); or one such file.
      dst: output directory (written atomically): `config.json` + Orbax `params/`.
      dtype: stored parameter dtype ("float32" | "bfloat16"); None keeps the checkpoint's. The
        written config computes in that dtype too (`load_umt5(dst, dtype=...)` overrides it).
      overwrite: replace an existing `dst`.
    Returns:
      the written UMT5Config.
    Raises:
      ConversionError listing every missing / unexpected / misshapen tensor; ValueError for an
      unknown layout or dtype.
    """
    source = core.open_checkpoint(src)
    layout = detect_layout(source.keys())
    embedding_key = _embedding_key(source, layout)
    if dtype is None:
        # bf16 stays bf16 (Wan's release); anything else (fp16 has too little range) -> fp32.
        # (read off the small final norm; if it is missing, validation reports it below)
        norm_key = _FINAL_NORM[layout]
        stored = source.get(norm_key).dtype.name if norm_key in source else None
        dtype = "bfloat16" if stored == "bfloat16" else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    config = umt5_lib.UMT5Config(
        **config_from_source(source, layout), dtype=dtype, param_dtype=dtype
    )
    try:
        core.convert_checkpoint(
            source,
            umt5_rules(config, layout, embedding_key),
            weights.param_targets(umt5_lib.abstract_model(config), config.param_dtype),
            dst,
            ignore=_ignored(layout, embedding_key),
            extra_files={"config.json": json.dumps(config.to_dict(), indent=2)},
            overwrite=overwrite,
        )
    except core.ConversionError as e:
        raise _t5_hint(e) from None
    return config


__all__ = ["LAYOUTS", "convert_umt5", "detect_layout", "umt5_rules"]
