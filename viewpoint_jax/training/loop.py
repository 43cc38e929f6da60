"""The training loop (`train`): set up the run -> resume from the last checkpoint or initialise
-> steps -> save.

The step is one `jax.jit` with explicit in/out shardings over the mesh (data, fsdp, sequence,
tensor) and the train state donated (`make_trainer`). Each host feeds its shard of the global
batch. The run directory holds config.json, compilation_cache/ (jax's persistent cache: a
restart does not compile again; JAX_COMPILATION_CACHE_DIR names another), checkpoints/ (Orbax:
state + data iterator, see training/checkpoints.py), metrics.jsonl (one line per step; `conditions/<kind>` counts this
host's examples of each condition kind, see data/conditions.py), tensorboard/ and images/.
SIGTERM: the run saves a checkpoint of the current step and exits 0; a killed run resumes from
its last complete checkpoint on the same data order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from viewpoint_jax.common import locks
from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.compilation_cache import use_compilation_cache
from viewpoint_jax.common.distributed import StopFlag
from viewpoint_jax.common.fileio import atomic_write_text, check_writable
from viewpoint_jax.data import latents as latents_lib
from viewpoint_jax.data import pipeline
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models.autoencoder import latent_shape
from viewpoint_jax.models.dit import load_pretrained_params
from viewpoint_jax.models.text_encoder import TextFeeder, text_cache_path
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import (
    autoencoder_factors,
    check_run_inputs,
    init_checkpoint,
    lora_enabled,
    mesh_and_rules,
    validate_config,
)
from viewpoint_jax.training import checkpoints, lora, telemetry
from viewpoint_jax.training import step as step_lib
from viewpoint_jax.training.optim import make_optimizer


class NonFiniteLossError(RuntimeError):
    """Too many NaN/Inf losses in a row: the run stops, its last checkpoint is the last good one."""


# --- What a run compiles and shards ---------------------------------------------------------------


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
    lora_start: nnx.State | None = None  # a LoRA run's pretrained non-adapter trainables

    def init_state(self) -> dict[str, Any]:
        state = self.init_fn(jax.random.key(self.config.seed))
        if self.lora_start is not None:  # the base is in frozen_arrays; adapters start fresh
            return self.from_params_fn(lora.start_params(state["params"], self.lora_start))
        if init_checkpoint(self.config):
            params = load_pretrained_params(
                init_checkpoint(self.config), self.model_config, self.state_sharding["params"]
            )
            state = self.from_params_fn(params)
        return state

    def step(self, state: dict, device_batch: dict) -> tuple[dict, dict]:
        return self.step_fn(state, device_batch, self.frozen_arrays)

    def preview(self, params: nnx.State, device_batch: dict) -> dict:
        return self.preview_fn(params, device_batch, self.frozen_arrays)

    def device_batch(self, batch: dict) -> dict[str, jax.Array]:
        local = pipeline.step_arrays(batch, self.text)
        return sharding_lib.global_batch(local, self.batch_sharding)

    def abstract_state_with_shardings(self) -> Any:
        return sharding_lib.with_shardings(self.abstract_state, self.state_sharding)

    def latent_grid(self, device_batch: dict) -> tuple[int, int, int]:
        """(f, h, w) of the latents a device batch trains on."""
        if "latents" in device_batch:
            return tuple(device_batch["latents"].shape[1:4])
        return latent_shape(self.autoencoder, device_batch["target_map"].shape)[1:4]


def make_trainer(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    rules: sharding_lib.LogicalRules,
    *,
    text_cache_dir: Path | None = None,
    autoencoder: Any = None,
    text_encoder: Any = None,
    model_config: dit_lib.DiTConfig | None = None,
) -> Trainer:
    """The run's jitted functions, shardings and frozen encoders.

    The parts are the config's (`build.dit_config`, `build.build_autoencoder`,
    `build_text_encoder`) unless handed down;
    encoders with `jax.ShapeDtypeStruct` weights give a trainer whose step can be lowered and
    compiled but not run (tools/memory_plan.py).
    """
    precompute = bool(config.text_encoder.precompute)
    model_config = build.dit_config(config) if model_config is None else model_config
    autoencoder = build.build_autoencoder(config) if autoencoder is None else autoencoder
    text_encoder = build.build_text_encoder(config) if text_encoder is None else text_encoder
    cache_path = None
    if precompute and text_cache_dir is not None:
        cache_path = text_cache_path(text_cache_dir, jax.process_index())
    local_batch_size = config.data.batch_size // jax.process_count()
    text = TextFeeder(text_encoder, precompute, cache_path, local_batch_size)
    frozen, abstract_weights, lora_start = _frozen_parts(
        config, model_config, mesh, rules, autoencoder, None if precompute else text_encoder
    )
    tx, schedule = make_optimizer(config.optim, config.num_steps)
    graphdef = step_lib.split_model(config, dit_lib.abstract_model(model_config))

    init = functools.partial(step_lib.init_state, config, tx, model_config=model_config)
    abstract_state = jax.eval_shape(init, jax.random.key(0))
    state_sharding = sharding_lib.state_shardings(abstract_state, mesh, rules)
    frozen_sharding = sharding_lib.state_shardings(frozen.arrays, mesh, rules)
    batch_sharding = NamedSharding(mesh, sharding_lib.logical_to_mesh_spec(("batch",), rules))
    replicated = NamedSharding(mesh, PartitionSpec())
    static = dict(graphdef=graphdef, frozen=frozen, config=config, mesh=mesh, rules=rules)
    step_fn = jax.jit(
        functools.partial(step_lib.train_step, tx=tx, schedule=schedule, **static),
        in_shardings=(state_sharding, batch_sharding, frozen_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    preview_fn = jax.jit(
        functools.partial(
            step_lib.preview_step, num_examples=min(4, config.data.batch_size), **static
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
        model_config=model_config,
        abstract_state=abstract_state,
        state_sharding=state_sharding,
        batch_sharding=batch_sharding,
        frozen_arrays=(
            sharding_lib.with_shardings(frozen.arrays, frozen_sharding)
            if abstract_weights
            else jax.device_put(frozen.arrays, frozen_sharding)
        ),
        step_fn=step_fn,
        preview_fn=preview_fn,
        init_fn=jax.jit(init, out_shardings=state_sharding),
        from_params_fn=jax.jit(
            functools.partial(step_lib.state_from_params, config, tx), out_shardings=state_sharding
        ),
        lora_start=lora_start,
    )


def _frozen_parts(
    config: ml_collections.ConfigDict,
    model_config: dit_lib.DiTConfig,
    mesh: jax.sharding.Mesh,
    rules: sharding_lib.LogicalRules,
    autoencoder: Any,
    text_encoder: Any,
) -> tuple[step_lib.Frozen, bool, nnx.State | None]:
    """(the step's frozen parts, whether their weights are abstract, a LoRA run's start): the
    encoders and a LoRA run's base DiT, read once (abstract for a compile-only trainer)."""
    frozen = step_lib.Frozen(autoencoder, text_encoder)
    abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(frozen.arrays))
    if not lora_enabled(config):
        return frozen, abstract, None
    base, start = lora.base_arrays(config, model_config, mesh, rules, abstract=abstract)
    return step_lib.Frozen(autoencoder, text_encoder, base), abstract, start


# --- The loop -------------------------------------------------------------------------------------


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
    for tests. Returns {"step", "losses": {step: loss}, "stopped": bool (SIGTERM)}.

    Before any work, in this order, nothing written until all pass: the config and every input
    it names are checked (all missing paths at once); `workdir` must be writable (UserError
    naming it) and is locked for the run (`common.locks`: a second run on it is refused, naming
    the first); its filesystem must have room for one checkpoint. A full disk during the run is
    one line naming the path and the last complete checkpoint.
    """
    workdir = Path(workdir).absolute()
    devices = jax.devices() if devices is None else list(devices)
    validate_config(config, len(devices), jax.process_count())
    reads_dataset = data_iterator is None and data_source is None
    check_run_inputs(config, reads_dataset=reads_dataset)  # every missing path at once
    check_writable(workdir)
    lock = locks.hold(workdir, "training run", "--workdir")
    with lock if jax.process_index() == 0 else contextlib.nullcontext():
        # A restart loads the compiled step from the run's cache instead of compiling it again.
        use_compilation_cache(workdir / "compilation_cache")
        try:
            return _train(config, workdir, data_iterator, data_source, devices, progress)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            last = checkpoints.latest_complete_step(workdir)
            raise UserError(
                f"writing {error.filename or workdir} failed ({error.strerror}); the last complete "
                f"checkpoint is {'step ' + str(last) if last is not None else 'none'}"
            ) from None


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    data_iterator: Iterator[dict] | None,
    data_source: Any,
    devices: list[jax.Device],
    progress: bool,
) -> dict[str, Any]:
    """`train` with the config checked and the run directory locked."""
    stop = StopFlag()  # first: a SIGTERM during setup still ends in a clean exit
    trainer = _set_up_run(config, workdir, devices)
    # Room for one checkpoint (the whole state: weights, optimizer moments, EMA) before step 1.
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state))
    check_writable(checkpoints.checkpoint_dir(workdir), expected_bytes=state_bytes)
    checkpointer = checkpoints.Checkpointer(
        checkpoints.checkpoint_dir(workdir),
        every_steps=config.checkpoint.every_steps,
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    if data_iterator is None:
        data_iterator = _train_iterator(config, data_source)
    state = _resume_or_init(trainer, checkpointer, data_iterator)
    start = int(jax.device_get(state["step"]))
    logger = telemetry.TrainLogger(
        workdir,
        config,
        trainer.model_config,
        num_devices=len(devices),
        start_step=start,
        progress=progress,
    )
    try:
        step, stopped = _loop(trainer, state, data_iterator, checkpointer, logger, stop, start)
    finally:
        trainer.text.flush()
        checkpointer.close()
        stop.restore()
        logger.close()
        if hasattr(data_iterator, "close"):
            data_iterator.close()
    return {"step": step, "losses": logger.losses, "stopped": stopped}


def _set_up_run(
    config: ml_collections.ConfigDict, workdir: Path, devices: list[jax.Device]
) -> Trainer:
    """Records the (checked) config in the run directory, builds the trainer."""
    mesh, rules = mesh_and_rules(config, devices)
    model_config = build.dit_config(config)  # built once, handed down
    if jax.process_index() == 0:
        print(telemetry.startup_summary(config, mesh, model_config), file=sys.stderr)
        workdir.mkdir(parents=True, exist_ok=True)
    if lora_enabled(config):  # before config.json: a refused base leaves the run as it was
        lora.check_base(workdir, config, record=True)
    if jax.process_index() == 0:
        atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    cache_dir = Path(config.text_encoder.cache_dir or workdir / "text_cache")
    return make_trainer(config, mesh, rules, text_cache_dir=cache_dir, model_config=model_config)


def _train_iterator(config: ml_collections.ConfigDict, data_source: Any) -> Iterator[dict]:
    if config.data.precomputed_latents and data_source is None:
        latents_lib.check_matches_config(config)
    return pipeline.make_train_iterator(
        config.data,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        data_source=data_source,
        temporal_factor=autoencoder_factors(config)[1],
    )


def _resume_or_init(
    trainer: Trainer, checkpointer: checkpoints.Checkpointer, data_iterator: Iterator[dict]
) -> dict[str, Any]:
    """The newest checkpoint that reads back (state and data position), else a fresh state."""
    abstract = trainer.abstract_state_with_shardings()
    step, state = checkpointer.restore_latest(abstract, data_iterator)
    if step is None:
        return trainer.init_state()
    print(f"resumed from {checkpointer.directory}/{step}", file=sys.stderr)
    return state


def _loop(
    trainer: Trainer,
    state: dict[str, Any],
    data_iterator: Iterator[dict],
    checkpointer: checkpoints.Checkpointer,
    logger: telemetry.TrainLogger,
    stop: StopFlag,
    start: int,
) -> tuple[int, bool]:
    """Steps from `start` to config.num_steps; returns (last step, stopped by SIGTERM).

    A step's metrics are read while the next step runs (no host sync per step), except before
    a save: a checkpoint is written only of a step known to be finite.
    """
    config = trainer.config
    pending = None
    step = start
    for step in range(start + 1, config.num_steps + 1):
        checkpointer.raise_if_save_failed()  # a failed save stops the run at once, not at the end
        batch = next(data_iterator)
        device_batch = trainer.device_batch(batch)
        state, step_metrics = trainer.step(state, device_batch)
        stop.progressed = True  # from now on a SIGTERM saves this step before exiting
        step_metrics = {**step_metrics, **pipeline.condition_counts(batch)}
        if pending is not None:
            _report(logger, pending, checkpointer)
        grid, skipped = trainer.latent_grid(device_batch), int(batch.get("skipped_records", 0))
        pending = (step, step_metrics, grid, skipped)
        image_every = config.log.image_every_steps
        if jax.process_index() == 0 and image_every and step % image_every == 0:
            logger.preview(step, jax.device_get(trainer.preview(state["params"], device_batch)))
        stopping = stop.should_stop()
        if step % config.checkpoint.every_steps == 0 or stopping or step == config.num_steps:
            _report(logger, pending, checkpointer)
            pending = None
            saved = int(jax.device_get(state["nonfinite"]["run"])) == 0  # never a bad state
            if saved:
                checkpointer.save(step, state, data_iterator, force=True)
            trainer.text.flush()
        if stopping:
            what = f"saved step {step}" if saved else f"step {step} not saved (non-finite)"
            print(f"SIGTERM: {what}, exiting", file=sys.stderr)
            return step, True
    if pending is not None:
        _report(logger, pending, checkpointer)
    return step, False


def _report(
    logger: telemetry.TrainLogger, pending: tuple, checkpointer: checkpoints.Checkpointer
) -> None:
    """Logs a step's (step, metrics, latent grid, skipped records); stops on a run of NaNs,
    naming the last checkpoint saved (only finite states are), or saying there is none."""
    step, step_metrics, latent_grid, skipped = pending
    values = logger.log(step, jax.device_get(step_metrics), latent_grid, skipped)
    limit = logger.config.max_consecutive_nonfinite
    if values["nonfinite_run"] >= limit:
        last = checkpointer.last_saved_step()
        good = (
            f"the last good checkpoint is {checkpointer.directory / str(last)}"
            if last is not None
            else "no checkpoint was saved (none was of good weights)"
        )
        raise NonFiniteLossError(
            f"{int(values['nonfinite_run'])} NaN/Inf losses in a row at step {step} (or updates "
            f"that explode the weights; config.max_consecutive_nonfinite = {limit}); {good}"
        )
