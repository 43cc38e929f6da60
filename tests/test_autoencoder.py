"""The parameter-free stand-ins for the VAE: SpaceToDepthAutoencoder (exact inversion, layout,
protocol, input checks) and BlockDCTAutoencoder (a projection onto low frequencies, checked
against scipy's DCT)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.fft import dctn

from viewpoint_jax.models.autoencoder import (
    OPPONENT_COLOURS,
    Autoencoder,
    BlockDCTAutoencoder,
    SpaceToDepthAutoencoder,
    latent_shape,
)


@pytest.mark.parametrize("factor", [1, 4, 8])
def test_round_trip_is_exact(factor):
    ae = SpaceToDepthAutoencoder(factor)
    video = np.random.default_rng(factor).uniform(-1, 1, (2, 3, 16, 24, 3)).astype(np.float32)
    latents = ae.encode(jnp.asarray(video))
    assert latents.shape == latent_shape(ae, video.shape) == (2, 3, 16 // factor, 24 // factor,
                                                              3 * factor**2)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(ae.decode(latents)), video)
    z = np.random.default_rng(0).normal(size=latents.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(ae.encode(ae.decode(jnp.asarray(z)))), z)


def test_channel_layout():
    """Latent channel (i * f + j) * 3 + c is pixel (f*y + i, f*x + j), colour c."""
    ae = SpaceToDepthAutoencoder(4)
    video = np.arange(8 * 8 * 3, dtype=np.float32).reshape(1, 1, 8, 8, 3)
    latents = np.asarray(ae.encode(jnp.asarray(video)))
    for y, x, i, j, c in [(0, 0, 0, 0, 0), (1, 0, 2, 3, 1), (1, 1, 3, 1, 2)]:
        assert latents[0, 0, y, x, (i * 4 + j) * 3 + c] == video[0, 0, 4 * y + i, 4 * x + j, c]


def test_protocol():
    ae = SpaceToDepthAutoencoder(8)
    assert isinstance(ae, Autoencoder)
    assert (ae.latent_channels, ae.spatial_factor, ae.temporal_factor) == (192, 8, 1)
    assert latent_shape(ae, (1, 49, 640, 640, 3)) == (1, 49, 80, 80, 192)


def test_bad_input_is_named():
    ae = SpaceToDepthAutoencoder(8)
    with pytest.raises(ValueError, match="multiple of the factor 8"):
        ae.encode(jnp.zeros((1, 1, 12, 16, 3)))
    with pytest.raises(ValueError, match=r"video must be \(B, F, H, W, 3\)"):
        ae.encode(jnp.zeros((1, 1, 16, 16, 4)))
    with pytest.raises(ValueError, match=r"latents must be \(B, F, h, w, 192\)"):
        ae.decode(jnp.zeros((1, 1, 2, 2, 16)))
    with pytest.raises(ValueError, match="factor must be >= 1"):
        SpaceToDepthAutoencoder(0)


def _video(seed: int, shape=(2, 3, 16, 24, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_block_dct_is_a_projection_onto_what_it_keeps():
    ae = BlockDCTAutoencoder(4, 16)
    assert isinstance(ae, Autoencoder) and ae.latent_channels == 16
    video = jnp.asarray(_video(0))
    latents = ae.encode(video)
    assert latents.shape == latent_shape(ae, video.shape) == (2, 3, 4, 6, 16)
    reconstruction = ae.decode(latents)
    # encode(decode(z)) == z, and what decode(encode(x)) drops is orthogonal to what it keeps.
    np.testing.assert_allclose(ae.encode(reconstruction), latents, atol=1e-5)
    residual = video - reconstruction
    assert abs(float(jnp.sum(residual * reconstruction))) < 1e-3 * float(jnp.sum(video**2))
    assert float(jnp.mean(residual**2)) < float(jnp.mean(video**2))


def test_block_dct_channels_are_scipys_dct_of_the_colour_components():
    factor = 4
    ae = BlockDCTAutoencoder(factor, 16)
    video = _video(1, (1, 1, 8, 8, 3))
    latents = np.asarray(ae.encode(jnp.asarray(video)))
    block = video[0, 0, 4:8, 0:4]  # block (1, 0)
    components = np.einsum("yxc,kc->kyx", block, OPPONENT_COLOURS)
    spectra = np.stack([dctn(c, norm="ortho") for c in components]) / factor
    # Zigzag: (0,0), (0,1), (1,0), (0,2), (1,1), (2,0), (0,3), (1,2); half luminance, a quarter each.
    zigzag = [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0), (0, 3), (1, 2)]
    want = [spectra[0][ij] for ij in zigzag] + [spectra[k][ij] for k in (1, 2) for ij in zigzag[:4]]
    np.testing.assert_allclose(latents[0, 0, 1, 0], want, atol=1e-5)
    # The first channel is the block's mean luminance (the constant term, scaled by 1 / factor).
    np.testing.assert_allclose(latents[0, 0, 1, 0, 0], components[0].mean(), rtol=1e-5)


def test_block_dct_keeps_smooth_frames_and_constant_blocks():
    ae = BlockDCTAutoencoder(4, 16)
    y, x = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 64), indexing="ij")
    smooth = np.stack([0.8 * x, 0.5 * y, 0.3 * x * y], -1)[None, None].astype(np.float32)
    error = float(jnp.mean((ae.decode(ae.encode(jnp.asarray(smooth))) - smooth) ** 2))
    assert 10 * np.log10(4 / error) > 40  # PSNR of pixels in [-1, 1]
    blocks = np.repeat(np.repeat(_video(2, (1, 2, 4, 4, 3)), 4, axis=2), 4, axis=3)
    np.testing.assert_allclose(ae.decode(ae.encode(jnp.asarray(blocks))), blocks, atol=1e-5)


@pytest.mark.parametrize("channels", [0, 6, 36])
def test_block_dct_refuses_channels_it_cannot_split(channels):
    with pytest.raises(ValueError, match="multiple of 4 in \\[4, 32\\]"):
        BlockDCTAutoencoder(4, channels)
