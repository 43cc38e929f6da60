"""Rectified-flow training targets (Wan2.1 / SD3 flow matching).

A clean latent x and Gaussian noise e are joined on the straight line
    x_s = (1 - s) x + s e,            s in [0, 1] (s = 0 clean, s = 1 pure noise)
whose velocity d x_s / d s = e - x is what the model learns to predict, at timestep t = 1000 s.
Integrating the velocity from s = 1 to 0 (the samplers in schedulers.py) maps noise to data.

The noise level s is drawn per example by one of two samplers:
  logit_normal     s = sigmoid(m + sd * n), n ~ N(0, 1) (SD3): most weight on mid-range levels.
  shifted_uniform  s = shift(u), u ~ U(0, 1): Wan's training/sampling shift
                   shift(u) = k u / (1 + (k - 1) u); k > 1 moves the mass towards noise,
                   which large latents (many tokens) need to destroy their content.
Both apply the shift k (1 = none), so the two samplers differ only in the base distribution.

The loss (`Loss`) compares either the velocity itself (Wan) or the clean latent it implies.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

from viewpoint_jax.models.dit import NUM_TRAIN_TIMESTEPS

SAMPLERS = ("logit_normal", "shifted_uniform")


class Loss(enum.StrEnum):
    """What the training loss compares (`config.diffusion.loss`).

    VELOCITY: the predicted velocity with e - x (Wan, SD3). In clean-latent terms an error at
    noise level s counts 1 / s^2: nearly clean inputs, where the answer is the input itself,
    dominate.
    CLEAN: the clean latent the prediction implies, x_s - s v, with x: the same error weighted
    by s^2, so each level counts the error it leaves in the image. Outpainting is decided at
    high noise levels (far from the condition nothing of x is left in x_s): a tiny DiT trained
    from scratch with it outpaints the demo's held-out clips better (BENCHMARKS.md, "What the
    bar asks").
    """

    VELOCITY = "velocity"
    CLEAN = "clean"

    @property
    def description(self) -> str:
        """What the MSE compares, for plots and READMEs."""
        return {Loss.VELOCITY: "velocity MSE", Loss.CLEAN: "clean-latent MSE"}[self]


def shift_sigmas(sigmas: jax.Array, shift: float) -> jax.Array:
    """s -> k s / (1 + (k - 1) s): the monotone map of [0, 1] onto itself Wan calls the flow shift."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sample_sigmas(
    rng: jax.Array,
    batch: int,
    sampler: str = "logit_normal",
    shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jax.Array:
    """Noise levels `(batch,)` float32 in (0, 1) from `sampler` (see the module docstring)."""
    if sampler == "logit_normal":
        base = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,)))
    elif sampler == "shifted_uniform":
        base = jax.random.uniform(rng, (batch,))
    else:
        raise ValueError(f"timestep sampler must be one of {SAMPLERS}, got {sampler!r}")
    return shift_sigmas(base.astype(jnp.float32), shift)


def _per_example(sigmas: jax.Array, like: jax.Array) -> jax.Array:
    return sigmas.reshape(sigmas.shape + (1,) * (like.ndim - sigmas.ndim)).astype(like.dtype)


def noisy_latents(x: jax.Array, noise: jax.Array, sigmas: jax.Array) -> jax.Array:
    """x_s = (1 - s) x + s e, for x, noise `(B, ...)` and sigmas `(B,)`."""
    s = _per_example(sigmas, x)
    return (1.0 - s) * x + s * noise


def velocity_target(x: jax.Array, noise: jax.Array) -> jax.Array:
    """The velocity the model predicts: e - x (the same for every s on the line)."""
    return noise - x


def timesteps(sigmas: jax.Array) -> jax.Array:
    """The model's timestep input t = 1000 s."""
    return NUM_TRAIN_TIMESTEPS * sigmas


def predicted_clean(x_s: jax.Array, velocity: jax.Array, sigmas: jax.Array) -> jax.Array:
    """The clean latent a velocity prediction implies: x = x_s - s v (exact for v = e - x)."""
    return x_s - _per_example(sigmas, x_s) * velocity


def mse_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over all elements, in float32."""
    return jnp.mean(jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)))


def flow_matching_loss(
    velocity: jax.Array,
    x: jax.Array,
    noise: jax.Array,
    sigmas: jax.Array,
    loss: Loss = Loss.VELOCITY,
) -> jax.Array:
    """The training loss of a predicted `velocity` for clean latents `x`, `noise` (both
    `(B, ...)`) at noise levels `sigmas` `(B,)`: the mean squared error of the velocity
    (`Loss.VELOCITY`) or of the clean latent it implies (`Loss.CLEAN`), in float32."""
    if Loss(loss) == Loss.CLEAN:
        return mse_loss(predicted_clean(noisy_latents(x, noise, sigmas), velocity, sigmas), x)
    return mse_loss(velocity, velocity_target(x, noise))
