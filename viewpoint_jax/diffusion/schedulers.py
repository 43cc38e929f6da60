"""Flow-matching samplers: Euler and UniPC (bh2, order 2) on Wan's shifted sigma schedule.

A schedule is a small pytree of arrays (sigmas, model timesteps and, for UniPC, per-step
coefficients), so the whole denoising loop can run inside one `lax.fori_loop`: step `i` reads row
`i` of the tables with a traced index. The schedule's *kind* (its Python type) is part of the
treedef, so switching kind recompiles while changing the shift or the sigmas does not.

Conventions (flow matching, as Wan trains): `x_s = (1 - s) x_0 + s noise`, the model predicts the
velocity `v = noise - x_0` at timestep `t = 1000 s`, so `x_0 = x_s - s v`.

UniPC with a fixed schedule is a linear multistep method: every update is a linear combination of
the current sample and the last few predicted clean latents, with weights that depend only on the
sigmas. We compute those weights once on the host in float64 (from the float32 sigmas the
reference scheduler uses) instead of re-deriving logs and exponentials on device every step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from viewpoint_jax.models.dit import NUM_TRAIN_TIMESTEPS

SCHEDULERS = ("unipc", "euler")


def shift_sigmas(sigmas: Any, shift: float) -> Any:
    """Wan's timestep shift `s' = shift s / (1 + (shift - 1) s)`; shift > 1 spends more steps at
    high noise. Works on numpy and jax arrays alike."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """The `num_steps` shifted noise levels of a sampling run, float64 `(num_steps,)`, descending.

    Evenly spaced from 1 down to (but excluding) `1 / num_train_timesteps`, then shifted: the
    schedule of diffusers' Wan pipeline (`use_flow_sigmas=True`, `flow_shift=shift`).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    base = np.linspace(1.0, 1.0 / num_train_timesteps, num_steps + 1)[:-1]
    return shift_sigmas(base, float(shift))


class EulerState(NamedTuple):
    x: jax.Array  # the current sample


@struct.dataclass
class EulerSchedule:
    """First-order flow-matching Euler: `x_{i+1} = x_i + (s_{i+1} - s_i) v_i`.

    sigmas: `(N + 1,)` float32, the last is 0. timesteps: `(N,)` float32 model timesteps `1000 s`.
    """

    sigmas: jax.Array
    timesteps: jax.Array

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    def init(self, x: jax.Array) -> EulerState:
        return EulerState(x=x)

    def step(self, i: jax.Array | int, state: EulerState, velocity: jax.Array) -> EulerState:
        dt = self.sigmas[i + 1] - self.sigmas[i]
        x = state.x.astype(jnp.float32) + dt * velocity.astype(jnp.float32)
        return EulerState(x=x.astype(state.x.dtype))


class UniPCState(NamedTuple):
    x: jax.Array  # the current sample (before this step's corrector)
    last_sample: jax.Array  # the sample the previous predictor started from
    x0_prev: jax.Array  # predicted clean latent of the previous step
    x0_prev2: jax.Array  # ... and of the step before it


@struct.dataclass
class UniPCSchedule:
    """UniPC multistep (predictor UniP + corrector UniC), B(h) = e^h - 1 (bh2), order 2,
    predicting x_0, lower order at the first and the last step: Wan's sampler.

    sigmas: `(N + 1,)` float32, the last is 0. timesteps: `(N,)` the integer timesteps the model
    sees (Wan truncates `1000 s`), stored as float32. corrector `(N, 5)` and predictor `(N, 3)`:
    per-step weights, see `_unipc_coefficients`.
    """

    sigmas: jax.Array
    timesteps: jax.Array
    corrector: jax.Array  # (N, 5): sample, last_sample, x0, x0_prev, x0_prev2
    predictor: jax.Array  # (N, 3): corrected sample, x0, x0_prev

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    def init(self, x: jax.Array) -> UniPCState:
        zeros = jnp.zeros_like(x)
        return UniPCState(x=x, last_sample=zeros, x0_prev=zeros, x0_prev2=zeros)

    def step(self, i: jax.Array | int, state: UniPCState, velocity: jax.Array) -> UniPCState:
        f32 = jnp.float32
        x = state.x.astype(f32)
        x0 = x - self.sigmas[i] * velocity.astype(f32)
        c = self.corrector[i]
        # Step 0 has no history: its corrector row is (1, 0, 0, 0, 0), which keeps the sample.
        corrected = (c[0] * x + c[1] * state.last_sample + c[2] * x0 + c[3] * state.x0_prev) + c[
            4
        ] * state.x0_prev2
        p = self.predictor[i]
        x_next = p[0] * corrected + p[1] * x0 + p[2] * state.x0_prev
        return UniPCState(
            x=x_next.astype(state.x.dtype),
            last_sample=corrected,
            x0_prev=x0,
            x0_prev2=state.x0_prev,
        )


Schedule = EulerSchedule | UniPCSchedule


def _lambda(sigma: float) -> float:
    """Half log-SNR of flow matching, log(alpha / sigma) with alpha = 1 - sigma (+inf at 0)."""
    return math.inf if sigma == 0 else math.log(1.0 - sigma) - math.log(sigma)


def _unipc_coefficients(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step weights of UniPC-bh2 (order 2, x0-prediction, lower order final) for flow sigmas.

    Row i of `corrector` (UniC, order of the previous predictor) maps (x_i, last_sample, x0_i,
    x0_{i-1}, x0_{i-2}) to the corrected x_i; row i of `predictor` (UniP) maps (corrected x_i,
    x0_i, x0_{i-1}) to x_{i+1}. Derivation: UniPC (Zhao et al. 2023), Alg. with B(h) = e^h - 1.
    """
    num_steps = len(sigmas) - 1
    lam = [_lambda(float(s)) for s in sigmas]
    orders = [min(2, num_steps - i, i + 1) for i in range(num_steps)]
    predictor = np.zeros((num_steps, 3))
    corrector = np.zeros((num_steps, 5))
    corrector[0, 0] = 1.0
    for i in range(num_steps):
        # Predictor from sigma_i to sigma_{i+1} with history x0_i (m0) and x0_{i-1} (m1).
        s0, st = float(sigmas[i]), float(sigmas[i + 1])
        alpha_t = 1.0 - st
        h = lam[i + 1] - lam[i]
        h_phi_1 = -1.0 if math.isinf(h) else math.expm1(-h)  # e^{-h} - 1
        b_h = h_phi_1  # bh2
        predictor[i, 0] = st / s0
        predictor[i, 1] = -alpha_t * h_phi_1
        if orders[i] == 2:
            rk = (lam[i - 1] - lam[i]) / h
            # x -= alpha_t B(h) * 0.5 * (m1 - m0) / rk
            predictor[i, 1] += alpha_t * b_h * 0.5 / rk
            predictor[i, 2] = -alpha_t * b_h * 0.5 / rk
        if i == 0:
            continue
        # Corrector at step i refines the previous predictor's jump sigma_{i-1} -> sigma_i using the
        # new x0_i; its order is that predictor's order.
        order = orders[i - 1]
        s0, st = float(sigmas[i - 1]), float(sigmas[i])
        alpha_t = 1.0 - st
        h = lam[i] - lam[i - 1]
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1
        base_x, base_m0 = st / s0, -alpha_t * h_phi_1  # x_t_ = base_x last_sample + base_m0 m0
        if order == 1:
            rho_t, rho_1, rk = 0.5, 0.0, 1.0
        else:
            h_phi_k = h_phi_1 / hh - 1.0
            b1 = h_phi_k / b_h
            h_phi_k = h_phi_k / hh - 0.5
            b2 = h_phi_k * 2.0 / b_h
            rk = (lam[i - 2] - lam[i - 1]) / h
            # Solve [[1, 1], [rk, 1]] (rho_1, rho_t) = (b1, b2).
            rho_1 = (b1 - b2) / (1.0 - rk)
            rho_t = b1 - rho_1
        # x_corr = x_t_ - alpha_t B(h) (rho_1 (m1 - m0) / rk + rho_t (x0_i - m0)),
        # with m0 = x0_{i-1}, m1 = x0_{i-2}.
        g = alpha_t * b_h
        corrector[i] = (
            0.0,
            base_x,
            -g * rho_t,
            base_m0 + g * (rho_1 / rk + rho_t),
            -g * rho_1 / rk,
        )
    return corrector, predictor


def make_schedule(
    name: str, num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> Schedule:
    """Builds the schedule pytree of scheduler `name` ("unipc" | "euler") for a sampling run."""
    sigmas = flow_sigmas(num_steps, shift, num_train_timesteps)
    if name == "euler":
        sigmas32 = np.append(sigmas, 0.0).astype(np.float32)
        return EulerSchedule(
            sigmas=jnp.asarray(sigmas32),
            timesteps=jnp.asarray(sigmas32[:-1] * np.float32(num_train_timesteps)),
        )
    if name == "unipc":
        # sigma = 1 has log-SNR -inf; nudge it as the reference does. The model sees integer
        # timesteps (truncated, as in Wan and diffusers).
        sigmas = sigmas.copy()
        if abs(sigmas[0] - 1.0) < 1e-6:
            sigmas[0] -= 1e-6
        timesteps = np.floor(sigmas * num_train_timesteps)
        sigmas32 = np.append(sigmas, 0.0).astype(np.float32)
        corrector, predictor = _unipc_coefficients(sigmas32.astype(np.float64))
        return UniPCSchedule(
            sigmas=jnp.asarray(sigmas32),
            timesteps=jnp.asarray(timesteps, jnp.float32),
            corrector=jnp.asarray(corrector, jnp.float32),
            predictor=jnp.asarray(predictor, jnp.float32),
        )
    raise ValueError(f"unknown scheduler {name!r}; expected one of {SCHEDULERS}")
