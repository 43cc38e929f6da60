"""LoRA fine-tuning (config.lora): a fresh adapter is the base model exactly, training moves only
the trainable parameters, merged adapters equal unmerged ones, resume is exact, 8 devices equal
one, a run against another base is refused, and a LoRA run on demo scenes lowers the loss."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import (
    ONE_DEVICE,
    micro_config,
    procedural_records,
    straight_and_resumed,
    subprocess_env,
)

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.data import demo_dataset, pipeline
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import lora as lora_models
from viewpoint_jax.setup import build
from viewpoint_jax.training import checkpoints, loop
from viewpoint_jax.training import step as step_lib

RANK = 4


def write_base(path, config, seed: int = 7, **overrides):
    """A converted DiT for `config` as Wan ships it: text-to-video (in_dim = out_dim, so the
    trainer inflates it), random weights of `seed`."""
    model_config = lora_models.without_lora(build.dit_config(config))
    model_config = dataclasses.replace(model_config, in_dim=model_config.out_dim, **overrides)
    dit_lib.save_dit(path, dit_lib.WanDiT(model_config, rngs=nnx.Rngs(seed)))
    return path


def lora_config(tmp_path, **lora):
    config = micro_config()
    config.model.init_checkpoint = str(write_base(tmp_path / "base", config))
    config.lora.rank = RANK
    config.lora.targets = ("self_q", "self_k", "self_v", "self_o", "cross_o", "ffn")
    config.lora.update(lora)
    return config


def model_inputs(model_config, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(keys[0], (2, 2, 8, 8, model_config.in_dim))
    context = jax.random.normal(keys[1], (2, 5, model_config.text_dim))
    return x, jnp.array([300.0, 900.0]), context


def trainer_model(trainer, state):
    return step_lib.merge_model(
        step_lib.split_model(trainer.config, dit_lib.abstract_model(trainer.model_config)),
        state["params"],
        trainer.frozen_arrays,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fresh_lora_computes_the_inflated_base_exactly(tmp_path, dtype):
    """Step 0 of a LoRA run is the converted DiT (inflated to the condition channels), bit for
    bit, also with its frozen kernels held in bf16."""
    config = lora_config(tmp_path)
    config.model.dtype = dtype
    trainer = loop.make_trainer(config, *sharding_lib_mesh_and_rules(config))
    lora_model = trainer_model(trainer, trainer.init_state())
    plain_config = lora_models.without_lora(trainer.model_config)
    params = dit_lib.load_pretrained_params(config.model.init_checkpoint, plain_config)
    base = nnx.merge(nnx.split(dit_lib.abstract_model(plain_config), nnx.Param)[0], params)
    inputs = model_inputs(plain_config)
    np.testing.assert_array_equal(lora_model(*inputs), base(*inputs))
    kernels = nnx.state(lora_model, nnx.Param)["blocks"]["ffn_in"]["kernel"]
    assert kernels.get_value().dtype == jnp.dtype(dtype)  # the frozen base in the compute dtype


def sharding_lib_mesh_and_rules(config, devices=ONE_DEVICE):
    mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), devices)
    return mesh, tuple(config.sharding_rules)


def leaves_by_path(tree):
    """{"['blocks']['ffn_in']['kernel']": array} of a state or a saved tree (whose Variables
    are stored as {"value": array})."""
    tree = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
    return {
        jax.tree_util.keystr(path).replace("['value']", ""): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(config, run directory) of a LoRA run of 4 steps on the micro config."""
    root = tmp_path_factory.mktemp("lora")
    config = lora_config(root)
    config.num_steps = 4
    config.optim.warmup_steps = 0
    config.optim.lr = 1e-2
    records = procedural_records()
    loop.train(config, root / "run", data_source=records, devices=ONE_DEVICE, progress=False)
    return config, root / "run"


def test_training_moves_only_the_trainable_parameters(trained_run):
    config, run_dir = trained_run
    trainer = loop.make_trainer(config, *sharding_lib_mesh_and_rules(config))
    start = leaves_by_path(trainer.init_state()["params"])
    trained = checkpoints.restore_model_for_inference(run_dir, config)
    _, trainable, base = lora_models.split_params(trained)
    # The run's checkpoint holds the trainable parameters only (+ optimizer state).
    saved = checkpoints.weights.saved_tree(run_dir / "checkpoints" / "4" / "state")
    saved_paths = set(leaves_by_path(saved["params"]))
    assert saved_paths == set(start)
    assert all("lora" in p or "patch" in p for p in saved_paths)
    # The base is bit-identical to the converted checkpoint's; every trainable leaf moved.
    expected_base = leaves_by_path(trainer.frozen_arrays["base"])
    for path, value in leaves_by_path(base).items():
        np.testing.assert_array_equal(value, expected_base[path], err_msg=path)
    for path, value in leaves_by_path(trainable).items():
        assert not np.array_equal(value, start[path]), path
    assert (run_dir / "lora_base.json").is_file()


def test_merged_equals_unmerged_and_the_merge_command_writes_it(trained_run, tmp_path):
    config, run_dir = trained_run
    unmerged = checkpoints.restore_model_for_inference(run_dir, config)
    merged = lora_models.merge_lora(unmerged)
    assert not nnx.state(merged, nnx.LoRAParam)
    inputs = model_inputs(merged.config)
    np.testing.assert_allclose(merged(*inputs), unmerged(*inputs), rtol=1e-5, atol=1e-5)
    half = checkpoints.restore_model_for_inference(run_dir, config, lora_scale=0.5)
    assert not np.allclose(half(*inputs), unmerged(*inputs), atol=1e-4)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "viewpoint_jax.convert_wan",
            "merge",
            f"--src={run_dir}",
            f"--dst={tmp_path / 'merged'}",
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    written = dit_lib.load_dit(tmp_path / "merged")
    assert written.config.lora_rank == 0
    np.testing.assert_allclose(written(*inputs), unmerged(*inputs), rtol=1e-5, atol=1e-5)


def test_lora_resume_is_exact_and_another_base_is_refused(tmp_path):
    config = lora_config(tmp_path)
    straight, resumed = straight_and_resumed(config, tmp_path)
    assert sorted(resumed["losses"]) == [4, 5, 6]
    assert [resumed["losses"][s] for s in (4, 5, 6)] == [straight["losses"][s] for s in (4, 5, 6)]
    a = checkpoints.restore_model_for_inference(tmp_path / "straight", config)
    b = checkpoints.restore_model_for_inference(tmp_path / "resumed", config)
    for (path, x), y in zip(
        leaves_by_path(nnx.state(a)).items(), leaves_by_path(nnx.state(b)).values()
    ):
        np.testing.assert_array_equal(x, y, err_msg=path)

    other = write_base(tmp_path / "other_base", config, rope_theta=500.0)
    config.model.init_checkpoint = str(other)
    config.num_steps = 7
    with pytest.raises(ValueError, match="not the base this LoRA run was trained on") as error:
        loop.train(
            config,
            tmp_path / "resumed",
            data_source=procedural_records(),
            devices=ONE_DEVICE,
            progress=False,
        )
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="not the base"):
        checkpoints.restore_model_for_inference(tmp_path / "resumed", config)


def two_steps(config, mesh, batches):
    trainer = loop.make_trainer(config, mesh, tuple(config.sharding_rules))
    state = trainer.init_state()
    losses = []
    for batch in batches:
        state, metrics = trainer.step(state, trainer.device_batch(batch))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["params"]), trainer


def test_lora_on_8_devices_equals_one_device(tmp_path):
    config = lora_config(tmp_path)
    config.optim.warmup_steps = 0
    it = pipeline.make_train_iterator(config.data, data_source=procedural_records())
    batches = [next(it), next(it)]
    single = sharding_lib.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), ONE_DEVICE)
    sharded = sharding_lib.make_mesh(dict(data=2, fsdp=2, sequence=1, tensor=2))
    losses_1, params_1, _ = two_steps(config, single, batches)
    losses_8, params_8, trainer = two_steps(config, sharded, batches)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The stacked adapters and the frozen base are sharded by the rules, not replicated.
    lora_b = trainer.state_sharding["params"]["blocks"]["self_attn"]["q"]["lora_b"]
    assert "tensor" in str(lora_b.get_value().spec)
    base_q = trainer.frozen_arrays["base"]["blocks"]["self_attn"]["q"]["kernel"]
    assert len(base_q.get_value().sharding.device_set) == 8
    assert not base_q.get_value().sharding.is_fully_replicated


def test_lora_run_on_demo_scenes_lowers_the_loss(tmp_path):
    config = lora_config(tmp_path)
    config.num_steps = 24
    config.optim.lr = 1e-2
    result = loop.train(
        config,
        tmp_path / "run",
        data_source=demo_dataset.scene_records(6, 7, 32),
        devices=ONE_DEVICE,
        progress=False,
    )
    losses = [result["losses"][s] for s in range(1, 25)]
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    record = json.loads((tmp_path / "run" / "lora_base.json").read_text())
    assert record["path"] == config.model.init_checkpoint


def test_memory_plan_counts_only_the_trainable_state():
    """configs/wan.py:14b_lora from shapes: the adapters' count by formula, optimizer state and
    gradients of the trainable parameters only, the frozen kernels in bf16."""
    from test_train import load_config

    from viewpoint_jax.training import memory

    config = load_config("wan", "14b_lora")
    one = dict(data=1, fsdp=1, sequence=1, tensor=1)
    plan = memory.training_plan(config, one)
    d, layers, rank = 5120, 40, 64
    adapters = 4 * layers * rank * (d + d)  # self-attention q, k, v, o: A (d, r) + B (r, d)
    patch = 1 * 2 * 2 * 33 * d + d
    assert plan["trainable_parameters"] == adapters + patch
    assert plan["optimizer_bytes"] == 8 * plan["trainable_parameters"]  # AdamW moments, fp32
    assert plan["gradient_bytes"] == 4 * plan["trainable_parameters"]
    full = memory.training_plan(load_config("wan", "14b"), one)
    assert full["parameters"] == plan["parameters"] - adapters
    # Frozen: ~2 bytes a weight (bf16 kernels; fp32 norms, biases, modulation, time path).
    frozen = plan["param_bytes"] - 4 * plan["trainable_parameters"]
    assert 2.0 < frozen / full["parameters"] < 2.1


def test_lora_scale_on_a_run_without_lora_is_one_line(tmp_path, capsys):
    from test_sample_cli import run_in_process

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(micro_config().to_json_best_effort())
    argv = ["--checkpoint", run_dir, "--prompt", "a room", "--out", tmp_path / "out"]
    code, stderr = run_in_process([*map(str, argv), "--lora_scale=0.5"], capsys)
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.startswith(f"error: --lora_scale: {run_dir} is not a LoRA run")


def test_trainable_split_by_targets_and_train_norms():
    """Adapters sit exactly on the named targets, stacked over the layers with the kernel's
    logical axes; train_norms adds the norms and modulation, never a frozen kernel."""
    config = dit_lib.DiTConfig.tiny(lora_rank=RANK, lora_targets=("cross_k", "ffn"))
    model = dit_lib.abstract_model(config)
    adapters = nnx.state(model, nnx.LoRAParam).flat_state()
    assert sorted({path[:-1] for path, _ in adapters}) == [
        ("blocks", "cross_attn", "k"),
        ("blocks", "ffn_in"),
        ("blocks", "ffn_out"),
    ]
    lora_a = dict(adapters)[("blocks", "ffn_in", "lora_a")]
    assert lora_a.get_value().shape == (config.num_layers, config.dim, RANK)
    assert lora_a.get_metadata()["out_sharding"] == ("layers", "embed", None)
    for train_norms in (False, True):
        _, trainable, _ = lora_models.split_params(model, train_norms)
        names = {
            path[-2] if path[-1] == "scale" else path[-1] for path, _ in trainable.flat_state()
        }
        extra = {"norm_q", "norm_k", "cross_norm", "modulation", "head_modulation"}
        expected = {"lora_a", "lora_b", "patch_kernel", "patch_bias"}
        if train_norms:
            expected |= extra | {"bias"}  # cross_norm's bias
        assert names == expected, names
