"""SpaceToDepthAutoencoder: exact inversion, layout, protocol, input checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from viewpoint_jax.models.autoencoder import Autoencoder, SpaceToDepthAutoencoder, latent_shape


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
