"""Outpainting error: how well a model fills in the part of the sphere its condition does not show.

For each held-out clip the model samples the whole ViewPoint map from the clip's condition (a
perspective view projected onto the map, with its coverage mask) and its caption. The error is
measured in pixel space, generated map vs ground-truth map, only where the condition mask is 0:
the outpainted region. Every model sees the same clips, the same conditions and the same noise
(one seed per sample), so two models' numbers differ only by their weights.

    clips = load_eval_clips(config.data, num_clips=8)
    result = outpainting_error(model, autoencoder, text_encoder, clips, settings, seeds=(0, 1))
    result.mse, result.psnr          # (N,) per clip, averaged over the seeds
    result.maps                      # (N, F, M, M, 3) the maps of the first seed, in [-1, 1]

Pixels are in [-1, 1], so PSNR = 10 log10(2^2 / MSE).

Models of different representations (`config.data.representation`) are compared in ERP space
(`panorama_outpainting`): every generated frame is converted to ERP and the error is taken
against the ground-truth ERP clip outside the view, each pixel weighted by its solid angle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from viewpoint_jax import geometry, video_io
from viewpoint_jax.data import pipeline
from viewpoint_jax.data.builder import as_text
from viewpoint_jax.data.conditions import ConditionKind, prefix_mask
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.geometry import Representation, projections, sampling, viewpoint_map

PEAK_TO_PEAK = 2.0  # pixel range [-1, 1]


@dataclasses.dataclass(frozen=True)
class EvalClips:
    """Held-out clips, stacked: maps `(N, F, M, M, 3)` in [-1, 1] (the frames of the config's
    representation, `(N, F, Hm, Wm, 3)`), mask `(N, F, Hm, Wm, 1)`, perspective
    `(N, F, h, w, 3)` in [-1, 1], view `(N, 4)` (fov, yaw, pitch, roll in degrees), captions
    and sources (N strings each), and the ERP clips the maps come from `(N, F, H, W, 3)` in
    [-1, 1] (None when not loaded)."""

    target_map: np.ndarray
    condition_map: np.ndarray
    condition_mask: np.ndarray
    perspective: np.ndarray
    view: np.ndarray
    captions: tuple[str, ...]
    sources: tuple[str, ...]
    erp: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.captions)


@dataclasses.dataclass(frozen=True)
class OutpaintingResult:
    """Per-clip errors of the outpainted region (averaged over the seeds) and the generated maps
    of the first seed `(N, F, M, M, 3)` in [-1, 1]."""

    mse: np.ndarray
    maps: np.ndarray
    seeds: tuple[int, ...]

    @property
    def psnr(self) -> np.ndarray:
        return psnr(self.mse)

    def summary(self) -> dict[str, Any]:
        """JSON-able: mean MSE, PSNR of the mean MSE (None for an exact 0: JSON has no
        infinity), and the per-clip values."""
        mse = float(np.mean(self.mse))
        return {
            "mse": mse,
            "psnr_db": float(psnr(mse)) if mse > 0 else None,
            "per_clip_mse": [float(v) for v in self.mse],
            "seeds": list(self.seeds),
        }


def load_eval_clips(
    data_config: ml_collections.ConfigDict,
    *,
    num_clips: int | None = None,
    seed: int = 0,
    split: str | None = None,
    data_source: Any = None,
) -> EvalClips:
    """The video clips among the first `num_clips` records (all if None) of the held-out split
    (`data_config.eval_split`), each with its clip start and condition view fixed by `seed`
    (`pipeline.make_eval_iterator`; image records are skipped)."""
    batches = list(
        pipeline.make_eval_iterator(
            data_config,
            split=split,
            batch_size=1,
            seed=seed,
            num_examples=num_clips,
            data_source=data_source,
        )
    )
    if not batches:
        raise ValueError(
            f"split {split or data_config.eval_split!r} of dataset {data_config.name!r} "
            f"in {data_config.data_dir} has no video clips to evaluate on"
        )

    def stack(key: str) -> np.ndarray:
        return np.concatenate([np.asarray(b[key], np.float32) for b in batches])

    return EvalClips(
        target_map=stack("target_map"),
        condition_map=stack("condition_map"),
        condition_mask=stack("condition_mask"),
        perspective=stack("perspective"),
        view=stack("view"),
        captions=tuple(as_text(c) for b in batches for c in b["caption"]),
        sources=tuple(as_text(s) for b in batches for s in b["source"]),
        erp=stack("erp"),
    )


def outpainted_mse(
    generated: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    pixel_weight: jax.Array | None = None,
) -> jax.Array:
    """Mean squared error over the pixels outside the condition: maps `(N, F, M, M, 3)`, mask
    `(N, F, M, M, 1)` in [0, 1] (1 = given by the condition) -> `(N,)`.

    A pixel's weight is `1 - mask`, so partly covered pixels at the mask's edge count in part;
    times `pixel_weight` (broadcast to the mask, e.g. `erp_area_weights`) if given.
    """
    weight = 1.0 - jnp.asarray(mask, jnp.float32)
    if pixel_weight is not None:
        weight = weight * jnp.asarray(pixel_weight, jnp.float32)
    squared = jnp.square(jnp.asarray(generated, jnp.float32) - jnp.asarray(target, jnp.float32))
    axes = tuple(range(1, squared.ndim))
    total = jnp.sum(squared * weight, axis=axes)
    count = jnp.sum(jnp.broadcast_to(weight, squared.shape), axis=axes)
    if bool(jnp.any(count == 0)):
        raise ValueError("a clip's condition covers the whole map: nothing is outpainted")
    return total / count


def psnr(mse: np.ndarray | float) -> np.ndarray:
    """PSNR in dB of an MSE of pixels in [-1, 1]."""
    return 10.0 * np.log10(PEAK_TO_PEAK**2 / np.asarray(mse, np.float64))


def clips_with_condition(
    clips: EvalClips, kind: ConditionKind, *, known_frames: int | None = None
) -> EvalClips:
    """The same clips and targets under another condition kind, for `outpainting_error`:

    - PERSPECTIVE_VIDEO: the clips as loaded (their perspective view over every frame);
    - NONE: nothing known (condition 0, mask 0), so the error covers the whole map (text-to-360);
    - PREFIX: the first `known_frames` pixel frames of the ground-truth map known in full (mask 1
      there, 0 after: the condition a continuation samples with), so the error covers only the
      frames after them. `known_frames` = `prefix_pixel_frames(k, temporal_factor)` for the first
      k latent frames.

    Maps `(N, F, M, M, 3)`, masks `(N, F, M, M, 1)`. ValueError for other kinds, or a prefix that
    is not 1 .. F - 1 frames.
    """
    if kind == ConditionKind.PERSPECTIVE_VIDEO:
        return clips
    if kind == ConditionKind.NONE:
        return dataclasses.replace(
            clips,
            condition_map=np.zeros_like(clips.target_map),
            condition_mask=np.zeros_like(clips.condition_mask),
        )
    if kind == ConditionKind.PREFIX:
        count, frames, *hw = clips.target_map.shape[:4]
        if known_frames is None or not 1 <= known_frames < frames:
            raise ValueError(
                f"a prefix condition needs known_frames in 1 .. {frames - 1}, got {known_frames}"
            )
        mask = np.broadcast_to(prefix_mask(frames, known_frames, hw), (count, frames, *hw, 1))
        return dataclasses.replace(
            clips, condition_map=clips.target_map * mask, condition_mask=np.array(mask)
        )
    raise ValueError(f"clips_with_condition: no evaluation condition for kind {kind.key!r}")


def clip_conditions(
    autoencoder: Any, text_encoder: Any, clips: EvalClips, negative_prompt: str = ""
) -> sampler.Conditions:
    """The sampler's conditions for a batch of clips: their condition maps and masks encoded to
    latent resolution, their captions (and the negative prompt) embedded."""
    latent, mask = sampler.encode_condition(
        autoencoder, jnp.asarray(clips.condition_map), jnp.asarray(clips.condition_mask)
    )
    context, _ = text_encoder.encode_text(list(clips.captions))
    negative, _ = text_encoder.encode_text([negative_prompt] * len(clips))
    return sampler.Conditions(
        context=jnp.asarray(context, jnp.float32),
        negative_context=jnp.asarray(negative, jnp.float32),
        latent=jnp.asarray(latent, jnp.float32),
        mask=jnp.asarray(mask, jnp.float32),
    )


def outpainting_error(
    model: Any,
    autoencoder: Any,
    text_encoder: Any,
    clips: EvalClips,
    settings: sampler.SampleSettings,
    seeds: Sequence[int] = (0,),
) -> OutpaintingResult:
    """Samples every clip's map once per seed (all clips in one batch, noise from
    `jax.random.key(seed)`) and measures the error outside the condition mask.

    The clips' own condition is used (`clips_with_condition` swaps it for another kind); wholly
    known latent frames (a prefix) are re-imposed after sampling, as `sample.generate` does.

    `model`: an NNX module `model(x, t, context)` or its `(graphdef, params)`. `settings.seed` is
    not used: `seeds` are, so every model compared gets the same noise.
    """
    errors, first_maps = [], None
    for maps in sampled_maps(model, autoencoder, text_encoder, clips, settings, seeds):
        errors.append(np.asarray(outpainted_mse(maps, clips.target_map, clips.condition_mask)))
        if first_maps is None:
            first_maps = np.asarray(maps)
    return OutpaintingResult(
        mse=np.mean(errors, axis=0), maps=first_maps, seeds=tuple(int(s) for s in seeds)
    )


def sampled_maps(
    model: Any,
    autoencoder: Any,
    text_encoder: Any,
    clips: EvalClips,
    settings: sampler.SampleSettings,
    seeds: Sequence[int],
) -> Iterator[jax.Array]:
    """For each seed, the maps `(N, F, Hm, Wm, 3)` in [-1, 1] sampled from every clip's condition
    (all clips in one batch, noise from `jax.random.key(seed)`, wholly known latent frames
    re-imposed, as `sample.generate` does)."""
    if not seeds:
        raise ValueError("an evaluation needs at least one seed")
    conditions = clip_conditions(autoencoder, text_encoder, clips)
    for seed in seeds:
        latents = sampler.sample(model, conditions, jax.random.key(int(seed)), settings)
        latents = sampler.impose_known_frames(latents, conditions)
        yield sampler.decode_latents(autoencoder, latents)


def autoencoder_ceiling(autoencoder: Any, clips: EvalClips) -> OutpaintingResult:
    """The clips' target maps through the autoencoder and back, scored like a model: the closest
    any sample in its latent space comes to the ground truth (what a model that knew the clean
    latents would score), so the ceiling of every model's score.

    Returns per-clip errors outside the condition and the round-tripped maps `(N, F, M, M, 3)`
    in [-1, 1]; no seeds (nothing is sampled).
    """
    latent = sampler.encode_video(autoencoder, jnp.asarray(clips.target_map))
    maps = np.asarray(sampler.decode_latents(autoencoder, latent))
    mse = np.asarray(outpainted_mse(maps, clips.target_map, clips.condition_mask))
    return OutpaintingResult(mse=mse, maps=maps, seeds=())


def constant_fill_mse(clips: EvalClips) -> np.ndarray:
    """A reference: the error when the outpainted region is filled with mid-grey (0), `(N,)`."""
    return np.asarray(
        outpainted_mse(np.zeros_like(clips.target_map), clips.target_map, clips.condition_mask)
    )


def mean_map_fill_mse(clips: EvalClips, reference_maps: np.ndarray) -> np.ndarray:
    """A reference that sees no input at all: the error when the outpainted region is filled
    with the mean of `reference_maps` `(N', F, M, M, 3)` (the training clips' maps: the
    dataset's average layout, frame by frame), `(N,)`. A model that beats the grey fill but not
    this has learned no more than where things usually are."""
    mean_map = np.broadcast_to(np.mean(reference_maps, axis=0), clips.target_map.shape)
    return np.asarray(outpainted_mse(mean_map, clips.target_map, clips.condition_mask))


# --- Across representations: the error in ERP space ------------------------------------------------


def erp_area_weights(height: int) -> np.ndarray:
    """`(H, 1, 1)` cos latitude of each ERP row: the solid angle of its pixels, up to a constant
    (an ERP repeats the poles over whole rows; on the sphere they are small)."""
    return np.cos(np.pi * (0.5 - (np.arange(height) + 0.5) / height))[:, None, None]


def erp_condition_masks(clips: EvalClips) -> np.ndarray:
    """`(N, 1, H, W, 1)` float32: the ERP pixels each clip's condition view covers (its camera
    `view`, the size of its `perspective` clip), at the size of `clips.erp`."""
    height = clips.erp.shape[2]
    masks = []
    for view, perspective in zip(clips.view, clips.perspective):
        _, mask = geometry.perspective_to_erp(
            np.zeros((*perspective.shape[1:3], 1), np.float32), *map(float, view), height=height
        )
        masks.append(np.asarray(mask))
    return np.stack(masks)[:, None]


@dataclasses.dataclass(frozen=True)
class PanoramaOutpainting:
    """`panorama_outpainting`'s result: per-clip errors `(N,)` (mean over the seeds) and, for
    every seed, the panoramas `(S, N, F, H, W, 3)` and the model's own frames
    `(S, N, F, Hm, Wm, 3)`, uint8."""

    mse: np.ndarray
    panoramas: np.ndarray
    maps: np.ndarray
    seeds: tuple[int, ...]


def erp_outpainted_mse(erp: np.ndarray, clips: EvalClips, masks: np.ndarray) -> np.ndarray:
    """`(N,)` error of ERP videos `(N, F, H, W, 3)` in [-1, 1] against `clips.erp` outside the
    condition views (`erp_condition_masks`), each pixel weighted by its solid angle."""
    weights = erp_area_weights(clips.erp.shape[2])
    return np.asarray(outpainted_mse(erp, clips.erp, masks, weights))


def panorama_outpainting(
    model: Any,
    autoencoder: Any,
    text_encoder: Any,
    clips: EvalClips,
    settings: sampler.SampleSettings,
    seeds: Sequence[int],
    representation: Representation,
) -> PanoramaOutpainting:
    """Samples every clip once per seed (`sampled_maps`), converts the model's frames of
    `representation` to ERP at the clips' ERP size (`sampler.map_to_panorama`) and measures the
    error outside the condition view there (`erp_outpainted_mse`): a number comparable across
    representations. `clips` must hold their ERP clips (`load_eval_clips` loads them)."""
    if clips.erp is None:
        raise ValueError("panorama_outpainting needs the clips' ERP videos (clips.erp)")
    height, width = clips.erp.shape[2:4]
    masks = erp_condition_masks(clips)
    errors, panoramas, maps = [], [], []
    for layout in sampled_maps(model, autoencoder, text_encoder, clips, settings, seeds):
        erp = sampler.map_to_panorama(layout, height, width, representation)
        errors.append(erp_outpainted_mse(np.asarray(erp), clips, masks))
        panoramas.append(video_io.to_uint8(erp))
        maps.append(video_io.to_uint8(layout))
    return PanoramaOutpainting(
        mse=np.mean(errors, axis=0),
        panoramas=np.stack(panoramas),
        maps=np.stack(maps),
        seeds=tuple(int(s) for s in seeds),
    )


# =================================================================================================
# Panorama metrics: generated videos alone (no model, no downloaded weights).
#
# Videos are `(F, H, W, 3)` with pixel values on the 8-bit scale [0, 255] (uint8, or floats on that
# scale), as read from the sampler's mp4 files; an ERP has W = 2 H. Every function returns one
# float; `PANORAMA_METRICS` states each one's direction and unit (also written into metrics.json).
# =================================================================================================

LEVELS = "8-bit levels (0-255)"


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """What a panorama metric's number means: its direction ("lower" or "higher" is better), its
    unit, and what a perfect value is."""

    better: str
    unit: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"better": self.better, "unit": self.unit, "meaning": self.meaning}


PANORAMA_METRICS = {
    "seam_ratio": MetricInfo(
        "lower",
        "ratio",
        "ERP wrap-around difference (column W-1 vs 0) / difference of adjacent interior columns; "
        "1 = the wrap is as smooth as the rest, larger = a visible seam",
    ),
    "pole_spread": MetricInfo(
        "lower",
        LEVELS,
        "standard deviation of colour inside the polar caps (mean of north and south); "
        "0 = each pole is one colour",
    ),
    "overlap_disagreement": MetricInfo(
        "lower",
        LEVELS,
        "mean absolute difference between a ViewPoint map pixel and the other copy of its "
        "direction, before fusion; 0 = the overlapping subregions agree",
    ),
    "flicker": MetricInfo(
        "lower",
        LEVELS,
        "mean absolute difference of consecutive frames (motion counts too: compare methods "
        "on the same prompts); 0 = a static video",
    ),
    "flicker_lowpass": MetricInfo(
        "lower",
        LEVELS,
        "as flicker, on frames averaged over 8 x 8 pixel blocks: brightness and colour "
        "flicker rather than moving detail",
    ),
    "condition_psnr": MetricInfo(
        "higher",
        "dB",
        "PSNR of the generated panorama seen through the condition camera vs the condition video",
    ),
    "condition_ssim": MetricInfo(
        "higher",
        "unitless, at most 1",
        "SSIM (Gaussian window 11, sigma 1.5, per channel) of the same pair; 1 = identical",
    ),
}


def _check_video(video: Any, name: str = "video") -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (F, H, W, 3), got {video.shape}")
    return video


def _check_erp_video(erp: Any) -> np.ndarray:
    erp = _check_video(erp, "erp")
    height, width = erp.shape[1:3]
    if width != 2 * height:
        raise ValueError(f"erp must be an ERP video with W = 2 H, got {height}x{width}")
    return erp


def seam_ratio(erp: Any) -> float:
    """Seam continuity at the ERP's left-right wrap: `erp` `(F, H, W, 3)`, W = 2 H -> float.

    Mean |column W-1 - column 0| divided by the mean |column j+1 - column j| over the interior
    (j = 0 .. W-2), all rows, frames and channels. A panorama that wraps seamlessly scores near 1
    (its wrap is an ordinary pair of neighbouring columns; above or below 1 as the content changes
    faster or slower there than on average); a seam scores well above.
    Lower is better, unit: ratio. A video with no variation at all between columns scores 1 (no
    seam) or inf (the only change is at the wrap).

    Measured on decoded video, the ratio includes the codec's share: H.264 codes the frame's
    left and right edges independently, which raises it on smooth content (a smooth 32 x 64
    test panorama: 1.5 raw, 2.5 at crf 0, 4.0 at crf 18). Compare methods encoded alike, and
    with ground-truth panoramas encoded the same way.
    """
    erp = _check_erp_video(erp)
    wrap = float(np.mean(np.abs(erp[:, :, -1].astype(np.float32) - erp[:, :, 0])))
    # One frame at a time: a float copy of a whole video is large.
    interior = np.mean(
        [np.mean(np.abs(np.diff(frame.astype(np.float32), axis=1))) for frame in erp]
    )
    interior = float(interior)
    if interior == 0.0:
        return 1.0 if wrap == 0.0 else float("inf")
    return wrap / interior


def _cap_rows(height: int, cap_deg: float) -> int:
    """ERP rows whose centres lie within `cap_deg` of a pole (at least one)."""
    if not 0 < cap_deg <= 90:
        raise ValueError(f"cap_deg must be in (0, 90] degrees, got {cap_deg}")
    centres_from_pole = (np.arange(height) + 0.5) * 180.0 / height
    return max(1, int(np.sum(centres_from_pole <= cap_deg)))


def _weighted_std(pixels: np.ndarray, weights: np.ndarray) -> float:
    """Area-weighted standard deviation over pixels `(F, R, W, 3)` with row weights `(R,)`,
    per frame and channel, averaged."""
    w = weights[None, :, None, None] * np.ones_like(pixels[..., :1])
    total = np.sum(w, axis=(1, 2), keepdims=True)
    mean = np.sum(pixels * w, axis=(1, 2), keepdims=True) / total
    variance = np.sum(np.square(pixels - mean) * w, axis=(1, 2), keepdims=True) / total
    return float(np.mean(np.sqrt(variance)))


def pole_spread(erp: Any, cap_deg: float = 3.0) -> float:
    """Pole consistency: `erp` `(F, H, W, 3)`, W = 2 H -> float.

    Each pole is a single point of the sphere, stretched over whole ERP rows; a consistent
    panorama shows one colour around it. This is the standard deviation of colour over the cap of
    rows within `cap_deg` degrees of the pole (each row weighted by its area on the sphere,
    cos latitude), per frame and channel, averaged over frames, channels and the two poles.
    Lower is better (0 = each cap is uniform), unit: 8-bit levels.
    """
    erp = _check_erp_video(erp)
    height = erp.shape[1]
    rows = _cap_rows(height, cap_deg)
    weights = erp_area_weights(height)[:rows, 0, 0]  # the same for the mirrored south cap
    north = _weighted_std(erp[:, :rows].astype(np.float64), weights)
    south = _weighted_std(erp[:, ::-1][:, :rows].astype(np.float64), weights)
    return (north + south) / 2


def temporal_flicker(video: Any, block: int = 1) -> float:
    """Temporal flicker: `video` `(F, H, W, 3)` -> float.

    Mean |frame t+1 - frame t| over all pixels, channels and consecutive pairs; with `block` > 1
    on frames first averaged over `block` x `block` pixel blocks (a low-pass: slow brightness or
    colour flicker, not moving detail). Lower is better (0 = a static video), unit: 8-bit levels.
    NaN for a single frame.
    """
    video = _check_video(video)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if len(video) < 2:
        return float("nan")
    frames, height, width, _ = video.shape
    if block > 1:
        if height < block or width < block:
            raise ValueError(f"video of {height}x{width} is smaller than a {block}-pixel block")
        h, w = height // block * block, width // block * block
        blocks = (
            video[:, :h, :w]
            .astype(np.float32)
            .reshape(frames, h // block, block, w // block, block, 3)
        )
        video = blocks.mean(axis=(2, 4))
    total = 0.0
    for t in range(frames - 1):  # one pair at a time: a float copy of a whole video is large
        difference = video[t + 1].astype(np.float32) - video[t].astype(np.float32)
        total += float(np.mean(np.abs(difference)))
    return total / (frames - 1)


def _check_pair(generated: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    generated = _check_video(generated, "generated")
    reference = _check_video(reference, "reference")
    if generated.shape != reference.shape:
        raise ValueError(
            f"generated {generated.shape} and reference {reference.shape} differ in shape"
        )
    return generated, reference


def view_psnr(generated: Any, reference: Any) -> float:
    """PSNR of two videos `(F, h, w, 3)` on the 8-bit scale (peak 255) -> float, in dB.

    Higher is better; inf for identical videos.
    """
    generated, reference = _check_pair(generated, reference)
    squared = 0.0
    for g, r in zip(generated, reference):
        squared += float(np.mean(np.square(g.astype(np.float64) - r)))
    mse = squared / len(generated)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def view_ssim(generated: Any, reference: Any) -> float:
    """SSIM (Wang et al. 2004) of two videos `(F, h, w, 3)` on the 8-bit scale -> float.

    Gaussian window of 11 pixels, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255; computed per
    channel over the positions where the window lies inside the image, averaged over positions,
    channels and frames. Higher is better (1 = identical), unitless. Frames need h, w >= 11.
    """
    import cv2

    generated, reference = _check_pair(generated, reference)
    height, width = generated.shape[1:3]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs frames of at least {SSIM_WINDOW} pixels, got {height}x{width}"
        )
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    edge = SSIM_WINDOW // 2

    def blur(x: np.ndarray) -> np.ndarray:
        out = cv2.GaussianBlur(x, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA)
        return out[edge : height - edge, edge : width - edge]  # fully inside: no border rule

    scores = []
    for g, r in zip(generated, reference):
        x, y = g.astype(np.float64), r.astype(np.float64)
        mx, my = blur(x), blur(y)
        vx = blur(x * x) - mx * mx
        vy = blur(y * y) - my * my
        cov = blur(x * y) - mx * my
        ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / (
            (mx * mx + my * my + c1) * (vx + vy + c2)
        )
        scores.append(float(np.mean(ssim_map)))
    return float(np.mean(scores))


_OTHER_COPY_PLANS: dict[int, tuple[tuple[Any, np.ndarray], ...]] = {}


def _other_copy_plans(map_size: int) -> tuple[tuple[Any, np.ndarray], ...]:
    """For each subregion k: the plan that reads, at every map pixel, the pixel's copy in
    subregion k (bilinear, exactly as `fuse_overlaps` reads it), and the mask `(M, M)` of pixels
    that have such a copy other than themselves."""
    if map_size in _OTHER_COPY_PLANS:
        return _OTHER_COPY_PLANS[map_size]

    directions = projections.viewpoint_directions_np(map_size)
    copies = viewpoint_map.direction_to_copies(directions, map_size)
    rows, cols = np.meshgrid(np.arange(map_size), np.arange(map_size), indexing="ij")
    distance = np.hypot(copies.row - rows[..., None], copies.col - cols[..., None])
    own = np.argmin(np.where(copies.covered, distance, np.inf), axis=-1)  # the pixel itself
    plans = []
    for k in range(len(viewpoint_map.SUBREGIONS)):
        other = copies.covered[..., k] & (own != k)
        only_k = dataclasses.replace(
            copies, weight=np.where(other[..., None], np.arange(4) == k, 0.0)
        )
        # The fusion's own taps (same clamping to the subregion, same D continuity), one copy.
        idx, w = projections._map_copy_taps(only_k, map_size, "bilinear", snap=True)
        plans.append(
            (sampling.make_plan(idx, w, (map_size, map_size), (map_size, map_size)), other)
        )
    _OTHER_COPY_PLANS[map_size] = tuple(plans)
    return _OTHER_COPY_PLANS[map_size]


def overlap_disagreement(map_video: Any, frames_per_chunk: int = 8) -> float:
    """Agreement of the ViewPoint map's overlapping subregions: `map_video` `(F, M, M, 3)` -> float.

    Parts of the sphere appear in two subregions of the map (spec section 4); the model generates
    both copies and the map -> ERP conversion blends them. This is the mean absolute difference
    between a map pixel and each other copy of its direction (read bilinearly, as the fusion reads
    it), over every such pixel, channel and frame, before any fusion. Lower is better (0 = the
    copies agree), unit: 8-bit levels. Bilinear reading of copies that fall between pixel centres
    leaves a small floor on smooth content (about 0.01 levels at M = 16).
    """

    map_video = _check_video(map_video, "map_video")
    map_size = viewpoint_map.check_map_size(map_video.shape[1], "map side")
    if map_video.shape[2] != map_size:
        raise ValueError(f"map_video must hold square maps, got {map_video.shape[1:3]}")
    plans = _other_copy_plans(map_size)
    total, count = 0.0, 0.0
    for start in range(0, len(map_video), frames_per_chunk):
        chunk = jnp.asarray(map_video[start : start + frames_per_chunk], jnp.float32)
        for plan, other in plans:
            difference = jnp.abs(chunk - sampling.resample(chunk, plan))
            total += float(jnp.sum(difference * jnp.asarray(other, jnp.float32)[..., None]))
            count += float(other.sum()) * chunk.shape[0] * 3
    if count == 0:
        raise ValueError(f"a map of side {map_size} has no overlapping copies")
    return total / count


# === end of panorama metrics ====================================================================
