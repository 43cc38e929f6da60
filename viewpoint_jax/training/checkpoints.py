"""Training-run checkpoints: saving, resuming, and the trained DiT of a run.

A checkpoint `<workdir>/checkpoints/<step>/` holds two items:
  state  the train state pytree (step, params, opt_state, ema_params?, nonfinite counters),
         saved sharded from every host, restored straight into the target shardings;
  data   the grain iterator state of every host (`process_<i>-of-<n>.json`), so a resumed run
         reads the same batches it would have read.
Saves are asynchronous (training continues while the arrays are written) and atomic: Orbax
writes into a temporary directory and renames it when complete, so a `kill -9` at any moment
leaves the last complete checkpoint as the latest one. A save that fails stops the run at the
next step (`Checkpointer`); a resume skips a checkpoint that does not read back, naming it
(`Checkpointer.restore_latest`). Converted weights (what `config.model.init_checkpoint` names)
are read by models/weights.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental.multihost_utils import sync_global_devices

from viewpoint_jax.common import sharding
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import lora as lora_models
from viewpoint_jax.models import weights
from viewpoint_jax.setup import build
from viewpoint_jax.training import lora


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    """Where a training run in `workdir` keeps its checkpoints."""
    return Path(workdir).absolute() / "checkpoints"


def _has_state(iterator: Any) -> bool:
    return (
        iterator is not None and hasattr(iterator, "get_state") and hasattr(iterator, "set_state")
    )


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (full disk, lost permissions, ...); the message names
    the checkpoint directory and the last complete checkpoint, which is kept."""


class Checkpointer:
    """Saves every `every_steps` steps, keeps the last `keep`; `save(..., force=True)` always saves.

    A failed save is an error at once, never a silent gap: the failure of an asynchronous save
    is raised (as CheckpointSaveError) by the next `raise_if_save_failed` after it finished (the
    train loop calls it every step), by the next `save` at the latest, or by `close`. The
    failed step's partial directory is never published, so the last complete checkpoint stays
    the latest one and a rerun resumes from it (the run stops rather than training on without
    a way back).
    """

    def __init__(
        self, directory: str | os.PathLike, *, every_steps: int, keep: int, async_save: bool = True
    ):
        self.directory = Path(directory).absolute()
        self.failed = False  # a save failed and CheckpointSaveError was raised
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # what a killed save left behind
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False
    ) -> bool:
        """Starts saving (returns once the arrays are copied off the devices); True if it saves.

        Waits for the previous save first, raising CheckpointSaveError if that one failed.
        """
        items = {"state": ocp.args.StandardSave(state)}
        if _has_state(data_iterator):
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._wait_for_previous_save()
        try:  # a synchronous save fails here
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as error:
            raise self._save_error(error) from error

    def last_saved_step(self) -> int | None:
        """The step of the newest complete checkpoint, once the save in flight (if any) is
        done; raises CheckpointSaveError if that save failed."""
        self._wait_for_previous_save()
        return self.manager.latest_step()

    def raise_if_save_failed(self) -> None:
        """Raises CheckpointSaveError if the last save has finished and failed; never blocks on
        a save still being written."""
        if not self.manager.is_saving_in_progress():
            self._wait_for_previous_save()

    def _wait_for_previous_save(self) -> None:
        # Orbax keeps a failed async save's error in its finalize thread and re-raises it here.
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise self._save_error(error) from error

    def _save_error(self, error: Exception) -> CheckpointSaveError:
        self.failed = True
        return CheckpointSaveError(
            f"saving a checkpoint under {self.directory} failed ({type(error).__name__}: "
            f"{error}); the last complete checkpoint is step {self.manager.latest_step()}"
        )

    def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
        """The state of `step` (into the shardings of `abstract_state`'s ShapeDtypeStructs);
        sets `data_iterator` to where it was at that step."""
        weights.check_matches(
            weights.saved_tree(self.directory / str(step) / "state"),
            abstract_state,
            f"checkpoint {self.directory / str(step)}",
        )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = (self.directory / str(step) / "data").is_dir()
        if _has_state(data_iterator) and has_data:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        weights.ignore_echoes_of_failed_reads()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_latest(
        self, abstract_state: Any, data_iterator: Any = None
    ) -> tuple[int | None, Any]:
        """(step, state) of the newest checkpoint that reads back; (None, None) if none exists.

        A checkpoint that fails to read (corrupt or truncated files) is reported on stderr with
        its step and the error, and the one before it is tried; once one restores, the broken
        newer ones are moved to `<directory>.corrupt/<step>` (kept for inspection; the run
        saves those steps again). A config that does not match the checkpoint is a ValueError
        (`check_matches`), never a reason to fall back. If no checkpoint reads back, raises
        ValueError listing each failure and moves nothing.
        """
        failures: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except weights.ConfigMismatchError:
                raise
            except Exception as error:  # what a corrupt file raises varies (tensorstore, json, ...)
                reason = (
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                )
                print(
                    f"checkpoint step {step} does not read back, skipped ({reason})",
                    file=sys.stderr,
                )
                failures.append((step, reason))
                continue
            for bad_step, _ in failures:
                self._set_aside(bad_step)
            return step, state
        if failures:
            listing = "; ".join(f"step {step}: {reason}" for step, reason in failures)
            raise ValueError(f"no checkpoint under {self.directory} reads back ({listing})")
        return None, None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            corrupt = self.directory.with_name(self.directory.name + ".corrupt")
            corrupt.mkdir(exist_ok=True)
            target = corrupt / str(step)
            if target.exists():  # an earlier corrupt copy of the same step
                shutil.rmtree(target)
            os.replace(self.directory / str(step), target)
            print(f"moved the unreadable checkpoint to {target}", file=sys.stderr)
        if jax.process_count() > 1:  # every host sees the move before reloading the steps
            sync_global_devices(f"checkpoint_set_aside_{step}")
        self.manager.reload()

    def close(self) -> None:
        """Waits for the last save (raising CheckpointSaveError if it failed) and closes."""
        if self.failed:  # already raised: closing must not raise it again over the first one
            try:
                self.manager.close()
            except Exception:
                pass
            return
        self._wait_for_previous_save()
        self.manager.close()


def latest_complete_step(workdir: str | os.PathLike) -> int | None:
    """The newest step with a checkpoint directory under `workdir` (a complete one: Orbax
    renames it only then), or None; reads no file."""
    directory = checkpoint_dir(workdir)
    steps = (
        [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
    )
    return max(steps, default=None)


def restore_run_params(
    workdir: str | os.PathLike,
    abstract_params: nnx.State,
    *,
    use_ema: bool = True,
    shardings: nnx.State | None = None,
) -> nnx.State:
    """The model weights of a training run's newest checkpoint that reads back (EMA weights
    when saved and asked for), never reading the optimizer state.

    Each leaf is read in `abstract_params`' dtype (e.g. bf16 from fp32 training weights) straight
    into the matching leaf of `shardings` (`sharding.state_shardings`); default: the first device.
    A checkpoint that fails to read (truncated or corrupt files) is reported on stderr with its
    step and the reason and the one before it is read, as training resumes (nothing is moved:
    the run is not this reader's); a config that does not match is an error, not a reason to
    fall back. ValueError listing each failure if none reads back.
    """
    directory = checkpoint_dir(workdir)
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)
    if not steps:  # (the newest first: `latest_complete_step` and on down)
        raise FileNotFoundError(f"no complete checkpoint under {directory}")
    failures = []
    for step in steps:
        try:
            params = _restore_step_params(
                directory / str(step), abstract_params, use_ema, shardings
            )
        except weights.ConfigMismatchError:
            raise
        except Exception as error:  # what a corrupt file raises varies (tensorstore, json, ...)
            reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
            print(f"checkpoint step {step} does not read back, skipped ({reason})", file=sys.stderr)
            failures.append(f"step {step}: {reason}")
            continue
        if failures:
            print(f"using the newest readable checkpoint, {directory / str(step)}", file=sys.stderr)
        return params
    raise ValueError(f"no checkpoint under {directory} reads back ({'; '.join(failures)})")


def _restore_step_params(
    step_dir: Path, abstract_params: nnx.State, use_ema: bool, shardings: nnx.State | None
) -> nnx.State:
    """`restore_run_params` of one checkpoint `<workdir>/checkpoints/<step>`."""
    path = step_dir / "state"
    saved = weights.saved_tree(path)
    key = "ema_params" if use_ema and "ema_params" in saved else "params"
    target = weights.abstract_pure(abstract_params, shardings)
    # The trainer saves its nnx.State as is: each Variable is stored as {"value": array}.
    as_variables = weights.saved_as_variables(saved[key])
    if as_variables:
        target = jax.tree.map(lambda x: {"value": x}, target)
    restored = weights.restore_params(path, {key: target}, partial=True)[key]
    if as_variables:
        restored = jax.tree.map(lambda x: x["value"], restored, is_leaf=weights.is_value_dict)
    return weights.replace_leaves(abstract_params, restored)


def restore_model(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    use_ema: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding.LogicalRules = sharding.DEFAULT_RULES,
    model_config: dit_lib.DiTConfig | None = None,
    **config_overrides: Any,
) -> dit_lib.WanDiT:
    """The DiT of the latest checkpoint of a training run (its EMA weights if it keeps them).

    `mesh`: restore straight into shardings by the parameters' logical axes and `rules`;
    `model_config`: the run's DiTConfig where the caller holds it (default: `build.dit_config`);
    `config_overrides` change DiTConfig execution options (e.g. param_dtype="bfloat16" reads the
    fp32 training weights as bf16, lora_scale=0.5 halves a LoRA run's adapters).
    A LoRA run's checkpoint holds its trainable parameters only: the frozen base is read from
    config.model.init_checkpoint, refused if it is not the run's (`lora.check_base`).
    """
    model_config = build.dit_config(config) if model_config is None else model_config
    model_config = dataclasses.replace(model_config, **config_overrides)
    abstract_model = dit_lib.abstract_model(model_config)
    base = None
    if model_config.lora_rank:
        lora.check_base(workdir, config)
        train_norms = bool(config.lora.train_norms)
        checkpoint = config.model.init_checkpoint
        base, _ = lora.load_base(checkpoint, model_config, train_norms, mesh, rules)
        graphdef, abstract, _ = lora_models.split_params(abstract_model, train_norms)
    else:
        graphdef, abstract = nnx.split(abstract_model, nnx.Param)
    shardings = None if mesh is None else sharding.state_shardings(abstract, mesh, rules)
    params = restore_run_params(workdir, abstract, use_ema=use_ema, shardings=shardings)
    return nnx.merge(graphdef, params) if base is None else nnx.merge(graphdef, params, base)


def restore_model_for_inference(
    workdir_or_checkpoint: str | os.PathLike,
    config: ml_collections.ConfigDict,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding.LogicalRules = sharding.DEFAULT_RULES,
    model_config: dit_lib.DiTConfig | None = None,
    **config_overrides: Any,
) -> dit_lib.WanDiT:
    """A training run directory, or a converted DiT checkpoint (config.json + params/, whose
    own config.json sizes the DiT).

    `mesh`, `rules`, `model_config` and `config_overrides` as in `restore_model`.
    """
    path = Path(workdir_or_checkpoint)
    if (path / "config.json").is_file() and (path / "params").is_dir():
        return dit_lib.load_dit(path, mesh=mesh, rules=rules, **config_overrides)
    if not checkpoint_dir(path).is_dir():
        raise FileNotFoundError(
            f"{path} is neither a training run (no checkpoints/) nor a converted DiT checkpoint"
        )
    return restore_model(
        config, path, mesh=mesh, rules=rules, model_config=model_config, **config_overrides
    )
