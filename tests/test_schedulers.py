"""Flow schedulers vs diffusers (the schedulers Wan's diffusers pipeline uses), step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from viewpoint_jax.diffusion import schedulers


def random_velocity_model(seed: int):
    """A nonlinear stand-in for the DiT: v = tanh(x W + t u) + 0.3 x (numpy, float32)."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(8, 8)) / 3).astype(np.float32)
    u = rng.normal(size=8).astype(np.float32)
    return lambda x, t: (np.tanh(x @ w + np.float32(t / 1000) * u) + 0.3 * x).astype(np.float32)


def run_both(reference, schedule, model, x):
    """Steps the reference and our schedule side by side; returns per-step max differences."""
    x_ref = torch.from_numpy(x.copy())
    state = schedule.init(jnp.asarray(x))
    step = jax.jit(schedule.step)
    errors = []
    for i, t in enumerate(reference.timesteps):
        x_ref = reference.step(torch.from_numpy(model(x_ref.numpy(), float(t))), t, x_ref)[0]
        velocity = model(np.asarray(state.x), float(schedule.timesteps[i]))
        state = step(i, state, jnp.asarray(velocity))
        errors.append(float(np.abs(np.asarray(state.x) - x_ref.numpy()).max()))
    return errors, x_ref.numpy()


@pytest.mark.parametrize("num_steps,shift", [(1, 5.0), (2, 3.0), (3, 5.0), (10, 3.0), (40, 5.0)])
def test_unipc_matches_diffusers(num_steps, shift):
    # Wan2.1's diffusers scheduler config: UniPC bh2, order 2, flow sigmas, flow prediction.
    reference = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        solver_order=2,
        solver_type="bh2",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    reference.set_timesteps(num_steps)
    schedule = schedulers.make_schedule("unipc", num_steps, shift)
    np.testing.assert_allclose(schedule.sigmas, reference.sigmas.numpy(), rtol=0, atol=0)
    np.testing.assert_array_equal(schedule.timesteps, reference.timesteps.numpy())
    x = np.random.default_rng(num_steps).normal(size=(2, 4, 8)).astype(np.float32)
    errors, final = run_both(reference, schedule, random_velocity_model(num_steps), x)
    assert max(errors) <= 1e-5, errors
    assert np.abs(final).max() > 0.5  # the comparison is not between vanishing numbers


@pytest.mark.parametrize("num_steps,shift", [(1, 3.0), (4, 5.0), (25, 3.0)])
def test_euler_matches_diffusers(num_steps, shift):
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # Same unshifted base sigmas as Wan's UniPC schedule; the reference applies the shift.
    reference.set_timesteps(sigmas=np.linspace(1.0, 1e-3, num_steps + 1)[:-1])
    schedule = schedulers.make_schedule("euler", num_steps, shift)
    np.testing.assert_allclose(schedule.sigmas, reference.sigmas.numpy(), rtol=1e-6)
    np.testing.assert_allclose(schedule.timesteps, reference.timesteps.numpy(), rtol=1e-6)
    x = np.random.default_rng(num_steps).normal(size=(2, 4, 8)).astype(np.float32)
    errors, _ = run_both(reference, schedule, random_velocity_model(100 + num_steps), x)
    assert max(errors) <= 1e-5, errors


def test_shift_spends_steps_at_high_noise():
    sigmas = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(schedulers.shift_sigmas(sigmas, 1.0), sigmas)
    shifted = schedulers.shift_sigmas(sigmas, 5.0)
    np.testing.assert_allclose(shifted[[0, -1]], [0.0, 1.0])
    np.testing.assert_allclose(shifted[5], 5 * 0.5 / (1 + 4 * 0.5))
    assert np.all(shifted[1:-1] > sigmas[1:-1]) and np.all(np.diff(shifted) > 0)


@pytest.mark.parametrize("name", schedulers.SCHEDULERS)
def test_exact_velocity_recovers_the_data(name):
    """On a straight flow x_s = (1 - s) x0 + s e the true velocity is e - x0 at every s; both
    solvers are exact on it and must land on x0."""
    rng = np.random.default_rng(0)
    x0, noise = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    schedule = schedulers.make_schedule(name, 7, 3.0)
    state = schedule.init(jnp.asarray(noise, jnp.float32))
    for i in range(schedule.num_steps):
        state = schedule.step(i, state, jnp.asarray(noise - x0, jnp.float32))
    np.testing.assert_allclose(state.x, x0, atol=2e-5)


def test_schedule_steps_inside_fori_loop_match_python_loop():
    schedule = schedulers.make_schedule("unipc", 6, 5.0)
    model = random_velocity_model(3)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 8)), jnp.float32)

    def velocity(x, t):
        host_model = lambda x, t: model(np.asarray(x), float(t))
        return jax.pure_callback(host_model, jax.ShapeDtypeStruct(x.shape, x.dtype), x, t)

    def body(i, state):
        return schedule.step(i, state, velocity(state.x, schedule.timesteps[i]))

    looped = jax.jit(lambda s: jax.lax.fori_loop(0, 6, body, s))(schedule.init(x)).x
    state = schedule.init(x)
    for i in range(6):
        state = body(i, state)
    np.testing.assert_allclose(looped, state.x, atol=1e-6)


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match="unknown scheduler 'ddim'"):
        schedulers.make_schedule("ddim", 10, 5.0)
    with pytest.raises(ValueError, match="num_steps"):
        schedulers.make_schedule("unipc", 0, 5.0)
    with pytest.raises(ValueError, match="shift"):
        schedulers.make_schedule("euler", 10, -1.0)
