"""The one-time start-up summary of a training run."""

import math

import jax
from flax import nnx
from test_train import ONE_DEVICE, micro_config

from viewpoint_jax import build, monitoring
from viewpoint_jax.config import mesh_and_rules
from viewpoint_jax.models.dit import WanDiT


def test_summary_names_devices_mesh_batch_and_parameters():
    config = micro_config()
    mesh, _ = mesh_and_rules(config, ONE_DEVICE)
    model_config = build.dit_config(config)
    summary = monitoring.startup_summary(config, mesh, model_config)
    model = WanDiT(model_config, rngs=nnx.Rngs(0))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert f"parameters: {count:,}" in summary
    assert "mesh: data=1, fsdp=1, sequence=1, tensor=1" in summary
    batch = config.data.batch_size
    assert f"batch: {batch} global, {batch} per data shard (1 shards)" in summary
    assert "devices: 1 x " in summary
