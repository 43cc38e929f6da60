"""Attention backends: the XLA reference against jax.nn and numpy; the splash kernel (run by the
Pallas interpreter on CPU) against the XLA reference, alone and under a mesh of 8 simulated
devices; clear errors off-platform."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viewpoint_jax.common import sharding
from viewpoint_jax.models import attention

# Unit roundoff of bfloat16 (8 significant bits): rounding to nearest moves x by at most 2^-8 |x|.
BF16_U = 2.0**-8


def _qkv(lq=7, lk=5, heads=3, dim=8, dtype=np.float32, batch=2):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, lq, heads, dim))
    k = rng.standard_normal((batch, lk, heads, dim))
    v = rng.standard_normal((batch, lk, heads, dim))
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
    # Under a mesh the platform is the mesh's: CPU devices refuse too (a mesh of a TPU
    # topology's devices compiles it: tests/test_tpu_compile.py).
    mesh = sharding.make_mesh({"fsdp": 2}, jax.devices()[:2])
    with sharding.use_mesh(mesh), pytest.raises(ValueError, match="runs on 'cpu'"):
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


def _splash_interpret(q, k, v):
    return attention._splash_attention(q, k, v, interpret=True)


_xla_attention = functools.partial(attention.dot_product_attention, backend="xla")


def test_splash_tiling_fits_kernel_and_viewpoint_lengths():
    for length in (7, 77, 128, 200, 512, 1000, 5200, 20800):
        padded, block = attention._splash_tiling(length)
        # The kernel needs blocks that divide the (padded) sequence and fill the 128 TPU lanes.
        assert padded % block == 0 and block % 128 == 0
        assert length <= padded < length + block
        assert block == 128 or padded - length <= length / 16
    # The pano map (13*40*40 tokens) gets 512-token tiles for 0.9% padding; a perspective
    # subregion (13*20*20) 256-token tiles for 3.4%.
    assert attention._splash_tiling(20800) == (20992, 512)
    assert attention._splash_tiling(5200) == (5376, 256)


@pytest.mark.parametrize("lq,lk", [(256, 256), (200, 77)])
def test_splash_interpret_matches_xla(lq, lk):
    """(256, 256) tiles exactly; (200, 77) pads q to 256 and kv to 128 (masked by segment ids).

    The inputs are bf16 and D = 64 makes the 1/sqrt(D) = 1/8 scaling exact, and the kernel's
    matmuls accumulate in fp32 (exactly so on CPU), so its one rounding is its bf16 output:
    |out - ref| <= 2^-8 |ref|, plus fp32 summation-order noise (atol).
    """
    q, k, v = _qkv(lq, lk, heads=2, dim=64, dtype=jnp.bfloat16)
    out = jax.jit(_splash_interpret)(q, k, v)
    assert out.shape == q.shape and out.dtype == jnp.bfloat16
    ref = attention.dot_product_attention(
        *(x.astype(jnp.float32) for x in (q, k, v)), backend="xla"
    )
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=BF16_U, atol=1e-5)


def test_splash_interpret_gradients_match_xla():
    """Gradients through the kernel's custom VJP, with padded q and kv (200 -> 256, 77 -> 128).

    The loss sum(out * w) with bf16-exact w keeps the cotangent exact. The backward kernels round
    to bf16 (unit roundoff u) the output o (which enters di = sum_d o do), ds = p (dp - di) and p
    before their matmuls, and the gradients themselves. To first order, per element:
        |d dq| <= u (c e |k| + |dq|),  |d dk| <= u (c e^T |q| + |dk|),  |d dv| <= u (p^T |do| + |dv|)
    with e = |ds| + p sum_d |o do| and c = 1/sqrt(D); the bound below is that, from float64.
    """
    q, k, v = _qkv(200, 77, heads=2, dim=64, dtype=jnp.bfloat16)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.bfloat16)
    out = _grads(_splash_interpret, w, q, k, v)
    ref = _grads(_xla_attention, w, *(x.astype(jnp.float32) for x in (q, k, v)))
    _assert_grads_within_rounding(out, ref, q, k, v, w)


def _grads(attend, w, q, k, v):
    loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * w)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _assert_grads_within_rounding(grads, grads_ref, q, k, v, w):
    bounds = _attention_grad_rounding_bounds(q, k, v, w)
    for name, g, g_ref, bound in zip("qkv", grads, grads_ref, bounds):
        assert g.dtype == jnp.bfloat16, name
        err = np.abs(np.asarray(g, np.float64) - np.asarray(g_ref, np.float64))
        excess = err - BF16_U * (bound + np.abs(g_ref)) * 1.01 - 1e-5
        assert excess.max() <= 0, (name, err.max(), np.abs(g_ref).max())


def _attention_grad_rounding_bounds(q, k, v, do):
    """Per-element sums of magnitudes whose bf16 rounding the backward pass incurs (docstring of
    test_splash_interpret_gradients_match_xla), in float64. Shapes as the gradients."""
    q, k, v, do = (np.asarray(a, np.float64) for a in (q, k, v, do))
    scale = q.shape[-1] ** -0.5
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p, v)
    dp = np.einsum("bqhd,bkhd->bhqk", do, v)
    ds = p * (dp - np.einsum("bqhd,bqhd->bhq", o, do)[..., None])
    e = np.abs(ds) + p * np.einsum("bqhd,bqhd->bhq", np.abs(o), np.abs(do))[..., None]
    return (
        scale * np.einsum("bhqk,bkhd->bqhd", e, np.abs(k)),
        scale * np.einsum("bhqk,bqhd->bkhd", e, np.abs(q)),
        np.einsum("bhqk,bqhd->bkhd", p, np.abs(do)),
    )


@pytest.mark.parametrize("length", [20800, 5200])  # ViewPoint's pano map and one subregion
def test_splash_traces_at_viewpoint_lengths_and_caches_its_kernel(length):
    """The kernel accepts Wan's head size (128) at ViewPoint's token counts, forward and backward;
    the second trace reuses the kernel the first one built, which holds no tracer of that trace."""
    attention._splash_kernel.cache_clear()
    x = jax.ShapeDtypeStruct((1, length, 12, 128), jnp.bfloat16)
    loss = lambda q, k, v: _splash_interpret(q, k, v).astype(jnp.float32).sum()
    with jax.checking_leaks():
        out = jax.eval_shape(_splash_interpret, x, x, x)
        grads = jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), x, x, x)
    assert out == x and grads == (x, x, x)
    assert attention._splash_kernel.cache_info().hits == 1


# Activations as `dit.Attention` constrains them around the attention call.
_HEADS_AXES = ("batch", "length", "act_heads", None)
_COLLECTIVE = re.compile(r"all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter")


def _put(mesh, *arrays):
    return [jax.device_put(x, sharding.named_sharding(mesh, _HEADS_AXES, x.shape)) for x in arrays]


def test_splash_under_batch_and_head_mesh_runs_per_shard_without_collectives():
    """Under `use_mesh`, each device runs the kernel on its examples and heads: on inputs already
    sharded over (data, fsdp) x tensor the compiled program moves no data (the kernel alone, a
    custom call XLA cannot partition, would be all-gathered). Tolerance as in
    test_splash_interpret_matches_xla."""
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    q, k, v = _put(mesh, *_qkv(200, 77, heads=2, dim=64, dtype=jnp.bfloat16, batch=4))
    with sharding.use_mesh(mesh):
        compiled = jax.jit(_splash_interpret).lower(q, k, v).compile()
    assert not _COLLECTIVE.findall(compiled.as_text())
    out = compiled(q, k, v)
    assert out.sharding.is_equivalent_to(q.sharding, q.ndim)
    ref = _xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)))
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=BF16_U, atol=1e-5)


def test_splash_under_sequence_mesh_gathers_keys_and_gradients_match_xla():
    """With tokens sharded over "sequence", queries stay sharded and keys/values are gathered
    (every query attends to all of them); in the backward pass each query shard's partial key and
    value gradients must be summed over the sequence axis. Bounds as in
    test_splash_interpret_gradients_match_xla."""
    mesh = sharding.make_mesh(dict(data=2, sequence=2, tensor=2))
    q, k, v = _put(mesh, *_qkv(200, 154, heads=2, dim=64, dtype=jnp.bfloat16))
    assert k.sharding.spec[1] == "sequence"
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.bfloat16)
    with sharding.use_mesh(mesh):
        compiled = jax.jit(_splash_interpret).lower(q, k, v).compile()
        grads = _grads(_splash_interpret, w, q, k, v)
    assert set(_COLLECTIVE.findall(compiled.as_text())) == {"all-gather"}
    out = compiled(q, k, v)
    assert out.sharding.is_equivalent_to(q.sharding, q.ndim)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    np.testing.assert_allclose(
        np.asarray(out, np.float32), _xla_attention(*f32), rtol=BF16_U, atol=1e-5
    )
    _assert_grads_within_rounding(grads, _grads(_xla_attention, w, *f32), q, k, v, w)
