"""Flow-matching targets: the straight path, its velocity, the timestep samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from viewpoint_jax.diffusion import flow_matching as fm


def test_path_endpoints_and_velocity_integrate_exactly():
    x = jax.random.normal(jax.random.key(0), (3, 2, 4, 4, 5))
    noise = jax.random.normal(jax.random.key(1), x.shape)
    sigmas = jnp.array([0.0, 0.3, 1.0])
    x_s = fm.noisy_latents(x, noise, sigmas)
    np.testing.assert_allclose(x_s[0], x[0], atol=1e-6)
    np.testing.assert_allclose(x_s[2], noise[2], atol=1e-6)
    v = fm.velocity_target(x, noise)
    # d x_s / d s = e - x: a finite difference along the path gives the target.
    ds = 1e-2
    x_next = fm.noisy_latents(x, noise, sigmas + ds)
    np.testing.assert_allclose((x_next - x_s) / ds, v, rtol=1e-3, atol=1e-3)
    # The clean estimate from the exact velocity is the clean latent.
    np.testing.assert_allclose(fm.predicted_clean(x_s, v, sigmas), x, atol=1e-5)
    np.testing.assert_allclose(fm.timesteps(sigmas), [0.0, 300.0, 1000.0], rtol=1e-6)


def test_shift_matches_diffusers_flow_scheduler():
    # diffusers' training sigmas are Wan's shift of the uniform grid 1 .. 1/1000.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    base = np.linspace(1.0, 1 / 1000, 1000, dtype=np.float32)
    ours = fm.shift_sigmas(jnp.asarray(base), 5.0)
    np.testing.assert_allclose(ours, scheduler.sigmas.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fm.shift_sigmas(jnp.asarray(base), 1.0), base, rtol=1e-6)


@pytest.mark.parametrize("sampler", fm.SAMPLERS)
def test_samplers_are_in_range_and_deterministic(sampler):
    a = fm.sample_sigmas(jax.random.key(3), 4096, sampler, shift=3.0)
    b = fm.sample_sigmas(jax.random.key(3), 4096, sampler, shift=3.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4096,) and a.dtype == jnp.float32
    assert float(a.min()) > 0.0 and float(a.max()) < 1.0


def test_logit_normal_distribution():
    s = np.asarray(fm.sample_sigmas(jax.random.key(0), 20000, "logit_normal", 1.0, 0.5, 0.8))
    logits = np.log(s / (1 - s))
    assert abs(logits.mean() - 0.5) < 0.03 and abs(logits.std() - 0.8) < 0.03


def test_shifted_uniform_distribution():
    # With u uniform, P(shift(u) <= q) = shift^-1(q) = q / (k - (k - 1) q).
    k = 4.0
    s = np.asarray(fm.sample_sigmas(jax.random.key(1), 20000, "shifted_uniform", k))
    for q in (0.2, 0.5, 0.8):
        assert abs((s <= q).mean() - q / (k - (k - 1) * q)) < 0.015
    assert s.mean() > 0.6  # shifted towards noise


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match=r"timestep sampler.*'cosine'"):
        fm.sample_sigmas(jax.random.key(0), 2, "cosine")


def test_mse_loss_in_float32():
    a = jnp.ones((2, 3), jnp.bfloat16)
    assert fm.mse_loss(a, jnp.zeros((2, 3))).dtype == jnp.float32
    assert float(fm.mse_loss(a, jnp.zeros((2, 3)))) == 1.0


def test_clean_loss_is_the_velocity_error_weighted_by_the_squared_noise_level():
    kx, ke, kv, ks = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(kx, (4, 2, 3, 3, 5))
    noise = jax.random.normal(ke, x.shape)
    velocity = jax.random.normal(kv, x.shape)
    sigmas = jax.random.uniform(ks, (4,))
    error = velocity - fm.velocity_target(x, noise)
    weighted = jnp.mean(jnp.square(error) * sigmas[:, None, None, None, None] ** 2)
    clean = fm.flow_matching_loss(velocity, x, noise, sigmas, fm.Loss.CLEAN)
    np.testing.assert_allclose(clean, weighted, rtol=1e-5)
    np.testing.assert_allclose(
        fm.flow_matching_loss(velocity, x, noise, sigmas), jnp.mean(jnp.square(error)), rtol=1e-6
    )
    # The exact velocity scores zero either way; the clean loss ignores s = 0 entirely.
    exact = fm.velocity_target(x, noise)
    for loss in fm.Loss:
        assert float(fm.flow_matching_loss(exact, x, noise, sigmas, loss)) < 1e-10
    at_zero = fm.flow_matching_loss(velocity, x, noise, jnp.zeros(4), "clean")
    assert float(at_zero) == 0.0
