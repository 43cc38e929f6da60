"""Perspective clips of the procedural demo scenes: pretraining data for a plain text-to-video DiT.

Wan was pretrained on ordinary perspective video before ViewPoint fine-tuned it on panoramas. At
demo scale the same story runs in the demo's own world: `SceneSource` lists `count` random scenes
(`demo_dataset.scene_for(seed, i)`: a background, moving balls, a light, a camera, and the caption
written from them; the demo dataset's scenes are those of seed 0, so another seed gives other
scenes), and `render_view_clip` films one: `num_frames` consecutive frames of the scene's clip,
rendered as ERP (`demo_dataset.render_scene`) and seen through a perspective camera
(`geometry.erp_to_perspective`). The input pipeline draws the window and the camera per example
(`pipeline.SceneClipMaker`, `config.data.source = "demo_scenes"`), then shuffles, batches and
checkpoints the examples as it does panoramic records.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax import geometry
from viewpoint_jax.data import demo_dataset


class SceneSource:
    """`count` demo scenes as random-access records {"scene": DemoScene, "source": str}."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed = int(count), int(seed)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        scene = demo_dataset.scene_for(self.seed, index)
        return {"scene": scene, "source": f"demo scene {self.seed}/{index}"}

    def __repr__(self) -> str:
        return f"SceneSource(count={self.count}, seed={self.seed})"


@functools.partial(jax.jit, static_argnames=("erp_height", "out_hw"))
def _view_clip(
    arrays: dict, view: jax.Array, erp_height: int, out_hw: tuple[int, int]
) -> jax.Array:
    """One compiled program for every scene and camera (the angles are traced)."""
    erp = demo_dataset.render_frames(arrays, erp_height)
    erp = jnp.round(erp * 255.0) / 127.5 - 1.0  # 8-bit frames, as the demo dataset's videos
    return geometry.erp_to_perspective(erp, view[0], view[1], view[2], view[3], out_hw=out_hw)


def render_view_clip(
    scene: demo_dataset.DemoScene,
    view: np.ndarray,
    *,
    erp_height: int,
    clip_frames: int,
    fps: float,
    first_frame: int,
    num_frames: int,
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Frames `first_frame .. first_frame + num_frames - 1` of the scene's clip of `clip_frames`
    frames at `fps`, rendered as ERP of `erp_height` rows and seen by the camera `view` `(4,)`
    (fov, yaw, pitch, roll in degrees; fov horizontal) -> `(num_frames, h, w, 3)` float32 in
    [-1, 1]."""
    arrays = demo_dataset.scene_arrays(scene, clip_frames, fps, first_frame, num_frames)
    view = np.asarray(view, np.float32)
    return np.asarray(_view_clip(arrays, view, int(erp_height), tuple(out_hw)), np.float32)
