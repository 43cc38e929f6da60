"""Training telemetry: analytic FLOPs and MFU, TensorBoard, progress, preview images.

FLOPs of one forward pass of the DiT on one sample (a multiply-add = 2 FLOPs), with
N tokens = (F / pt) (H / ph) (W / pw) of the latent, D = dim, Df = ffn_dim, L text tokens,
Dt = text_dim, Ci / Co input / output channels, P = pt ph pw:

  patch embed       2 N (P Ci) D
  text embed        2 L (Dt D + D D)
  time embed        2 (freq D + D D + D 6D)             (per sample, negligible)
  per block
    self-attn proj  2 N D 4D                            (q, k, v, o)
    self-attn       pano:        2 * 2 N N D            (q k^T and p v, all heads)
                    perspective: 4 * 2 * 2 (N/4)^2 D    (4 subregions of N/4 tokens) = N^2 D
    cross-attn      2 N D 2D + 2 L D 2D + 2 * 2 N L D   (q, o; k, v of the text; q k^T, p v)
    ffn             2 N D 2Df
  head              2 N D (P Co)

A training step costs 3x the forward (the backward pass is two matmuls per forward matmul);
rematerialisation's recomputation is not counted (MFU, not hardware utilisation). The frozen
VAE and text encoder are not counted either.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from viewpoint_jax.common.progress import Progress
from viewpoint_jax.common.sharding import MESH_AXES
from viewpoint_jax.common.video_io import encode_png, to_uint8, write_png
from viewpoint_jax.data import panoramic_videos
from viewpoint_jax.data.conditions import ConditionKind, parse_mixture
from viewpoint_jax.data.config import DataSource, data_source
from viewpoint_jax.models.dit import BlockKind, DiTConfig, abstract_model, count_params
from viewpoint_jax.setup.config import init_checkpoint
from viewpoint_jax.training import memory

# Dense bf16 peak per device, FLOP/s (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v6 lite": 918e12,
    "TPU v4": 275e12,
}


def dit_forward_flops(
    config: DiTConfig, latent_shape: tuple[int, int, int], text_tokens: int
) -> float:
    """Forward FLOPs of the DiT on one sample of latent `(F, H, W)` (see the module docstring)."""
    pt, ph, pw = config.patch_size
    f, h, w = latent_shape
    n = (f // pt) * (h // ph) * (w // pw)
    d, dff, lt, patch = config.dim, config.ffn_dim, text_tokens, pt * ph * pw
    flops = 2 * n * patch * config.in_dim * d
    flops += 2 * lt * (config.text_dim * d + d * d)
    flops += 2 * (config.freq_dim * d + d * d + d * 6 * d)
    for kind in config.block_kinds:
        flops += 2 * n * d * 4 * d
        flops += 4 * n * n * d if kind == BlockKind.PANO else 4 * 4 * (n // 4) ** 2 * d
        flops += 2 * n * d * 2 * d + 2 * lt * d * 2 * d + 4 * n * lt * d
        flops += 2 * n * d * 2 * dff
    flops += 2 * n * d * patch * config.out_dim
    return float(flops)


def train_step_flops(
    config: DiTConfig, latent_shape: tuple[int, int, int], text_tokens: int, batch: int
) -> float:
    """FLOPs of one training step (forward + backward) of a global batch."""
    return 3.0 * batch * dit_forward_flops(config, latent_shape, text_tokens)


def tokens_per_sample(config: DiTConfig, latent_shape: tuple[int, int, int]) -> int:
    pt, ph, pw = config.patch_size
    return math.prod((s // p) for s, p in zip(latent_shape, (pt, ph, pw)))


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of a device (override, else by its kind); None when unknown (e.g. CPU)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


class StepTimer:
    """Wall time between consecutive `tick()` calls (the first returns None)."""

    def __init__(self):
        self._last = None

    def tick(self) -> float | None:
        now = time.perf_counter()
        elapsed = None if self._last is None else now - self._last
        self._last = now
        return elapsed


def throughput(
    step_seconds: float, step_flops: float, step_tokens: int, num_devices: int, peak: float | None
) -> dict[str, float]:
    """tokens/s and, when the peak is known, MFU = achieved FLOP/s / (devices * peak)."""
    out = {"tokens_per_s": step_tokens / step_seconds}
    if peak:
        out["mfu"] = step_flops / step_seconds / (num_devices * peak)
    return out


class Writer:
    """TensorBoard scalars and images (tensorboardX), only on the first host."""

    def __init__(self, logdir: str | Path, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(logdir), flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image` (H, W, 3) uint8, PNG-encoded here: tensorboardX's own `add_image` needs
        Pillow, which the package does not install (OpenCV encodes it)."""
        if self._writer is not None:
            from tensorboardX.proto.summary_pb2 import Summary

            height, width, channels = image.shape
            encoded = Summary.Image(
                height=height,
                width=width,
                colorspace=channels,
                encoded_image_string=encode_png(image),
            )
            summary = Summary(value=[Summary.Value(tag=name, image=encoded)])
            self._writer.file_writer.add_summary(summary, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def preview_grid(
    condition: np.ndarray, target: np.ndarray, prediction: np.ndarray, max_examples: int = 4
) -> np.ndarray:
    """Maps `(B, F, M, M, 3)` in [-1, 1] -> one uint8 image: a row per example of condition,
    target and prediction, each showing the first and the last frame side by side."""
    rows = []
    gap = 2
    for b in range(min(len(target), max_examples)):
        tiles = []
        for video in (condition, target, prediction):
            frames = [video[b, 0], video[b, -1]]
            tiles.append(
                np.concatenate([frames[0], np.ones_like(frames[0][:, :gap]), frames[1]], 1)
            )
            tiles.append(np.ones_like(tiles[-1][:, : 3 * gap]))
        rows.append(np.concatenate(tiles[:-1], axis=1))
        rows.append(np.ones_like(rows[-1][: 3 * gap]))
    return to_uint8(np.concatenate(rows[:-1], axis=0))


def read_losses(metrics_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) from a run's metrics.jsonl; a resumed run's repeated steps: last wins."""
    by_step: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = float(row["loss"])
    steps = np.asarray(sorted(by_step), np.int64)
    return steps, np.asarray([by_step[s] for s in steps], np.float64)


class TrainLogger:
    """One run's telemetry: every host appends its view of each step to its own metrics file
    (`metrics.jsonl` on the first host, `metrics.<i>.jsonl` on the others; they agree, the
    metrics are replicated); the first host also writes TensorBoard scalars every
    `config.log.every_steps` steps, preview images, and progress (`progress.Progress`: a bar on
    a terminal, a plain line every `log.every_steps` steps in a log file).
    """

    def __init__(
        self,
        workdir: Path,
        config: ml_collections.ConfigDict,
        model_config: DiTConfig,
        *,
        num_devices: int,
        start_step: int,
        progress: bool = True,
    ):
        self.workdir, self.config, self.model_config = workdir, config, model_config
        self.num_devices = num_devices
        self.is_main = jax.process_index() == 0
        name = "metrics.jsonl" if self.is_main else f"metrics.{jax.process_index()}.jsonl"
        self.metrics_file = workdir / name
        self.writer = Writer(workdir / "tensorboard", enabled=self.is_main)
        self.peak = peak_flops_per_device(jax.devices()[0].device_kind, config.log.peak_tflops)
        self.timer = StepTimer()
        self.losses: dict[int, float] = {}
        self.progress = Progress(
            config.num_steps,
            "train",
            unit="step",
            every=config.log.every_steps,
            initial=start_step,
            enabled=progress and self.is_main,
        )

    def log(
        self, step: int, step_metrics: dict[str, Any], latent_grid: tuple[int, int, int], skipped
    ) -> dict[str, float]:
        """Records one step's metrics (host values) with its throughput; returns them."""
        values = {k: float(v) for k, v in step_metrics.items()}
        seconds = self.timer.tick()
        batch = self.config.data.batch_size
        if seconds:
            values["step_time_s"] = seconds
            text_tokens = int(self.config.text_encoder.max_length)
            flops = train_step_flops(self.model_config, latent_grid, text_tokens, batch)
            tokens = batch * tokens_per_sample(self.model_config, latent_grid)
            values.update(throughput(seconds, flops, tokens, self.num_devices, self.peak))
        values["data/skipped_records"] = skipped
        self.losses[step] = values["loss"]
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        every = self.config.log.every_steps
        if self.is_main and (step % every == 0 or step == self.config.num_steps):
            self.writer.scalars(step, values)
        detail = f"loss {values['loss']:.4f}" + (f", {seconds:.2f} s/step" if seconds else "")
        self.progress.update(1, detail)
        return values

    def preview(self, step: int, preview: dict[str, np.ndarray]) -> None:
        """Condition, target and prediction maps (`preview_step`) as a PNG and in TensorBoard."""
        grid = preview_grid(preview["condition"], preview["target"], preview["prediction"])
        write_png(self.workdir / "images" / f"step_{step:07d}.png", grid)
        self.writer.image(step, "maps/condition_target_prediction", grid)

    def close(self) -> None:
        self.writer.close()
        self.progress.close()


def startup_summary(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, model_config: DiTConfig
) -> str:
    """What a long job is about to do, printed once at its start: the devices, the mesh, the
    per-device batch and the model's size (from shapes only: nothing is allocated)."""
    count = count_params(abstract_model(model_config))
    devices = mesh.devices.flatten()
    batch_shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    batch = int(config.data.batch_size)
    lines = [
        f"devices: {len(devices)} x {devices[0].device_kind} over {jax.process_count()} process(es)",
        "mesh: " + ", ".join(f"{axis}={size}" for axis, size in mesh.shape.items()),
        f"batch: {batch} global, {batch // batch_shards} per data shard ({batch_shards} shards)",
        parameters_summary(config, model_config, count),
        memory_summary(config, dict(mesh.shape), model_config),
        f"steps: {config.num_steps}, checkpoint every {config.checkpoint.every_steps}",
        dataset_summary(config.data),
        recipe_summary(config),
    ]
    return "\n".join(lines)


def recipe_summary(config: ml_collections.ConfigDict) -> str:
    """Where the run departs from the paper or not, one line each: the condition kinds it trains
    on (the paper's is perspective_video alone) and the DiT's start (converted weights or random)."""
    lines = []
    if data_source(config.data) == DataSource.PANORAMAS:
        mixture = parse_mixture(config.data.condition_mixture)
        kinds = ", ".join(f"{kind.key} {weight:g}" for kind, weight in mixture.items() if weight)
        paper = {k for k, w in mixture.items() if w} == {ConditionKind.PERSPECTIVE_VIDEO}
        lines.append(
            f"condition: {kinds} ("
            + ("paper" if paper else "this project's mixture; the paper's is perspective_video")
            + ")"
        )
    start = init_checkpoint(config)
    lines.append(
        f"DiT: starts from converted weights {start}"
        if start
        else "DiT: starts from a random initialisation (trained from scratch)"
    )
    return "\n".join(lines)


def parameters_summary(
    config: ml_collections.ConfigDict, model_config: DiTConfig, count: int
) -> str:
    """The model's parameter count; a LoRA run's trainable share (`memory.training_plan`)."""
    line = f"parameters: {count:,} ({count * 4 / 1e9:.2f} GB as fp32 master weights)"
    if not model_config.lora_rank:
        return line
    ones = dict.fromkeys(MESH_AXES, 1)
    trainable = memory.training_plan(config, ones, model_config)["trainable_parameters"]
    return (
        f"parameters: {count:,}, of which {trainable:,} trained (LoRA rank "
        f"{model_config.lora_rank} on {', '.join(model_config.lora_targets)}; the base is frozen)"
    )


def memory_summary(
    config: ml_collections.ConfigDict,
    mesh_sizes: dict[str, int],
    model_config: DiTConfig | None = None,
) -> str:
    """The analytic per-device memory plan of a step (`memory.training_plan`), one line."""
    plan = memory.training_plan(config, mesh_sizes, model_config)
    terms = [
        ("weights", "param_bytes"),
        ("optimizer", "optimizer_bytes"),
        ("gradients", "gradient_bytes"),
        ("activations", "activations"),
    ]
    parts = ", ".join(f"{name} {plan[key] / 2**30:.2f}" for name, key in terms)
    return (
        f"memory per device (analytic, GiB): {parts}; total {plan['total_bytes'] / 2**30:.2f} "
        "(tools/memory_plan.py --method compiled for XLA's own figure)"
    )


def dataset_summary(data: ml_collections.ConfigDict) -> str:
    """The training split as its builder counted it (one line), and the latents it reads instead
    if precomputed; for the demo scenes source, what it renders (it reads no dataset)."""
    if data_source(data) == DataSource.DEMO_SCENES:
        scenes = data.scenes
        return (
            f"dataset: none read; perspective clips of {scenes.count} procedural demo scenes "
            f"(seed {scenes.seed}), {tuple(scenes.size)} pixels, rendered on the fly"
        )
    try:
        counts = panoramic_videos.split_counts(data.data_dir, data.name).get(data.train_split)
    except ValueError as error:  # not built: the input pipeline says so, in its own words
        return f"dataset: {error}"
    line = f"dataset: {data.name}/{data.train_split} in {data.data_dir}"
    if counts:
        line += (
            f": {counts['videos']} videos ({counts['video_segments']} records), "
            f"{counts['images']} images"
        )
    if data.precomputed_latents:
        line += f"; read as the precomputed latents {data.precomputed_latents}"
    return line
