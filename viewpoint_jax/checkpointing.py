"""Orbax checkpoints: training runs, and the converted weights every model loads.

Converted weights (`convert/` writes them offline; models read them at run time through here):
`<dir>/config.json` (the model's sizes) + `<dir>/params/` (an Orbax PyTree checkpoint of the
`nnx.Param` pure dict). `read_checkpoint_config` reads the first, `restore_state` the second
straight into a module's abstract state (and shardings).

Training runs: a checkpoint `<workdir>/checkpoints/<step>/` holds two items:
  state  the train state pytree (step, params, opt_state, ema_params?, nonfinite counters),
         saved sharded from every host, restored straight into the target shardings;
  data   the grain iterator state of every host (`process_<i>-of-<n>.json`), so a resumed run
         reads the same batches it would have read.
Saves are asynchronous (training continues while the arrays are written) and atomic: Orbax
writes into a temporary directory and renames it when complete, so a `kill -9` at any moment
leaves the last complete checkpoint as the latest one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from viewpoint_jax import sharding


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    """Where a training run in `workdir` keeps its checkpoints."""
    return Path(workdir).absolute() / "checkpoints"


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

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _restore_arg(x: Any) -> ocp.ArrayRestoreArgs:
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=x.shape, dtype=x.dtype)


def restore_params(path: str | os.PathLike, abstract_tree: Any, *, partial: bool = False) -> Any:
    """Restores an Orbax PyTree checkpoint (converted `params/`, or a run's `<step>/state`).

    Args:
      path: the checkpoint directory.
      abstract_tree: nested dict of `jax.ShapeDtypeStruct`; leaves with a `.sharding` land on
        it, the others on the first device.
      partial: read only the subtree `abstract_tree` names (e.g. the params of a train state).
    Returns:
      the nested dict of jax.Arrays.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no Orbax checkpoint at {path}")
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=abstract_tree,
                restore_args=jax.tree.map(_restore_arg, abstract_tree),
                partial_restore=partial,
            ),
        )


def restore_run_params(
    workdir: str | os.PathLike,
    abstract_params: nnx.State,
    *,
    use_ema: bool = True,
    shardings: nnx.State | None = None,
) -> nnx.State:
    """The model weights of a training run's latest checkpoint (EMA weights when saved and
    asked for), never reading the optimizer state.

    Each leaf is read in `abstract_params`' dtype (e.g. bf16 from fp32 training weights) straight
    into the matching leaf of `shardings` (`sharding.state_shardings`); default: the first device.
    """
    directory = checkpoint_dir(workdir)
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True)
    ) as manager:
        step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint under {directory}")
    path = directory / str(step) / "state"
    saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    key = "ema_params" if use_ema and "ema_params" in saved else "params"
    target = _abstract_pure(abstract_params, shardings)
    # The trainer saves its nnx.State as is: each Variable is stored as {"value": array}.
    as_variables = _saved_as_variables(saved[key])
    if as_variables:
        target = jax.tree.map(lambda x: {"value": x}, target)
    restored = restore_params(path, {key: target}, partial=True)[key]
    if as_variables:
        restored = jax.tree.map(lambda x: x["value"], restored, is_leaf=_is_value_dict)
    return _replace(abstract_params, restored)


def _is_value_dict(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == {"value"} and not isinstance(node["value"], dict)


def _saved_as_variables(tree: Any) -> bool:
    """Whether a saved params tree holds `{"value": leaf}` per Variable (an nnx.State) rather than
    the leaves themselves (a pure dict); follows the first branch down to a leaf."""
    node = tree
    while isinstance(node, dict) and node:
        if _is_value_dict(node):
            return True
        node = next(iter(node.values()))
    return False


# --- Converted weights -----------------------------------------------------------------------


def read_checkpoint_config(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The `config.json` of a converted checkpoint directory (`what`: "Wan VAE", ...)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a converted {what}: no config.json")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: invalid JSON ({e})") from None


def restore_state(
    path: str | os.PathLike, abstract_params: nnx.State, shardings: nnx.State | None = None
) -> nnx.State:
    """The `params/` of a converted checkpoint directory as an nnx.State.

    Args:
      path: the checkpoint directory (holding `params/`).
      abstract_params: `nnx.state(abstract_model, nnx.Param)`; its shapes must match the
        checkpoint's (a config may differ in execution options).
      shardings: a matching tree of NamedShardings (`sharding.state_shardings`) to restore
        straight into; default: the first device.
    """
    restored = restore_params(Path(path) / "params", _abstract_pure(abstract_params, shardings))
    return _replace(abstract_params, restored)


def restore_module(
    path: str | os.PathLike,
    abstract_module: nnx.Module,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding.LogicalRules = sharding.DEFAULT_RULES,
) -> nnx.Module:
    """`abstract_module` (`nnx.eval_shape` of a model) with the converted weights at `path`,
    restored straight into `mesh` shardings (by the parameters' logical axes) if given."""
    graphdef, abstract = nnx.split(abstract_module, nnx.Param)  # the models hold only Params
    shardings = None if mesh is None else sharding.state_shardings(abstract, mesh, rules)
    return nnx.merge(graphdef, restore_state(path, abstract, shardings))


def _abstract_pure(abstract: nnx.State, shardings: nnx.State | None = None) -> dict:
    """An nnx.State -> its pure dict of ShapeDtypeStructs, keys as Orbax stores them (str)."""
    pure = nnx.to_pure_dict(abstract)
    if shardings is None:
        tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure)
    else:
        tree = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            pure,
            nnx.to_pure_dict(shardings),
        )
    return _string_keys(tree)


def _replace(abstract: nnx.State, restored: dict) -> nnx.State:
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, _original_keys(restored, nnx.to_pure_dict(abstract)))
    return state


def _string_keys(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def _original_keys(tree: Any, like: Any) -> Any:
    if isinstance(like, dict):
        return {k: _original_keys(tree[str(k)], v) for k, v in like.items()}
    return tree


def flatten_paths(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf} (the converters' target paths)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_paths(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_paths(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested dict; the inverse of `flatten_paths`."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, last = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def param_targets(
    abstract_module: nnx.Module, dtype: Any = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat '/'-joined parameter paths of a module -> shape and stored dtype (the module's own,
    or `dtype`): what a converter writes and a loader reads."""
    params = nnx.to_pure_dict(nnx.state(abstract_module, nnx.Param))
    return {
        path: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype if dtype is None else dtype)
        for path, leaf in flatten_paths(_string_keys(params)).items()
    }
