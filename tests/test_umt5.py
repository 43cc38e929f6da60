"""The umT5 encoder: relative position buckets, masking, precision, presets, input checks.

Parity of the whole encoder with transformers' UMT5EncoderModel is in test_convert_umt5.py
(through the converter, from both checkpoint layouts).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import UMT5Config as HFConfig
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from viewpoint_jax.models import umt5

_forward = jax.jit(lambda encoder, ids, mask: encoder(ids, mask))


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (32, 20), (16, 64), (64, 300)])
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
    # Distances up to 599 cover the exact, logarithmic and clamped ranges and the float
    # boundary distances (16, 32, 64 for the default 32 / 128).
    config = HFConfig(
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=max_distance,
        d_model=8,
        d_kv=2,
        num_heads=4,
    )
    attention = UMT5Attention(config, has_relative_attention_bias=True)
    length = 600
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    expected = attention._relative_position_bucket(relative).numpy()
    got = umt5.relative_position_buckets(length, length, num_buckets, max_distance)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32 and got.max() == num_buckets - 1


@pytest.fixture(scope="module")
def encoder():
    # Built once: eager NNX initialisation compiles one small program per parameter shape.
    return umt5.UMT5Encoder(umt5.UMT5Config.tiny(), rngs=nnx.Rngs(0))


def _with_config(encoder, **overrides):
    """The same parameters under another config (e.g. compute dtype), without re-initialising."""
    config = dataclasses.replace(encoder.config, **overrides)
    graphdef, _ = nnx.split(umt5.abstract_model(config))
    return nnx.merge(graphdef, nnx.state(encoder))


def test_padding_never_reaches_real_tokens(encoder):
    """Real tokens' states depend only on the real tokens: not on the pad ids, nor on how far
    the sequence is padded (relative positions, masked keys)."""
    rng = np.random.default_rng(0)
    n = 150  # past max_distance = 128
    ids = rng.integers(0, 512, (1, 200))
    mask = (np.arange(200) < n)[None].astype(np.int32)
    base = np.asarray(_forward(encoder, jnp.asarray(ids), jnp.asarray(mask)))[0, :n]
    other_pads = np.where(mask > 0, ids, rng.integers(0, 512, ids.shape))
    moved = np.asarray(_forward(encoder, jnp.asarray(other_pads), jnp.asarray(mask)))[0, :n]
    np.testing.assert_allclose(moved, base, atol=1e-5, rtol=1e-5)
    short = np.asarray(_forward(encoder, jnp.asarray(ids[:, :n]), jnp.ones((1, n), jnp.int32)))
    np.testing.assert_allclose(short[0], base, atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_close_to_float32(encoder):
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 512, (2, 64)))
    mask = jnp.ones((2, 64), jnp.int32)
    fp32 = np.asarray(_forward(encoder, ids, mask))
    encoder_bf16 = _with_config(encoder, dtype="bfloat16")
    bf16 = np.asarray(_forward(encoder_bf16, ids, mask))
    assert bf16.dtype == np.float32  # the residual stream and output stay fp32
    # Outputs are O(1) after the final RMS norm; bf16 matmuls move them by ~1e-2.
    assert np.abs(bf16 - fp32).max() < 0.1
    assert np.abs(bf16 - fp32).mean() < 0.02
    assert np.abs(bf16 - fp32).max() > 0  # the bf16 path was really taken


def test_umt5_xxl_preset_has_wans_shapes():
    config = umt5.UMT5Config.umt5_xxl()
    params = nnx.state(umt5.abstract_model(config), nnx.Param)
    shapes = {
        "/".join(str(k.key) for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params))
    }
    assert shapes["token_embedding"] == (256384, 4096)
    assert shapes["blocks/q/kernel"] == (24, 4096, 4096)
    assert shapes["blocks/relative_bias"] == (24, 32, 64)
    assert shapes["blocks/ffn_gate/kernel"] == (24, 4096, 10240)
    assert shapes["blocks/ffn_out/kernel"] == (24, 10240, 4096)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert total == 5_680_910_336  # umt5-xxl's encoder: 5.68 B parameters
    assert config.dtype == config.param_dtype == "bfloat16"


def test_config_round_trip_and_errors():
    config = umt5.UMT5Config.tiny(num_layers=3)
    assert umt5.UMT5Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown UMT5Config fields.*'heads'"):
        umt5.UMT5Config.from_dict({**config.to_dict(), "heads": 2})
    with pytest.raises(ValueError, match="num_buckets"):
        umt5.UMT5Config.tiny(num_buckets=7)
    with pytest.raises(ValueError, match="d_ff"):
        umt5.UMT5Config.tiny(d_ff=0)


def test_bad_inputs(encoder):
    with pytest.raises(ValueError, match="ids must be"):
        encoder(jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="mask shape"):
        encoder(jnp.zeros((2, 8), jnp.int32), jnp.ones((2, 9), jnp.int32))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        umt5.load_umt5("/nonexistent/umt5")
