"""DiT conversion: parity with diffusers' WanTransformer3DModel through both key layouts."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from wan_release import (
    DIT_TINY,
    dit_reference,
    original_dit_config,
    save_dit,
    to_original_dit_layout,
)

import viewpoint_jax  # noqa: F401  (flax config)
from viewpoint_jax.convert import core
from viewpoint_jax.convert import dit as convert_dit_lib
from viewpoint_jax.models import dit as dit_lib


@pytest.fixture(scope="module")
def reference():
    model = dit_reference()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 3, 8, 8)).astype(np.float32)  # torch (B, C, F, H, W)
    t = np.array([10.0, 700.0], np.float32)
    ctx = rng.standard_normal((2, 7, 32)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, (x, t, ctx), out.numpy()


@nnx.jit
def _apply(model, x, t, ctx):
    return model(x, t, ctx)


def _jax_forward(model, x, t, ctx):
    y = _apply(model, np.moveaxis(x, 1, -1), t, ctx)
    return np.moveaxis(np.asarray(y), -1, 1)


@pytest.mark.parametrize(
    "layout,fmt",
    [
        ("diffusers", "safetensors"),
        ("original", "safetensors"),
        ("original", "sharded"),
        ("original", "pth"),
    ],
)
def test_parity_with_diffusers(reference, tmp_path, layout, fmt):
    state, (x, t, ctx), expected = reference
    if layout == "original":
        state, config = to_original_dit_layout(state), original_dit_config(DIT_TINY)
    else:
        config = {"_class_name": "WanTransformer3DModel", **DIT_TINY, "image_dim": None}
    save_dit(state, tmp_path / "src", fmt, config)
    written = convert_dit_lib.convert_dit(
        tmp_path / "src", tmp_path / "dst", attention_pattern="pano"
    )
    assert written.num_layers == 2 and written.dim == 48
    model = dit_lib.load_dit(tmp_path / "dst")
    got = _jax_forward(model, x, t, ctx)
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    # Measured: 2.6e-7 from both layouts (fp32 on CPU); the issue asks for 1e-5.
    assert rel < 2e-6, f"max abs error relative to output scale: {rel:.2e}"


def test_inflation_ignores_condition_channels(reference, tmp_path):
    state, (x, t, ctx), expected = reference
    save_dit(
        to_original_dit_layout(state),
        tmp_path / "src",
        "safetensors",
        original_dit_config(DIT_TINY),
    )
    convert_dit_lib.convert_dit(
        tmp_path / "src", tmp_path / "dst", in_dim=33, attention_pattern="pano"
    )
    model = dit_lib.load_dit(tmp_path / "dst")
    assert model.config.in_dim == 33
    condition = np.random.default_rng(1).standard_normal((2, 17, 3, 8, 8)).astype(np.float32)
    got = _jax_forward(model, np.concatenate([x, condition], axis=1), t, ctx)
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())


def test_bad_tensors_listed_in_one_error(reference, tmp_path):
    state, _, _ = reference
    state = to_original_dit_layout(state)
    del state["blocks.1.ffn.0.weight"]
    state["blocks.0.self_attn.q.weight"] = torch.zeros(48, 40)
    state["blocks.7.extra.weight"] = torch.zeros(3)
    save_dit(state, tmp_path / "src", "safetensors", original_dit_config(DIT_TINY))
    with pytest.raises(core.ConversionError) as info:
        convert_dit_lib.convert_dit(tmp_path / "src", tmp_path / "dst")
    message = str(info.value)
    for name in ("blocks.1.ffn.0.weight", "blocks.0.self_attn.q.weight", "blocks.7.extra.weight"):
        assert name in message
    assert not (tmp_path / "dst").exists()


def test_unknown_layout_names_supported_ones(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="supported layouts: original"):
        convert_dit_lib.convert_dit(tmp_path / "m.safetensors", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_failure_while_writing_leaves_nothing(reference, tmp_path, monkeypatch):
    state, _, _ = reference
    save_dit(
        to_original_dit_layout(state),
        tmp_path / "src",
        "safetensors",
        original_dit_config(DIT_TINY),
    )
    real_get = core.TensorSource.get

    def failing_get(self, key):
        if key == "blocks.1.ffn.2.weight":
            raise OSError("disk went away")
        return real_get(self, key)

    monkeypatch.setattr(core.TensorSource, "get", failing_get)
    with pytest.raises(Exception, match="disk went away"):
        convert_dit_lib.convert_dit(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_cli_converts(reference, tmp_path):
    import subprocess
    import sys

    state, _, _ = reference
    save_dit(
        to_original_dit_layout(state),
        tmp_path / "src",
        "safetensors",
        original_dit_config(DIT_TINY),
    )
    cmd = [
        sys.executable,
        "-m",
        "viewpoint_jax.convert_wan",
        "dit",
        "--src",
        str(tmp_path / "src"),
        "--dst",
        str(tmp_path / "dst"),
        "--in_dim",
        "33",
        "--dtype",
        "bfloat16",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    config = dit_lib.read_config(tmp_path / "dst")
    assert config.in_dim == 33 and config.param_dtype == "bfloat16"
    bad = subprocess.run(
        [*cmd[:5], str(tmp_path / "nope"), "--dst", str(tmp_path / "d2")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_load_into_mesh_shardings(reference, tmp_path):
    from viewpoint_jax.common import sharding

    state, _, _ = reference
    save_dit(
        to_original_dit_layout(state),
        tmp_path / "src",
        "safetensors",
        original_dit_config(DIT_TINY),
    )
    convert_dit_lib.convert_dit(tmp_path / "src", tmp_path / "dst")
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    sharded = nnx.state(dit_lib.load_dit(tmp_path / "dst", mesh=mesh), nnx.Param)
    plain = nnx.state(dit_lib.load_dit(tmp_path / "dst"), nnx.Param)
    kernel = sharded["blocks"]["ffn_in"]["kernel"].get_value()  # (layers, embed, mlp)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    np.testing.assert_array_equal(kernel[1], state["blocks.1.ffn.net.0.proj.weight"].numpy().T)
    jax.tree.map(np.testing.assert_array_equal, sharded, plain)
