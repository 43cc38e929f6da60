"""Wan VAE converter: both key layouts, inferred sizes, one error listing every bad tensor."""

import json
import runpy
import sys

import numpy as np
import pytest
import torch
from wan_release import to_original_vae_layout, vae_reference

import viewpoint_jax  # noqa: F401  (flax config)
from viewpoint_jax.convert import core
from viewpoint_jax.convert import vae as convert_lib
from viewpoint_jax.models import vae as vae_lib


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = vae_reference()
    folder = tmp_path_factory.mktemp("vae_src")
    ref.save_pretrained(folder / "diffusers")
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    return {"folder": folder, "state": state}


def test_original_names_agree_with_diffusers_own_mapping(reference):
    """diffusers' independent Wan -> diffusers key map turns our original names back exactly."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    original = to_original_vae_layout(reference["state"])
    assert "encoder.downsamples.2.resample.1.weight" in original
    assert "decoder.upsamples.4.shortcut.weight" in original
    assert "conv1.weight" in original and "encoder.head.2.weight" in original
    back = convert_wan_vae_to_diffusers(original)
    assert sorted(back) == sorted(reference["state"])
    for key, value in back.items():
        assert torch.equal(value, reference["state"][key]), key


def test_both_layouts_give_the_same_model(reference, tmp_path):
    torch.save(to_original_vae_layout(reference["state"]), tmp_path / "Wan2.1_VAE.pth")
    convert_lib.convert_vae(tmp_path / "Wan2.1_VAE.pth", tmp_path / "from_pth")
    convert_lib.convert_vae(reference["folder"] / "diffusers", tmp_path / "from_diffusers")
    config = json.loads((tmp_path / "from_pth" / "config.json").read_text())
    assert (config["base_dim"], config["z_dim"], config["num_res_blocks"]) == (4, 16, 2)
    assert config["dim_mult"] == [1, 2, 4, 4]
    assert config["temporal_downsample"] == [False, True, True]
    assert config["latents_mean"] == list(vae_lib.WAN21_LATENTS_MEAN)
    a = vae_lib.numpy_params(vae_lib.load_vae(tmp_path / "from_pth"))
    b = vae_lib.numpy_params(vae_lib.load_vae(tmp_path / "from_diffusers"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    state = reference["state"]
    # Layouts: Conv3d (O, I, T, H, W) -> (T, H, W, I, O); Conv2d (O, I, H, W) -> (H, W, I, O).
    w = state["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"].numpy()
    np.testing.assert_array_equal(a["decoder/up_blocks/4/shortcut/kernel"],
                                  w.transpose(2, 3, 4, 1, 0))  # fmt: skip
    w = state["encoder.down_blocks.2.resample.1.weight"].numpy()
    np.testing.assert_array_equal(
        a["encoder/down_blocks/2/resample/kernel"], w.transpose(2, 3, 1, 0)
    )
    g = state["decoder.mid_block.attentions.0.norm.gamma"].numpy()
    np.testing.assert_array_equal(a["decoder/mid/attention/norm/scale"], g.reshape(-1))


def test_bad_tensors_listed_in_one_error(reference, tmp_path):
    from safetensors.torch import save_file

    state = dict(reference["state"])
    del state["decoder.conv_out.bias"]
    state["encoder.extra.weight"] = torch.zeros(3)
    state["encoder.mid_block.attentions.0.proj.weight"] = torch.zeros(8, 16, 1, 1)
    (tmp_path / "bad").mkdir()
    save_file(state, tmp_path / "bad" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(core.ConversionError) as info:
        convert_lib.convert_vae(tmp_path / "bad", tmp_path / "out")
    message = str(info.value)
    assert "missing tensors (1): decoder.conv_out.bias" in message
    assert "unexpected tensors (1): encoder.extra.weight" in message
    assert (
        "encoder.mid_block.attentions.0.proj.weight has shape (8, 16, 1, 1), "
        "expected (16, 16, 1, 1)" in message
    )
    assert not (tmp_path / "out").exists()


def test_not_a_vae_names_both_layouts(tmp_path):
    from safetensors.torch import save_file

    save_file({"blocks.0.weight": torch.zeros(2)}, tmp_path / "x.safetensors")
    both = r"encoder\.conv1\.weight.*encoder\.conv_in\.weight"
    with pytest.raises(core.ConversionError, match=both):
        convert_lib.convert_vae(tmp_path / "x.safetensors", tmp_path / "out")


def test_wan22_vae_refused(reference, tmp_path):
    folder = tmp_path / "wan22"
    folder.mkdir()
    src = reference["folder"] / "diffusers"
    for f in src.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["is_residual"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"only the Wan2\.1 VAE is supported"):
        convert_lib.convert_vae(folder, tmp_path / "out")


def test_cli_converts_to_bfloat16(reference, tmp_path, monkeypatch):
    dst = tmp_path / "cli"
    argv = ["convert_wan.py", "vae", "--src", str(reference["folder"] / "diffusers"),
            "--dst", str(dst), "--dtype", "bfloat16"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("viewpoint_jax.convert_wan", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    vae = vae_lib.load_vae(dst)
    assert vae.config.base_dim == 4 and vae.config.param_dtype == "bfloat16"
    assert {str(v.dtype) for v in vae_lib.numpy_params(vae).values()} == {"bfloat16"}
