"""Fine-tunes the Wan DiT on ViewPoint maps with flow matching.

    python -m viewpoint_jax.train --config configs/tiny.py --workdir runs/tiny
    python -m viewpoint_jax.train --config configs/wan14b.py --workdir runs/vp14b \\
        [--config.key=value ...] [--coordinator_address host:port --num_processes N --process_id i]

One step, read top to bottom (`train_step`):
  1. the target map, the condition map and its mask -> latents with the frozen autoencoder (or
     latents precomputed into the dataset, `config.data.precomputed_latents`);
     captions -> text embeddings with the frozen text encoder (or from the precomputed cache);
  2. s ~ the config's timestep sampler, e ~ N(0, I): x_s = (1 - s) x + s e, target v = e - x;
  3. the DiT sees concat[x_s, condition latent, mask] (2 C + 1 channels) at t = 1000 s;
  4. MSE(v_pred, v) -> gradients of the fp32 master weights (the matmuls run in config.model.dtype);
  5. AdamW with warmup and global-norm clipping; a NaN/Inf loss or gradient skips the update
     (counted), optional EMA of the weights.
The step is one `jax.jit` with explicit in/out shardings over the mesh (data, fsdp, sequence,
tensor) and the train state donated. Each host feeds its shard of the global batch.

The run directory holds config.json, checkpoints/ (Orbax: state + data iterator, see
checkpointing.py), metrics.jsonl (one line per step), tensorboard/ and images/.
SIGTERM: the run saves a checkpoint of the current step and exits 0; a killed run resumes from
its last complete checkpoint on the same data order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from viewpoint_jax import checkpointing, components
from viewpoint_jax import metrics as metrics_lib
from viewpoint_jax import sharding as sharding_lib
from viewpoint_jax.config_validation import mesh_shape, validate_config
from viewpoint_jax.data import latents as latents_lib
from viewpoint_jax.data.pipeline import MAP_KEYS
from viewpoint_jax.diffusion import flow_matching as fm
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.io_utils import atomic_write_text
from viewpoint_jax.models import text_encoder as text_lib

PREVIEW_SIGMA = 0.75  # the noise level of the one-step predictions in the preview images


class NonFiniteLossError(RuntimeError):
    """Too many NaN/Inf losses in a row: the run stops, its last checkpoint is the last good one."""


# --- Optimizer and train state -------------------------------------------------------------------


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


def init_state(
    config: ml_collections.ConfigDict, tx: optax.GradientTransformation, rng: jax.Array
) -> dict[str, Any]:
    """The train state: step, fp32 params, optimizer state, EMA params (if any), NaN counters."""
    params = nnx.state(components.build_model(config, nnx.Rngs(rng)), nnx.Param)
    return state_from_params(config, tx, params)


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

    def __init__(self, autoencoder: Any, text_encoder: Any | None):
        self.autoencoder_static, autoencoder_arrays = _split(autoencoder)
        text_module = None if text_encoder is None else text_encoder.encoder
        self.text_static, text_arrays = _split(text_module)
        self.arrays = {"autoencoder": autoencoder_arrays, "text": text_arrays}

    def autoencoder(self, arrays: dict) -> Any:
        return _merge(self.autoencoder_static, arrays["autoencoder"])

    def text_encoder(self, arrays: dict) -> Any:
        return _merge(self.text_static, arrays["text"])


def _split(module: Any) -> tuple[Any, Any]:
    if isinstance(module, nnx.Module):
        return nnx.split(module)
    return module, None


def _merge(static: Any, arrays: Any) -> Any:
    return static if arrays is None else nnx.merge(static, arrays)


def encode_batch(frozen: Frozen, frozen_arrays: dict, batch: dict) -> dict[str, jax.Array]:
    """The step's inputs: latents and condition_latents `(B, f, h, w, C)`, latent_mask
    `(B, f, h, w, 1)` (from the maps, or precomputed in the batch) and the text context."""
    if "latents" in batch:  # precomputed into the dataset
        encoded = {key: batch[key] for key in latents_lib.LATENT_KEYS}
    else:
        encoded = latents_lib.encode_maps(frozen.autoencoder(frozen_arrays), batch)
    if "context" in batch:  # precomputed embeddings
        encoded["context"] = batch["context"]
    else:
        text_encoder = frozen.text_encoder(frozen_arrays)
        encoded["context"] = text_lib.masked_embeddings(
            text_encoder, batch["ids"], batch["ids_mask"]
        )
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
        diffusion = config.diffusion
        sigmas = fm.sample_sigmas(
            sigma_rng,
            x.shape[0],
            diffusion.timestep_sampler,
            diffusion.shift,
            diffusion.logit_mean,
            diffusion.logit_std,
        )
        inputs = sampler.model_input(
            fm.noisy_latents(x, noise, sigmas), encoded["condition_latents"], encoded["latent_mask"]
        )
        target = fm.velocity_target(x, noise)

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            prediction = model(inputs, fm.timesteps(sigmas), encoded["context"])
            return fm.mse_loss(prediction, target)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)

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
        inputs = sampler.model_input(noisy, encoded["condition_latents"], encoded["latent_mask"])
        velocity = nnx.merge(graphdef, params)(inputs, fm.timesteps(sigmas), encoded["context"])
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
        "condition": batch["condition_map"],
        "target": batch["target_map"],
        "prediction": prediction,
    }


# --- Host side: batches, text, distributed setup -------------------------------------------------


class TextFeeder:
    """Captions -> the step's text inputs: token ids (encoded in the step) or, with `precompute`,
    embeddings computed once per distinct caption (`text_encoder.encode_captions`).

    With `cache_path` (`text_cache_path(cache_dir, process)`), the feeder starts from the
    captions `tools/precompute_text.py` embedded into `cache_dir/embeddings.npz` (shared by all
    hosts, read only) and from this host's own file; captions met later (as batches arrive; a
    dropped caption is "") are embedded then, and `flush()` writes those to this host's file
    atomically (hosts see different captions and never write the same file), so a restarted run
    reloads them.
    """

    def __init__(
        self, text_encoder: Any, precompute: bool, cache_path: Path | None, batch_size: int
    ):
        self.text_encoder = text_encoder
        self.precompute = precompute
        self.cache_path = cache_path if precompute else None
        self.batch_size = batch_size
        self.cache: text_lib.TextEmbeddingCache | None = None  # everything known
        self.own: text_lib.TextEmbeddingCache | None = None  # what this host writes
        if self.cache_path is not None:
            shared = self.cache_path.parent / SHARED_TEXT_CACHE
            if shared.is_file():
                self.cache = text_lib.TextEmbeddingCache.load(shared)
            if self.cache_path.is_file():
                self.own = text_lib.TextEmbeddingCache.load(self.cache_path)
                self.cache = self.own if self.cache is None else self.cache.merged(self.own)
        self._dirty = False

    def __call__(self, captions: list[str]) -> dict[str, np.ndarray]:
        if not self.precompute:
            ids, mask = self.text_encoder.tokenizer(list(captions))
            return {"ids": np.asarray(ids, np.int32), "ids_mask": np.asarray(mask, np.int32)}
        missing = list(dict.fromkeys(c for c in captions if not self.cache or c not in self.cache))
        if missing:
            new = text_lib.encode_captions(self.text_encoder, missing, batch_size=self.batch_size)
            self.cache = new if self.cache is None else self.cache.merged(new)
            self.own = new if self.own is None else self.own.merged(new)
            self._dirty = True
        embeddings, _ = self.cache.lookup(captions)
        return {"context": embeddings}

    def flush(self) -> None:
        """Writes this host's captions (all it embedded, atomically) if any are new."""
        if self._dirty and self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.own.save(self.cache_path)
            self._dirty = False


# The file tools/precompute_text.py writes into a text cache dir, read by every host.
SHARED_TEXT_CACHE = "embeddings.npz"


def text_cache_path(cache_dir: Path, process_index: int) -> Path:
    """This host's own text cache file in `cache_dir`."""
    return Path(cache_dir) / f"embeddings.process{process_index}.npz"


def _captions(batch: dict) -> list[str]:
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in batch["caption"]]


def host_batch(batch: dict, text: TextFeeder) -> dict[str, np.ndarray]:
    """A host's pipeline batch -> the arrays the step takes (this host's rows)."""
    keys = latents_lib.LATENT_KEYS if "latents" in batch else MAP_KEYS
    arrays = {key: np.asarray(batch[key], np.float32) for key in keys}
    arrays.update(text(_captions(batch)))
    return arrays


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Every host's rows -> global arrays sharded over the batch axes of the mesh."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value) for key, value in local.items()
    }


def maybe_initialize_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """`jax.distributed.initialize` when several processes are asked for (flags or environment:
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0) or None
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if not coordinator_address or not num_processes or num_processes < 2:
        return
    if process_id is None:
        raise ValueError("--process_id (or JAX_PROCESS_ID) is needed with several processes")
    # CPU processes exchange their collectives over gloo (GPU/TPU use their own transports).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


class StopFlag:
    """Set by SIGTERM (a preempted or cancelled job); agreed on by every host before acting."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


# --- The loop -----------------------------------------------------------------------------------


def _mesh_and_rules(config: ml_collections.ConfigDict, devices: list[jax.Device]):
    sizes = mesh_shape(config, len(devices))
    rules = tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes)
        for name, axes in config.sharding_rules
    )
    return sharding_lib.make_mesh(sizes, devices), rules


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


@dataclasses.dataclass
class Trainer:
    """Everything a run compiles and shards, for one config on one mesh.

    `init_state()` builds the sharded train state (random, or a converted Wan checkpoint);
    `step(state, device_batch)` is the jitted train step (state donated);
    `device_batch(batch)` turns this host's pipeline batch into global sharded arrays.
    """

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    rules: sharding_lib.LogicalRules
    autoencoder: Any
    text: TextFeeder
    model_config: Any
    abstract_state: Any
    state_sharding: Any
    batch_sharding: NamedSharding
    frozen_arrays: Any
    step_fn: Any
    preview_fn: Any
    init_fn: Any
    from_params_fn: Any

    def init_state(self) -> dict[str, Any]:
        state = self.init_fn(jax.random.key(self.config.seed))
        if self.config.model.init_checkpoint:
            params = components.load_pretrained_params(
                self.config.model.init_checkpoint, self.model_config, self.state_sharding["params"]
            )
            state = self.from_params_fn(params)
        return state

    def step(self, state: dict, device_batch: dict) -> tuple[dict, dict]:
        return self.step_fn(state, device_batch, self.frozen_arrays)

    def preview(self, params: nnx.State, device_batch: dict) -> dict:
        return self.preview_fn(params, device_batch, self.frozen_arrays)

    def device_batch(self, batch: dict) -> dict[str, jax.Array]:
        return global_batch(host_batch(batch, self.text), self.batch_sharding)

    def abstract_state_with_shardings(self) -> Any:
        return _with_shardings(self.abstract_state, self.state_sharding)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch `device_batch` makes, as sharded shapes: float32 maps (or the
        precomputed latents) and the text (token ids, or precomputed embeddings)."""
        data, b = self.config.data, self.config.data.batch_size
        m, f = data.map_size, data.num_frames
        if data.precomputed_latents:
            ae, c = self.autoencoder, self.model_config.out_dim
            grid = (b, 1 + (f - 1) // ae.temporal_factor, m // ae.spatial_factor)
            latent = (*grid, m // ae.spatial_factor)
            shapes = {"latents": (*latent, c), "condition_latents": (*latent, c)}
            shapes["latent_mask"] = (*latent, 1)
        else:
            shapes = {"target_map": (b, f, m, m, 3), "condition_map": (b, f, m, m, 3)}
            shapes["condition_mask"] = (b, f, m, m, 1)
        batch = {k: (v, jnp.float32) for k, v in shapes.items()}
        length = int(self.config.text_encoder.max_length)
        if self.config.text_encoder.precompute:
            batch["context"] = ((b, length, self.model_config.text_dim), jnp.float32)
        else:
            batch["ids"] = batch["ids_mask"] = ((b, length), jnp.int32)
        return {
            k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)
            for k, (shape, dtype) in batch.items()
        }

    def abstract_arguments(self) -> tuple[Any, dict, Any]:
        """(state, batch, frozen arrays) as sharded shapes: `step_fn.lower(*args)`."""
        frozen = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            self.frozen_arrays,
        )
        return self.abstract_state_with_shardings(), self.abstract_batch(), frozen


def make_trainer(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    rules: sharding_lib.LogicalRules,
    *,
    text_cache_dir: Path | None = None,
    abstract_encoders: bool = False,
) -> Trainer:
    """The run's jitted functions, shardings and frozen encoders.

    `abstract_encoders=True` builds the frozen encoders with shape-only weights
    (`components.abstract_autoencoder`, `abstract_text_model`; no checkpoint is read): the step
    can then be lowered and compiled (`abstract_arguments()`) but not run, e.g. for memory plans.
    """
    precompute = bool(config.text_encoder.precompute)
    if abstract_encoders:
        autoencoder = components.abstract_autoencoder(config)
        text_encoder = text_lib.TextEncoder(components.abstract_text_model(config), None)
    else:
        autoencoder = components.build_autoencoder(config)
        text_encoder = components.build_text_encoder(config)
    cache_path = None
    if precompute and text_cache_dir is not None:
        cache_path = text_cache_path(text_cache_dir, jax.process_index())
    local_batch_size = config.data.batch_size // jax.process_count()
    text = TextFeeder(text_encoder, precompute, cache_path, local_batch_size)
    frozen = Frozen(autoencoder, None if precompute else text_encoder)
    tx, schedule = make_optimizer(config.optim, config.num_steps)
    graphdef, _ = nnx.split(_abstract_model(config), nnx.Param)

    init = functools.partial(init_state, config, tx)
    abstract_state = jax.eval_shape(init, jax.random.key(0))
    state_sharding = sharding_lib.state_shardings(abstract_state, mesh, rules)
    frozen_sharding = sharding_lib.state_shardings(frozen.arrays, mesh, rules)
    batch_sharding = NamedSharding(mesh, sharding_lib.logical_to_mesh_spec(("batch",), rules))
    replicated = NamedSharding(mesh, PartitionSpec())
    step_fn = jax.jit(
        functools.partial(
            train_step,
            graphdef=graphdef,
            frozen=frozen,
            tx=tx,
            schedule=schedule,
            config=config,
            mesh=mesh,
            rules=rules,
        ),
        in_shardings=(state_sharding, batch_sharding, frozen_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    preview_fn = jax.jit(
        functools.partial(
            preview_step,
            graphdef=graphdef,
            frozen=frozen,
            config=config,
            mesh=mesh,
            rules=rules,
            num_examples=min(4, config.data.batch_size),
        ),
        in_shardings=(state_sharding["params"], batch_sharding, frozen_sharding),
        out_shardings=replicated,
    )
    return Trainer(
        config=config,
        mesh=mesh,
        rules=rules,
        autoencoder=autoencoder,
        text=text,
        model_config=components.dit_config(config),
        abstract_state=abstract_state,
        state_sharding=state_sharding,
        batch_sharding=batch_sharding,
        frozen_arrays=(
            _with_shardings(frozen.arrays, frozen_sharding)
            if abstract_encoders
            else jax.device_put(frozen.arrays, frozen_sharding)
        ),
        step_fn=step_fn,
        preview_fn=preview_fn,
        init_fn=jax.jit(init, out_shardings=state_sharding),
        from_params_fn=jax.jit(
            functools.partial(state_from_params, config, tx), out_shardings=state_sharding
        ),
    )


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    data_iterator: Iterator[dict] | None = None,
    data_source: Any = None,
    devices: list[jax.Device] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir` up to `config.num_steps`.

    `data_iterator` (batches as pipeline.make_train_iterator yields them) or `data_source`
    (records) replace the config's dataset, and `devices` the devices of the mesh (default all),
    for tests. Returns {"step", "losses": {step: loss},
    "stopped": bool (SIGTERM)}.
    """
    stop = StopFlag()  # first: a SIGTERM during setup still ends in a clean exit
    workdir = Path(workdir).absolute()
    process_index, process_count = jax.process_index(), jax.process_count()
    devices = jax.devices() if devices is None else list(devices)
    validate_config(config, len(devices), process_count)
    mesh, rules = _mesh_and_rules(config, devices)
    is_main = process_index == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    cache_dir = Path(config.text_encoder.cache_dir or workdir / "text_cache")
    trainer = make_trainer(config, mesh, rules, text_cache_dir=cache_dir)
    autoencoder, model_config = trainer.autoencoder, trainer.model_config

    checkpointer = checkpointing.Checkpointer(
        components.checkpoint_dir(workdir),
        every_steps=config.checkpoint.every_steps,
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    if data_iterator is None:
        from viewpoint_jax.data import pipeline

        if config.data.precomputed_latents and data_source is None:
            latents_lib.check_matches_config(config)
        data_iterator = pipeline.make_train_iterator(
            config.data,
            process_index=process_index,
            process_count=process_count,
            data_source=data_source,
        )

    latest = checkpointer.latest_step()
    if latest is not None:
        state = checkpointer.restore(latest, trainer.abstract_state_with_shardings(), data_iterator)
        print(f"resumed from {checkpointer.directory}/{latest}", file=sys.stderr)
    else:
        state = trainer.init_state()

    writer = metrics_lib.Writer(workdir / "tensorboard", enabled=is_main)
    # Every host logs its view of the step (they agree: the metrics are replicated).
    metrics_file = workdir / ("metrics.jsonl" if is_main else f"metrics.{process_index}.jsonl")
    peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind, config.log.peak_tflops)
    timer = metrics_lib.StepTimer()
    start = int(jax.device_get(state["step"]))
    losses: dict[int, float] = {}
    bar = None
    if progress and is_main:
        from tqdm import tqdm

        bar = tqdm(
            total=config.num_steps, initial=start, desc="train", unit="step", file=sys.stderr
        )

    def report(step: int, step_metrics: dict, batch_info: dict) -> None:
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        seconds = timer.tick()
        if seconds:
            values["step_time_s"] = seconds
            values.update(
                metrics_lib.throughput(
                    seconds, batch_info["flops"], batch_info["tokens"], len(devices), peak
                )
            )
        values["data/skipped_records"] = batch_info["skipped"]
        losses[step] = values["loss"]
        with open(metrics_file, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if is_main:
            if step % config.log.every_steps == 0 or step == config.num_steps:
                writer.scalars(step, values)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss={values['loss']:.4f}")
        if values["nonfinite_run"] >= config.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{int(values['nonfinite_run'])} NaN/Inf losses in a row at step {step} "
                f"(config.max_consecutive_nonfinite = {config.max_consecutive_nonfinite}); the "
                f"last checkpoint ({checkpointer.latest_step()}) holds the last good weights"
            )

    def batch_info(batch: dict, device_batch: dict) -> dict:
        if "latents" in device_batch:
            shape = device_batch["latents"].shape
            latent = shape[1:4]
        else:
            shape = device_batch["target_map"].shape
            latent = (
                1 + (shape[1] - 1) // autoencoder.temporal_factor,
                shape[2] // autoencoder.spatial_factor,
                shape[3] // autoencoder.spatial_factor,
            )
        text_tokens = int(config.text_encoder.max_length)
        return {
            "flops": metrics_lib.train_step_flops(model_config, latent, text_tokens, shape[0]),
            "tokens": shape[0] * metrics_lib.tokens_per_sample(model_config, latent),
            "skipped": int(batch.get("skipped_records", 0)),
        }

    pending = None
    stopped = False
    step = start
    try:
        for step in range(start + 1, config.num_steps + 1):
            batch = next(data_iterator)
            device_batch = trainer.device_batch(batch)
            state, step_metrics = trainer.step(state, device_batch)
            if pending is not None:  # report the previous step while this one runs
                report(*pending)
            pending = (step, step_metrics, batch_info(batch, device_batch))
            image_every = config.log.image_every_steps
            if is_main and image_every and step % image_every == 0:
                preview = jax.device_get(trainer.preview(state["params"], device_batch))
                _write_preview(workdir, writer, step, preview)
            stopping = stop.should_stop()
            if step % config.checkpoint.every_steps == 0 or stopping or step == config.num_steps:
                report(*pending)  # never save a step that is not known to be finite
                pending = None
                if int(jax.device_get(state["nonfinite"]["run"])) == 0:
                    checkpointer.save(step, state, data_iterator, force=True)
                trainer.text.flush()
            if stopping:
                stopped = True
                print(f"SIGTERM: saved step {step}, exiting", file=sys.stderr)
                break
        if pending is not None:
            report(*pending)
    finally:
        trainer.text.flush()
        checkpointer.close()
        stop.restore()
        writer.close()
        if bar is not None:
            bar.close()
        if hasattr(data_iterator, "close"):
            data_iterator.close()
    return {"step": step, "losses": losses, "stopped": stopped}


def _abstract_model(config: ml_collections.ConfigDict) -> nnx.Module:
    return nnx.eval_shape(lambda: components.build_model(config, nnx.Rngs(0)))


def _write_preview(workdir: Path, writer: metrics_lib.Writer, step: int, preview: dict) -> None:
    grid = metrics_lib.preview_grid(preview["condition"], preview["target"], preview["prediction"])
    metrics_lib.write_png(workdir / "images" / f"step_{step:07d}.png", grid)
    writer.image(step, "maps/condition_target_prediction", grid)


# --- CLI ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from absl import flags
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "a configs/*.py file (`path[:arg]`)", lock_config=True
    )
    workdir = flags.DEFINE_string("workdir", None, "the run directory (checkpoints, logs)")
    coordinator = flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (multi-host runs)"
    )
    num_processes = flags.DEFINE_integer("num_processes", None, "number of processes")
    process_id = flags.DEFINE_integer("process_id", None, "this process's index")
    flags.FLAGS(sys.argv if argv is None else argv)
    if config_flag.value is None:
        raise ValueError("--config is required (e.g. --config configs/tiny.py)")
    if not workdir.value:
        raise ValueError("--workdir is required (the run directory)")
    maybe_initialize_distributed(coordinator.value, num_processes.value, process_id.value)
    try:
        result = train(config_flag.value, workdir.value)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done: step {result['step']}" + (" (stopped by SIGTERM)" if result["stopped"] else ""))
    return 0


if __name__ == "__main__":
    from viewpoint_jax.cli import run_main

    run_main(main)
