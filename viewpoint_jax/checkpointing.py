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
leaves the last complete checkpoint as the latest one. A save that fails stops the run at the
next step (`Checkpointer`); a resume skips a checkpoint that does not read back, naming it
(`Checkpointer.restore_latest`); a config whose sizes differ from a checkpoint's is named array
by array before Orbax reads anything (`check_matches`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental.multihost_utils import sync_global_devices

from viewpoint_jax import sharding
from viewpoint_jax.progress import BYTES, Progress


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
        check_matches(
            saved_tree(self.directory / str(step) / "state"),
            abstract_state,
            f"checkpoint {self.directory / str(step)}",
        )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = (self.directory / str(step) / "data").is_dir()
        if _has_state(data_iterator) and has_data:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
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
            except ConfigMismatchError:
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


class ConfigMismatchError(ValueError):
    """The checkpoint's arrays do not have the shapes (or keys) the config asks for."""


def saved_tree(path: str | os.PathLike) -> Any:
    """The metadata tree (leaves with `.shape`, `.dtype`) of an Orbax PyTree checkpoint."""
    return ocp.StandardCheckpointer().metadata(Path(path).absolute()).item_metadata.tree


def _key_name(key: Any) -> str:
    for attribute in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'/'-joined leaf path -> shape, for any pytree whose array leaves have `.shape` (abstract
    states, nnx.Variables, Orbax metadata trees: all give the same paths for the same state)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    shapes = {}
    for path, leaf in flat:
        if getattr(leaf, "shape", None) is None:
            continue
        names = [_key_name(k) for k in path]
        if names[-1] == "value":  # an nnx.Variable's payload: the variable's path names it
            names.pop()
        shapes["/".join(names)] = tuple(leaf.shape)
    return shapes


def check_matches(saved: Any, abstract: Any, what: str, *, partial: bool = False) -> None:
    """Raises ConfigMismatchError listing (up to 10) keys whose shapes differ or that only one
    side has, before Orbax is asked (its own error only advises `strict=False`).

    Args:
      saved: the checkpoint's metadata tree (`saved_tree`).
      abstract: the target the config builds (ShapeDtypeStructs, any pytree).
      what: names the checkpoint in the message.
      partial: the target reads only a subtree; keys only the checkpoint has are fine.
    """
    saved_shapes, wanted_shapes = leaf_shapes(saved), leaf_shapes(abstract)
    lines = [
        f"{key}: checkpoint {saved_shapes[key]} vs config {shape}"
        for key, shape in wanted_shapes.items()
        if key in saved_shapes and saved_shapes[key] != shape
    ]
    lines += [f"{key}: not in the checkpoint" for key in wanted_shapes if key not in saved_shapes]
    if not partial:
        lines += [f"{key}: not in the config" for key in saved_shapes if key not in wanted_shapes]
    # The weights first: the optimizer moments repeat their shapes.
    lines.sort(key=lambda line: line.startswith("opt_state"))
    if lines:
        shown = "\n  ".join(lines[:10])
        more = f"\n  ... and {len(lines) - 10} more" if len(lines) > 10 else ""
        raise ConfigMismatchError(
            f"{what} does not match the config ({len(lines)} arrays differ; was it written "
            f"with other model sizes?):\n  {shown}{more}"
        )


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
    check_matches(saved_tree(path), abstract_tree, f"checkpoint {path}", partial=partial)
    nbytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_tree))
    # Orbax reads the whole tree in one call: a line when it starts and one when it is done.
    reading = Progress(
        nbytes, f"reading {path}", unit=BYTES, announce=True, enabled=jax.process_index() == 0
    )
    with reading, ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=abstract_tree,
                restore_args=jax.tree.map(_restore_arg, abstract_tree),
                partial_restore=partial,
            ),
        )
        reading.update(nbytes)
    return restored


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
    saved = saved_tree(path)
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


def save_state(path: str | os.PathLike, params: nnx.State) -> None:
    """Writes `params` (an nnx.State of arrays) as the `params/` of a converted checkpoint
    directory `path`: the tree the converters write and `restore_state` reads."""
    tree = _string_keys(nnx.to_pure_dict(params))
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(Path(path).absolute() / "params", args=ocp.args.PyTreeSave(tree))


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
