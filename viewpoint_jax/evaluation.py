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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from viewpoint_jax.data import pipeline
from viewpoint_jax.data.builder import as_text
from viewpoint_jax.diffusion import sampler

PEAK_TO_PEAK = 2.0  # pixel range [-1, 1]


@dataclasses.dataclass(frozen=True)
class EvalClips:
    """Held-out clips, stacked: maps `(N, F, M, M, 3)` in [-1, 1], mask `(N, F, M, M, 1)`,
    perspective `(N, F, h, w, 3)` in [-1, 1], view `(N, 4)` (fov, yaw, pitch, roll in
    degrees), captions and sources (N strings each)."""

    target_map: np.ndarray
    condition_map: np.ndarray
    condition_mask: np.ndarray
    perspective: np.ndarray
    view: np.ndarray
    captions: tuple[str, ...]
    sources: tuple[str, ...]

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
        """JSON-able: mean MSE, PSNR of the mean MSE, and the per-clip values."""
        return {
            "mse": float(np.mean(self.mse)),
            "psnr_db": float(psnr(np.mean(self.mse))),
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
    )


def outpainted_mse(generated: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared error over the pixels outside the condition: maps `(N, F, M, M, 3)`, mask
    `(N, F, M, M, 1)` in [0, 1] (1 = given by the condition) -> `(N,)`.

    A pixel's weight is `1 - mask`, so partly covered pixels at the mask's edge count in part.
    """
    weight = 1.0 - jnp.asarray(mask, jnp.float32)
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

    `model`: an NNX module `model(x, t, context)` or its `(graphdef, params)`. `settings.seed` is
    not used: `seeds` are, so every model compared gets the same noise.
    """
    if not seeds:
        raise ValueError("outpainting_error needs at least one seed")
    conditions = clip_conditions(autoencoder, text_encoder, clips)
    errors, first_maps = [], None
    for seed in seeds:
        latents = sampler.sample(model, conditions, jax.random.key(int(seed)), settings)
        maps = sampler.decode_latents(autoencoder, latents)
        errors.append(np.asarray(outpainted_mse(maps, clips.target_map, clips.condition_mask)))
        if first_maps is None:
            first_maps = np.asarray(maps)
    return OutpaintingResult(
        mse=np.mean(errors, axis=0), maps=first_maps, seeds=tuple(int(s) for s in seeds)
    )


def constant_fill_mse(clips: EvalClips) -> np.ndarray:
    """A reference: the error when the outpainted region is filled with mid-grey (0), `(N,)`."""
    return np.asarray(
        outpainted_mse(np.zeros_like(clips.target_map), clips.target_map, clips.condition_mask)
    )
