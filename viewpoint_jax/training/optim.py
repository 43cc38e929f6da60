"""The optimizer of `config.optim`: AdamW after global-norm clipping, with a learning-rate schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def make_optimizer(
    optim: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (decay on matrices only) after global-norm clipping; linear warmup, then the schedule."""
    if optim.schedule == "cosine":
        after = optax.cosine_decay_schedule(optim.lr, max(1, num_steps - optim.warmup_steps))
    else:
        after = optax.constant_schedule(optim.lr)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, max(1, optim.warmup_steps)), after],
        [optim.warmup_steps],
    )
    adamw = optax.adamw(
        schedule,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mu_dtype=jnp.dtype(optim.mu_dtype),
        mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    )
    clip = optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip > 0 else optax.identity()
    return optax.chain(clip, adamw), schedule
