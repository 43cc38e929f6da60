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

from viewpoint_jax import geometry
from viewpoint_jax.common import video_io
from viewpoint_jax.data import pipeline
from viewpoint_jax.data.conditions import ConditionKind, prefix_mask
from viewpoint_jax.data.panoramic_videos import as_text
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.evaluation.panorama_metrics import erp_area_weights
from viewpoint_jax.generation import conditioning, decoding
from viewpoint_jax.geometry import Representation

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
) -> denoising.Conditions:
    """The denoiser's conditions for a batch of clips: their condition maps and masks encoded to
    latent resolution, their captions (and the negative prompt) embedded."""
    latent, mask = conditioning.encode_condition(
        autoencoder, jnp.asarray(clips.condition_map), jnp.asarray(clips.condition_mask)
    )
    context, _ = text_encoder.encode_text(list(clips.captions))
    negative, _ = text_encoder.encode_text([negative_prompt] * len(clips))
    return denoising.Conditions(
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
    settings: denoising.SampleSettings,
    seeds: Sequence[int] = (0,),
) -> OutpaintingResult:
    """Samples every clip's map once per seed (all clips in one batch, noise from
    `jax.random.key(seed)`) and measures the error outside the condition mask.

    The clips' own condition is used (`clips_with_condition` swaps it for another kind); wholly
    known latent frames (a prefix) are re-imposed after sampling, as `generate.generate` does.

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
    settings: denoising.SampleSettings,
    seeds: Sequence[int],
) -> Iterator[jax.Array]:
    """For each seed, the maps `(N, F, Hm, Wm, 3)` in [-1, 1] sampled from every clip's condition
    (all clips in one batch, noise from `jax.random.key(seed)`, wholly known latent frames
    re-imposed, as `generate.generate` does)."""
    if not seeds:
        raise ValueError("an evaluation needs at least one seed")
    conditions = clip_conditions(autoencoder, text_encoder, clips)
    for seed in seeds:
        latents = denoising.sample(model, conditions, jax.random.key(int(seed)), settings)
        latents = denoising.impose_known_frames(latents, conditions)
        yield decoding.decode_latents(autoencoder, latents)


def autoencoder_ceiling(autoencoder: Any, clips: EvalClips) -> OutpaintingResult:
    """The clips' target maps through the autoencoder and back, scored like a model: the closest
    any sample in its latent space comes to the ground truth (what a model that knew the clean
    latents would score), so the ceiling of every model's score.

    Returns per-clip errors outside the condition and the round-tripped maps `(N, F, M, M, 3)`
    in [-1, 1]; no seeds (nothing is sampled).
    """
    latent = conditioning.encode_video(autoencoder, jnp.asarray(clips.target_map))
    maps = np.asarray(decoding.decode_latents(autoencoder, latent))
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
    settings: denoising.SampleSettings,
    seeds: Sequence[int],
    representation: Representation,
) -> PanoramaOutpainting:
    """Samples every clip once per seed (`sampled_maps`), converts the model's frames of
    `representation` to ERP at the clips' ERP size (`decoding.canvas_to_panorama`) and measures the
    error outside the condition view there (`erp_outpainted_mse`): a number comparable across
    representations. `clips` must hold their ERP clips (`load_eval_clips` loads them)."""
    if clips.erp is None:
        raise ValueError("panorama_outpainting needs the clips' ERP videos (clips.erp)")
    height, width = clips.erp.shape[2:4]
    masks = erp_condition_masks(clips)
    errors, panoramas, maps = [], [], []
    for canvas in sampled_maps(model, autoencoder, text_encoder, clips, settings, seeds):
        erp = decoding.canvas_to_panorama(canvas, height, width, representation)
        errors.append(erp_outpainted_mse(np.asarray(erp), clips, masks))
        panoramas.append(video_io.to_uint8(erp))
        maps.append(video_io.to_uint8(canvas))
    return PanoramaOutpainting(
        mse=np.mean(errors, axis=0),
        panoramas=np.stack(panoramas),
        maps=np.stack(maps),
        seeds=tuple(int(s) for s in seeds),
    )
