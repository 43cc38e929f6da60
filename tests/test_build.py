"""Components: Wan checkpoint inflation, inference restore, the tiny text encoder, autoencoders."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import micro_config

from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import tokenizer as tokenizer_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import validate_config
from viewpoint_jax.training import checkpoints


def _save_converted(path, model):
    """A converted DiT directory as the converter writes it: config.json + params/ (Orbax)."""
    dit_lib.save_dit(path, model)


def test_inflated_wan_checkpoint_ignores_the_condition_until_trained(tmp_path):
    config = micro_config()
    target_config = build.dit_config(config)
    channels = target_config.out_dim
    t2v_config = dataclasses.replace(target_config, in_dim=channels)  # text-to-video: C inputs
    t2v = dit_lib.WanDiT(t2v_config, rngs=nnx.Rngs(3))
    _save_converted(tmp_path / "wan", t2v)

    params = dit_lib.load_pretrained_params(tmp_path / "wan", target_config)
    graphdef, _ = nnx.split(dit_lib.abstract_model(target_config), nnx.Param)
    model = nnx.merge(graphdef, params)
    kernel = np.asarray(params["patch_kernel"][...])
    assert kernel.shape[3] == 2 * channels + 1
    np.testing.assert_array_equal(kernel[..., :channels, :], t2v.patch_kernel[...])
    np.testing.assert_array_equal(kernel[..., channels:, :], 0.0)

    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (1, 2, 4, 4, channels))
    condition = jax.random.normal(keys[1], x.shape)
    mask = (jax.random.uniform(keys[2], (*x.shape[:-1], 1)) > 0.5).astype(jnp.float32)
    context = jax.random.normal(keys[3], (1, 5, target_config.text_dim))
    t = jnp.array([500.0])
    inflated = model(jnp.concatenate([x, condition, mask], -1), t, context)
    np.testing.assert_allclose(inflated, t2v(x, t, context), rtol=1e-5, atol=1e-5)

    # The sampler CLI takes a converted directory as well as a run directory.
    loaded = checkpoints.restore_model_for_inference(tmp_path / "wan", config)
    assert loaded.config.in_dim == channels


def test_mismatched_checkpoint_is_named(tmp_path):
    config = micro_config()
    target_config = build.dit_config(config)
    other = dit_lib.WanDiT(dataclasses.replace(target_config, dim=64, ffn_dim=64), rngs=nnx.Rngs(0))
    _save_converted(tmp_path / "wan", other)
    try:
        dit_lib.load_pretrained_params(tmp_path / "wan", target_config)
    except ValueError as error:
        assert "dim is 64 in the checkpoint but 32 in the config" in str(error)
    else:
        raise AssertionError("a checkpoint of another size was accepted")


def test_tiny_text_encoder_is_the_same_at_training_and_sampling():
    config = micro_config()
    first, second = build.build_text_encoder(config), build.build_text_encoder(config)
    prompts = ["a red ball", ""]
    a, mask = first.encode_text(prompts)
    b, _ = second.encode_text(prompts)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, config.text_encoder.max_length, build.text_width(config))
    assert int(mask[0].sum()) == len("a red ball") + 1 and int(mask[1].sum()) == 1
    np.testing.assert_array_equal(a[0, int(mask[0].sum()) :], 0.0)  # zero past the prompt


def test_byte_tokenizer():
    ids, mask = tokenizer_lib.ByteTokenizer(8)(["héllo  world", "ab"])
    assert ids.shape == (2, 8) and ids.dtype == np.int32
    assert list(ids[1]) == [ord("a") + 2, ord("b") + 2, 1, 0, 0, 0, 0, 0]
    assert list(mask[1]) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert (
        ids[0, -1] == 1 and ids.max() < tokenizer_lib.ByteTokenizer.vocab_size
    )  # truncated, ended


def test_block_dct_autoencoder_from_config_gives_wans_33_input_channels():
    config = micro_config()
    config.autoencoder.kind = "block_dct"
    config.autoencoder.factor = 4
    config.autoencoder.channels = 16
    validate_config(config, num_devices=1)
    autoencoder = build.build_autoencoder(config)
    assert (autoencoder.spatial_factor, autoencoder.latent_channels) == (4, 16)
    assert build.latent_channels(config) == 16
    model_config = build.dit_config(config)
    assert (model_config.in_dim, model_config.out_dim) == (33, 16)  # as Wan's 16-channel VAE
    config.autoencoder.channels = 12 * 3  # more than twice the 16 pixels of a block
    with pytest.raises(ValueError, match=r"config\.autoencoder\.channels: must be a multiple"):
        validate_config(config, num_devices=1)


def test_space_to_depth_autoencoder_from_config():
    config = micro_config()
    autoencoder = build.build_autoencoder(config)
    assert autoencoder.spatial_factor == config.autoencoder.factor
    assert autoencoder.latent_channels == build.latent_channels(config)
