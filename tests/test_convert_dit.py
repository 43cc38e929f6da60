"""DiT conversion: parity with diffusers' WanTransformer3DModel through both key layouts."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import viewpoint_jax  # noqa: F401  (flax config)
from viewpoint_jax.convert import core
from viewpoint_jax.convert import dit as convert_dit_lib
from viewpoint_jax.models import dit as dit_lib

TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=24,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=96,
    num_layers=2,
    cross_attn_norm=True,
    eps=1e-6,
    rope_max_seq_len=1024,
)

# diffusers -> original Wan2.1 names (Wan's norm3 is diffusers' norm2: the cross-attn LayerNorm).
_RENAMES = [
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."),
    ("attn2.to_", "cross_attn."),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    (".norm2.", ".norm3."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]


def to_original_layout(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key == "scale_shift_table":
            out["head.modulation"] = value
            continue
        new = key.replace("scale_shift_table", "modulation")
        for old, repl in _RENAMES:
            new = new.replace(old, repl)
        out[new] = value
    return out


def original_config(cfg: dict) -> dict:
    return dict(
        dim=cfg["num_attention_heads"] * cfg["attention_head_dim"],
        ffn_dim=cfg["ffn_dim"],
        num_heads=cfg["num_attention_heads"],
        num_layers=cfg["num_layers"],
        in_dim=cfg["in_channels"],
        out_dim=cfg["out_channels"],
        freq_dim=cfg["freq_dim"],
        text_len=512,
        eps=cfg["eps"],
        model_type="t2v",
        text_dim=cfg["text_dim"],
    )


@pytest.fixture(scope="module")
def reference():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY).eval()
    # Random non-trivial norms and modulation tables (the defaults are ones/zeros).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
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


def _save(state, folder, fmt, config):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(state, folder / "diffusion_pytorch_model.safetensors")
    elif fmt == "sharded":
        keys = sorted(state)
        halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
        weight_map = {}
        for i, part in enumerate(halves):
            name = f"model-{i + 1:05d}-of-00002.safetensors"
            save_file({k: state[k] for k in part}, folder / name)
            weight_map.update({k: name for k in part})
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        torch.save(state, folder / "model.pth")


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
        state, config = to_original_layout(state), original_config(TINY)
    else:
        config = {"_class_name": "WanTransformer3DModel", **TINY, "image_dim": None}
    _save(state, tmp_path / "src", fmt, config)
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
    _save(to_original_layout(state), tmp_path / "src", "safetensors", original_config(TINY))
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
    state = to_original_layout(state)
    del state["blocks.1.ffn.0.weight"]
    state["blocks.0.self_attn.q.weight"] = torch.zeros(48, 40)
    state["blocks.7.extra.weight"] = torch.zeros(3)
    _save(state, tmp_path / "src", "safetensors", original_config(TINY))
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
    _save(to_original_layout(state), tmp_path / "src", "safetensors", original_config(TINY))
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
    _save(to_original_layout(state), tmp_path / "src", "safetensors", original_config(TINY))
    cmd = [
        sys.executable,
        "tools/convert_wan.py",
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
        [*cmd[:4], str(tmp_path / "nope"), "--dst", str(tmp_path / "d2")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_load_into_mesh_shardings(reference, tmp_path):
    from viewpoint_jax import sharding

    state, _, _ = reference
    _save(to_original_layout(state), tmp_path / "src", "safetensors", original_config(TINY))
    convert_dit_lib.convert_dit(tmp_path / "src", tmp_path / "dst")
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    sharded = nnx.state(dit_lib.load_dit(tmp_path / "dst", mesh=mesh), nnx.Param)
    plain = nnx.state(dit_lib.load_dit(tmp_path / "dst"), nnx.Param)
    kernel = sharded["blocks"]["ffn_in"]["kernel"].get_value()  # (layers, embed, mlp)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    np.testing.assert_array_equal(kernel[1], state["blocks.1.ffn.net.0.proj.weight"].numpy().T)
    jax.tree.map(np.testing.assert_array_equal, sharded, plain)
