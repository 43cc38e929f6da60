"""Sampling on a mesh of 8 simulated CPU devices: the same latents as on one device, bf16 close
to fp32, one compilation for any prompt and seed, and meshes that do not divide the model refused.

Model: `configs/tiny.py:micro` (dim 32, 2 heads, 2 blocks; latent (1, 5, 8, 8, 192), 80 tokens),
random weights saved as a converted checkpoint.
"""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from viewpoint_jax.common import sharding
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation import conditioning, decoding
from viewpoint_jax.generation.generate import generate, generate_long
from viewpoint_jax.generation.models import load_config, load_models, sampling_mesh
from viewpoint_jax.models.dit import WanDiT
from viewpoint_jax.setup import build

REPO = Path(__file__).resolve().parents[1]
SETTINGS = denoising.SampleSettings(num_steps=3, scheduler="euler", guidance_scale=3.0, seed=1)


@pytest.fixture(scope="module")
def config():
    return load_config(str(REPO / "configs" / "tiny.py:micro"))


def _string_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


@pytest.fixture(scope="module")
def checkpoint(config, tmp_path_factory):
    """A random fp32 DiT for `config`, saved as a converted checkpoint (what `load_dit` reads)."""
    model_config = build.dit_config(config)
    model = nnx.jit(lambda: WanDiT(model_config, rngs=nnx.Rngs(0)))()
    path = tmp_path_factory.mktemp("checkpoint") / "dit"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(model_config.to_dict()))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save((path / "params").absolute(), _string_keys(params))
    return path


def one_device():
    return sampling_mesh(jax.devices()[:1])


def run(models, prompt="a red door in the snow", seed=1):
    return generate(models, prompt, dataclasses.replace(SETTINGS, seed=seed))


@pytest.fixture(scope="module")
def reference(config, checkpoint):
    """fp32 latents on one device: what every sharded run is compared with."""
    models = load_models(config, checkpoint, mesh=one_device(), dtype="float32")
    return run(models).latents


def test_weights_are_restored_sharded_and_in_the_asked_dtype(config, checkpoint):
    models = load_models(config, checkpoint)  # default: bf16, fsdp over all 8 devices
    assert models.mesh.shape["fsdp"] == 8
    kernel = models.model.blocks.ffn_in.kernel[...]  # (layers, dim 32, ffn 64): ("embed", "mlp")
    assert kernel.dtype == jax.numpy.bfloat16
    assert kernel.sharding.spec[1] == "fsdp"
    assert kernel.sharding.shard_shape(kernel.shape) == (2, 32 // 8, 64)
    # The text encoder lives on the same mesh.
    embedding = jax.tree.leaves(nnx.state(models.text_encoder.encoder))[0]
    assert embedding.sharding.mesh == models.mesh


@pytest.mark.parametrize(
    "axes",
    [{"fsdp": 8}, {"data": 2, "sequence": 2, "tensor": 2}],
    ids=["fsdp8", "data2-sequence2-tensor2"],
)
def test_sharded_sampling_equals_one_device(config, checkpoint, reference, axes):
    models = load_models(config, checkpoint, mesh=sharding.make_mesh(axes), dtype="float32")
    latents = run(models).latents
    # fp32 sums in another order (sharded matmuls reduce partial sums across devices): relative
    # rounding of ~1e-7 per operation, grown through 2 blocks x 3 steps x guidance scale 3.
    scale = np.abs(reference).max()
    np.testing.assert_allclose(latents, reference, rtol=0, atol=1e-5 * scale)


def test_bf16_sampling_is_close_to_fp32(config, checkpoint, reference):
    models = load_models(config, checkpoint, dtype="bfloat16")
    latents = run(models).latents
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per weight and matmul input);
    # the residual stream, norms and scheduler stay fp32, so the error stays a few times that.
    error = np.sqrt(np.mean((latents - reference) ** 2)) / np.sqrt(np.mean(reference**2))
    assert error < 2e-2, error


def test_new_prompt_and_seed_reuse_the_compiled_sampler_after_the_text_encoder_is_released(
    config, checkpoint
):
    models = load_models(config, checkpoint)
    encoder_arrays = jax.tree.leaves(nnx.state(models.text_encoder.encoder))
    embeddings = models.encode_prompts(["a harbour at night", "a desert road", ""])
    assert embeddings.shape == (3, config.text_encoder.max_length, models.model.config.text_dim)
    models.release_text_encoder()
    assert models.text_encoder is None and all(a.is_deleted() for a in encoder_arrays)
    with pytest.raises(ValueError, match="not encoded before release_text_encoder"):
        models.encode_prompts(["a city"])

    first = run(models, "a harbour at night", seed=3)
    compiled = denoising.sample_latents._cache_size()
    second = run(models, "a desert road", seed=4)
    assert denoising.sample_latents._cache_size() == compiled
    assert not np.allclose(first.latents, second.latents)
    np.testing.assert_array_equal(run(models, "a harbour at night", seed=3).latents, first.latents)


def test_research_code_form_compiles_once_for_new_prompts_and_seeds(config, checkpoint):
    """`denoising.sample(model, conditions, key, settings)` under `sharding.use_mesh` (the README's
    form), on conditions already sharded over the mesh or still on the host: one compiled
    program for every prompt, seed and placement; the spread decode likewise."""
    models = load_models(config, checkpoint)  # bf16, fsdp over all 8 devices
    contexts = models.encode_prompts(["a harbour at night", "a desert road", ""])[:, None]
    data = config.data

    def conditions(prompt):
        return conditioning.make_conditions(
            models.autoencoder, contexts[prompt], contexts[2], data.map_size, data.num_frames
        )

    with sharding.use_mesh(models.mesh, models.rules):
        placed = denoising.place_conditions(conditions(0), models.mesh, models.rules)
        assert placed.context.sharding.mesh == models.mesh
        first = denoising.sample(models.model, placed, jax.random.key(0), SETTINGS)
        compiled = denoising.sample_latents._cache_size()
        decoded = decoding.decode_latents(models.autoencoder, first, mesh=models.mesh)
        decodes = decoding._jitted.cache_info().currsize
        second = denoising.sample(models.model, conditions(1), jax.random.key(1), SETTINGS)
        decoding.decode_latents(models.autoencoder, second, mesh=models.mesh)
        again = denoising.sample(models.model, conditions(0), jax.random.key(0), SETTINGS)
    assert denoising.sample_latents._cache_size() == compiled
    assert decoding._jitted.cache_info().currsize == decodes
    assert first.sharding.mesh == models.mesh and decoded.shape[1] == data.num_frames
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))


def test_a_replica_on_another_device_group_samples_the_same(config, checkpoint):
    """`Models.replica`: the weights copied to another group of devices (here of one device;
    `test_sample_prompts` runs groups of 2) with the same specs; the same program on another
    device gives the same latents, bit for bit."""
    first_group, second_group = (sampling_mesh(jax.devices()[i : i + 1]) for i in (0, 1))
    models = load_models(config, checkpoint, mesh=first_group, dtype="float32")
    with pytest.raises(ValueError, match="release_text_encoder"):
        models.replica(second_group)
    models.encode_prompts(["a red door in the snow", ""])
    models.release_text_encoder()
    replica = models.replica(second_group)
    kernel, copied = (m.model.blocks.ffn_in.kernel[...] for m in (models, replica))
    assert copied.sharding.mesh == second_group and copied.sharding.spec == kernel.sharding.spec
    np.testing.assert_array_equal(np.asarray(copied), np.asarray(kernel))
    np.testing.assert_array_equal(run(replica).latents, run(models).latents)


def test_meshes_that_do_not_divide_the_model_are_refused(config, checkpoint):
    with pytest.raises(ValueError, match="'tensor' of size 8 does not divide the DiT's num_heads"):
        load_models(config, checkpoint, mesh=sharding.make_mesh({"tensor": 8}))
    model_config = build.dit_config(config)
    odd_tokens = (1, 5, 6, 6, 192)  # a 3 x 3 token grid per frame: 45 tokens
    with pytest.raises(ValueError, match="'sequence' of size 8 does not divide the 45 tokens"):
        denoising.check_mesh_fits(model_config, sharding.make_mesh({"sequence": 8}), odd_tokens)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_models(config, checkpoint, dtype="float16")


def test_training_run_weights_are_read_as_bf16_into_shardings(config, tmp_path):
    """A training run's fp32 checkpoint, restored as `load_models` restores it."""
    from viewpoint_jax.training import checkpoints

    model = nnx.jit(lambda: WanDiT(build.dit_config(config), rngs=nnx.Rngs(2)))()
    params = nnx.state(model, nnx.Param)
    checkpointer = checkpoints.Checkpointer(
        checkpoints.checkpoint_dir(tmp_path), every_steps=1, keep=1, async_save=False
    )
    checkpointer.save(0, {"step": np.int32(0), "params": params}, force=True)  # as train.py
    checkpointer.close()
    mesh = sharding.make_mesh({"fsdp": 8})
    restored = checkpoints.restore_model_for_inference(
        tmp_path, config, mesh=mesh, dtype="bfloat16", param_dtype="bfloat16"
    )
    for saved, loaded in zip(
        jax.tree.leaves(params), jax.tree.leaves(nnx.state(restored, nnx.Param))
    ):
        assert loaded.dtype == jax.numpy.bfloat16 and loaded.sharding.mesh == mesh
        np.testing.assert_array_equal(
            np.asarray(loaded), np.asarray(saved.astype(jax.numpy.bfloat16))
        )


def test_long_generation_on_a_mesh_equals_one_device(config, checkpoint):
    """Window-by-window generation (each window knowing the last frames of the one before)
    runs unchanged on sharded weights: the same frames as on one device."""
    settings = dataclasses.replace(SETTINGS, seed=2)
    num_frames = 2 * config.data.num_frames + 3  # three windows of the micro clip

    def long_video(mesh):
        models = load_models(config, checkpoint, mesh=mesh, dtype="float32")
        return generate_long(models, "a long walk", settings, num_frames=num_frames)

    single, sharded = long_video(one_device()), long_video(sharding.make_mesh({"fsdp": 8}))
    assert (
        sharded.map_video.shape[0] == num_frames and sharded.window_starts == single.window_starts
    )
    for ours, theirs in zip(sharded.window_latents, single.window_latents):
        # fp32 reduction order, as in test_sharded_sampling_equals_one_device.
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
