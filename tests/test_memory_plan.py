"""tools/memory_plan.py: the analytic plan of the 14B setup, checked against real shardings;
the compiled plan of a Wan config without checkpoints."""

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from test_train import micro_config

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import umt5, vae
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.studies import tpu_compile
from viewpoint_jax.training import loop

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("memory_plan", REPO / "tools" / "memory_plan.py")
memory_plan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory_plan)


def _wan14b():
    config = memory_plan.load_config(str(REPO / "configs" / "wan14b.py"))
    config.autoencoder.checkpoint = "/ckpt/wan_vae"
    config.text_encoder.checkpoint = "/ckpt/umt5_xxl"
    config.text_encoder.tokenizer = "/ckpt/umt5_xxl/spiece.model"
    return config


def test_14b_fits_8_devices_of_80_gb(capsys):
    config = _wan14b()
    plan = memory_plan.analytic_plan(config, devices=8)
    assert 14.0e9 < plan["parameters"] < 14.5e9
    # FSDP over 8: each device holds ~1/8 of the fp32 weights, twice that of Adam moments.
    assert abs(plan["param_bytes"] - 4 * plan["parameters"] / 8) < 0.01 * plan["param_bytes"]
    assert plan["optimizer_bytes"] == 2 * plan["param_bytes"]
    assert plan["tokens_per_sample"] == 13 * 40 * 40 and plan["samples_per_device"] == 1
    assert plan["total_bytes"] < 80e9
    text = memory_plan.format_plan(plan, "analytic", 8, 80.0)
    assert "fits" in text and "does NOT fit" not in text
    # One device cannot hold it: 16 bytes per parameter alone is 228 GB.
    config.mesh.fsdp = 1
    assert memory_plan.analytic_plan(config, devices=1)["total_bytes"] > 200e9


def test_analytic_state_bytes_match_the_trainers_shardings():
    config = micro_config()
    config.mesh.update(dict(data=2, fsdp=2, sequence=1, tensor=2))
    plan = memory_plan.analytic_plan(config, devices=8)
    mesh = sharding_lib.make_mesh(dict(data=2, fsdp=2, sequence=1, tensor=2))
    trainer = loop.make_trainer(config, mesh, tuple(config.sharding_rules))
    abstract = trainer.abstract_state_with_shardings()

    def per_device(tree):
        return sum(
            math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(tree)
        )

    assert plan["param_bytes"] == per_device(abstract["params"])
    adam_moments = [s for s in jax.tree.leaves(abstract["opt_state"]) if s.ndim > 0]
    assert plan["optimizer_bytes"] == per_device(adam_moments)
    assert plan["param_bytes"] < 4 * plan["parameters"]  # something is really sharded


def test_compiled_plan_of_a_wan_config_needs_no_checkpoint(tmp_path):
    """configs/wan1_3b.py at toy sizes: the VAE and umT5 "checkpoints" hold a config.json only
    (their sizes), no weights; the step compiles with both encoders in it on 4 devices."""
    vae_dir, umt5_dir = tmp_path / "vae", tmp_path / "umt5"
    small_vae = vae.WanVAEConfig(base_dim=8, dim_mult=(1, 2), num_res_blocks=1,
                                 temporal_downsample=(True,))  # fmt: skip
    for path, sizes in ((vae_dir, small_vae), (umt5_dir, umt5.UMT5Config.tiny())):
        path.mkdir()
        (path / "config.json").write_text(json.dumps(sizes.to_dict()))
    config = memory_plan.load_config(str(REPO / "configs" / "wan1_3b.py"))
    config.model.update(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=32)
    config.model.dtype = "float32"  # compiles faster on CPU than bf16
    config.data.update(map_size=32, num_frames=5, batch_size=4)
    config.autoencoder.checkpoint = str(vae_dir)
    config.text_encoder.update(checkpoint=str(umt5_dir), max_length=16, precompute=False)

    compiled, (state, batch, frozen) = memory_plan.compile_train_step(config, devices=4)
    # The frozen weights are shapes only, sized by the config.json files.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(frozen))
    vae_params = nnx.state(nnx.eval_shape(lambda: vae.WanVAE(small_vae, rngs=nnx.Rngs(0))))
    assert dit_lib.count_params(frozen["autoencoder"]) == dit_lib.count_params(vae_params)
    assert frozen["text"]["token_embedding"].shape == (512, umt5.UMT5Config.tiny().d_model)
    assert batch["ids"].shape == (4, 16)  # umT5 runs in the step (precompute=False)
    # XLA's arguments are exactly state + batch + the frozen weights the step reads, per device
    # (not the VAE decoder: jit drops unread arguments, the plan adds them back); the donated
    # state is aliased to the new one; its params are what the analytic plan counts.
    plan = tpu_compile.memory_of(compiled, (state, batch, frozen))
    read = {k: v for k, v in frozen["autoencoder"].items() if k in ("encoder", "quant_conv")}
    unread = {k: v for k, v in frozen["autoencoder"].items() if k not in read}
    assert sorted(unread) == ["decoder", "post_quant_conv"]
    per_device = tpu_compile.per_device_bytes
    assert plan["argument_bytes"] == per_device((state, batch, frozen["text"], read))
    assert plan["unread_weight_bytes"] == per_device(unread) > 0
    assert plan["alias_bytes"] == per_device(state)
    analytic = memory_plan.analytic_plan(config, devices=4)
    assert per_device(state["params"]) == analytic["param_bytes"]
    assert plan["temp_bytes"] > analytic["gradient_bytes"]

    # The config names cudnn: the CPU plan says it compiled with xla instead.
    assert memory_plan.compile_attention_backend(config)[0] == "xla"
    notes = memory_plan.compiled_notes(config, devices=4)
    assert "compiled with the 'xla' backend (the config names 'cudnn'" in notes[0]
    assert "one fp32 score tensor is" in notes[1]


def test_abstract_encoders_without_any_checkpoint_are_wans():
    """No checkpoint at all: the released Wan2.1 VAE's and umT5-XXL's sizes, no weights."""
    config = memory_plan.load_config(str(REPO / "configs" / "wan14b.py"))
    autoencoder = build.abstract_autoencoder(config)
    assert (autoencoder.spatial_factor, autoencoder.temporal_factor) == (8, 4)
    assert autoencoder.latent_channels == build.latent_channels(config)
    encoder = build.abstract_text_model(config)
    assert encoder.config == umt5.UMT5Config.umt5_xxl()
    assert encoder.config.d_model == build.text_width(config)
    for module in (autoencoder, encoder):
        leaves = jax.tree.leaves(nnx.state(module))
        assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


# --- Sampling ------------------------------------------------------------------------------------

NO_VAE = {"weights": 0, "temp": 0, "output": 0}  # the VAE decode is compiled; not needed here


def test_14b_samples_on_one_80_gb_device_in_bf16_and_on_8_of_40_gb():
    config = _wan14b()
    one = memory_plan.sample_plan(config, 1, "bfloat16", NO_VAE)
    parameters = dit_lib.count_params(dit_lib.abstract_model(build.dit_config(config)))
    assert one["dit_weight_bytes"] == 2 * parameters
    assert one["tokens"] == 13 * 40 * 40  # 640 map, 49 frames: 13 x 80 x 80 latents, patch 2 x 2
    assert one["attention_score_bytes"] == 0  # the config's cudnn attention keeps no scores
    assert one["peak_bytes"] < 80e9
    eight = memory_plan.sample_plan(config, 8, "bfloat16", NO_VAE)
    assert abs(eight["dit_weight_bytes"] - one["dit_weight_bytes"] / 8) < 0.01 * 2 * parameters / 8
    assert eight["peak_bytes"] < 40e9
    fp32 = memory_plan.sample_plan(config, 1, "float32", NO_VAE)
    assert fp32["dit_weight_bytes"] == 2 * one["dit_weight_bytes"]
    table = memory_plan.format_sample_table("wan14b", "bfloat16", {1: one, 8: eight}, 80.0)
    assert "| 1 |" in table and "| 8 |" in table


def test_sample_weight_bytes_match_the_sampling_shardings():
    """The analytic DiT weight bytes are those `models.load_models` restores into."""
    from viewpoint_jax.generation.models import sampling_mesh

    config = micro_config()
    plan = memory_plan.sample_plan(config, 8, "bfloat16", NO_VAE)
    model_config = build.dit_config(config)
    model_config = dataclasses.replace(model_config, dtype="bfloat16", param_dtype="bfloat16")
    _, params = nnx.split(dit_lib.abstract_model(model_config), nnx.Param)
    shardings = sharding_lib.state_shardings(
        params, sampling_mesh(), config_lib.logical_rules(config)
    )
    shard_bytes = sum(
        math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings))
    )
    assert plan["dit_weight_bytes"] == shard_bytes


def test_compiled_sample_plan_holds_the_analytic_weights():
    """The compiled sampling loop's arguments are the sharded weights (+ conditions, schedule)."""
    config = micro_config()
    for devices in (8,):
        plan = memory_plan.compiled_sample_plan(config, devices, "float32")
        extra = plan["argument_bytes"] - plan["analytic_weight_bytes"]
        assert 0 <= extra < 2**20, (devices, extra)
        assert plan["temp_bytes"] > 0


def test_vae_decode_bytes_are_one_tile_per_device_however_many_share_them(tmp_path, monkeypatch):
    """The decode column: the tiled decode spread over 8 devices holds one tile's activations
    per device, as on one device, not the 8 tiles of a step (6 tiles of 8 latent pixels here;
    the sampler's 32 would be one tile at this size)."""
    from viewpoint_jax.generation import decoding

    monkeypatch.setattr(decoding, "DECODE_TILE", 8)
    monkeypatch.setattr(decoding, "DECODE_TILE_OVERLAP", 2)
    checkpoint = tmp_path / "vae"
    checkpoint.mkdir()
    tiny = vae.WanVAEConfig(base_dim=8, num_res_blocks=1)
    (checkpoint / "config.json").write_text(json.dumps(tiny.to_dict()))
    config = micro_config()
    config.autoencoder.kind, config.autoencoder.checkpoint = "wan_vae", str(checkpoint)
    latent = (1, 2, 20, 14, 16)
    one, eight = (memory_plan.vae_decode_bytes(config, latent, n) for n in (1, 8))
    assert one["output"] == eight["output"] == 1 * 5 * 160 * 112 * 3 * 4  # the map video, fp32
    weights = vae.abstract_model(tiny)
    assert (
        one["weights"]
        == eight["weights"]
        == sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(nnx.state(weights)))
    )  # replicated: all of them on every device
    assert 0 < eight["temp"] < 2 * one["temp"], (one, eight)
