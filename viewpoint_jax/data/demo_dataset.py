"""The embedded demo dataset: moving procedural panoramas with captions, generated, not downloaded.

Each clip is a scene built on `scenes.py`: a background (a tiled room, a graticule sphere or a
smooth colour field), one to three coloured balls that move (left, right, up or down), a light
that changes (steady, brightening, dimming, flickering) and a camera that turns slowly (or not).
The caption is written from the same parameters, so it describes what the clip shows:

    "A tiled room with red, blue and yellow discs on the walls, as the light dims. A large green
     ball moves to the right and a small cyan ball rises. The camera slowly turns left."

`build_demo_dataset(out_dir)` renders the clips (one compiled program for all of them), writes
them as ERP mp4 files (plus a few still images) and a captions.jsonl under `out_dir/source`, and
runs the TFDS builder into `out_dir/data` as dataset "demo" with splits "train" and "test"
(held-out clips for evaluation). Everything is a deterministic function of the seed.

    python -m viewpoint_jax.make_demo_dataset --out demo_output
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax.common.fileio import atomic_write_text
from viewpoint_jax.common.video_io import write_video
from viewpoint_jax.data import panoramic_videos, preparation, scenes
from viewpoint_jax.geometry import sphere

COLOURS = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "magenta": (0.90, 0.15, 0.85),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.97, 0.97, 0.97),
    "orange": (1.00, 0.55, 0.08),
}
BACKGROUNDS = {
    "room": "A tiled room with red, blue and yellow discs on the walls",
    "graticule": "A coloured sphere ruled with dark lines of latitude and longitude",
    "smooth": "A softly shaded space of blended colours",
}
LIGHTS = {
    "steady": "in steady light",
    "brightening": "as the light grows brighter",
    "dimming": "as the light dims",
    "flickering": "under flickering light",
}
MOTIONS = {  # (d lon, d lat) direction, caption verb
    "right": ((1.0, 0.0), "moves to the right"),
    "left": ((-1.0, 0.0), "moves to the left"),
    "up": ((0.0, 1.0), "rises"),
    "down": ((0.0, -1.0), "sinks"),
}
SIZES = {"small": 9.0, "large": 16.0}  # angular radius, degrees
CAMERAS = {"left": -1.0, "right": 1.0, "still": 0.0}
MAX_OBJECTS = 3
BALL_SPEED_DEG = 15.0  # per second
CAMERA_SPEED_DEG = 12.0


@dataclasses.dataclass(frozen=True)
class Ball:
    colour: str
    size: str
    motion: str
    lon_deg: float  # world position at time 0
    lat_deg: float


@dataclasses.dataclass(frozen=True)
class DemoScene:
    background: str
    light: str
    camera: str
    balls: tuple[Ball, ...]

    @property
    def caption(self) -> str:
        phrases = [f"a {b.size} {b.colour} ball {MOTIONS[b.motion][1]}" for b in self.balls]
        balls = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        camera = (
            "The camera stays still."
            if self.camera == "still"
            else f"The camera slowly turns {self.camera}."
        )
        setting = f"{BACKGROUNDS[self.background]}, {LIGHTS[self.light]}."
        return f"{setting} {balls[0].upper()}{balls[1:]}. {camera}"


def sample_scene(rng: np.random.Generator) -> DemoScene:
    """Random scene parameters (distinct ball colours, balls spread 120 degrees apart)."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    start = rng.uniform(-180, 180)
    balls = tuple(
        Ball(
            colour=str(colour),
            size=str(rng.choice(list(SIZES))),
            motion=str(rng.choice(list(MOTIONS))),
            lon_deg=float((start + 120 * k + 180) % 360 - 180),
            lat_deg=float(rng.uniform(-25, 25)),
        )
        for k, colour in enumerate(colours)
    )
    return DemoScene(
        background=str(rng.choice(list(BACKGROUNDS))),
        light=str(rng.choice(list(LIGHTS))),
        camera=str(rng.choice(list(CAMERAS))),
        balls=balls,
    )


def scene_for(seed: int, index: int) -> DemoScene:
    return sample_scene(np.random.default_rng([seed, index]))


# Rendering --------------------------------------------------------------------------------------


def light_level(light: str, t: np.ndarray | jax.Array, duration: float, xp=np):
    """Brightness factor of the background over time (balls glow: they are not lit)."""
    u = t / duration
    return {
        "steady": 1.0 + 0.0 * u,
        "brightening": 0.4 + 0.6 * u,
        "dimming": 1.0 - 0.6 * u,
        "flickering": 0.7 + 0.3 * xp.cos(2 * np.pi * 2.0 * t),
    }[light]


def camera_yaw_deg(scene: DemoScene, t):
    return CAMERAS[scene.camera] * CAMERA_SPEED_DEG * t


def ball_lonlat_deg(ball: Ball, t) -> tuple[np.ndarray, np.ndarray]:
    """World longitude, latitude of a ball's centre at time t (latitude kept within +-70)."""
    (dlon, dlat), _ = MOTIONS[ball.motion]
    return ball.lon_deg + dlon * BALL_SPEED_DEG * t, np.clip(
        ball.lat_deg + dlat * BALL_SPEED_DEG * t, -70, 70
    )


def ball_pixel(ball: Ball, scene: DemoScene, t: float, height: int) -> tuple[int, int]:
    """(row, col) of the ERP pixel nearest a ball's centre in the camera's view at time t."""
    lon, lat = ball_lonlat_deg(ball, t)
    lon = (lon - camera_yaw_deg(scene, t) + 180) % 360 - 180  # the camera turns by its yaw
    width = 2 * height
    col = int(np.floor((lon / 360 + 0.5) * width)) % width
    row = int(np.clip(np.floor((0.5 - lat / 180) * height), 0, height - 1))
    return row, col


def _unit(lon_deg, lat_deg):
    lon, lat = jnp.deg2rad(lon_deg), jnp.deg2rad(lat_deg)
    return jnp.stack([jnp.cos(lat) * jnp.sin(lon), jnp.sin(lat), jnp.cos(lat) * jnp.cos(lon)], -1)


def _yaw_rotate(d, yaw_deg):
    """Camera -> world: a camera turned right by yaw sees the world direction rotated by yaw."""
    c, s = jnp.cos(jnp.deg2rad(yaw_deg)), jnp.sin(jnp.deg2rad(yaw_deg))
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return jnp.stack([c * x + s * z, y, -s * x + c * z], axis=-1)


_STILL_ROOM = scenes.Scene(kind="room", camera_turn_deg=0.0, disc_speed_deg=0.0)


@functools.partial(jax.jit, static_argnames=("height",))
def render_frames(params: dict, height: int) -> jax.Array:
    """ERP frames `(F, H, 2H, 3)` in [0, 1] of `scene_arrays` (one program for every scene).

    params: background `()` int, camera_yaw `(F,)`, light `(F,)`, time `(F,)`, ball_dir
    `(F, K, 3)` world centres, ball_radius `(K,)` rad, ball_colour `(K, 3)`, ball_on `(K,)`.
    """
    d_cam = jnp.asarray(sphere.erp_directions(height, 2 * height), jnp.float32)
    backgrounds = [
        functools.partial(scenes.render, scene=scene)
        for scene in (_STILL_ROOM, "graticule", "smooth")  # the order of BACKGROUNDS
    ]

    def frame(yaw, light, t, ball_dir):
        d = _yaw_rotate(d_cam, yaw)
        # Only the scene's background is rendered (a conditional, not a select of all three).
        colour = jax.lax.switch(params["background"], backgrounds, d, t) * light
        for k in range(MAX_OBJECTS):
            angle = jnp.arccos(jnp.clip(d @ ball_dir[k], -1.0, 1.0))
            radius = params["ball_radius"][k]
            inside = jnp.clip((radius - angle) / 0.03 + 0.5, 0.0, 1.0) * params["ball_on"][k]
            shade = 0.85 + 0.15 * jnp.cos(angle / radius * np.pi / 2)  # a little roundness
            ball = params["ball_colour"][k] * shade[..., None]
            colour = colour * (1 - inside[..., None]) + ball * inside[..., None]
        return jnp.clip(colour, 0.0, 1.0)

    return jax.vmap(frame)(
        params["camera_yaw"], params["light"], params["time"], params["ball_dir"]
    )


def render_scene(scene: DemoScene, height: int, num_frames: int, fps: float) -> np.ndarray:
    """The scene's ERP clip `(F, H, 2H, 3)` uint8, frame f at time f / fps."""
    return scenes.to_uint8(render_frames(scene_arrays(scene, num_frames, fps), height))


def scene_arrays(
    scene: DemoScene,
    num_frames: int,
    fps: float,
    first_frame: int = 0,
    frame_count: int | None = None,
) -> dict[str, np.ndarray]:
    """`render_frames`' arrays of the scene's clip of `num_frames` frames at `fps` (frame f at
    time f / fps): all of them, or the `frame_count` frames from `first_frame` on (the light's
    course still spans the whole clip)."""
    frame_count = num_frames - first_frame if frame_count is None else frame_count
    t = (first_frame + np.arange(frame_count, dtype=np.float32)) / fps
    duration = max(num_frames / fps, 1e-6)
    ball_dir = np.zeros((frame_count, MAX_OBJECTS, 3), np.float32)
    radius = np.ones(MAX_OBJECTS, np.float32)
    colour = np.zeros((MAX_OBJECTS, 3), np.float32)
    on = np.zeros(MAX_OBJECTS, np.float32)
    for k, ball in enumerate(scene.balls):
        ball_dir[:, k] = np.asarray(_unit(*ball_lonlat_deg(ball, t)))
        radius[k] = np.deg2rad(SIZES[ball.size])
        colour[k] = COLOURS[ball.colour]
        on[k] = 1.0
    return {
        "background": np.int32(list(BACKGROUNDS).index(scene.background)),
        "camera_yaw": camera_yaw_deg(scene, t).astype(np.float32),
        "light": np.asarray(light_level(scene.light, t, duration), np.float32),
        "time": t,
        "ball_dir": ball_dir,
        "ball_radius": radius,
        "ball_colour": colour,
        "ball_on": on,
    }


# Writing ----------------------------------------------------------------------------------------


def write_demo_source(
    out: str | Path,
    *,
    num_train: int = 48,
    num_test: int = 8,
    num_images: int = 8,
    height: int = 64,
    num_frames: int = 17,
    fps: float = 8.0,
    seed: int = 0,
) -> Path:
    """Renders the clips as ERP mp4 files (and stills as PNG) + captions.jsonl under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    items = [("train", i) for i in range(num_train)] + [("test", i) for i in range(num_test)]
    for index, (split, i) in enumerate(items):
        scene = scene_for(seed, index)
        name = f"{split}_{i:03d}.mp4"
        write_video(out / name, render_scene(scene, height, num_frames, fps), fps)
        lines.append({"file": name, "caption": scene.caption, "split": split})
    for i in range(num_images):
        scene = scene_for(seed, len(items) + i)
        name = f"image_{i:03d}.png"
        still = render_scene(scene, height, num_frames, fps)[0]  # same program as clips
        if not cv2.imwrite(str(out / name), cv2.cvtColor(still, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {out / name}")
        lines.append({"file": name, "caption": scene.caption, "split": "train"})
    atomic_write_text(
        out / panoramic_videos.CAPTIONS_FILE, "".join(json.dumps(x) + "\n" for x in lines)
    )
    return out


def build_demo_dataset(
    out_dir: str | Path = "demo_output", name: str = "demo", **kwargs
) -> tuple[Path, str]:
    """Writes the demo source under `out_dir/source` and builds it into `out_dir/data`.

    Returns (data_dir, name) for `config.data.data_dir` / `config.data.name`. Keyword arguments
    go to `write_demo_source` (sizes, counts, seed).
    """
    out_dir = Path(out_dir)
    source = write_demo_source(out_dir / "source", **kwargs)
    data_dir = out_dir / "data"
    preparation.prepare(source, data_dir, name, frame_format="png", progress=False)
    return data_dir, name


def scene_records(count: int, num_frames: int, height: int, seed: int = 0) -> list[dict]:
    """`count` demo scenes (`scene_for(seed, i)`) as in-memory dataset records, frames PNG-encoded
    as the dataset stores them: a `data_source` for training without writing a dataset."""
    records = []
    for i in range(count):
        scene = scene_for(seed, i)
        frames = render_scene(scene, height, num_frames, 8.0)
        records.append(
            {
                "frames": [panoramic_videos.encode_frame(f, "png") for f in frames],
                "caption": scene.caption,
                "is_image": False,
                "source": f"scene{i}",
            }
        )
    return records
