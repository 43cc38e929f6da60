"""The train step, read top to bottom (`train_step`):

  1. the target canvas, the condition canvas and its mask -> latents with the frozen autoencoder
     (or latents precomputed into the dataset, `config.data.precomputed_latents`); captions ->
     text embeddings with the frozen text encoder (or from the precomputed cache);
  2. s ~ the config's timestep sampler, e ~ N(0, I): x_s = (1 - s) x + s e, target v = e - x;
  3. the DiT sees concat[x_s, condition latent, mask] (2 C + 1 channels) or x_s alone at t = 1000 s;
  4. MSE(v_pred, v) -> gradients of the fp32 master weights (the matmuls run in config.model.dtype);
  5. AdamW with warmup and global-norm clipping; a NaN/Inf loss or gradient, or an update that
     makes a weight non-finite or moves the weights by more than their norm, skips the update
     (counted as non-finite), optional EMA of the weights.

The train state is a pytree of arrays (`init_state`): step, params, opt_state, ema_params? and
the non-finite counters. A LoRA run's params are only its trainable ones (`models.lora`); its
frozen base is a step argument beside the encoders' weights (`Frozen`). `loop.py` jits the step with explicit shardings and donates the state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.data.latents import LATENT_KEYS
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.diffusion import flow_matching as fm
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import lora as lora_lib
from viewpoint_jax.models.autoencoder import encode_maps
from viewpoint_jax.models.text_encoder import masked_embeddings
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import diffusion_loss, lora_enabled

PREVIEW_SIGMA = 0.75  # the noise level of the one-step predictions in the preview images


# --- Train state -------------------------------------------------------------------


def init_state(
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    *,
    model_config: dit_lib.DiTConfig | None = None,
) -> dict[str, Any]:
    """The train state: step, fp32 params, optimizer state, EMA params (if any), NaN counters.

    A LoRA run's params are its trainable ones only (`trainable_filter`).
    `model_config`: the run's DiTConfig as its trainer holds it (default: `build.dit_config`)."""
    model_config = build.dit_config(config) if model_config is None else model_config
    params = nnx.state(dit_lib.WanDiT(model_config, rngs=nnx.Rngs(rng)), trainable_filter(config))
    return state_from_params(config, tx, params)


def trainable_filter(config: ml_collections.ConfigDict) -> nnx.filterlib.Filter:
    """The parameters a run trains: all (nnx.Param), or a LoRA run's (`models.lora`)."""
    if not lora_enabled(config):
        return nnx.Param
    return lora_lib.trainable_filter(bool(config.lora.train_norms))


def split_model(config: ml_collections.ConfigDict, model: dit_lib.WanDiT) -> nnx.GraphDef:
    """The graphdef `merge_model` rebuilds a run's model with (from a model, e.g. abstract)."""
    return nnx.split(model, trainable_filter(config), ...)[0]


def merge_model(graphdef: nnx.GraphDef, params: nnx.State, frozen_arrays: dict) -> Any:
    """The DiT of the trained `params`, with a LoRA run's frozen base (`frozen_arrays["base"]`)."""
    base = frozen_arrays.get("base")
    return nnx.merge(graphdef, params) if base is None else nnx.merge(graphdef, params, base)


def state_from_params(
    config: ml_collections.ConfigDict, tx: optax.GradientTransformation, params: nnx.State
) -> dict[str, Any]:
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "nonfinite": {"total": jnp.zeros((), jnp.int32), "run": jnp.zeros((), jnp.int32)},
    }
    if config.optim.ema_decay > 0:
        state["ema_params"] = jax.tree.map(jnp.copy, params)
    return state


# --- The step ------------------------------------------------------------------------------------


class Frozen:
    """The frozen encoders, split into a static part (closed over) and arrays (step arguments)."""

    def __init__(self, autoencoder: Any, text_encoder: Any | None, base: nnx.State | None = None):
        """`base`: a LoRA run's frozen DiT parameters (`training.lora.base_arrays`)."""
        self.autoencoder_static, autoencoder_arrays = _split(autoencoder)
        text_module = None if text_encoder is None else text_encoder.encoder
        self.text_static, text_arrays = _split(text_module)
        self.arrays = {"autoencoder": autoencoder_arrays, "text": text_arrays}
        if base is not None:
            self.arrays["base"] = base

    def autoencoder(self, arrays: dict) -> Any:
        return _merge(self.autoencoder_static, arrays["autoencoder"])

    def text_encoder(self, arrays: dict) -> Any:
        return _merge(self.text_static, arrays["text"])


def _split(module: Any) -> tuple[Any, Any]:
    return nnx.split(module) if isinstance(module, nnx.Module) else (module, None)


def _merge(static: Any, arrays: Any) -> Any:
    return static if arrays is None else nnx.merge(static, arrays)


def encode_batch(frozen: Frozen, frozen_arrays: dict, batch: dict) -> dict[str, jax.Array]:
    """The step's inputs: latents and condition_latents `(B, f, h, w, C)`, latent_mask
    `(B, f, h, w, 1)` (from the maps, or precomputed in the batch) and the text context."""
    if "latents" in batch:  # precomputed into the dataset
        encoded = {key: batch[key] for key in LATENT_KEYS}
    else:
        encoded = encode_maps(frozen.autoencoder(frozen_arrays), batch)
    if "context" in batch:  # precomputed embeddings
        encoded["context"] = batch["context"]
    else:
        text_encoder = frozen.text_encoder(frozen_arrays)
        encoded["context"] = masked_embeddings(text_encoder, batch["ids"], batch["ids_mask"])
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x.astype(jnp.float32)), encoded)


def train_step(
    state: dict[str, Any],
    batch: dict[str, jax.Array],
    frozen_arrays: dict,
    *,
    graphdef: nnx.GraphDef,
    frozen: Frozen,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    rules: sharding_lib.LogicalRules,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One flow-matching update (see the module docstring); returns the new state and metrics."""
    with sharding_lib.use_mesh(mesh, rules):
        encoded = encode_batch(frozen, frozen_arrays, batch)
        x = encoded["latents"]
        rng = jax.random.fold_in(jax.random.key(config.seed), state["step"])
        noise_rng, sigma_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, x.shape, jnp.float32)
        d = config.diffusion
        timesteps_from = (d.timestep_sampler, d.shift, d.logit_mean, d.logit_std)
        sigmas = fm.sample_sigmas(sigma_rng, x.shape[0], *timesteps_from)
        condition = encoded.get("condition_latents"), encoded.get("latent_mask")  # None: plain t2v
        inputs = denoising.model_input(fm.noisy_latents(x, noise, sigmas), *condition)

        def loss_fn(params):
            model = merge_model(graphdef, params, frozen_arrays)
            velocity = model(inputs, fm.timesteps(sigmas), encoded["context"])
            return fm.flow_matching_loss(velocity, x, noise, sigmas, diffusion_loss(d))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _sane_update(state["params"], params)

    def if_finite(new, old):  # a NaN/Inf step leaves weights and moments as they were
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    nonfinite = jnp.logical_not(finite).astype(jnp.int32)
    new_state = {
        "step": state["step"] + 1,
        "params": if_finite(params, state["params"]),
        "opt_state": if_finite(opt_state, state["opt_state"]),
        "nonfinite": {
            "total": state["nonfinite"]["total"] + nonfinite,
            "run": (state["nonfinite"]["run"] + 1) * nonfinite,
        },
    }
    if "ema_params" in state:
        decay = config.optim.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema_params"], params)
        new_state["ema_params"] = if_finite(ema, state["ema_params"])
    step_metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": schedule(state["step"]),
        "nonfinite_total": new_state["nonfinite"]["total"],
        "nonfinite_run": new_state["nonfinite"]["run"],
    }
    return new_state, step_metrics


# An update larger than the weights it changes (global norms) is an explosion, not learning:
# AdamW moves each weight by about the learning rate, a small fraction of the weights' norm.
MAX_UPDATE_RATIO = 1.0


def _sane_update(old: nnx.State, new: nnx.State) -> jax.Array:
    """Whether the updated weights `new` are all finite and moved from `old` by less than
    MAX_UPDATE_RATIO of their norm (a huge learning rate gives finite weights of 1e29 whose next
    loss is NaN: such a state is skipped like a NaN loss, never saved)."""
    all_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new)]))
    change = optax.global_norm(jax.tree.map(jnp.subtract, new, old))
    scale = jnp.maximum(optax.global_norm(old), 1.0)  # weights that start at zero may move
    return all_finite & (change <= MAX_UPDATE_RATIO * scale)


def preview_step(
    params: nnx.State,
    batch: dict[str, jax.Array],
    frozen_arrays: dict,
    *,
    graphdef: nnx.GraphDef,
    frozen: Frozen,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    rules: sharding_lib.LogicalRules,
    num_examples: int,
) -> dict[str, jax.Array]:
    """Condition, target and one-step prediction maps (the clean estimate x_s - s v at s = 0.75)
    of the first examples, as videos `(n, F, M, M, 3)` in [-1, 1]."""
    batch = jax.tree.map(lambda x: x[:num_examples], batch)
    with sharding_lib.use_mesh(mesh, rules):
        encoded = encode_batch(frozen, frozen_arrays, batch)
        x = encoded["latents"]
        noise = jax.random.normal(jax.random.key(config.seed + 1), x.shape, jnp.float32)
        sigmas = jnp.full((x.shape[0],), PREVIEW_SIGMA, jnp.float32)
        noisy = fm.noisy_latents(x, noise, sigmas)
        inputs = denoising.model_input(
            noisy, encoded.get("condition_latents"), encoded.get("latent_mask")
        )
        velocity = merge_model(graphdef, params, frozen_arrays)(
            inputs, fm.timesteps(sigmas), encoded["context"]
        )
        clean = fm.predicted_clean(noisy, velocity, sigmas)
        autoencoder = frozen.autoencoder(frozen_arrays)
        prediction = autoencoder.decode(clean)
        if "latents" in batch:  # no maps in the batch: show what the latents decode to
            return {
                "condition": autoencoder.decode(encoded["condition_latents"]),
                "target": autoencoder.decode(x),
                "prediction": prediction,
            }
    return {
        "condition": batch.get("condition_map", jnp.zeros_like(batch["target_map"])),
        "target": batch["target_map"],
        "prediction": prediction,
    }
