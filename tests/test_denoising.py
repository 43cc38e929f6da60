"""The compiled sampler: parity with diffusers, determinism, one trace, fusion, known cells,
conditions."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from flax import nnx

from viewpoint_jax import geometry
from viewpoint_jax.common import video_io
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation import conditioning, decoding
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.models.autoencoder import SpaceToDepthAutoencoder

LATENT_SHAPE = (1, 3, 8, 8, 16)  # (B, f, h, w, C): a 64 x 64 map, 9 frames, at 1/8 resolution
TEXT_DIM = 8
TRACED_BATCHES = []  # batch size of every trace of StandInModel.__call__


@pytest.fixture(autouse=True)
def clear_traces():
    TRACED_BATCHES.clear()


class StandInModel(nnx.Module):
    """A nonlinear pure function of (x, t, context) shaped like the DiT; counts its traces."""

    def __init__(self, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (33, 16)) / np.sqrt(33))
        self.c = nnx.Param(jax.random.normal(rngs.params(), (TEXT_DIM, 16)) / np.sqrt(TEXT_DIM))
        self.u = nnx.Param(jax.random.normal(rngs.params(), (16,)))

    def __call__(self, x, t, context):
        TRACED_BATCHES.append(x.shape[0])  # runs once per trace, not per step
        h = x @ self.w[...] + (t / 1000.0)[:, None, None, None, None] * self.u[...]
        h = h + (context.mean(axis=1) @ self.c[...])[:, None, None, None, :]
        return jnp.tanh(h) + 0.3 * x[..., :16]


def make_conditions(seed=1):
    keys = jax.random.split(jax.random.key(seed), 4)
    return denoising.Conditions(
        context=jax.random.normal(keys[0], (1, 5, TEXT_DIM)),
        negative_context=jax.random.normal(keys[1], (1, 5, TEXT_DIM)),
        latent=jax.random.normal(keys[2], LATENT_SHAPE),
        mask=(jax.random.uniform(keys[3], (*LATENT_SHAPE[:-1], 1)) > 0.5).astype(jnp.float32),
    )


def reference_loop(model, conditions, rng, scheduler, guidance):
    """diffusers' scheduler driving the same model eagerly, CFG as two separate passes."""
    x = torch.from_numpy(np.array(jax.random.normal(rng, LATENT_SHAPE, jnp.float32)))
    model = jax.jit(model.__call__)
    inputs = lambda x: denoising.model_input(
        jnp.asarray(x.numpy()), conditions.latent, conditions.mask
    )
    for t in scheduler.timesteps:
        timestep = jnp.full((1,), float(t))
        cond = model(inputs(x), timestep, conditions.context)
        uncond = model(inputs(x), timestep, conditions.negative_context)
        velocity = np.array(uncond + guidance * (cond - uncond))
        x = scheduler.step(torch.from_numpy(velocity), t, x)[0]
    return x.numpy()


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_sample_matches_diffusers_loop(name):
    model, conditions = StandInModel(nnx.Rngs(0)), make_conditions()
    settings = denoising.SampleSettings(num_steps=4, shift=3.0, guidance_scale=4.5, scheduler=name)
    if name == "unipc":
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        )
        scheduler.set_timesteps(4)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1e-3, 5)[:-1])
    rng = jax.random.key(7)
    expected = reference_loop(model, conditions, rng, scheduler, 4.5)
    latents = denoising.sample(model, conditions, rng, settings)
    assert latents.shape == LATENT_SHAPE and latents.dtype == jnp.float32
    np.testing.assert_allclose(latents, expected, atol=1e-5)


def test_same_seed_same_output_other_seed_differs():
    model, conditions = StandInModel(nnx.Rngs(0)), make_conditions()
    settings = denoising.SampleSettings(num_steps=4, guidance_scale=3.0)
    first = denoising.sample(model, conditions, jax.random.key(3), settings)
    again = denoising.sample(model, conditions, jax.random.key(3), settings)
    other = denoising.sample(model, conditions, jax.random.key(4), settings)
    np.testing.assert_array_equal(first, again)
    assert np.abs(np.asarray(first) - np.asarray(other)).mean() > 0.1


def test_all_steps_compile_once():
    """The loop body is traced once for N steps, and new seeds, prompts, shifts or guidance
    scales reuse the compiled program."""
    model = StandInModel(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    settings = denoising.SampleSettings(num_steps=12, shift=5.0, guidance_scale=5.0)
    denoising.sample((graphdef, params), make_conditions(1), jax.random.key(0), settings)
    assert TRACED_BATCHES == [2]  # one trace, conditional + unconditional in one batch
    changed = denoising.SampleSettings(num_steps=12, shift=3.0, guidance_scale=7.5, seed=5)
    denoising.sample((graphdef, params), make_conditions(2), jax.random.key(9), changed)
    assert TRACED_BATCHES == [2]


def test_guidance_scale_one_skips_the_unconditional_branch():
    model, conditions = StandInModel(nnx.Rngs(0)), make_conditions()
    settings = denoising.SampleSettings(num_steps=4, guidance_scale=1.0)
    latents = denoising.sample(model, conditions, jax.random.key(0), settings)
    assert TRACED_BATCHES == [1]
    other_negative = conditions._replace(negative_context=-conditions.negative_context)
    again = denoising.sample(model, other_negative, jax.random.key(0), settings)
    np.testing.assert_array_equal(latents, again)


def test_fusing_every_step_makes_the_overlaps_agree():
    """With per-step fusion the last UniPC step returns the fused clean latent, so the sample is
    (up to the approximate idempotence in U) a fixed point of fusion; without it, it is not."""
    model, conditions = StandInModel(nnx.Rngs(0)), make_conditions()

    def disagreement(fuse):
        settings = denoising.SampleSettings(num_steps=4, fuse_every_step=fuse)
        latents = denoising.sample(model, conditions, jax.random.key(0), settings)
        return float(jnp.abs(geometry.fuse_overlaps(latents) - latents).mean())

    fused, unfused = disagreement(True), disagreement(False)
    assert fused < 1e-3 * unfused and unfused > 0.1, (fused, unfused)


def test_keeping_the_known_cells_is_replacing_them_on_the_noise_path():
    """Euler with `keep_known` equals diffusers' Euler driven with the known cells of the noisy
    sample set to `(1 - s) z + s eps` before every model call (z the condition latent, eps the
    initial noise) and to z at the end: the clean-estimate replacement keeps those cells on the
    straight path."""
    model, conditions = StandInModel(nnx.Rngs(0)), make_conditions()
    rng = jax.random.key(7)
    known = np.asarray(conditions.mask) >= 1.0
    latent = np.asarray(conditions.latent)
    noise = np.asarray(jax.random.normal(rng, LATENT_SHAPE, jnp.float32))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1e-3, 5)[:-1])
    forward = jax.jit(model.__call__)
    x = torch.from_numpy(noise.copy())
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas):
        x = torch.from_numpy(np.where(known, (1 - float(sigma)) * latent + float(sigma) * noise, x))
        inputs = denoising.model_input(jnp.asarray(x.numpy()), conditions.latent, conditions.mask)
        timestep = jnp.full((1,), float(t))
        cond = forward(inputs, timestep, conditions.context)
        uncond = forward(inputs, timestep, conditions.negative_context)
        velocity = torch.from_numpy(np.array(uncond + 4.5 * (cond - uncond)))
        x = scheduler.step(velocity, t, x)[0]
    expected = np.where(known, latent, x.numpy())

    settings = denoising.SampleSettings(
        num_steps=4, shift=3.0, guidance_scale=4.5, scheduler="euler", keep_known=True
    )
    kept = np.asarray(denoising.sample(model, conditions, rng, settings))
    np.testing.assert_allclose(kept, expected, atol=1e-5)
    inside = np.broadcast_to(known, kept.shape)
    np.testing.assert_allclose(kept[inside], latent[inside], atol=1e-5)
    free = np.asarray(
        denoising.sample(model, conditions, rng, dataclasses.replace(settings, keep_known=False))
    )
    # The stand-in model works per cell, so holding some cells leaves the others as they were.
    np.testing.assert_allclose(kept[~inside], free[~inside], atol=1e-5)
    assert np.abs(free - latent)[inside].mean() > 0.1


@pytest.mark.parametrize("fuse", [False, True])
def test_unipc_ends_on_the_known_cells_and_repaints_the_partly_known(fuse):
    """UniPC (with or without per-step fusion) returns the condition latent on the wholly known
    cells; a cell with mask < 1 is the model's, like any unknown cell."""
    model, conditions = StandInModel(nnx.Rngs(0)), make_conditions()
    partly = conditions._replace(mask=conditions.mask * 0.9)
    settings = denoising.SampleSettings(num_steps=5, keep_known=True, fuse_every_step=fuse)
    latents = np.asarray(denoising.sample(model, conditions, jax.random.key(1), settings))
    known = np.broadcast_to(np.asarray(conditions.mask) >= 1.0, latents.shape)
    assert known.any() and not known.all()
    np.testing.assert_allclose(latents[known], np.asarray(conditions.latent)[known], atol=1e-5)
    repainted = np.asarray(denoising.sample(model, partly, jax.random.key(1), settings))
    assert np.abs(repainted - np.asarray(conditions.latent))[known].mean() > 0.1


def test_keep_known_comes_from_the_config_and_is_a_compile_time_choice():
    sample_config = ml_collections.ConfigDict(
        {"steps": 3, "shift": 2.0, "guidance_scale": 1.0, "scheduler": "euler", "keep_known": True}
    )
    settings = denoising.SampleSettings.from_config(sample_config)
    assert settings.keep_known and not settings.fuse_every_step
    assert not denoising.SampleSettings.from_config(sample_config, keep_known=False).keep_known
    model = StandInModel(nnx.Rngs(0))
    denoising.sample(model, make_conditions(), jax.random.key(0), settings)
    denoising.sample(model, make_conditions(), jax.random.key(0), settings)
    assert TRACED_BATCHES == [1]
    denoising.sample(
        model, make_conditions(), jax.random.key(0), dataclasses.replace(settings, keep_known=False)
    )
    assert TRACED_BATCHES == [1, 1]


def test_progress_is_reported_for_every_step():
    steps = []
    settings = denoising.SampleSettings(num_steps=4, guidance_scale=2.0)
    model, conditions = StandInModel(nnx.Rngs(0)), make_conditions()
    latents = denoising.sample(
        model, conditions, jax.random.key(0), settings, progress=lambda i: steps.append(int(i))
    )
    jax.block_until_ready(latents)
    jax.effects_barrier()
    assert sorted(steps) == list(range(4))


def test_settings_validate_and_round_trip():
    settings = denoising.SampleSettings(num_steps=10, shift=3.0, scheduler="euler", seed=4)
    assert denoising.SampleSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="scheduler"):
        denoising.SampleSettings(scheduler="ddim")
    with pytest.raises(ValueError, match="num_steps"):
        denoising.SampleSettings(num_steps=0)
    with pytest.raises(ValueError, match="unknown SampleSettings fields"):
        denoising.SampleSettings.from_dict({"steps": 3})


# --- Conditions ----------------------------------------------------------------------------------


def test_perspective_condition_is_zero_outside_its_mask():
    video = np.full((5, 24, 32, 3), 255, np.uint8)
    condition, mask = conditioning.perspective_condition(video, map_size=64, fov_deg=90.0)
    assert condition.shape == (5, 64, 64, 3) and mask.shape == (5, 64, 64, 1)
    np.testing.assert_array_equal(np.asarray(condition)[np.asarray(mask)[..., 0] == 0], 0.0)
    np.testing.assert_allclose(np.asarray(condition)[np.asarray(mask)[..., 0] == 1], 1.0)
    # The front view lands in the front (top-left, F) subregion, around its centre.
    assert mask[0, 16, 16, 0] == 1 and mask[0, 48, 48, 0] == 0
    _, behind = conditioning.perspective_condition(video, map_size=64, fov_deg=60.0, yaw_deg=180.0)
    assert behind[0, 48, 48, 0] == 1 and behind[0, 16, 16, 0] == 0
    with pytest.raises(ValueError, match="field of view"):
        conditioning.perspective_condition(video, map_size=64, fov_deg=180.0)


def test_latent_mask_pools_pixels_and_frame_groups():
    mask = np.zeros((9, 16, 16, 1), np.float32)
    mask[0, :8, :8] = 1  # frame 0: the whole top-left latent cell
    mask[1:3, 8:, 8:] = 1  # frames 1-2 of the group 1-4: half of the bottom-right cell
    pooled = np.asarray(
        autoencoder_lib.latent_mask(jnp.asarray(mask), spatial_factor=8, temporal_factor=4)
    )
    expected = np.zeros((3, 2, 2, 1), np.float32)
    expected[0, 0, 0], expected[1, 1, 1] = 1.0, 0.5
    np.testing.assert_array_equal(pooled, expected)
    with pytest.raises(ValueError, match="does not fit"):
        autoencoder_lib.latent_mask(jnp.zeros((8, 16, 16, 1)), spatial_factor=8, temporal_factor=4)


def test_valid_frame_counts_are_one_plus_4k():
    assert [conditioning.valid_frame_count(n) for n in (1, 4, 5, 8, 49, 50)] == [1, 1, 5, 5, 49, 49]
    with pytest.raises(ValueError, match="at least one frame"):
        conditioning.valid_frame_count(0)


def test_map_to_panorama_fuses_into_erp():
    constant = jnp.full((2, 64, 64, 3), 0.25)
    erp = decoding.canvas_to_panorama(constant, 32, 64)
    assert erp.shape == (2, 32, 64, 3)
    np.testing.assert_allclose(erp, 0.25, atol=1e-6)  # weights of the copies sum to 1
    np.testing.assert_array_equal(
        video_io.to_uint8(jnp.array([-1.0, 0.0, 1.0, 2.0])), [0, 128, 255, 255]
    )


def test_make_conditions_encodes_the_projected_video():
    autoencoder = SpaceToDepthAutoencoder(factor=8)
    context = jnp.ones((1, 5, TEXT_DIM))
    video = np.random.default_rng(0).integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    conditions = conditioning.make_conditions(
        autoencoder, context, -context, map_size=64, num_frames=9, video=video, yaw_deg=30.0
    )
    projected, mask = conditioning.perspective_condition(video, 64, 90.0, 30.0)
    np.testing.assert_allclose(conditions.latent, autoencoder.encode(projected[None]), atol=1e-6)
    pooled = jax.vmap(lambda m: autoencoder_lib.latent_mask(m, 8, 1))(mask[None])
    np.testing.assert_allclose(conditions.mask, pooled)
    assert conditions.latent.shape == (1, 5, 8, 8, 192) and conditions.mask.shape == (1, 5, 8, 8, 1)
    assert 0 < float(conditions.mask.mean()) < 0.5

    text_only = conditioning.make_conditions(
        autoencoder, context, -context, map_size=64, num_frames=9
    )
    assert text_only.latent.shape == (1, 9, 8, 8, 192)
    assert not np.any(text_only.mask) and not np.any(text_only.latent)


def test_make_conditions_rejects_frame_counts_the_autoencoder_cannot_take():
    class FourFrameGroups(SpaceToDepthAutoencoder):
        temporal_factor = 4

        def encode(self, video):
            return super().encode(video[:, ::4])

    autoencoder, context = FourFrameGroups(factor=8), jnp.ones((1, 5, TEXT_DIM))
    with pytest.raises(ValueError, match="has 6 frames; frame counts must be 1 \\+ 4k"):
        conditioning.make_conditions(
            autoencoder, context, context, 64, 9, video=np.zeros((6, 8, 8, 3), np.uint8)
        )
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4k"):
        conditioning.make_conditions(autoencoder, context, context, 64, num_frames=8)
    conditions = conditioning.make_conditions(autoencoder, context, context, 64, num_frames=9)
    assert conditions.mask.shape == (1, 3, 8, 8, 1)


def test_decode_spread_over_a_mesh_equals_one_device():
    """`decode_latents` on a mesh (the VAE replicated there by `replicate`, its tiles spread over
    the devices) gives the one-device decode."""
    from viewpoint_jax.common import sharding
    from viewpoint_jax.models import vae as vae_lib

    def tiny_vae():
        config = vae_lib.WanVAEConfig(base_dim=8, num_res_blocks=1)
        return vae_lib.WanVAE(config, rngs=nnx.Rngs(0))

    latents = np.random.default_rng(6).normal(size=(1, 2, 12, 12, 16)).astype(np.float32)
    mesh = sharding.make_mesh({"fsdp": 8})
    replicated = decoding.replicate(tiny_vae(), mesh)
    kernel = replicated.decoder.conv_in.kernel[...]
    assert kernel.sharding.mesh == mesh and kernel.sharding.is_fully_replicated
    tiles = dict(tile=8, tile_overlap=4)  # 2 x 2 tiles, 4 zero-weight padding tiles
    spread = decoding.decode_latents(replicated, latents, mesh=mesh, **tiles)
    one = decoding.decode_latents(tiny_vae(), latents, **tiles)
    assert spread.shape == (1, 5, 96, 96, 3) and spread.sharding.mesh == mesh
    # The same tiles summed in the same order; XLA optimises the partitioned program's
    # convolutions differently, so fp32 rounding of values in [-1, 1] (measured: 2.3e-6).
    np.testing.assert_allclose(np.asarray(spread), np.asarray(one), atol=1e-5, rtol=0)


@pytest.mark.parametrize("representation", list(geometry.Representation))
def test_conditions_and_panorama_follow_the_representation(representation):
    autoencoder = SpaceToDepthAutoencoder(factor=8)
    context = jnp.ones((1, 5, TEXT_DIM))
    hw = geometry.canvas_size(representation, 64)
    video = np.full((5, 24, 32, 3), 255, np.uint8)
    conditions = conditioning.make_conditions(
        autoencoder, context, -context, map_size=64, num_frames=5, video=video, yaw_deg=30.0,
        representation=representation,
    )  # fmt: skip
    projected, mask = conditioning.perspective_condition(
        video, 64, 90.0, 30.0, representation=representation
    )
    assert projected.shape == (5, *hw, 3) and mask.shape == (5, *hw, 1)
    assert conditions.latent.shape == (1, 5, hw[0] // 8, hw[1] // 8, 192)
    np.testing.assert_allclose(conditions.latent, autoencoder.encode(projected[None]), atol=1e-6)
    # Back in ERP, the condition is the white view where the camera looks, and 0 elsewhere.
    erp = np.asarray(decoding.canvas_to_panorama(projected[:1], 32, 64, representation))[0]
    _, view = geometry.perspective_to_erp(video[0, ..., :1], 90.0, 30.0, height=32)
    view = np.asarray(view)[..., 0] == 1
    assert np.mean(np.abs(erp.mean(axis=-1) - view) > 0.5) < 0.02
    # Constant frames give a constant panorama: every pixel is a convex blend.
    constant = decoding.canvas_to_panorama(jnp.full((2, *hw, 3), 0.25), 32, 64, representation)
    np.testing.assert_allclose(constant, 0.25, atol=1e-6)
    # A known prefix and the text-only condition are frames of this representation too.
    prefix = conditioning.make_conditions(
        autoencoder, context, -context, map_size=64, num_frames=5,
        prefix_map=np.zeros((1, *hw, 3), np.float32), representation=representation,
    )  # fmt: skip
    assert prefix.latent.shape == conditions.latent.shape
    np.testing.assert_array_equal(prefix.mask[0, 0], 1.0)
    with pytest.raises(ValueError, match=rf"prefix_map must be \(P, {hw[0]}, {hw[1]}, 3\)"):
        conditioning.make_conditions(
            autoencoder, context, -context, map_size=64, num_frames=5,
            prefix_map=np.zeros((1, 64, 128, 3), np.float32), representation=representation,
        )  # fmt: skip
