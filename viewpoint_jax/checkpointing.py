"""Training checkpoints: Orbax CheckpointManager over the train state and the data iterator.

A checkpoint `<workdir>/checkpoints/<step>/` holds two items:
  state  the train state pytree (step, params, opt_state, ema_params?, nonfinite counters),
         saved sharded from every host, restored straight into the target shardings;
  data   the grain iterator state of every host (`process_<i>-of-<n>.json`), so a resumed run
         reads the same batches it would have read.
Saves are asynchronous (training continues while the arrays are written) and atomic: Orbax
writes into a temporary directory and renames it when complete, so a `kill -9` at any moment
leaves the last complete checkpoint as the latest one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def _has_state(iterator: Any) -> bool:
    return (
        iterator is not None and hasattr(iterator, "get_state") and hasattr(iterator, "set_state")
    )


class Checkpointer:
    """Saves every `every_steps` steps, keeps the last `keep`; `save(..., force=True)` always saves."""

    def __init__(
        self, directory: str | os.PathLike, *, every_steps: int, keep: int, async_save: bool = True
    ):
        self.directory = Path(directory).absolute()
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
        """Starts saving (returns once the arrays are copied off the devices); True if it saves."""
        items = {"state": ocp.args.StandardSave(state)}
        if _has_state(data_iterator):
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
        """The state of `step` (into the shardings of `abstract_state`'s ShapeDtypeStructs);
        sets `data_iterator` to where it was at that step."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = (self.directory / str(step) / "data").is_dir()
        if _has_state(data_iterator) and has_data:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any, *, use_ema: bool = True):
    """Only the model weights of the latest checkpoint (the EMA weights when saved and asked for).

    A partial restore: the optimizer state is never read. Arrays land on the shardings of
    `abstract_params`' leaves when they have them, else on the first device.
    """
    directory = Path(directory).absolute()
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True)
    ) as m:
        step = m.latest_step()
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint under {directory}")
    path = directory / str(step) / "state"
    saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    key = "ema_params" if use_ema and "ema_params" in saved else "params"
    item = {key: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_params)}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def restore_arg(x: Any) -> ocp.ArrayRestoreArgs:
        sharding = getattr(x, "sharding", None) or default
        return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=x.shape, dtype=x.dtype)

    shardings_like = {key: abstract_params}
    restored = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=jax.tree.map(restore_arg, shardings_like), partial_restore=True
        ),
    )
    return restored[key]
