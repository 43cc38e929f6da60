"""Converter core: lazy readers for every format, validation, streamed atomic Orbax writes."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

import viewpoint_jax  # noqa: F401
from viewpoint_jax.common import fileio, sharding
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.convert import core
from viewpoint_jax.models import weights


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(4, 3, generator=g),
        "b.0.w": torch.randn(5, 2, generator=g).bfloat16(),
        "b.1.w": torch.randn(5, 2, generator=g).bfloat16(),
        "c.half": torch.randn(3, generator=g).half(),
        "d.int": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.scalar": torch.tensor(2.5),
    }


def _as_numpy(t):
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def _check_source(source, state):
    assert sorted(source.keys()) == sorted(state)
    for key, tensor in state.items():
        assert source.shape(key) == tuple(tensor.shape)
        got = source.get(key)
        want = _as_numpy(tensor)
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", ["file", "folder", "sharded", "pth", "wrapped_pth"])
def test_readers_return_stored_values(tmp_path, fmt):
    state = _state()
    (tmp_path / "config.json").write_text(json.dumps({"dim": 4}))
    if fmt in ("file", "folder"):
        save_torch(state, tmp_path / "m.safetensors")
        src = tmp_path / "m.safetensors" if fmt == "file" else tmp_path
    elif fmt == "sharded":
        keys = sorted(state)
        weight_map = {}
        for i, part in enumerate((keys[:3], keys[3:])):
            save_torch({k: state[k] for k in part}, tmp_path / f"s{i}.safetensors")
            weight_map.update({k: f"s{i}.safetensors" for k in part})
        (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        src = tmp_path
    else:
        torch.save({"state_dict": state} if fmt == "wrapped_pth" else state, tmp_path / "m.pth")
        src = tmp_path / "m.pth"
    source = core.open_checkpoint(src)
    assert source.config == {"dim": 4}
    _check_source(source, state)


def test_reader_handles_numpy_written_files(tmp_path):
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.ones((0, 2), np.int8)}
    save_numpy(arrays, tmp_path / "m.safetensors")
    source = core.open_checkpoint(tmp_path / "m.safetensors")
    assert source.config is None
    np.testing.assert_array_equal(source.get("x"), arrays["x"])
    assert source.get("y").shape == (0, 2)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        core.open_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"supported: a single \.safetensors"):
        core.open_checkpoint(tmp_path / "w.onnx")
    with pytest.raises(ValueError, match="no checkpoint found"):
        core.open_checkpoint(tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        core.open_checkpoint(tmp_path / "broken.safetensors")
    (tmp_path / "i.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "x.st"}}))
    with pytest.raises(FileNotFoundError, match="shard files that do not exist"):
        core.open_checkpoint(tmp_path / "i.safetensors.index.json")


def _rules_and_targets():
    targets = {
        "a/kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32),
        "b/w": jax.ShapeDtypeStruct((2, 2, 5), jnp.float32),
        "c": jax.ShapeDtypeStruct((3,), jnp.bfloat16),
    }
    rules = [
        core.TensorRule("a.weight", "a/kernel", transform=core.linear_kernel, source_shape=(4, 3)),
        *[core.TensorRule(f"b.{i}.w", "b/w", i, core.linear_kernel, (5, 2)) for i in range(2)],
        core.TensorRule("c.half", "c", source_shape=(3,)),
    ]
    return rules, targets


def test_convert_round_trip_into_shardings(tmp_path):
    state = _state()
    save_torch(state, tmp_path / "m.safetensors")
    rules, targets = _rules_and_targets()
    source = core.open_checkpoint(tmp_path / "m.safetensors")
    core.convert_checkpoint(
        source,
        rules,
        targets,
        tmp_path / "out",
        ignore=("d.int", "e.scalar"),
        extra_files={"config.json": "{}"},
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "params"]

    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    spec = jax.sharding.PartitionSpec(None, "tensor")
    abstract = {
        "a": {
            "kernel": jax.ShapeDtypeStruct(
                (3, 4), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, spec)
            )
        },
        "b": {"w": jax.ShapeDtypeStruct((2, 2, 5), jnp.float32)},
        "c": jax.ShapeDtypeStruct((3,), jnp.bfloat16),
    }
    params = weights.restore_params(tmp_path / "out" / "params", abstract)
    assert params["a"]["kernel"].sharding.spec == spec
    np.testing.assert_array_equal(params["a"]["kernel"], state["a.weight"].numpy().T)
    for i in range(2):
        np.testing.assert_array_equal(params["b"]["w"][i], state[f"b.{i}.w"].float().numpy().T)
    assert params["c"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(params["c"], np.float32),
        state["c.half"].float().numpy().astype(ml_dtypes.bfloat16).astype(np.float32),
    )


def test_validation_lists_every_problem_and_writes_nothing(tmp_path):
    state = _state()
    del state["b.1.w"]
    state["a.weight"] = torch.zeros(4, 4)
    save_torch(state, tmp_path / "m.safetensors")
    rules, targets = _rules_and_targets()
    with pytest.raises(core.ConversionError) as info:
        core.convert_checkpoint(
            core.open_checkpoint(tmp_path / "m.safetensors"), rules, targets, tmp_path / "out"
        )
    error = info.value
    assert error.missing == ["b.1.w"]
    assert error.unexpected == ["d.int", "e.scalar"]
    assert error.misshapen == [("a.weight", (4, 4), (4, 3))]
    assert "a.weight has shape (4, 4), expected (4, 3)" in str(error)
    assert not (tmp_path / "out").exists()


def test_rules_must_cover_every_slot(tmp_path):
    save_torch(_state(), tmp_path / "m.safetensors")
    rules, targets = _rules_and_targets()
    with pytest.raises(ValueError, match="b/w is not covered exactly once"):
        core.convert_checkpoint(
            core.open_checkpoint(tmp_path / "m.safetensors"),
            [r for r in rules if r.source != "b.1.w"],
            targets,
            tmp_path / "out",
            ignore=lambda k: True,
        )
    assert not (tmp_path / "out").exists()


def test_failed_write_keeps_existing_destination(tmp_path):
    save_torch(_state(), tmp_path / "m.safetensors")
    rules, targets = _rules_and_targets()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    source = core.open_checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(FileExistsError):
        core.convert_checkpoint(
            source, rules, targets, tmp_path / "out", ignore=("d.int", "e.scalar")
        )
    bad = [*rules[:-1], core.TensorRule("c.half", "c", transform=lambda x: x[:2])]
    with pytest.raises(ValueError, match="transformed shape"):
        core.convert_checkpoint(
            source, bad, targets, tmp_path / "out", ignore=("d.int", "e.scalar"), overwrite=True
        )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "out"]


def test_relative_destination_is_made_absolute(tmp_path, monkeypatch):
    """Orbax refuses relative paths; a user's `--dst out` must still convert (and restore)."""
    save_torch(_state(), tmp_path / "m.safetensors")
    rules, targets = _rules_and_targets()
    monkeypatch.chdir(tmp_path)
    written = core.convert_checkpoint(
        core.open_checkpoint("m.safetensors"), rules, targets, "out", ignore=("d.int", "e.scalar")
    )
    assert written == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["params"]
    abstract = {
        "a": {"kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32)},
        "b": {"w": jax.ShapeDtypeStruct((2, 2, 5), jnp.float32)},
        "c": jax.ShapeDtypeStruct((3,), jnp.bfloat16),
    }
    params = weights.restore_params("out/params", abstract)
    np.testing.assert_array_equal(params["a"]["kernel"], _state()["a.weight"].numpy().T)


def test_restore_with_other_sizes_names_the_arrays(tmp_path):
    """A config whose sizes differ from the converted weights' is named key by key, before
    Orbax answers with its `strict=False` advice."""
    save_torch(_state(), tmp_path / "m.safetensors")
    rules, targets = _rules_and_targets()
    source = core.open_checkpoint(tmp_path / "m.safetensors")
    core.convert_checkpoint(source, rules, targets, tmp_path / "out", ignore=("d.int", "e.scalar"))
    abstract = {
        "a": {"kernel": jax.ShapeDtypeStruct((3, 8), jnp.float32)},
        "b": {"w": jax.ShapeDtypeStruct((2, 2, 5), jnp.float32)},
        "extra": jax.ShapeDtypeStruct((1,), jnp.float32),
    }
    with pytest.raises(weights.ConfigMismatchError) as info:
        weights.restore_params(tmp_path / "out" / "params", abstract)
    message = str(info.value)
    assert str(tmp_path / "out" / "params") in message
    assert "a/kernel: checkpoint (3, 4) vs config (3, 8)" in message
    assert "extra: not in the checkpoint" in message
    assert "c: not in the config" in message
    assert "strict" not in message
    # A partial restore may leave out what the checkpoint has beyond it, not mismatch it.
    with pytest.raises(weights.ConfigMismatchError, match="a/kernel"):
        weights.restore_params(tmp_path / "out" / "params", abstract, partial=True)
    partial = weights.restore_params(
        tmp_path / "out" / "params", {"b": abstract["b"]}, partial=True
    )
    assert partial["b"]["w"].shape == (2, 2, 5)


def test_destination_without_space_is_refused_before_writing(tmp_path, monkeypatch):
    save_torch(_state(), tmp_path / "m.safetensors")
    rules, targets = _rules_and_targets()
    usage = shutil.disk_usage(tmp_path)
    # The filesystem as it is, but with less free space than the 134 bytes the arrays take.
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: usage._replace(free=100))
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'out'}: it needs about"):
        core.convert_checkpoint(
            core.open_checkpoint(tmp_path / "m.safetensors"),
            rules,
            targets,
            tmp_path / "out",
            ignore=("d.int", "e.scalar"),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_truncated_safetensors_is_named_before_any_tensor_is_read(tmp_path):
    path = tmp_path / "model.safetensors"
    save_numpy({"a": np.ones((64, 64), np.float32), "b": np.zeros((8,), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # an interrupted download
    with pytest.raises(ValueError, match=r"model.safetensors: truncated: the header lists \d+ "):
        core.open_checkpoint(path)


def test_legacy_non_zip_pth_is_read(tmp_path):
    """torch's pre-1.6 format cannot be memory-mapped: it is read whole instead of refused."""
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    path = tmp_path / "old.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    source = core.open_checkpoint(path)
    np.testing.assert_array_equal(source.get("w"), state["w"].numpy())
