"""Outpainting error: the masked metric, and the whole evaluation with models whose answer is known.

An oracle model that knows the clean latents x0 predicts the exact flow velocity (x - x0) / s; the
Euler sampler then lands on x0 whatever the noise, so the error of the evaluation is the error of
x0 itself, outside the condition mask.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from viewpoint_jax import config as config_lib
from viewpoint_jax import evaluation
from viewpoint_jax.data import builder
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.models.autoencoder import SpaceToDepthAutoencoder

N, F, M = 2, 3, 16
SETTINGS = sampler.SampleSettings(num_steps=4, shift=3.0, guidance_scale=3.0, scheduler="euler")


class FakeTextEncoder:
    """Caption -> a deterministic embedding `(B, L, D)` (its length and first byte)."""

    def encode_text(self, prompts):
        values = np.asarray([[len(p), ord(p[0]) if p else 0] for p in prompts], np.float32)
        embeddings = np.broadcast_to(values[:, None, :], (len(prompts), 4, 2)).copy()
        return jnp.asarray(embeddings), jnp.ones((len(prompts), 4), jnp.int32)


class Oracle(nnx.Module):
    """Predicts the velocity that leads to `clean` latents: v = (x - x0) / s, s = t / 1000."""

    def __init__(self, clean: jax.Array):
        self.clean = nnx.Variable(clean)
        self.channels = clean.shape[-1]

    def __call__(self, inputs, t, context):
        del context
        x = inputs[..., : self.channels]
        clean = jnp.tile(self.clean[...], (x.shape[0] // self.clean.shape[0], 1, 1, 1, 1))
        return (x - clean) / (t[:, None, None, None, None] / 1000.0)


class RandomVelocity(nnx.Module):
    """A fixed random linear map of the input: an untrained model, deterministic in its weights."""

    def __init__(self, in_dim: int, out_dim: int, rngs: nnx.Rngs):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (in_dim, out_dim)) * 0.3)

    def __call__(self, inputs, t, context):
        del t, context
        return inputs @ self.weight[...]


def _clips(seed: int = 0) -> evaluation.EvalClips:
    rng = np.random.default_rng(seed)
    target = rng.uniform(-1, 1, (N, F, M, M, 3)).astype(np.float32)
    mask = np.zeros((N, F, M, M, 1), np.float32)
    mask[:, :, :, : M // 2] = 1.0  # the condition shows the left half of the map
    return evaluation.EvalClips(
        target_map=target,
        condition_map=target * mask,
        condition_mask=mask,
        perspective=np.zeros((N, F, 4, 6, 3), np.float32),
        view=np.zeros((N, 4), np.float32),
        captions=("a red ball", "a blue room"),
        sources=("a.mp4", "b.mp4"),
    )


def test_outpainted_mse_counts_only_pixels_outside_the_condition():
    clips = _clips()
    generated = clips.target_map.copy()
    generated[:, :, :, : M // 2] = 5.0  # wrong only where the condition is given
    mse = evaluation.outpainted_mse(generated, clips.target_map, clips.condition_mask)
    np.testing.assert_allclose(mse, 0.0, atol=1e-7)

    generated = clips.target_map + 0.5 * clips.condition_mask - 0.25 * (1 - clips.condition_mask)
    mse = evaluation.outpainted_mse(generated, clips.target_map, clips.condition_mask)
    np.testing.assert_allclose(mse, [0.0625, 0.0625], rtol=1e-5)


def test_outpainted_mse_weights_partly_covered_pixels():
    target = np.zeros((1, 1, 2, 2, 1), np.float32)
    generated = np.asarray([1.0, 2.0, 3.0, 4.0], np.float32).reshape(target.shape)
    mask = np.asarray([0.0, 0.5, 1.0, 0.0], np.float32).reshape(target.shape)
    expected = (1.0 * 1 + 4.0 * 0.5 + 16.0 * 1) / 2.5
    mse = evaluation.outpainted_mse(generated, target, mask)
    np.testing.assert_allclose(mse, [expected], rtol=1e-6)


def test_outpainted_mse_refuses_a_fully_covered_map():
    ones = np.ones((1, 1, 2, 2, 1), np.float32)
    with pytest.raises(ValueError, match="covers the whole map"):
        evaluation.outpainted_mse(ones, ones, ones)


def test_psnr_of_pixels_in_minus_one_to_one():
    np.testing.assert_allclose(evaluation.psnr([4.0, 0.04, 0.0004]), [0.0, 20.0, 40.0])


def test_oracle_of_the_ground_truth_has_no_error():
    clips = _clips()
    autoencoder = SpaceToDepthAutoencoder(4)
    oracle = Oracle(autoencoder.encode(jnp.asarray(clips.target_map)))
    result = evaluation.outpainting_error(
        oracle, autoencoder, FakeTextEncoder(), clips, SETTINGS, seeds=(0, 7)
    )
    assert result.mse.shape == (N,) and result.maps.shape == clips.target_map.shape
    np.testing.assert_allclose(result.mse, 0.0, atol=1e-8)
    np.testing.assert_allclose(result.maps, clips.target_map, atol=1e-5)
    assert result.summary()["psnr_db"] > 60


def test_oracle_of_the_condition_scores_the_grey_fill():
    # Copying the condition leaves the outpainted region at 0 (mid-grey): its error is the
    # grey-fill reference, whatever the seed.
    clips = _clips()
    autoencoder = SpaceToDepthAutoencoder(4)
    oracle = Oracle(autoencoder.encode(jnp.asarray(clips.condition_map)))
    result = evaluation.outpainting_error(oracle, autoencoder, FakeTextEncoder(), clips, SETTINGS)
    grey = evaluation.constant_fill_mse(clips)
    np.testing.assert_allclose(result.mse, grey, rtol=1e-5)
    # Uniform targets in [-1, 1]: E[x^2] = 1/3.
    np.testing.assert_allclose(grey, 1 / 3, atol=0.05)


def test_same_seeds_same_error_other_seeds_other_error():
    clips = _clips()
    autoencoder = SpaceToDepthAutoencoder(4)
    channels = autoencoder.latent_channels
    model = RandomVelocity(2 * channels + 1, channels, nnx.Rngs(0))
    run = lambda seeds: evaluation.outpainting_error(
        model, autoencoder, FakeTextEncoder(), clips, SETTINGS, seeds
    )
    first, again, other, both = run((0,)), run((0,)), run((1,)), run((0, 1))
    np.testing.assert_array_equal(first.mse, again.mse)
    np.testing.assert_array_equal(first.maps, again.maps)
    assert not np.allclose(first.mse, other.mse)
    np.testing.assert_allclose(both.mse, (first.mse + other.mse) / 2, rtol=1e-6)
    np.testing.assert_array_equal(both.maps, first.maps)  # the maps of the first seed
    assert both.summary()["seeds"] == [0, 1]


def test_load_eval_clips_stacks_the_held_out_videos():

    rng = np.random.default_rng(0)

    def record(index, num_frames, is_image=False):
        frames = (rng.random((num_frames, 16, 32, 3)) * 255).astype(np.uint8)
        return {
            "frames": [builder.encode_frame(f, "png") for f in frames],
            "caption": f"clip {index}".encode(),
            "source": f"clip{index}.mp4".encode(),
            "is_image": is_image,
            "num_frames": num_frames,
        }

    source = [record(0, 8), record(1, 1, is_image=True), record(2, 8), record(3, 8)]
    config = config_lib.data_config()
    config.update(dict(erp_height=16, erp_width=32, map_size=16, num_frames=5))
    clips = evaluation.load_eval_clips(config, num_clips=3, data_source=source)
    assert len(clips) == 2  # the image among the first three records is skipped
    assert clips.captions == ("clip 0", "clip 2")
    assert clips.sources == ("clip0.mp4", "clip2.mp4")
    assert clips.target_map.shape == (2, 5, 16, 16, 3)
    assert clips.condition_mask.shape == (2, 5, 16, 16, 1)
    assert clips.view.shape == (2, 4)
    outside = 1 - clips.condition_mask
    np.testing.assert_array_equal(clips.condition_map * outside, 0.0)
    with pytest.raises(ValueError, match="no video clips"):
        evaluation.load_eval_clips(config, num_clips=1, data_source=source[1:2])
