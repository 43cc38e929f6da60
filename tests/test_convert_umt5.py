"""umT5 conversion from both published layouts, checked against transformers' UMT5EncoderModel."""

import runpy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import UMT5Config as HFConfig
from wan_release import to_wan_umt5_layout, umt5_reference

from viewpoint_jax.common.sharding import make_mesh, use_mesh
from viewpoint_jax.convert import core
from viewpoint_jax.convert.umt5 import convert_umt5, detect_layout
from viewpoint_jax.models import umt5

REPO = Path(__file__).resolve().parent.parent
VOCAB, LENGTH = 96, 512


@pytest.fixture(scope="module")
def reference():
    """A tiny random UMT5EncoderModel (3 layers, non-trivial norms and biases), its inputs and
    its fp32 outputs."""
    model = umt5_reference(VOCAB)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (3, LENGTH))
    mask = np.zeros((3, LENGTH), np.int64)
    for row, n in enumerate((LENGTH, 300, 7)):  # full, past max_distance, short
        mask[row, :n] = 1
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return dict(model=model, ids=ids, mask=mask, out=out.last_hidden_state.numpy())


# One jitted forward for all tests: same-sized encoders share the compiled program.
_forward = jax.jit(lambda encoder, ids, mask: encoder(ids, mask))


def _run(directory, ids, mask):
    return np.asarray(_forward(umt5.load_umt5(directory), jnp.asarray(ids), jnp.asarray(mask)))


@pytest.fixture(scope="module")
def converted_hf(reference, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hf")
    reference["model"].save_pretrained(tmp_path / "hf")
    config = convert_umt5(tmp_path / "hf", tmp_path / "out")
    return config, tmp_path / "out"


def test_transformers_folder_matches_reference(reference, converted_hf):
    config, out_dir = converted_hf
    assert (config.vocab_size, config.d_model, config.num_heads, config.d_kv) == (VOCAB, 32, 4, 8)
    assert (config.d_ff, config.num_layers, config.num_buckets) == (48, 3, 32)
    assert config.param_dtype == "float32"
    out = _run(out_dir, reference["ids"], reference["mask"])
    # fp32 on CPU: max |error| ~2e-6 for outputs of magnitude ~4 (padded positions included).
    np.testing.assert_allclose(out, reference["out"], atol=2e-5, rtol=1e-5)


def test_wan_pth_matches_reference(reference, tmp_path):
    torch.save(to_wan_umt5_layout(reference["model"].state_dict()), tmp_path / "umt5.pth")
    config = convert_umt5(tmp_path / "umt5.pth", tmp_path / "out", dtype="float32")
    assert (config.num_layers, config.eps, config.max_distance) == (3, 1e-6, 128)
    out = _run(tmp_path / "out", reference["ids"], reference["mask"])
    np.testing.assert_allclose(out, reference["out"], atol=2e-5, rtol=1e-5)


def test_bf16_wan_checkpoint_keeps_bf16(reference, tmp_path):
    """Wan ships bf16 weights: dtype=None keeps them (and computes in bf16)."""
    state = {
        k: v.bfloat16() for k, v in to_wan_umt5_layout(reference["model"].state_dict()).items()
    }
    torch.save(state, tmp_path / "umt5.pth")
    config = convert_umt5(tmp_path / "umt5.pth", tmp_path / "out")
    assert (config.param_dtype, config.dtype) == ("bfloat16", "bfloat16")
    encoder = umt5.load_umt5(tmp_path / "out")
    assert encoder.token_embedding[...].dtype == jnp.bfloat16
    expected = np.asarray(state["token_embedding.weight"].float())
    np.testing.assert_array_equal(np.asarray(encoder.token_embedding[...], np.float32), expected)
    out = np.asarray(
        _forward(encoder, jnp.asarray(reference["ids"]), jnp.asarray(reference["mask"]))
    )
    valid = reference["mask"][..., None] > 0
    # bf16 weights and matmuls: error ~1e-2 on outputs of magnitude ~4.
    error = np.abs(out - reference["out"])[np.broadcast_to(valid, out.shape)]
    assert error.max() < 0.1 and error.mean() < 0.02


def test_full_seq2seq_folder_uses_encoder_only(tmp_path):
    """A UMT5ForConditionalGeneration folder: decoder and LM head are skipped, not an error."""
    from transformers import UMT5ForConditionalGeneration

    torch.manual_seed(1)
    hf_config = HFConfig(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=4,
        num_heads=2,
        d_ff=24,
        num_layers=1,
        relative_attention_max_distance=64,
        dropout_rate=0.0,
    )
    model = UMT5ForConditionalGeneration(hf_config).eval()
    model.save_pretrained(tmp_path / "hf")
    config = convert_umt5(tmp_path / "hf", tmp_path / "out")
    assert config.max_distance == 64  # read from config.json
    ids = np.arange(40)[None] % VOCAB
    with torch.no_grad():
        expected = model.encoder(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(
        _run(tmp_path / "out", ids, np.ones_like(ids)), expected, atol=2e-5, rtol=1e-5
    )


def test_load_into_mesh(reference, converted_hf):
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    encoder = umt5.load_umt5(converted_hf[1], mesh=mesh)
    q = encoder.blocks.q.kernel[...]
    assert q.shape == (3, 32, 32)
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    with use_mesh(mesh):  # activation constraints are traced in: a fresh jit, not `_forward`
        out = jax.jit(lambda e, i, m: e(i, m))(
            encoder, jnp.asarray(reference["ids"]), jnp.asarray(reference["mask"])
        )
    np.testing.assert_allclose(np.asarray(out), reference["out"], atol=2e-5, rtol=1e-5)


def test_cli_dispatches_to_convert_umt5(reference, tmp_path, monkeypatch, capsys):
    torch.save(to_wan_umt5_layout(reference["model"].state_dict()), tmp_path / "umt5.pth")
    argv = [
        "convert_wan.py",
        "umt5",
        "--src",
        str(tmp_path / "umt5.pth"),
        "--dst",
        str(tmp_path / "out"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("viewpoint_jax.convert_wan", run_name="__main__", alter_sys=True)
    assert exit_info.value.code in (0, None)
    assert umt5.read_config(tmp_path / "out").num_layers == 3


# --- Bad input ----------------------------------------------------------------------------------


def _tiny_wan_state(num_layers=2):
    d, inner, f, buckets, heads = 16, 16, 24, 32, 2
    state = {"token_embedding.weight": torch.randn(VOCAB, d), "norm.weight": torch.ones(d)}
    for i in range(num_layers):
        shapes = {
            "norm1": (d,),
            "attn.q": (inner, d),
            "attn.k": (inner, d),
            "attn.v": (inner, d),
            "attn.o": (d, inner),
            "pos_embedding.embedding": (buckets, heads),
            "norm2": (d,),
            "ffn.gate.0": (f, d),
            "ffn.fc1": (f, d),
            "ffn.fc2": (d, f),
        }
        state.update({f"blocks.{i}.{k}.weight": torch.randn(s) for k, s in shapes.items()})
    return state


def test_reports_all_missing_unexpected_misshapen(tmp_path):
    state = _tiny_wan_state()
    del state["blocks.1.attn.k.weight"], state["blocks.0.norm2.weight"]
    state["blocks.1.ffn.fc2.weight"] = torch.randn(16, 23)
    state["blocks.0.extra.weight"] = torch.randn(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(core.ConversionError) as error:
        convert_umt5(tmp_path / "bad.pth", tmp_path / "out")
    message = str(error.value)
    for name in (
        "blocks.1.attn.k.weight",
        "blocks.0.norm2.weight",
        "blocks.0.extra.weight",
        "blocks.1.ffn.fc2.weight has shape (16, 23), expected (16, 24)",
    ):
        assert name in message
    assert not (tmp_path / "out").exists()


def test_t5_checkpoint_is_named(tmp_path):
    state = _tiny_wan_state()
    del state["blocks.1.pos_embedding.embedding.weight"]  # T5 shares layer 0's table
    torch.save(state, tmp_path / "t5.pth")
    with pytest.raises(core.ConversionError, match="T5 checkpoint") as error:
        convert_umt5(tmp_path / "t5.pth", tmp_path / "out")
    assert "blocks.1.pos_embedding.embedding.weight" in str(error.value)


def test_unknown_layout_and_existing_destination(tmp_path):
    torch.save({"model.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"unknown umT5 checkpoint layout.*transformers"):
        convert_umt5(tmp_path / "other.pth", tmp_path / "out")
    assert detect_layout(["shared.weight"]) == 1 and detect_layout(["token_embedding.weight"]) == 0
    torch.save(_tiny_wan_state(1), tmp_path / "ok.pth")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        convert_umt5(tmp_path / "ok.pth", tmp_path / "out")
    with pytest.raises(ValueError, match="dtype"):
        convert_umt5(tmp_path / "ok.pth", tmp_path / "out2", dtype="float16")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        umt5.load_umt5(tmp_path / "out")
