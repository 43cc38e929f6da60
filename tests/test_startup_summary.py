"""The one-time start-up summary of a training run."""

import math

import jax
from flax import nnx
from test_train import ONE_DEVICE, load_config, micro_config, write_dataset

from viewpoint_jax.models.dit import WanDiT
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import mesh_and_rules
from viewpoint_jax.training import memory, telemetry


def test_summary_names_devices_mesh_batch_and_parameters():
    config = micro_config()
    mesh, _ = mesh_and_rules(config, ONE_DEVICE)
    model_config = build.dit_config(config)
    summary = telemetry.startup_summary(config, mesh, model_config)
    model = WanDiT(model_config, rngs=nnx.Rngs(0))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert f"parameters: {count:,}" in summary
    assert "mesh: data=1, fsdp=1, sequence=1, tensor=1" in summary
    batch = config.data.batch_size
    assert f"batch: {batch} global, {batch} per data shard (1 shards)" in summary
    assert "devices: 1 x " in summary
    plan = memory.training_plan(config, dict(mesh.shape))
    assert telemetry.memory_summary(config, dict(mesh.shape)) in summary.splitlines()
    assert f"total {plan['total_bytes'] / 2**30:.2f}" in summary


def test_memory_line_is_the_plan_and_shards_with_the_mesh():
    """The summary's per-device figures are the analytic plan's; FSDP over 8 devices divides the
    fp32 weights (every matrix of the micro model shards over fsdp) by about 8."""
    config = micro_config()
    one = memory.training_plan(config, {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1})
    eight = memory.training_plan(config, {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1})
    assert one["param_bytes"] == 4 * one["parameters"]  # fp32 master weights, unsharded
    assert one["gradient_bytes"] == one["param_bytes"]
    assert one["param_bytes"] / 8 <= eight["param_bytes"] < one["param_bytes"] / 4
    line = telemetry.memory_summary(config, {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1})
    assert f"weights {eight['param_bytes'] / 2**30:.2f}" in line


def test_summary_counts_the_training_split(tmp_path):
    config = micro_config()
    config.data.data_dir, config.data.name = (str(p) for p in write_dataset(tmp_path, count=2))
    line = telemetry.dataset_summary(config.data)
    assert line == f"dataset: micro/train in {tmp_path / 'data'}: 2 videos (2 records), 0 images"
    config.data.precomputed_latents = "micro_640"
    assert telemetry.dataset_summary(config.data).endswith(
        "read as the precomputed latents micro_640"
    )
    config.data.name = "missing"
    assert telemetry.dataset_summary(config.data).startswith("dataset: ")


def test_pretraining_on_demo_scenes_names_what_it_renders_not_a_missing_dataset():
    config = load_config("tiny", "micro_pretrain")
    config.data.data_dir = "/nonexistent"  # a pretraining run reads no dataset
    line = telemetry.dataset_summary(config.data)
    scenes = config.data.scenes
    assert line == (
        f"dataset: none read; perspective clips of {scenes.count} procedural demo scenes "
        f"(seed {scenes.seed}), {tuple(scenes.size)} pixels, rendered on the fly"
    )
