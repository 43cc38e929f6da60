"""Outpainting error: the masked metric, and the whole evaluation with models whose answer is known.

An oracle model that knows the clean latents x0 predicts the exact flow velocity (x - x0) / s; the
Euler sampler then lands on x0 whatever the noise, so the error of the evaluation is the error of
x0 itself, outside the condition mask.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from viewpoint_jax import geometry
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.data import panoramic_videos
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.evaluation import outpainting, panorama_metrics
from viewpoint_jax.generation import decoding
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models.autoencoder import BlockDCTAutoencoder, SpaceToDepthAutoencoder

N, F, M = 2, 3, 16
SETTINGS = denoising.SampleSettings(num_steps=4, shift=3.0, guidance_scale=3.0, scheduler="euler")


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


def _clips(seed: int = 0) -> outpainting.EvalClips:
    rng = np.random.default_rng(seed)
    target = rng.uniform(-1, 1, (N, F, M, M, 3)).astype(np.float32)
    mask = np.zeros((N, F, M, M, 1), np.float32)
    mask[:, :, :, : M // 2] = 1.0  # the condition shows the left half of the map
    return outpainting.EvalClips(
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
    mse = outpainting.outpainted_mse(generated, clips.target_map, clips.condition_mask)
    np.testing.assert_allclose(mse, 0.0, atol=1e-7)

    generated = clips.target_map + 0.5 * clips.condition_mask - 0.25 * (1 - clips.condition_mask)
    mse = outpainting.outpainted_mse(generated, clips.target_map, clips.condition_mask)
    np.testing.assert_allclose(mse, [0.0625, 0.0625], rtol=1e-5)


def test_outpainted_mse_weights_partly_covered_pixels():
    target = np.zeros((1, 1, 2, 2, 1), np.float32)
    generated = np.asarray([1.0, 2.0, 3.0, 4.0], np.float32).reshape(target.shape)
    mask = np.asarray([0.0, 0.5, 1.0, 0.0], np.float32).reshape(target.shape)
    expected = (1.0 * 1 + 4.0 * 0.5 + 16.0 * 1) / 2.5
    mse = outpainting.outpainted_mse(generated, target, mask)
    np.testing.assert_allclose(mse, [expected], rtol=1e-6)


def test_outpainted_mse_refuses_a_fully_covered_map():
    ones = np.ones((1, 1, 2, 2, 1), np.float32)
    with pytest.raises(ValueError, match="covers the whole map"):
        outpainting.outpainted_mse(ones, ones, ones)


def test_psnr_of_pixels_in_minus_one_to_one():
    np.testing.assert_allclose(outpainting.psnr([4.0, 0.04, 0.0004]), [0.0, 20.0, 40.0])


def test_oracle_of_the_ground_truth_has_no_error():
    clips = _clips()
    autoencoder = SpaceToDepthAutoencoder(4)
    oracle = Oracle(autoencoder.encode(jnp.asarray(clips.target_map)))
    result = outpainting.outpainting_error(
        oracle, autoencoder, FakeTextEncoder(), clips, SETTINGS, seeds=(0, 7)
    )
    assert result.mse.shape == (N,) and result.maps.shape == clips.target_map.shape
    np.testing.assert_allclose(result.mse, 0.0, atol=1e-8)
    np.testing.assert_allclose(result.maps, clips.target_map, atol=1e-5)
    assert result.summary()["psnr_db"] > 60


@pytest.mark.parametrize("kind", ["space_to_depth", "block_dct"])
def test_the_autoencoder_ceiling_is_the_score_of_an_oracle_of_the_clean_latents(kind):
    """A model that knows the clean latents scores exactly the ceiling: zero for the lossless
    space-to-depth, the block DCT's lost frequencies for it."""
    clips = _clips()
    autoencoder = SpaceToDepthAutoencoder(4) if kind == "space_to_depth" else BlockDCTAutoencoder(4)
    oracle = Oracle(autoencoder.encode(jnp.asarray(clips.target_map)))
    result = outpainting.outpainting_error(oracle, autoencoder, FakeTextEncoder(), clips, SETTINGS)
    ceiling = outpainting.autoencoder_ceiling(autoencoder, clips)
    assert ceiling.seeds == () and ceiling.maps.shape == clips.target_map.shape
    np.testing.assert_allclose(ceiling.mse, result.mse, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(ceiling.maps, result.maps, atol=1e-5)
    if kind == "space_to_depth":
        np.testing.assert_allclose(ceiling.mse, 0.0, atol=1e-8)
    else:  # uniform noise is mostly high frequencies: most of it is lost
        assert np.all(ceiling.mse > 0.5 * outpainting.constant_fill_mse(clips))


def test_oracle_of_the_condition_scores_the_grey_fill():
    # Copying the condition leaves the outpainted region at 0 (mid-grey): its error is the
    # grey-fill reference, whatever the seed.
    clips = _clips()
    autoencoder = SpaceToDepthAutoencoder(4)
    oracle = Oracle(autoencoder.encode(jnp.asarray(clips.condition_map)))
    result = outpainting.outpainting_error(oracle, autoencoder, FakeTextEncoder(), clips, SETTINGS)
    grey = outpainting.constant_fill_mse(clips)
    np.testing.assert_allclose(result.mse, grey, rtol=1e-5)
    # Uniform targets in [-1, 1]: E[x^2] = 1/3.
    np.testing.assert_allclose(grey, 1 / 3, atol=0.05)


def test_mean_map_fill_of_the_clips_themselves_and_of_a_constant():
    clips = _clips()
    targets = clips.target_map
    # The mean of one clip's own maps fills that clip exactly.
    alone = outpainting.mean_map_fill_mse(clips, targets[:1])
    assert alone[0] == 0.0 and np.all(alone[1:] > 0)
    # A reference set of constant maps is a constant fill: all zero is the grey fill.
    np.testing.assert_allclose(
        outpainting.mean_map_fill_mse(clips, np.zeros_like(targets)),
        outpainting.constant_fill_mse(clips),
        rtol=1e-6,
    )
    # The mean of +m and -m is mid-grey too, whatever m.
    np.testing.assert_allclose(
        outpainting.mean_map_fill_mse(clips, np.stack([targets[0], -targets[0]])),
        outpainting.constant_fill_mse(clips),
        rtol=1e-6,
    )
    # The clips' own mean map is the best fill of all of them in one (least squares), when the
    # outpainted regions are the same.
    same = dataclasses.replace(clips, condition_mask=np.zeros_like(clips.condition_mask))
    best = np.mean(outpainting.mean_map_fill_mse(same, targets))
    shifted = np.mean(outpainting.mean_map_fill_mse(same, targets + 0.05))
    assert best < shifted and best < np.mean(outpainting.constant_fill_mse(same))


def test_same_seeds_same_error_other_seeds_other_error():
    clips = _clips()
    autoencoder = SpaceToDepthAutoencoder(4)
    channels = autoencoder.latent_channels
    model = RandomVelocity(2 * channels + 1, channels, nnx.Rngs(0))
    run = lambda seeds: outpainting.outpainting_error(
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
            "frames": [panoramic_videos.encode_frame(f, "png") for f in frames],
            "caption": f"clip {index}".encode(),
            "source": f"clip{index}.mp4".encode(),
            "is_image": is_image,
            "num_frames": num_frames,
        }

    source = [record(0, 8), record(1, 1, is_image=True), record(2, 8), record(3, 8)]
    config = data_config_lib.data_config()
    config.update(dict(erp_height=16, erp_width=32, map_size=16, num_frames=5))
    clips = outpainting.load_eval_clips(config, num_clips=3, data_source=source)
    assert len(clips) == 2  # the image among the first three records is skipped
    assert clips.captions == ("clip 0", "clip 2")
    assert clips.sources == ("clip0.mp4", "clip2.mp4")
    assert clips.target_map.shape == (2, 5, 16, 16, 3)
    assert clips.condition_mask.shape == (2, 5, 16, 16, 1)
    assert clips.view.shape == (2, 4)
    assert clips.erp.shape == (2, 5, 16, 32, 3) and -1 <= clips.erp.min() < clips.erp.max() <= 1
    outside = 1 - clips.condition_mask
    np.testing.assert_array_equal(clips.condition_map * outside, 0.0)
    with pytest.raises(ValueError, match="no video clips"):
        outpainting.load_eval_clips(config, num_clips=1, data_source=source[1:2])


# --- Across representations: the error in ERP space ------------------------------------------


def _panorama_clips(representation: Representation, seed: int = 0) -> outpainting.EvalClips:
    """Random ERP clips `(N, F, 16, 32, 3)` seen by a 90 degree camera, in the frames of
    `representation` at map size 16 (as load_eval_clips gives them)."""
    rng = np.random.default_rng(seed)
    erp = rng.uniform(-1, 1, (N, F, 16, 32, 3)).astype(np.float32)
    hw = geometry.canvas_size(representation, 16)
    target = np.asarray(geometry.erp_to_canvas(erp, representation, hw))
    _, mask = geometry.perspective_to_canvas(
        np.zeros((8, 14, 1)), 90.0, 30.0, 0.0, 0.0, representation, hw
    )
    mask = np.broadcast_to(np.asarray(mask), (N, F, *hw, 1)).copy()
    return outpainting.EvalClips(
        target_map=target,
        condition_map=target * mask,
        condition_mask=mask,
        perspective=np.zeros((N, F, 8, 14, 3), np.float32),
        view=np.tile(np.asarray([90.0, 30.0, 0.0, 0.0], np.float32), (N, 1)),
        captions=("a red ball", "a blue room"),
        sources=("a.mp4", "b.mp4"),
        erp=erp,
    )


def test_erp_error_weights_pixels_by_their_solid_angle():
    weights = panorama_metrics.erp_area_weights(64)[:, 0, 0]
    # cos latitude at row centres; summed over rows it is the sphere's area / (2 pi h) (midpoint
    # rule of the integral of cos over latitude: 2 / (pi / H)).
    np.testing.assert_allclose(weights.sum() * np.pi / 64, 2.0, rtol=1e-3)
    target = np.zeros((1, 1, 4, 8, 1), np.float32)
    pole, equator = target.copy(), target.copy()
    pole[:, :, 0], equator[:, :, 1] = 1.0, 1.0  # the same error on a polar or a middle row
    weight = panorama_metrics.erp_area_weights(4)
    zeros = np.zeros_like(target)
    at_pole = outpainting.outpainted_mse(pole, target, zeros, weight)
    at_equator = outpainting.outpainted_mse(equator, target, zeros, weight)
    ratio = np.cos(np.deg2rad(67.5)) / np.cos(np.deg2rad(22.5))
    np.testing.assert_allclose(at_pole / at_equator, ratio, rtol=1e-5)
    # Without weights every pixel counts alike.
    unweighted = outpainting.outpainted_mse(pole, target, zeros)
    np.testing.assert_allclose(unweighted, outpainting.outpainted_mse(equator, target, zeros))


@pytest.mark.parametrize("representation", list(Representation))
def test_panorama_outpainting_of_the_ground_truth_is_its_round_trip(representation):
    clips = _panorama_clips(representation)
    masks = outpainting.erp_condition_masks(clips)
    assert masks.shape == (N, 1, 16, 32, 1) and 0.05 < masks.mean() < 0.3
    autoencoder = SpaceToDepthAutoencoder(4)
    oracle = Oracle(autoencoder.encode(jnp.asarray(clips.target_map)))
    result = outpainting.panorama_outpainting(
        oracle, autoencoder, FakeTextEncoder(), clips, SETTINGS, (0, 3), representation
    )
    assert result.panoramas.shape == (2, N, F, 16, 32, 3) and result.panoramas.dtype == np.uint8
    assert result.maps.shape == (2, *clips.target_map.shape)
    # Sampling lands on the ground-truth frames: what is left is the representation's own
    # round trip ERP -> frames -> ERP (none for an ERP of the clips' size).
    truth = np.asarray(decoding.canvas_to_panorama(clips.target_map, 16, 32, representation))
    floor = outpainting.erp_outpainted_mse(truth, clips, masks)
    np.testing.assert_allclose(result.mse, floor, rtol=1e-4, atol=1e-9)
    if representation == Representation.ERP:
        np.testing.assert_allclose(result.mse, 0.0, atol=1e-9)
    else:  # random pixels do not survive resampling
        assert np.all(result.mse > 0.01)
    # A grey fill scores E[x^2] = 1/3 of uniform pixels, weighted or not.
    grey = outpainting.erp_outpainted_mse(np.zeros_like(clips.erp), clips, masks)
    np.testing.assert_allclose(grey, 1 / 3, atol=0.05)


# === Panorama metrics (panorama_metrics.PANORAMA_METRICS) ===============================================


def _smooth_erp(height: int = 32, frames: int = 2) -> np.ndarray:
    """A panorama that is a smooth function of direction `(F, H, 2H, 3)`: no seam anywhere."""
    from viewpoint_jax.geometry import sphere

    directions = sphere.erp_directions(height, 2 * height)
    erp = 128 + 90 * directions[..., [0, 2, 1]] * np.array([1.0, 0.8, 0.6])
    return np.repeat(erp[None], frames, axis=0)


def test_an_injected_seam_scores_worse_than_the_clean_panorama():
    clean = _smooth_erp(64)  # seam_ratio's stencils reach 18 columns each side: not too coarse
    width = clean.shape[2]
    # A brightness ramp around the longitudes: gentle inside, a 40-level jump at the wrap.
    seamed = clean + np.linspace(0, 40, width)[None, None, :, None]
    clean_score, seamed_score = (
        panorama_metrics.seam_ratio(clean),
        panorama_metrics.seam_ratio(seamed),
    )
    # 1 + the wrap's excess prediction error in units of the content's change over 20 columns
    # (about 60 levels here): the 40-level jump is more than one unit.
    assert abs(clean_score - 1) < 0.1
    assert seamed_score > 2
    assert panorama_metrics.seam_ratio(np.full((1, 32, 64, 3), 7, np.uint8)) == 1.0
    assert panorama_metrics.end_continuity(seamed) > 20 * panorama_metrics.end_continuity(clean)
    with pytest.raises(ValueError, match="at least 42 wide"):
        panorama_metrics.seam_ratio(np.zeros((1, 8, 16, 3)))
    # The same numbers from uint8 frames, as read from an mp4.
    as_uint8 = np.round(seamed).astype(np.uint8)
    np.testing.assert_allclose(panorama_metrics.seam_ratio(as_uint8), seamed_score, rtol=0.05)
    with pytest.raises(ValueError, match="W = 2 H"):
        panorama_metrics.seam_ratio(np.zeros((1, 8, 8, 3)))


def test_pole_spread_is_zero_for_uniform_caps_and_grows_with_noise_in_them():
    rng = np.random.default_rng(0)
    height = 60  # 3 degrees per row: the default 3-degree cap is the first and last row
    erp = rng.uniform(0, 255, (2, height, 2 * height, 3))
    erp[:, 0], erp[:, -1] = 40.0, 200.0  # each pole one colour; noise everywhere else
    assert panorama_metrics.pole_spread(erp) == pytest.approx(0.0, abs=1e-9)
    noisy = erp.copy()
    noisy[:, 0] += rng.normal(0, 20, noisy[:, 0].shape)
    assert panorama_metrics.pole_spread(noisy) > 5  # about 20 / 2: only the north cap is noisy
    # A wider cap takes in the noisy rows below it.
    assert panorama_metrics.pole_spread(erp, cap_deg=6.0) > 30


def test_flicker_is_zero_for_a_static_video_and_sees_brightness_changes():
    rng = np.random.default_rng(1)
    frame = rng.uniform(0, 255, (16, 32, 3)).astype(np.uint8)
    static = np.repeat(frame[None], 4, axis=0)
    assert panorama_metrics.temporal_flicker(static) == 0.0
    assert panorama_metrics.temporal_flicker(static, block=8) == 0.0
    pulsing = np.stack([np.full((16, 32, 3), v, np.uint8) for v in (100, 110, 100, 110)])
    assert panorama_metrics.temporal_flicker(pulsing) == pytest.approx(10.0)
    assert panorama_metrics.temporal_flicker(pulsing, block=8) == pytest.approx(10.0)
    # A fine pattern moving one pixel: large per-pixel change, none after the 8 x 8 low-pass.
    stripes = (np.arange(34) % 2 * 200).astype(np.uint8)
    moving = np.stack(
        [np.broadcast_to(stripes[s : s + 32, None, None], (32, 16, 3)) for s in (0, 1)]
    )
    assert panorama_metrics.temporal_flicker(moving) == pytest.approx(200.0)
    assert panorama_metrics.temporal_flicker(moving, block=8) == pytest.approx(0.0)
    assert np.isnan(panorama_metrics.temporal_flicker(static[:1]))


def test_overlap_disagreement_is_zero_when_copies_agree_and_sees_a_perturbed_copy():
    from viewpoint_jax import geometry
    from viewpoint_jax.geometry import viewpoint_map as layout

    m = 16
    constant = np.full((2, m, m, 3), 90, np.uint8)
    assert panorama_metrics.overlap_disagreement(constant) == pytest.approx(0.0, abs=1e-4)
    # A map sampled from one panorama: every copy shows the same scene. Only the bilinear reading
    # of copies that fall between pixel centres differs.
    consistent = np.asarray(geometry.erp_to_viewpoint(jnp.asarray(_smooth_erp(), jnp.float32), m))
    agree = panorama_metrics.overlap_disagreement(consistent)
    assert agree < 0.05
    # Brighten subregion F where its pixels are also shown elsewhere: its copies now disagree.
    _, others = zip(*panorama_metrics._other_copy_plans(m))
    shared = np.any(others, axis=0) & (layout.subregion_index(m) == 0)
    perturbed = consistent + 40.0 * shared[None, :, :, None]
    assert panorama_metrics.overlap_disagreement(perturbed) > 10
    noise = np.random.default_rng(2).uniform(0, 255, (1, m, m, 3))
    assert panorama_metrics.overlap_disagreement(noise) > 50
    with pytest.raises(ValueError, match="square maps"):
        panorama_metrics.overlap_disagreement(np.zeros((1, 16, 32, 3)))


def test_psnr_and_ssim_of_views_on_the_8_bit_scale():
    rng = np.random.default_rng(3)
    reference = rng.uniform(20, 230, (2, 16, 20, 3))
    assert panorama_metrics.view_psnr(reference, reference) == float("inf")
    assert panorama_metrics.view_ssim(reference, reference) == pytest.approx(1.0)
    # An error of 1 level everywhere: MSE 1, PSNR 20 log10(255).
    assert panorama_metrics.view_psnr(reference + 1, reference) == pytest.approx(20 * np.log10(255))
    noise = rng.normal(0, 1, reference.shape)
    slightly, very = (panorama_metrics.view_ssim(reference + k * noise, reference) for k in (5, 40))
    assert very < 0.9 < slightly < 1.0
    # Two flat images: SSIM reduces to its luminance term (2 a b + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 100.0, 150.0, (0.01 * 255) ** 2
    flat = panorama_metrics.view_ssim(np.full((1, 16, 16, 3), a), np.full((1, 16, 16, 3), b))
    assert flat == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    with pytest.raises(ValueError, match="differ in shape"):
        panorama_metrics.view_psnr(reference, reference[:1])


def test_every_panorama_metric_states_its_direction_and_unit():
    functions = {
        "seam_ratio": panorama_metrics.seam_ratio,
        "end_continuity": panorama_metrics.end_continuity,
        "pole_spread": panorama_metrics.pole_spread,
        "overlap_disagreement": panorama_metrics.overlap_disagreement,
        "flicker": panorama_metrics.temporal_flicker,
        "condition_psnr": panorama_metrics.view_psnr,
        "condition_ssim": panorama_metrics.view_ssim,
    }
    for name, info in panorama_metrics.PANORAMA_METRICS.items():
        assert info.better in ("lower", "higher") and info.unit and info.meaning, name
    for name, function in functions.items():
        better = panorama_metrics.PANORAMA_METRICS[name].better
        assert f"{better.capitalize()} is better" in function.__doc__, name
        assert "(F, " in function.__doc__, name
