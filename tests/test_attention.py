"""Attention backends: the XLA reference against jax.nn and numpy; clear errors off-platform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viewpoint_jax.models import attention


def _qkv(lq=7, lk=5, heads=3, dim=8, dtype=np.float32):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, lq, heads, dim))
    k = rng.standard_normal((2, lk, heads, dim))
    v = rng.standard_normal((2, lk, heads, dim))
    return [jnp.asarray(a, dtype) for a in (q, k, v)]


def _numpy_attention(q, k, v):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def test_xla_matches_numpy_and_jax_nn():
    q, k, v = _qkv()
    out = attention.dot_product_attention(q, k, v, backend="xla")
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _numpy_attention(q, k, v), atol=1e-6)
    np.testing.assert_allclose(
        out, jax.nn.dot_product_attention(q, k, v, implementation="xla"), atol=1e-6
    )


def test_xla_bfloat16_keeps_dtype_and_accuracy():
    q, k, v = _qkv(dtype=jnp.bfloat16)
    out = attention.dot_product_attention(q, k, v, backend="xla")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _numpy_attention(q, k, v), atol=3e-2)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the error off-GPU")
def test_cudnn_off_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        attention.dot_product_attention(*_qkv(), backend="cudnn")


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="checks the error off-TPU")
def test_splash_off_tpu_is_a_clear_error():
    with pytest.raises(ValueError, match="Pallas TPU kernel"):
        attention.dot_product_attention(*_qkv(), backend="splash")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention.dot_product_attention(*_qkv(), backend="flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_cudnn_matches_xla_on_gpu():
    q, k, v = _qkv(lq=256, lk=256, heads=4, dim=64, dtype=jnp.bfloat16)
    ref = attention.dot_product_attention(q, k, v, backend="xla")
    out = attention.dot_product_attention(q, k, v, backend="cudnn")
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2)
