"""Panorama metrics: generated videos alone (no model, no downloaded weights).

Videos are `(F, H, W, 3)` with pixel values on the 8-bit scale [0, 255] (uint8, or floats on that
scale), as read from the sampler's mp4 files; an ERP has W = 2 H. Every function returns one
float; `PANORAMA_METRICS` states each one's direction and unit (also written into metrics.json).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from viewpoint_jax.geometry import projections, sampling, viewpoint_map


def erp_area_weights(height: int) -> np.ndarray:
    """`(H, 1, 1)` cos latitude of each ERP row: the solid angle of its pixels, up to a constant
    (an ERP repeats the poles over whole rows; on the sphere they are small)."""
    return np.cos(np.pi * (0.5 - (np.arange(height) + 0.5) / height))[:, None, None]


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
        "1 + (error of predicting each side of the ERP's left-right wrap from the other - the same "
        "at interior block-grid boundaries near it) / the content's change over 20 columns, the "
        "2 edge columns each side (which H.264 / H.265 code apart) left out; 1 = as continuous as "
        "the interior (seamless footage raw and after H.264 / H.265 at crf 18-28: within 10%), "
        "larger = a seam",
    ),
    "end_continuity": MetricInfo(
        "lower",
        LEVELS,
        "PanoWan's End Continuity as we read it: mean |last column - first column| of the ERP; "
        "0 = the ends agree (includes the codec's share and the content's own detail)",
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


def _pair_difference(erp: np.ndarray, left: int, right: int) -> float:
    """Mean |column `right` - column `left`| over frames, rows and channels."""
    total = 0.0
    for frame in erp:  # one frame at a time: a float copy of a whole video is large
        total += float(np.mean(np.abs(frame[:, right].astype(np.float32) - frame[:, left])))
    return total / len(erp)


# seam_ratio's stencil (measured on ffmpeg-made footage, BENCHMARKS.md "The seam metrics on encoded
# footage"): H.264 and H.265 code the frame's left and right edges apart (no deblocking or intra
# prediction across the wrap, motion compensated from edge padding), which leaves a seamless
# panorama's outermost SEAM_GAP columns on each side less alike across the wrap than interior
# columns are across a block edge; the next columns are not (the pair ratio across the wrap vs
# interior block edges is 1.5-2.3 at the outermost pair, 1.2-1.7 one in, 0.9-1.2 from two in).
# So each side's column SEAM_GAP in from the boundary is predicted from SEAM_TAPS columns on the
# other side, starting SEAM_GAP in; the reference boundaries are the interior edges of the codecs'
# 8-pixel block grid (counted from the frame's left edge, where the codec's grid starts) within
# SEAM_NEIGHBOURHOOD columns of the wrap, so they hold the same place in their blocks as the wrap.
SEAM_GAP = 2
SEAM_TAPS = 16
SEAM_GRID = 8
SEAM_NEIGHBOURHOOD = 64
_SEAM_REACH = SEAM_GAP + SEAM_TAPS  # columns a stencil reads on each side of its boundary
_SEAM_FIRST = -(-_SEAM_REACH // SEAM_GRID) * SEAM_GRID  # the first reference boundary
SEAM_MIN_WIDTH = _SEAM_FIRST + _SEAM_REACH  # at least one reference boundary


def _seam_references(width: int) -> np.ndarray:
    """seam_ratio's reference boundaries: block-grid edges near the wrap whose stencils do not
    cross it (boundary b lies between columns b - 1 and b)."""
    grid = np.arange(_SEAM_FIRST, width - _SEAM_REACH + 1, SEAM_GRID)
    return grid[np.minimum(grid, width - grid) <= SEAM_NEIGHBOURHOOD]


def _seam_stencils(frame: np.ndarray, boundaries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets `(H, 2, nB, 3)` and predictors `(H, 2, nB, 3, SEAM_TAPS)` of one frame `(H, W, 3)`
    at `boundaries` (columns taken modulo W, so boundary 0 is the wrap): for each side, its column
    SEAM_GAP in from the boundary and the SEAM_TAPS columns on the other side from SEAM_GAP in,
    nearest first."""
    width = frame.shape[1]
    taps = np.arange(SEAM_TAPS)
    right = boundaries + SEAM_GAP  # the right side's target, predicted from the left
    left = boundaries - 1 - SEAM_GAP
    targets = np.stack([right % width, left % width])
    sources = np.stack(
        [(left[:, None] - taps) % width, (right[:, None] + taps) % width]
    )  # (2, nB, taps)
    frame = frame.astype(np.float64)
    return frame[:, targets], np.moveaxis(frame[:, sources], -2, -1)


def _fit_seam_predictor(erp: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Least-squares linear predictors `(3, SEAM_TAPS + 1)` (taps, then an offset), one per
    channel, of a column from the columns across a boundary, fitted at the `references` of every
    frame and both sides (a stationary field's forward and backward predictors are the same)."""
    size = SEAM_TAPS + 1
    normal = np.zeros((3, size, size))
    moment = np.zeros((3, size))
    for frame in erp:  # one frame at a time: the stencils of a whole video are large
        targets, sources = _seam_stencils(frame, references)
        design = np.concatenate([sources, np.ones((*sources.shape[:-1], 1))], axis=-1)
        design, targets = design.reshape(-1, 3, size), targets.reshape(-1, 3)
        normal += np.einsum("ncp,ncq->cpq", design, design)
        moment += np.einsum("ncp,nc->cp", design, targets)
    # A light ridge (1e-3 of the mean diagonal, as measured) keeps a flat video's singular
    # equations solvable and the fit from amplifying the codec's noise.
    ridge = 1e-3 * np.trace(normal, axis1=1, axis2=2)[:, None, None] / size + 1e-9
    return np.linalg.solve(normal + ridge * np.eye(size), moment[..., None])[..., 0]


def seam_ratio(erp: Any) -> float:
    """Continuity at the ERP's left-right wrap, on decoded video: `erp` `(F, H, W, 3)`, W = 2 H
    -> float. Lower is better, unit: ratio (1 = as continuous as the interior).

    A seamless panorama continues across the wrap as it does across any column boundary, so the
    content on one side predicts the other equally well. Per channel, a linear predictor of a
    column from SEAM_TAPS columns across a boundary (SEAM_GAP columns left out on each side) is
    fitted by least squares on the video's own interior block-grid boundaries near the wrap; the
    score is 1 + (mean |prediction error| across the wrap - the same at those boundaries) / the
    mean change of the content over the stencil's reach at them (|column - column 2 SEAM_GAP +
    SEAM_TAPS away|). So 1 = the wrap is as predictable as the interior, and each unit above it
    is one typical change of the content over 20 columns that the wrap adds. Why each part:
    leaving the outermost columns out avoids what H.264 / H.265 do to the frame's edges (coded
    apart, they differ more across the wrap than interior columns across a block edge); the
    prediction, not a plain column difference, sees a seam in fine texture (its continuation is
    predictable, a seam's is not); and dividing the excess error by the content's change, not
    by the error itself, keeps the codec's remaining noise small where a good prediction leaves
    little else. As measured (BENCHMARKS.md, tests/test_seam_metric.py): seamless smooth and
    textured footage at 160 x 320 and 180 x 360 scores 0.97-1.09 raw and after H.264 / H.265 at
    crf 18-28, at any horizontal turn (the tests hold it within 10% of 1); a seam with the ends
    from longitudes 45 degrees apart 2.5-3.6 on smooth footage and 1.3-1.7 in fine texture, a
    mild one (5.6 degrees, a 5-level step on smooth footage) 1.2-1.8. Noise-like texture
    predicts badly everywhere, so a seam in it raises the score less, as it is also harder to
    see. A flat video scores 1.
    """
    erp = _check_erp_video(erp)
    width = erp.shape[2]
    if width < SEAM_MIN_WIDTH:
        raise ValueError(f"seam_ratio needs an ERP at least {SEAM_MIN_WIDTH} wide, got {width}")
    references = _seam_references(width)
    coefficients = _fit_seam_predictor(erp, references)
    boundaries = np.concatenate([[0], references])
    error = np.zeros(len(boundaries))
    change = 0.0
    for frame in erp:
        targets, sources = _seam_stencils(frame, boundaries)
        predicted = np.einsum("...cp,cp->...c", sources, coefficients[:, :-1]) + coefficients[:, -1]
        error += np.abs(targets - predicted).mean(axis=(0, 1, 3))
        far = frame[:, (references[:, None] + [SEAM_GAP + SEAM_TAPS - 1, -SEAM_GAP - SEAM_TAPS])]
        near = frame[:, (references[:, None] + [-1 - SEAM_GAP, SEAM_GAP])]
        change += float(np.abs(far.astype(np.float64) - near).mean())
    excess = (error[0] - error[1:].mean()) / len(erp)
    change /= len(erp)
    if change == 0.0:
        return 1.0 if excess <= 0.0 else float("inf")
    return 1.0 + excess / change


def end_continuity(erp: Any) -> float:
    """PanoWan's "End Continuity" as we read its name (Xia et al., 2025; its exact formula was not
    available to us): the mean absolute difference between the ERP's first and last columns,
    `erp` `(F, H, W, 3)`, W = 2 H -> float, over frames, rows and channels. Per pixel and not
    normalised by the content: busy content scores high without a seam, and it includes the
    codec's share at the frame's edges (BENCHMARKS.md: a seamless smooth panorama scores about 1
    raw, 2.4-5.4 after H.264 / H.265; seamless texture 18-31), so its values compare methods on
    the same content, encoded alike, only. `seam_ratio` is the codec- and content-normalised one.
    Lower is better (0 = the two ends are identical), unit: 8-bit levels.
    """
    erp = _check_erp_video(erp)
    return _pair_difference(erp, erp.shape[2] - 1, 0)


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
