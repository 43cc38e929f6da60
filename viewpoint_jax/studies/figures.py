"""The demo's pictures: the training loss curves and the outpainting comparison, RGB uint8
images `(H, W, 3)` drawn with OpenCV (no plotting library to install).

    loss_curve_image({"fine-tuned": (steps, losses), "from scratch": (steps, losses)})
    comparison_image(clips, {"fine-tuned": result, ...}, {"mid-grey fill": 0.26})
"""

from __future__ import annotations

import cv2
import numpy as np

from viewpoint_jax.common import video_io
from viewpoint_jax.diffusion.flow_matching import Loss
from viewpoint_jax.evaluation import outpainting

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (40, 40, 40)
_GRID = (225, 225, 225)
_AA = cv2.LINE_AA


def _nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """Round tick values covering [low, high]."""
    span = max(high - low, 1e-12)
    raw = span / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = magnitude * min((1, 2, 2.5, 5, 10), key=lambda m: abs(m * magnitude - raw))
    return np.arange(np.ceil(low / step) * step, high + step * 1e-6, step)


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (shorter at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    index = np.arange(1, len(values) + 1)
    start = np.maximum(0, index - window)
    return (sums[index] - sums[start]) / (index - start)


# Per curve: (per-step colour, moving-average colour), RGB.
CURVE_COLOURS = (((150, 190, 235), (20, 80, 180)), ((245, 195, 150), (200, 90, 20)))


def loss_curve_image(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    width: int = 900,
    height: int = 500,
    loss: Loss = Loss.VELOCITY,
) -> np.ndarray:
    """Training losses, `curves`: name -> (steps, losses) (at most two runs), each per step
    (thin) and as a moving average (thick), with axes, ticks, a legend and the `loss` named in
    the title -> RGB uint8 `(height, width, 3)`."""
    if not curves or any(len(steps) == 0 for steps, _ in curves.values()):
        raise ValueError("no losses to plot")
    if len(curves) > len(CURVE_COLOURS):
        raise ValueError(f"at most {len(CURVE_COLOURS)} curves, got {len(curves)}")
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 80, 30, 50, 60
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    step_lo = min(0.0, *(float(steps[0]) for steps, _ in curves.values()))
    step_hi = max(step_lo + 1, *(float(steps[-1]) for steps, _ in curves.values()))
    loss_lo = 0.0
    loss_hi = max(float(np.max(losses)) for _, losses in curves.values()) * 1.05

    def px(step, loss):
        x = x0 + (np.asarray(step, np.float64) - step_lo) / (step_hi - step_lo) * (x1 - x0)
        y = y1 - (np.asarray(loss, np.float64) - loss_lo) / (loss_hi - loss_lo) * (y1 - y0)
        return np.stack([x, y], -1).round().astype(np.int32)

    for tick in _nice_ticks(loss_lo, loss_hi):
        (_, y) = px(step_lo, tick)
        cv2.line(image, (x0, int(y)), (x1, int(y)), _GRID, 1)
        text = _label(tick)
        size = cv2.getTextSize(text, _FONT, 0.45, 1)[0]
        cv2.putText(image, text, (x0 - 8 - size[0], int(y) + 5), _FONT, 0.45, _INK, 1, _AA)
    for tick in _nice_ticks(step_lo, step_hi):
        (x, _) = px(tick, loss_lo)
        cv2.line(image, (int(x), y1), (int(x), y1 + 5), _INK, 1)
        text = f"{round(float(tick))}"
        size = cv2.getTextSize(text, _FONT, 0.45, 1)[0]
        cv2.putText(image, text, (int(x) - size[0] // 2, y1 + 22), _FONT, 0.45, _INK, 1, _AA)
    for k, (name, (steps, losses)) in enumerate(curves.items()):
        raw, smooth = CURVE_COLOURS[k]
        window = max(1, len(losses) // 20)
        cv2.polylines(image, [px(steps, losses)], False, raw, 1, _AA)
        cv2.polylines(image, [px(steps, moving_average(losses, window))], False, smooth, 2, _AA)
        y = y0 + 20 + 22 * k
        cv2.line(image, (x1 - 330, y - 5), (x1 - 315, y - 5), raw, 1, _AA)
        cv2.line(image, (x1 - 315, y - 5), (x1 - 300, y - 5), smooth, 2, _AA)
        text = f"{name} (thin: per step, thick: mean of {window})"
        cv2.putText(image, text, (x1 - 290, y), _FONT, 0.45, _INK, 1, _AA)
    cv2.line(image, (x0, y1), (x1, y1), _INK, 1)
    cv2.line(image, (x0, y0), (x0, y1), _INK, 1)
    title = f"training loss (flow matching, {loss.description})"
    cv2.putText(image, title, (x0, 30), _FONT, 0.65, _INK, 1, _AA)
    cv2.putText(image, "step", ((x0 + x1) // 2 - 15, height - 15), _FONT, 0.55, _INK, 1, _AA)
    cv2.putText(image, "loss", (10, y0 - 10), _FONT, 0.55, _INK, 1, _AA)
    return image


def _tile(map_frame: np.ndarray, scale: int) -> np.ndarray:
    tile = video_io.to_uint8(map_frame)
    return cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def psnr_text(mse: float) -> str:
    """PSNR of an MSE for people: "exact" for 0 (the lossless ceiling), else in dB."""
    return "exact" if mse <= 0 else f"{float(outpainting.psnr(mse)):.2f} dB"


def _mean_text(name: str, mse: float) -> str:
    return f"{name} {mse:.3f} ({psnr_text(mse)})"


def comparison_image(
    clips: outpainting.EvalClips,
    models: dict[str, outpainting.OutpaintingResult],
    references: dict[str, float],
    frame: int = -1,
    scale: int = 2,
) -> np.ndarray:
    """One row per clip: ground truth | condition | each of `models` (one frame of each map,
    enlarged `scale` times) with the model's outpainting MSE of the clip; below, the mean MSE
    (and PSNR) of each model and of the `references` (name -> mean MSE) -> RGB uint8."""
    columns = ("ground truth", "condition", *models)
    gap, header, footer = 6, 28, 20
    side = clips.target_map.shape[2] * scale
    width = len(columns) * side + (len(columns) - 1) * gap
    rows = []
    for n in range(len(clips)):
        tiles = [clips.target_map[n, frame], clips.condition_map[n, frame]]
        tiles += [result.maps[n, frame] for result in models.values()]
        row = np.full((side + footer, width, 3), 255, np.uint8)
        for k, tile in enumerate(tiles):
            x = k * (side + gap)
            row[:side, x : x + side] = _tile(tile, scale)
        for k, result in enumerate(models.values(), start=2):
            x = k * (side + gap)
            text = f"MSE {result.mse[n]:.3f}"
            cv2.putText(row, text, (x + 4, side + 15), _FONT, 0.45, _INK, 1, _AA)
        rows.append(row)
    head = np.full((header, width, 3), 255, np.uint8)
    for k, name in enumerate(columns):
        cv2.putText(head, name, (k * (side + gap) + 4, 19), _FONT, 0.5, _INK, 1, _AA)
    lines = (
        "mean MSE outside the condition (pixels in [-1, 1]):",
        ", ".join(_mean_text(name, float(np.mean(r.mse))) for name, r in models.items()),
        *(_mean_text(name, mse) for name, mse in references.items()),
        f"(frame {frame % clips.target_map.shape[1]} of each clip shown)",
    )
    foot = np.full((8 + 20 * len(lines), width, 3), 255, np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(foot, line, (4, 16 + 20 * k), _FONT, 0.42, _INK, 1, _AA)
    spacer = np.full((gap, width, 3), 255, np.uint8)
    body = [head]
    for row in rows:
        body += [row, spacer]
    image = np.concatenate([*body, foot], axis=0)
    return np.pad(image, ((8, 8), (8, 8), (0, 0)), constant_values=255)
