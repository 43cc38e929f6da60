"""tools/memory_plan.py: the analytic plan of the 14B setup, checked against real shardings."""

import importlib.util
import math
from pathlib import Path

import jax
import numpy as np
from test_train import micro_config

from viewpoint_jax import sharding as sharding_lib
from viewpoint_jax import train

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
    trainer = train.make_trainer(config, mesh, tuple(config.sharding_rules))
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
