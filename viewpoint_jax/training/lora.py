"""A LoRA run's frozen base: loading it, and holding a run to the base it was trained on.

A LoRA run (`config.lora.rank` > 0) trains only `models.lora.trainable_filter`'s parameters;
its checkpoints hold those and their optimizer state, never the base. The base is the converted
DiT of `config.model.init_checkpoint`, read at every start (training, resuming, sampling) with
its matmul kernels in the compute dtype (`models.lora.base_dtypes`). `<workdir>/lora_base.json`
records the base's path and a fingerprint of its config.json; a run resumed or sampled against a
base whose config differs is refused in one line (`check_base`). A base that moved (another
machine, another mount) is found again by `locate_base` (`sample --lora_base`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import atomic_write_text
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import lora as lora_lib
from viewpoint_jax.models import weights

BASE_RECORD = "lora_base.json"


def base_fingerprint(checkpoint: str | os.PathLike) -> str:
    """sha256 of a converted DiT's config.json, keys sorted (its sizes, pattern and dtypes)."""
    config = weights.read_checkpoint_config(checkpoint, "Wan DiT")
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def recorded_base(workdir: str | os.PathLike) -> dict[str, str] | None:
    """The base the LoRA run in `workdir` recorded ({"path", "fingerprint"}), or None (a run
    that has not started, or one from before the record existed)."""
    record_file = Path(workdir) / BASE_RECORD
    return json.loads(record_file.read_text()) if record_file.is_file() else None


def check_base(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    *,
    record: bool = False,
    name: str = "config.model.init_checkpoint",
    remedy: str = "use that base or another --workdir",
) -> None:
    """Refuses (ValueError, one line naming `name` and saying `remedy`) a base whose fingerprint
    differs from the one the run in `workdir` recorded; `record`: write the record when the run
    has none (process 0)."""
    checkpoint = config.model.init_checkpoint
    fingerprint = base_fingerprint(checkpoint)
    recorded = recorded_base(workdir)
    if recorded is not None:
        if recorded["fingerprint"] != fingerprint:
            raise ValueError(
                f"{name} {checkpoint}: not the base this LoRA run was "
                f"trained on ({recorded['path']}, fingerprint {recorded['fingerprint'][:12]} vs "
                f"{fingerprint[:12]}); {remedy}"
            )
    elif record and jax.process_index() == 0:
        text = json.dumps({"path": str(Path(checkpoint).absolute()), "fingerprint": fingerprint})
        atomic_write_text(Path(workdir) / BASE_RECORD, text + "\n")


def locate_base(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    override: str | None = None,
    flag: str = "--lora_base",
) -> str:
    """The converted base DiT of the LoRA run in `workdir` on this machine: `override` (the
    base moved: another machine, another mount) if given, else the path the run recorded
    (`recorded_base`), else config.model.init_checkpoint (a relative path of the run's config,
    from the folder it was trained in). Checked against the run's fingerprint (`check_base`).

    Raises:
      UserError (one line): `override` is no converted DiT, or none of the paths exists here
        (naming the recorded path and `flag`). ValueError: the base found is not the run's.
    """
    recorded = recorded_base(workdir)
    if override is not None:
        if not (Path(override) / "config.json").is_file():
            raise UserError(f"{flag} {override}: not a converted DiT (no config.json)")
        found, name, remedy = override, flag, f"give {flag} the base the run was trained on"
    else:
        candidates = [recorded["path"]] if recorded else []
        candidates.append(config.model.init_checkpoint)
        found = next((p for p in candidates if p and (Path(p) / "config.json").is_file()), None)
        if found is None:
            where = f"{candidates[0]} (its {BASE_RECORD})" if recorded else repr(candidates[0])
            raise UserError(
                f"LoRA run {workdir}: its base checkpoint {where} is not on this machine; "
                f"pass {flag}=PATH, where that base is now"
            )
        name, remedy = "the base", f"pass {flag}=PATH of the base the run was trained on"
    located = ml_collections.ConfigDict({"model": {"init_checkpoint": str(found)}})
    check_base(workdir, located, name=name, remedy=remedy)
    return str(found)


def abstract_base(model_config: dit_lib.DiTConfig, train_norms: bool) -> nnx.State:
    """The frozen base of a LoRA model: its abstract params outside the trainable filter, the
    matmul kernels in the compute dtype."""
    _, _, base = lora_lib.split_params(dit_lib.abstract_model(model_config), train_norms)
    return lora_lib.base_dtypes(base, model_config.dtype)


def load_base(
    checkpoint: str | os.PathLike,
    model_config: dit_lib.DiTConfig,
    train_norms: bool,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding_lib.LogicalRules = sharding_lib.DEFAULT_RULES,
) -> tuple[nnx.State, nnx.State]:
    """(base, start) from the converted DiT at `checkpoint`, read once: the frozen base
    (`abstract_base`) into its shardings over `mesh` (default: the first device), and the
    checkpoint's values of the trainable parameters that are not adapters (the inflated patch
    embedding, and the norms with `train_norms`), the run's starting point for them."""
    plain = lora_lib.without_lora(model_config)
    _, abstract = nnx.split(dit_lib.abstract_model(plain), nnx.Param)
    shardings = None if mesh is None else sharding_lib.state_shardings(abstract, mesh, rules)

    def cast(params: nnx.State) -> nnx.State:
        return lora_lib.base_dtypes(params, model_config.dtype)

    params = dit_lib.load_pretrained_params(checkpoint, plain, shardings, cast=cast)
    start, base = nnx.split_state(params, lora_lib.trainable_filter(train_norms), ...)
    return base, start


def start_params(params: nnx.State, start: nnx.State) -> nnx.State:
    """`params` (a fresh trainable state) with the leaves `start` holds replaced by its values,
    in the dtype and sharding of `params`' leaves; the adapters stay as initialised."""
    known = dict(start.flat_state())

    def pick(path: tuple, variable: nnx.Variable) -> nnx.Variable:
        if path not in known:
            return variable
        old = variable.get_value()
        value = known[path].get_value().astype(old.dtype)
        return variable.replace(jax.device_put(value, old.sharding))

    return nnx.from_flat_state([(p, pick(p, v)) for p, v in params.flat_state()])


def base_arrays(
    config: ml_collections.ConfigDict,
    model_config: dit_lib.DiTConfig,
    mesh: jax.sharding.Mesh,
    rules: sharding_lib.LogicalRules,
    *,
    abstract: bool,
) -> tuple[Any, nnx.State | None]:
    """(base, start) of a LoRA trainer: `load_base` of config.model.init_checkpoint, or with
    `abstract` the base as sharded `jax.ShapeDtypeStruct`s and no start (a step that is
    compiled, never run)."""
    train_norms = bool(config.lora.train_norms)
    if not abstract:
        checkpoint = config.model.init_checkpoint
        return load_base(checkpoint, model_config, train_norms, mesh, rules)
    base = abstract_base(model_config, train_norms)
    shardings = sharding_lib.state_shardings(base, mesh, rules)
    return sharding_lib.with_shardings(base, shardings), None
