"""Device mesh and logical-axis sharding rules.

Modules annotate parameters with logical axis names (`nnx.with_partitioning(init, ("embed", "mlp"))`)
and activations with `constrain(x, ("batch", "length", "embed"))`. A rule table maps logical names
to the mesh axes `("data", "fsdp", "sequence", "tensor")`. Nothing here needs a mesh to import:
outside `use_mesh(...)` the constraints are no-ops, so single-device code runs unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "sequence", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
# Parameters: "embed" is the model width (FSDP-sharded), "mlp"/"heads" are tensor-parallel dims.
# Activations: "batch" over data+fsdp, "length" (tokens) over sequence.
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", None),
    ("norm", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
)

_CONTEXT: contextvars.ContextVar[tuple[Mesh, LogicalRules] | None] = contextvars.ContextVar(
    "viewpoint_mesh_context", default=None
)


def make_mesh(
    axis_sizes: Mapping[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a mesh with axes `MESH_AXES`.

    Args:
      axis_sizes: sizes per axis name (missing axes are 1; one axis may be -1 = "the rest"), or a
        sequence of 4 sizes in `MESH_AXES` order.
      devices: defaults to `jax.devices()` (all processes' devices).
    Raises:
      ValueError naming the axes when the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(axis_sizes, Mapping):
        if len(axis_sizes) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(axis_sizes)} must have {len(MESH_AXES)} entries")
        axis_sizes = dict(zip(MESH_AXES, axis_sizes))
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {len(devices)} devices"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if any(s < 1 for s in sizes) or math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available"
        )
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # odd device topologies (CPU, subsets): plain row-major order
        device_array = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(device_array, MESH_AXES)


def logical_to_mesh_spec(
    logical_axes: Sequence[str | None] | PartitionSpec | None, rules: LogicalRules = DEFAULT_RULES
) -> PartitionSpec:
    """Maps logical axis names to a mesh PartitionSpec; unknown names raise, None stays None.

    A mesh axis is used at most once per spec (the first logical axis claiming it wins), as
    `jax.sharding` requires.
    """
    if logical_axes is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out: list[Any] = []
    for name in logical_axes:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise ValueError(
                f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}"
            )
        target = table[name]
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        free = tuple(t for t in targets if t not in used)
        used.update(free)
        out.append(None if not free else free[0] if len(free) == 1 else free)
    return PartitionSpec(*out)


def _fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide the dimension (e.g. tiny test models on 8 devices)."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        keep = []
        size = 1
        for axis in axes:
            if dim % (size * mesh.shape[axis]) == 0:
                keep.append(axis)
                size *= mesh.shape[axis]
        fitted.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return PartitionSpec(*fitted)


def named_sharding(
    mesh: Mesh,
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int] | None = None,
    rules: LogicalRules = DEFAULT_RULES,
) -> NamedSharding:
    """NamedSharding for an array with these logical axes; with `shape`, indivisible axes are dropped."""
    spec = logical_to_mesh_spec(logical_axes, rules)
    if shape is not None:
        spec = _fit_spec_to_shape(spec, shape, mesh)
    return NamedSharding(mesh, spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """NamedShardings for every leaf of an NNX state (abstract or concrete), from its annotations.

    Leaves without annotations are replicated.
    """

    def leaf_sharding(variable: Any) -> Any:
        if isinstance(variable, nnx.Variable):
            logical = variable.get_metadata().get("out_sharding")
            shape = getattr(variable.get_value(), "shape", ())
            return variable.replace(named_sharding(mesh, logical, shape, rules))
        shape = getattr(variable, "shape", ())
        return named_sharding(mesh, None, shape, rules)

    return jax.tree.map(leaf_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Iterator[Mesh]:
    """Activates `constrain` for code traced inside this context."""
    token = _CONTEXT.set((mesh, tuple(rules)))
    try:
        yield mesh
    finally:
        _CONTEXT.reset(token)


def current_context() -> tuple[Mesh, LogicalRules] | None:
    """The (mesh, rules) of the innermost `use_mesh`, or None outside one."""
    return _CONTEXT.get()


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names inside `use_mesh`; the identity outside it."""
    context = _CONTEXT.get()
    if context is None:
        return x
    mesh, rules = context
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, logical_axes, x.shape, rules))


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` carrying the matching leaves of `shardings`."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Every host's rows -> global arrays sharded over the batch axes of the mesh."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value) for key, value in local.items()
    }
