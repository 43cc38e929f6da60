"""Converted weights: the Orbax checkpoints every model loads (`convert/` writes them offline).

`<dir>/config.json` (the model's sizes) + `<dir>/params/` (an Orbax PyTree checkpoint of the
`nnx.Param` pure dict). `read_checkpoint_config` reads the first, `restore_state` the second
straight into a module's abstract state (and shardings). `restore_params` is the one Orbax read
of the package (converted `params/` and a training run's `<step>/state` alike): a config whose
sizes differ from a checkpoint's is named array by array before Orbax reads anything
(`check_matches`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from viewpoint_jax.common import sharding
from viewpoint_jax.common.progress import BYTES, Progress


class ConfigMismatchError(ValueError):
    """The checkpoint's arrays do not have the shapes (or keys) the config asks for."""


def saved_tree(path: str | os.PathLike) -> Any:
    """The metadata tree (leaves with `.shape`, `.dtype`) of an Orbax PyTree checkpoint.

    ValueError naming `path` if the metadata does not read (truncated or corrupt files).
    """
    path = Path(path).absolute()
    ignore_echoes_of_failed_reads()
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
    if metadata is None:  # Orbax logs a warning and returns None rather than raising
        raise ValueError(f"the metadata of checkpoint {path} does not read (truncated or corrupt)")
    return metadata.tree


def _is_echo_of_a_failed_read(error: BaseException | None) -> bool:
    """Orbax reads with `asyncio.run`: when one read of a corrupt checkpoint fails, the loop
    closes while tensorstore still completes the others, whose callbacks then raise "Event loop
    is closed" and whose errors nobody retrieves. The first error already reached the caller."""
    if isinstance(error, RuntimeError):
        return str(error) == "Event loop is closed"
    return isinstance(error, ValueError) and "tensorstore_spec" in str(error)


class _FailedReadEchoFilter(logging.Filter):
    """Drops asyncio's "exception was never retrieved" records of `_is_echo_of_a_failed_read`."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not _is_echo_of_a_failed_read(error)


def ignore_echoes_of_failed_reads() -> None:
    """Installs (once per process) the filters that keep `_is_echo_of_a_failed_read` noise,
    tracebacks printed after a corrupt checkpoint was already reported, off stderr; every other
    unraisable error and asyncio record goes where it went."""
    previous = sys.unraisablehook
    if getattr(previous, "_viewpoint_jax", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_echo_of_a_failed_read(unraisable.exc_value):
            previous(unraisable)

    hook._viewpoint_jax = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_FailedReadEchoFilter())


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


class _StepMetadataFilter(logging.Filter):
    """Drops Orbax's "Metadata file does not exist: <checkpoint>/_CHECKPOINT_METADATA": a run's
    `<step>/state` read as a checkpoint of its own has its step metadata one folder up, so the
    warning came with every sample and meant nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


logging.getLogger("absl").addFilter(_StepMetadataFilter())


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
    ignore_echoes_of_failed_reads()
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


def is_value_dict(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == {"value"} and not isinstance(node["value"], dict)


def saved_as_variables(tree: Any) -> bool:
    """Whether a saved params tree holds `{"value": leaf}` per Variable (an nnx.State) rather than
    the leaves themselves (a pure dict); follows the first branch down to a leaf."""
    node = tree
    while isinstance(node, dict) and node:
        if is_value_dict(node):
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
    restored = restore_params(Path(path) / "params", abstract_pure(abstract_params, shardings))
    return replace_leaves(abstract_params, restored)


def save_state(path: str | os.PathLike, params: nnx.State) -> None:
    """Writes `params` (an nnx.State of arrays) as the `params/` of a converted checkpoint
    directory `path`: the tree the converters write and `restore_state` reads."""
    tree = string_keys(nnx.to_pure_dict(params))
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


def abstract_pure(abstract: nnx.State, shardings: nnx.State | None = None) -> dict:
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
    return string_keys(tree)


def replace_leaves(abstract: nnx.State, restored: dict) -> nnx.State:
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, _original_keys(restored, nnx.to_pure_dict(abstract)))
    return state


def string_keys(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): string_keys(v) for k, v in tree.items()}
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
        for path, leaf in flatten_paths(string_keys(params)).items()
    }
