"""Wan VAE: parity with diffusers' AutoencoderKLWan through the converter, chunked == whole video,
tiling, input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import viewpoint_jax  # noqa: F401  (flax config)
from viewpoint_jax.convert.vae import convert_vae
from viewpoint_jax.models import vae as vae_lib
from viewpoint_jax.models.autoencoder import Autoencoder, SpaceToDepthAutoencoder, latent_shape
from viewpoint_jax.models.autoencoder import compiler_options as autoencoder_compiler_options

# The tiny networks run in milliseconds; XLA's CPU optimisation passes would dominate test time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(vae, method, options=None, **kwargs):
    graphdef, state = nnx.split(vae)

    @jax.jit(compiler_options={**FAST_COMPILE, **(options or {})})
    def run(state, x):
        return getattr(nnx.merge(graphdef, state), method)(x, **kwargs)

    return lambda x: np.asarray(run(state, jnp.asarray(x)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny random diffusers VAE (Wan2.1 layout, base_dim 8), its conversion, and test data."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    ref = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1).eval()
    folder = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(folder / "diffusers")
    convert_vae(folder / "diffusers", folder / "converted")
    vae = vae_lib.load_vae(folder / "converted")
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (1, 5, 32, 32, 3)).astype(np.float32)
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)
        latents = (ref.encode(x).latent_dist.mean - mean) / std  # normalised as ours
        decoded = ref.decode(latents * std + mean).sample
    return {
        "torch": ref,
        "vae": vae,
        "video": video,
        "latents": latents.permute(0, 2, 3, 4, 1).numpy(),
        "decoded": decoded.permute(0, 2, 3, 4, 1).numpy(),
    }


def test_encode_matches_diffusers(reference):
    latents = _jit(reference["vae"], "encode")(reference["video"])
    want = reference["latents"]
    assert latents.shape == (1, 2, 4, 4, 16) == want.shape
    # Reached: max abs error ~1e-6 on latents of magnitude ~1.5 (fp32).
    np.testing.assert_allclose(latents, want, atol=2e-5, rtol=0)


def test_decode_matches_diffusers(reference):
    decoded = _jit(reference["vae"], "decode")(reference["latents"])
    want = reference["decoded"]
    assert decoded.shape == (1, 5, 32, 32, 3) == want.shape
    assert np.mean(np.abs(want) < 1) > 0.9  # the comparison is not just of clamped values
    # Reached: max abs error ~5e-6 (fp32).
    np.testing.assert_allclose(decoded, want, atol=5e-5, rtol=0)


def test_compiler_options_keep_parity(reference):
    """`vae.compiler_options()` (Eigen instead of YNNPACK convolutions on CPU) is accepted by this
    jaxlib and keeps encode/decode parity with diffusers at the same tolerances."""
    options = vae_lib.compiler_options()
    assert options and vae_lib.compiler_options("gpu") == {}
    vae = reference["vae"]
    # What the sampler and the latent precompute jit the VAE with; no options for the stand-in.
    assert autoencoder_compiler_options(vae) == options
    assert autoencoder_compiler_options(SpaceToDepthAutoencoder(8)) == {}
    latents = _jit(vae, "encode", options)(reference["video"])
    np.testing.assert_allclose(latents, reference["latents"], atol=2e-5, rtol=0)
    decoded = _jit(vae, "decode", options)(reference["latents"])
    np.testing.assert_allclose(decoded, reference["decoded"], atol=5e-5, rtol=0)


def test_chunked_equals_whole_video(reference):
    """The scan over chunks with a carried cache equals one pass over all frames (9 frames =
    first frame + 2 chunks, so the cache is carried across scan steps)."""
    vae = reference["vae"]
    video = np.random.default_rng(1).uniform(-1, 1, (2, 9, 16, 16, 3)).astype(np.float32)
    chunked = _jit(vae, "encode")(video)
    whole = _jit(vae, "encode", chunked=False)(video)
    assert chunked.shape == (2, 3, 2, 2, 16)
    np.testing.assert_allclose(chunked, whole, atol=1e-5, rtol=0)
    decoded = _jit(vae, "decode")(chunked)
    decoded_whole = _jit(vae, "decode", chunked=False)(chunked)
    assert decoded.shape == (2, 9, 16, 16, 3)
    np.testing.assert_allclose(decoded, decoded_whole, atol=1e-5, rtol=0)


def test_tiling_is_exact_for_a_local_map():
    """The blending itself is exact: for a per-pixel map (8x nearest upsampling of tanh), tiles with
    overlaps and a border-flush last tile reassemble the untiled result."""

    def fn(z):
        return jnp.repeat(jnp.repeat(jnp.tanh(z[..., :3]), 8, axis=2), 8, axis=3)

    z = jnp.asarray(np.random.default_rng(2).normal(size=(1, 2, 11, 13, 4)), jnp.float32)
    tiled = vae_lib.tiled_apply(fn, z, tile=6, overlap=2, in_factor=1, out_factor=8)
    np.testing.assert_allclose(np.asarray(tiled), np.asarray(fn(z)), atol=1e-6)
    down = vae_lib.tiled_apply(
        lambda v: v[:, :, ::4, ::4], fn(z), tile=5, overlap=2, in_factor=8, out_factor=2
    )
    np.testing.assert_allclose(np.asarray(down), np.asarray(fn(z))[:, :, ::4, ::4], atol=1e-6)


def test_tiled_decode_close_to_untiled(reference):
    """Tiles of 8 latent pixels overlapping by 4 on a 12x12 latent (4 tiles).

    Tiling is not exact for this network: the middle attention is global over each tile and the
    convolutions see the tile border, so with random weights (nothing local learned) tiles differ
    most. The bound is the reference's own tiling: diffusers' tiled decode with the same tile and
    overlap (64 px tiles, stride 32 px) on the same weights. We assert our mean abs difference to
    the untiled decode is no larger than diffusers' (measured: ours ~0.8x of theirs), and below
    0.3x the difference between decodes of two unrelated latents (measured ~0.16-0.2x).
    """
    vae, ref = reference["vae"], reference["torch"]
    rng = np.random.default_rng(3)
    z = rng.standard_normal((1, 2, 12, 12, 16)).astype(np.float32)
    other = rng.standard_normal((1, 2, 12, 12, 16)).astype(np.float32)
    decode = _jit(vae, "decode")
    full, unrelated = decode(z), decode(other)
    tiled = _jit(vae, "decode", tile=8, tile_overlap=4)(z)
    assert tiled.shape == full.shape == (1, 5, 96, 96, 3)
    ours = np.abs(tiled - full).mean()
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        zt = torch.from_numpy(z).permute(0, 4, 1, 2, 3) * std + mean
        ref.enable_tiling(64, 64, 32, 32)
        theirs_tiled = ref.decode(zt).sample.permute(0, 2, 3, 4, 1).numpy()
        ref.disable_tiling()
    theirs = np.abs(theirs_tiled - full).mean()
    assert ours <= theirs, (ours, theirs)
    assert ours < 0.3 * np.abs(unrelated - full).mean()


def test_tiled_encode_close_to_untiled(reference):
    """Same bound as the tiled decode: no further from the untiled result than diffusers' tiled
    encode with the same tiles (64 px, stride 32 px), and below 0.5x the difference between the
    latents of two unrelated videos (measured ~0.37x: the encoder's receptive field spans the
    whole 64 px tile, so random weights make every latent pixel depend on the tile border)."""
    vae, ref = reference["vae"], reference["torch"]
    rng = np.random.default_rng(4)
    video = rng.uniform(-1, 1, (1, 1, 96, 96, 3)).astype(np.float32)
    other = rng.uniform(-1, 1, (1, 1, 96, 96, 3)).astype(np.float32)
    encode = _jit(vae, "encode")
    full, unrelated = encode(video), encode(other)
    tiled = _jit(vae, "encode", tile=8, tile_overlap=4)(video)
    assert tiled.shape == full.shape == (1, 1, 12, 12, 16)
    ours = np.abs(tiled - full).mean()
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        ref.enable_tiling(64, 64, 32, 32)
        moments = ref.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist.mean
        ref.disable_tiling()
    theirs = np.abs(((moments - mean) / std).permute(0, 2, 3, 4, 1).numpy() - full).mean()
    assert ours <= theirs, (ours, theirs)
    assert ours < 0.5 * np.abs(unrelated - full).mean()


def test_protocol_and_shapes(reference):
    vae = reference["vae"]
    assert isinstance(vae, Autoencoder)
    assert (vae.latent_channels, vae.spatial_factor, vae.temporal_factor) == (16, 8, 4)
    assert latent_shape(vae, (2, 49, 640, 640, 3)) == (2, 13, 80, 80, 16)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 6, 16, 16, 3), r"1 \+ 4k frames"),
        ((1, 5, 16, 16, 4), r"3 \(RGB\) channels"),
        ((1, 5, 20, 16, 3), "multiple of 8"),
        ((5, 16, 16, 3), r"\(B, F, H, W, 3\)"),
    ],
)
def test_bad_video_is_named(reference, shape, message):
    with pytest.raises(ValueError, match=message):
        reference["vae"].encode(jnp.zeros(shape))


def test_bad_latents_are_named(reference):
    with pytest.raises(ValueError, match=r"latents must be \(B, T, h, w, 16\)"):
        reference["vae"].decode(jnp.zeros((1, 2, 4, 4, 12)))


def test_config_round_trip():
    config = vae_lib.WanVAEConfig(base_dim=8, num_res_blocks=1, dtype="bfloat16")
    assert vae_lib.WanVAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="temporal_downsample needs 3"):
        vae_lib.WanVAEConfig(temporal_downsample=(True,))
    with pytest.raises(ValueError, match="unknown WanVAEConfig fields"):
        vae_lib.WanVAEConfig.from_dict({"base_dims": 8})


def test_bfloat16_compute_is_close(reference):
    """bf16 compute (params float32) stays within bf16 accuracy of the fp32 result."""
    vae = reference["vae"]
    graphdef, state = nnx.split(vae)
    bf16 = nnx.merge(graphdef, state)
    bf16.config = dataclasses.replace(vae.config, dtype="bfloat16")
    got = _jit(bf16, "encode")(reference["video"])
    want = reference["latents"]
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 0.05, err


def test_tiles_spread_over_devices_equal_one_device():
    """`tiled_apply` over a mesh (one tile per device per step, the weights replicated) gives
    the one-device tiled decode. 6 tiles of 8 latent pixels (overlap 2) on a 20 x 14 latent:
    one step on 8 devices (2 zero-weight padding tiles), two on 4 (2 padding tiles). 9 frames,
    so each tile's causal cache is carried across 2 decode chunks."""
    from viewpoint_jax.common import sharding

    vae = vae_lib.WanVAE(vae_lib.WanVAEConfig(base_dim=8, num_res_blocks=1), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vae)
    z = jnp.asarray(np.random.default_rng(5).normal(size=(1, 3, 20, 14, 16)), jnp.float32)

    def decode_tiles(mesh):
        arrays = state
        if mesh is not None:
            everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            arrays = jax.device_put(state, everywhere)

        @jax.jit(compiler_options=FAST_COMPILE)
        def run(arrays, z):
            decode = nnx.merge(graphdef, arrays).decode
            return vae_lib.tiled_apply(
                decode, z, tile=8, overlap=2, in_factor=1, out_factor=8, mesh=mesh
            )

        return np.asarray(run(arrays, z))

    one = decode_tiles(None)
    assert one.shape == (1, 9, 160, 112, 3) and np.mean(np.abs(one) < 1) > 0.5
    for devices in (8, 4):
        spread = decode_tiles(sharding.make_mesh({"fsdp": devices}, jax.devices()[:devices]))
        # Each device runs the same per-tile program, and the tiles are added in the same order
        # (measured: bit-identical); the bound leaves room for a backend's batch-size dependent
        # convolution blocking.
        np.testing.assert_allclose(spread, one, atol=1e-6, rtol=0)
