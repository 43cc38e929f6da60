"""The optimizer of config.optim: the learning-rate schedule and where weight decay applies."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training.optim import make_optimizer


def _optim(**overrides) -> ml_collections.ConfigDict:
    optim = config_lib.base_config().optim
    optim.update(overrides)
    return optim


def test_warmup_is_linear_then_constant():
    _, schedule = make_optimizer(_optim(lr=1e-3, warmup_steps=10), num_steps=100)
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 5, 10, 50, 99)], [0.0, 5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6
    )


def test_cosine_decays_to_zero_at_the_last_step():
    _, schedule = make_optimizer(_optim(lr=1e-3, warmup_steps=10, schedule="cosine"), num_steps=110)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(5e-4, rel=1e-5)  # half way down the cosine
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_applies_to_matrices_only():
    tx, _ = make_optimizer(_optim(lr=0.1, warmup_steps=0, weight_decay=0.5), num_steps=10)
    params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))}
    zeros = {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros((3,))}
    updates, _ = tx.update(zeros, tx.init(params), params)
    # Zero gradients: only the decoupled decay moves a weight, lr * decay * w = 0.05.
    np.testing.assert_allclose(updates["kernel"], -0.05 * np.ones((2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], np.zeros(3))


def test_gradients_are_clipped_to_the_global_norm():
    # With eps = 1 Adam's first update is -lr g / (|g| + 1): it shows the gradient's scale.
    def first_update(grad_clip):
        optim = _optim(lr=1.0, warmup_steps=0, eps=1.0, grad_clip=grad_clip)
        tx, _ = make_optimizer(optim, num_steps=10)
        params, grads = {"kernel": jnp.zeros((2, 2))}, {"kernel": jnp.full((2, 2), 3.0)}
        updates, _ = tx.update(grads, tx.init(params), params)
        return np.asarray(updates["kernel"])

    # Global norm 6 clipped to 1: each entry 0.5 -> -0.5 / 1.5; unclipped -3 / 4.
    np.testing.assert_allclose(first_update(1.0), np.full((2, 2), -1 / 3), rtol=1e-5)
    np.testing.assert_allclose(first_update(0.0), np.full((2, 2), -0.75), rtol=1e-5)
