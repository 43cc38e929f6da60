"""Every condition at sampling: text only, an image at frame 0, a known prefix (continuation),
and long videos generated window by window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from viewpoint_jax.common import video_io
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation import conditioning, decoding
from viewpoint_jax.generation.generate import continue_video, generate_long
from viewpoint_jax.generation.models import Models
from viewpoint_jax.models.autoencoder import SpaceToDepthAutoencoder
from viewpoint_jax.setup import config as config_lib

SETTINGS = denoising.SampleSettings(num_steps=2, shift=3.0, guidance_scale=1.0, scheduler="euler")


class StandInModel(nnx.Module):
    """A nonlinear function of (x, t, context) shaped like the DiT for `channels` latents."""

    def __init__(self, channels: int, rngs: nnx.Rngs):
        inputs = 2 * channels + 1
        self.w = nnx.Param(jax.random.normal(rngs.params(), (inputs, channels)) / np.sqrt(inputs))

    def __call__(self, x, t, context):
        h = x @ self.w[...] + (t / 1000.0)[:, None, None, None, None] + context.mean()
        return jnp.tanh(h)


class StandInTextEncoder:
    def encode_text(self, prompts):
        context = jnp.full((len(prompts), 4, 8), float(len(prompts[0])) / 10)
        return context, jnp.ones((len(prompts), 4), bool)


class FourFrameGroups(SpaceToDepthAutoencoder):
    """A causal stand-in with the Wan VAE's frame grouping: latent frame j is pixel frame 4 j
    (frame 0 alone, then one per group of 4); decoding repeats it over its group."""

    temporal_factor = 4

    def encode(self, video):
        return super().encode(video[:, ::4])

    def decode(self, latents):
        frames = super().decode(latents)
        return jnp.concatenate([frames[:, :1], jnp.repeat(frames[:, 1:], 4, axis=1)], axis=1)


def _models(autoencoder=None, num_frames=5) -> Models:
    config = config_lib.load_config_file("configs/tiny.py:micro")  # ERP 32 x 64, map 64
    config.data.num_frames = num_frames
    autoencoder = autoencoder or SpaceToDepthAutoencoder(factor=8)
    return Models(
        model=StandInModel(autoencoder.latent_channels, nnx.Rngs(0)),
        autoencoder=autoencoder,
        text_encoder=StandInTextEncoder(),
        config=config,
    )


def _decoded_uint8(models, latents):
    return video_io.to_uint8(decoding.decode_latents(models.autoencoder, jnp.asarray(latents))[0])


def test_image_is_known_at_frame_0_only():
    autoencoder, context = FourFrameGroups(factor=8), jnp.ones((1, 4, 8))
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    conditions = conditioning.make_conditions(
        autoencoder, context, -context, 64, num_frames=9, image=image, yaw_deg=40.0
    )
    assert conditions.mask.shape == (1, 3, 8, 8, 1)
    assert conditions.mask[0, 0].any() and not conditions.mask[0, 1:].any()
    assert not conditions.latent[0, 1:].any()
    projected, _ = conditioning.perspective_condition(image[None], 64, 90.0, 40.0)
    np.testing.assert_allclose(conditions.latent[0, 0], autoencoder.encode(projected[None])[0, 0])
    with pytest.raises(ValueError, match="at most one of video, image, prefix_map"):
        conditioning.make_conditions(
            autoencoder, context, context, 64, 9, video=image[None], image=image
        )


def test_prefix_mask_is_exactly_the_first_k_latent_frames():
    autoencoder, context = FourFrameGroups(factor=8), jnp.ones((1, 4, 8))
    prefix = np.random.default_rng(0).uniform(-1, 1, (5, 64, 64, 3)).astype(np.float32)
    conditions = conditioning.make_conditions(
        autoencoder, context, context, 64, num_frames=13, prefix_map=prefix
    )
    np.testing.assert_array_equal(conditions.mask[0, :2], 1.0)  # 5 = 1 + 4 (2 - 1) frames
    np.testing.assert_array_equal(conditions.mask[0, 2:], 0.0)
    np.testing.assert_array_equal(conditions.latent[0, :2], autoencoder.encode(prefix[None])[0])
    with pytest.raises(ValueError, match=r"prefix_map must be .* P = 1 \+ 4j"):
        conditioning.make_conditions(autoencoder, context, context, 64, 13, prefix_map=prefix[:4])


def test_long_video_has_exactly_n_frames_joined_at_the_overlap():
    models = _models()  # space-to-depth: every frame is a latent frame, window 5
    long = generate_long(models, "a long street", SETTINGS, num_frames=13, overlap_latent_frames=2)
    assert long.map_video.shape == (13, 64, 64, 3)
    assert long.panorama.shape == (13, 32, 64, 3)
    # Each window adds W - P = 5 - 2 frames; the last one is cut at frame 13.
    assert long.window_starts == [0, 3, 6, 9]
    for start, latents in zip(long.window_starts, long.window_latents, strict=True):
        frames = _decoded_uint8(models, latents)[: 13 - start]
        # Every frame of a window is the output frame at its place: the first 2 are the known
        # prefix (the previous output, re-imposed), the rest are the frames the window adds.
        np.testing.assert_array_equal(frames, long.map_video[start : start + len(frames)])


def test_long_video_with_four_frame_groups():
    models = _models(FourFrameGroups(factor=8), num_frames=9)  # 3 latent frames a window
    long = generate_long(models, "waves", SETTINGS, num_frames=21)
    assert long.map_video.shape[0] == 21 and long.panorama.shape[0] == 21
    assert long.window_starts == [0, 8, 16]  # overlap 1 latent frame = 1 pixel frame
    for start, latents in zip(long.window_starts, long.window_latents, strict=True):
        frames = _decoded_uint8(models, latents)[: 21 - start]
        np.testing.assert_array_equal(frames, long.map_video[start : start + len(frames)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=20), "num_frames must be 1 \\+ 4m"),
        (
            dict(num_frames=21, overlap_latent_frames=3),
            "overlap_latent_frames must be in \\[1, 2\\]",
        ),
        (dict(num_frames=21, window=8), "window must be 1 \\+ 4k"),
    ],
)
def test_long_video_refuses_bad_counts_naming_the_argument(kwargs, message):
    models = _models(FourFrameGroups(factor=8), num_frames=9)
    with pytest.raises(ValueError, match=message):
        generate_long(models, "waves", SETTINGS, **kwargs)


def test_continuation_keeps_the_given_frames_exactly():
    models = _models()
    source = np.random.default_rng(1).integers(0, 256, (5, 32, 64, 3), dtype=np.uint8)
    result = continue_video(models, source, "more", SETTINGS, num_frames=9, overlap_latent_frames=2)
    assert result.map_video.shape == (9, 64, 64, 3) and result.panorama.shape == (9, 32, 64, 3)
    np.testing.assert_array_equal(result.panorama[:5], source)
    assert result.window_starts == [3, 6]
    source_map = conditioning.panorama_to_canvas(source, 64)
    given = np.asarray(models.autoencoder.encode(source_map[None, -2:]))
    # The known latent frames (mask 1) are the given ones after sampling: re-imposed.
    np.testing.assert_array_equal(result.window_latents[0][:, :2], given)
    # The model alone would not keep them: re-imposing is what makes continuation exact.
    context, negative = models.text_encoder.encode_text(["more"])
    conditions = conditioning.make_conditions(
        models.autoencoder, context, negative, 64, 5, prefix_map=source_map[-2:]
    )
    raw = denoising.sample(models.model, conditions, jax.random.key(0), SETTINGS)
    assert not np.allclose(raw[:, :2], given, atol=1e-2)


@pytest.mark.parametrize(
    "shape, kwargs, message",
    [
        ((5, 32, 48, 3), dict(num_frames=9), "pano_erp_video must be a 2:1 equirectangular"),
        ((5, 32, 64), dict(num_frames=9), "pano_erp_video must be a 2:1 equirectangular"),
        ((5, 32, 64, 3), dict(num_frames=5), "num_frames must be 1 \\+ 1m and more than the 5"),
    ],
)
def test_continuation_refuses_bad_sources_naming_the_argument(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        continue_video(_models(), np.zeros(shape, np.uint8), "x", SETTINGS, **kwargs)
