"""Train-loop features on the micro config: EMA weights, and init from a converted Wan checkpoint."""

import json

import jax
import numpy as np
import torch
from flax import nnx
from test_train import ONE_DEVICE, micro_config, procedural_records
from wan_release import original_dit_config, save_dit, to_original_dit_layout

from viewpoint_jax.convert import dit as convert_dit_lib
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import checkpoints, loop


def _flat(tree) -> dict[str, np.ndarray]:
    """{path: array} of an nnx.State (or any pytree of params) on the host."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _assert_trees_equal(actual, expected: dict[str, np.ndarray]):
    actual = _flat(actual)
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def _saved_states(config, workdir, steps):
    """The full train state checkpointed at each of `steps`, and the initial one."""
    mesh, rules = config_lib.mesh_and_rules(config, ONE_DEVICE)
    trainer = loop.make_trainer(config, mesh, rules)
    manager = checkpoints.Checkpointer(
        checkpoints.checkpoint_dir(workdir), every_steps=1, keep=len(steps)
    )
    try:
        abstract = trainer.abstract_state_with_shardings()
        saved = {s: jax.device_get(manager.restore(s, abstract)) for s in steps}
    finally:
        manager.close()
    return trainer.init_state(), saved


def test_ema_follows_the_recurrence_and_restores(tmp_path):
    config = micro_config()
    config.num_steps = 2
    config.checkpoint.every_steps = 1
    config.checkpoint.keep = 2
    config.optim.warmup_steps = 0  # every step moves the weights (warmup's first lr is 0)
    decay = 0.75  # not 1/2: a swapped decay and 1 - decay would give other numbers
    config.optim.ema_decay = decay
    loop.train(
        config, tmp_path, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    initial, saved = _saved_states(config, tmp_path, (1, 2))

    # EMA starts at the initial weights and is updated after each step with that step's weights:
    #   ema_0 = params_0,  ema_t = decay * ema_{t-1} + (1 - decay) * params_t,
    # in float32, element by element either rounded once (XLA fuses the update into one FMA) or
    # with the products rounded first (when it does not: whether it fuses depends on what else
    # reads the new weights in the step); both are the recurrence, nothing else is. With decay
    # 3/4 both products are exact in float64, so the float64 value rounded to float32 is the
    # exactly rounded form.
    params = _flat(initial["params"])
    _assert_trees_equal(initial["ema_params"], params)
    previous = dict(params)
    for step in (1, 2):
        new_params = _flat(saved[step]["params"])
        assert any(not np.array_equal(new_params[k], params[k]) for k in params), step
        ema = _flat(saved[step]["ema_params"])
        assert ema.keys() == previous.keys()
        for k in previous:
            once = (
                decay * previous[k].astype(np.float64)
                + (1 - decay) * new_params[k].astype(np.float64)
            ).astype(np.float32)
            twice = np.float32(decay) * previous[k] + np.float32(1 - decay) * new_params[k]
            recurrence = (ema[k] == once) | (ema[k] == twice)
            assert recurrence.all(), (step, k, ema[k][~recurrence][:5], once[~recurrence][:5])
        previous, params = ema, new_params
    expected = previous
    assert not np.array_equal(expected["['patch_kernel']"], params["['patch_kernel']"])

    ema_model = checkpoints.restore_model(config, tmp_path, use_ema=True)
    raw_model = checkpoints.restore_model(config, tmp_path, use_ema=False)
    _assert_trees_equal(nnx.state(ema_model, nnx.Param), expected)
    _assert_trees_equal(nnx.state(raw_model, nnx.Param), params)
    # The sampler's entry point takes the EMA weights of a run that keeps them.
    _assert_trees_equal(
        nnx.state(checkpoints.restore_model_for_inference(tmp_path, config), nnx.Param), expected
    )


def _wan_text_to_video_checkpoint(folder, config) -> dict[str, torch.Tensor]:
    """A random Wan2.1 DiT in the original key layout, with 16 input channels (text-to-video) and
    the micro config's sizes otherwise; returns its state dict."""
    from diffusers import WanTransformer3DModel

    model_config = build.dit_config(config)
    sizes = dict(
        patch_size=tuple(model_config.patch_size),
        num_attention_heads=model_config.num_heads,
        attention_head_dim=model_config.dim // model_config.num_heads,
        in_channels=16,
        # The micro autoencoder's latents have 192 channels, not Wan's 16; the output head must
        # match the model's (only the patch embedding is inflated).
        out_channels=model_config.out_dim,
        text_dim=model_config.text_dim,
        freq_dim=model_config.freq_dim,
        ffn_dim=model_config.ffn_dim,
        num_layers=model_config.num_layers,
        cross_attn_norm=True,
        eps=1e-6,
        rope_max_seq_len=1024,
    )
    torch.manual_seed(0)
    model = WanTransformer3DModel(**sizes).eval()
    with torch.no_grad():  # non-trivial norms (the defaults are ones and zeros)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    state = to_original_dit_layout({k: v.detach().clone() for k, v in model.state_dict().items()})
    save_dit(state, folder, "safetensors", original_dit_config(sizes))
    return state


def test_init_checkpoint_starts_from_the_inflated_wan_weights(tmp_path):
    config = micro_config()
    state = _wan_text_to_video_checkpoint(tmp_path / "wan", config)
    converted = convert_dit_lib.convert_dit(tmp_path / "wan", tmp_path / "converted")
    assert converted.in_dim == 16
    config.model.init_checkpoint = str(tmp_path / "converted")
    config.num_steps = 1
    config.checkpoint.every_steps = 1
    result = loop.train(
        config,
        tmp_path / "run",
        data_source=procedural_records(),
        devices=ONE_DEVICE,
        progress=False,
    )
    assert np.isfinite(result["losses"][1])

    # Step 1 runs at warmup's learning rate 0, so its checkpoint holds the initial weights.
    (line,) = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["lr"] == 0.0
    initial = checkpoints.restore_model(config, tmp_path / "run", use_ema=False)
    params = _flat(nnx.state(initial, nnx.Param))

    in_dim = build.dit_config(config).in_dim
    expected = _flat(nnx.state(dit_lib.load_dit(tmp_path / "converted"), nnx.Param))
    kernel = expected["['patch_kernel']"]
    expected["['patch_kernel']"] = np.concatenate(
        [kernel, np.zeros((*kernel.shape[:3], in_dim - 16, kernel.shape[4]), kernel.dtype)], 3
    )
    assert params.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(params[key], expected[key], err_msg=key)

    # The same numbers as the PyTorch tensors (D, C, pt, ph, pw) and (out, in).
    patch = state["patch_embedding.weight"].numpy()
    np.testing.assert_array_equal(
        params["['patch_kernel']"][..., :16, :], patch.transpose(2, 3, 4, 1, 0)
    )
    np.testing.assert_array_equal(params["['patch_kernel']"][..., 16:, :], 0.0)
    np.testing.assert_array_equal(
        params["['blocks']['ffn_in']['kernel']"][1], state["blocks.1.ffn.0.weight"].numpy().T
    )
