"""Procedural panoramic scenes: colour as a pure function of view direction and time.

Ground truth for the projection tests (render a scene straight into ERP, cube faces, perspective
views or the ViewPoint map from pixel directions) and the source of the demo's moving panoramas.

Scenes (`kind`):
- "room": a textured box room around the camera: tiled walls with soft grout lines, a striped
  floor, a high-frequency wave panel on the back wall, coloured discs orbiting the camera, a
  light that moves, and a camera that turns. Everything moves with `time`.
- "smooth": a band-limited colour field (low-order polynomials and sines of the direction);
  resampling it is accurate to the interpolation error, for parity and round-trip tests.
- "graticule": a smooth colour field with black lines every 30 degrees of longitude and
  latitude, the pattern of the spec's reference picture.

All renderers are jax.numpy, so they jit and vmap over `time`. Colours are float32 RGB in [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from viewpoint_jax.geometry import sphere, viewpoint_map

KINDS = ("room", "smooth", "graticule")


@dataclasses.dataclass(frozen=True)
class Scene:
    """A procedural scene. Angular speeds are per unit of `time` (e.g. seconds)."""

    kind: str = "room"
    room_half_size: tuple[float, float, float] = (3.0, 1.6, 4.0)  # x, y (up), z (forward)
    tile_size: float = 0.5  # metres between grout lines
    line_width: float = 0.03  # metres, soft-edged
    detail_frequency: float = 40.0  # cycles per metre of the wave panel
    camera_turn_deg: float = 10.0  # yaw per unit time
    disc_speed_deg: float = 30.0  # orbit speed of the discs per unit time
    light_speed_deg: float = 45.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"scene kind must be one of {KINDS}, got {self.kind!r}")


def _smoothstep(edge0, edge1, x):
    t = jnp.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _line_mask(coord, spacing, width):
    """1 on soft lines of `width` every `spacing` along `coord`, 0 between them."""
    distance = jnp.abs(coord / spacing - jnp.round(coord / spacing)) * spacing
    return 1.0 - _smoothstep(0.5 * width, 1.5 * width, distance)


def _smooth_colour(d):
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return jnp.stack(
        [
            0.5 + 0.3 * x + 0.15 * jnp.sin(2.0 * z + 1.0) * y,
            0.5 + 0.3 * y * z + 0.15 * jnp.cos(1.5 * x - 0.5),
            0.5 + 0.25 * jnp.sin(1.7 * z + 0.8 * x) - 0.15 * y,
        ],
        axis=-1,
    )


def _graticule(d):
    lon, lat = sphere.direction_to_lonlat(d, jnp)
    colour = 0.5 + 0.45 * jnp.stack(
        [
            jnp.sin(lon + 0.3) * jnp.cos(lat),
            jnp.sin(2.1 * lat + 0.4 * lon),
            jnp.cos(lon - 0.5 * lat),
        ],
        axis=-1,
    )
    step = np.deg2rad(30.0)
    width = np.deg2rad(0.6)
    # Longitude lines are measured as arc length along the parallel, so they stay thin at poles.
    lon_distance = jnp.abs(lon / step - jnp.round(lon / step)) * step * jnp.cos(lat)
    lat_distance = jnp.abs(lat / step - jnp.round(lat / step)) * step
    line = jnp.maximum(
        1 - _smoothstep(0.5 * width, 1.5 * width, lon_distance),
        1 - _smoothstep(0.5 * width, 1.5 * width, lat_distance),
    )
    return colour * (1 - line)[..., None]


def _yaw_rotate(d, angle):
    c, s = jnp.cos(angle), jnp.sin(angle)
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return jnp.stack([c * x + s * z, y, -s * x + c * z], axis=-1)


def _room(d, time, scene: Scene):
    # The camera turns: world direction = camera direction rotated by the camera's yaw.
    d = _yaw_rotate(d, jnp.deg2rad(scene.camera_turn_deg) * time)
    half = jnp.asarray(scene.room_half_size)
    distance = half / jnp.maximum(jnp.abs(d), 1e-9)  # ray length to each pair of walls
    axis = jnp.argmin(distance, axis=-1)
    depth = jnp.min(distance, axis=-1)
    hit = d * depth[..., None]
    x, y, z = hit[..., 0], hit[..., 1], hit[..., 2]
    sign = jnp.sign(jnp.take_along_axis(d, axis[..., None], axis=-1)[..., 0])
    wall = axis * 2 + (sign > 0)  # 0: -x, 1: +x, 2: floor, 3: ceiling, 4: back, 5: front
    palette = jnp.asarray(
        [
            [0.75, 0.45, 0.35],
            [0.35, 0.55, 0.75],
            [0.55, 0.42, 0.30],
            [0.90, 0.90, 0.85],
            [0.45, 0.70, 0.45],
            [0.80, 0.75, 0.45],
        ]
    )
    base = palette[wall]
    # Wall-plane coordinates (u, v) of the hit point.
    u = jnp.where(axis == 0, z, x)
    v = jnp.where(axis == 1, z, y)
    tiles = jnp.maximum(
        _line_mask(u, scene.tile_size, scene.line_width),
        _line_mask(v, scene.tile_size, scene.line_width),
    )
    checker = 0.08 * jnp.sign(
        jnp.sin(np.pi * u / scene.tile_size) * jnp.sin(np.pi * v / scene.tile_size)
    )
    colour = base * (1 + checker[..., None])
    # Floor planks: stripes along z.
    planks = 0.1 * jnp.sin(2 * np.pi * x / 0.25)
    colour = jnp.where((wall == 2)[..., None], colour * (1 + planks[..., None]), colour)
    # High-frequency wave panel on the front wall (z > 0).
    panel = (wall == 5) & (jnp.abs(x) < 1.2) & (jnp.abs(y) < 0.8)
    waves = 0.5 + 0.5 * jnp.sin(2 * np.pi * scene.detail_frequency * (x + 0.5 * y))
    colour = jnp.where(panel[..., None], 0.2 + 0.6 * waves[..., None] * base, colour)
    colour = colour * (1 - 0.85 * tiles)[..., None]
    # Lighting: a lamp circling under the ceiling.
    light_angle = jnp.deg2rad(scene.light_speed_deg) * time
    lamp = jnp.stack([2.0 * jnp.sin(light_angle), 1.2 + 0.0 * time, 2.5 * jnp.cos(light_angle)])
    to_lamp = lamp - hit
    lamp_distance = jnp.linalg.norm(to_lamp, axis=-1)
    normal_axis = jax.nn.one_hot(axis, 3) * (-sign)[..., None]  # walls face the camera
    lambert = jnp.clip(jnp.sum(normal_axis * to_lamp, axis=-1) / lamp_distance, 0, 1)
    colour = colour * (0.45 + 0.9 * lambert / (1 + 0.08 * lamp_distance**2))[..., None]
    # Discs orbiting the camera at several elevations (soft edges).
    d_cam = d
    for k, (elevation, radius, rgb) in enumerate(
        [
            (0.0, 12.0, (0.95, 0.2, 0.2)),
            (35.0, 9.0, (0.2, 0.3, 0.95)),
            (-40.0, 10.0, (0.95, 0.85, 0.1)),
        ]
    ):
        azimuth = jnp.deg2rad(120.0 * k + scene.disc_speed_deg * (1 + 0.5 * k) * time)
        el = np.deg2rad(elevation)
        centre = jnp.stack(
            [np.cos(el) * jnp.sin(azimuth), np.sin(el) + 0 * azimuth, np.cos(el) * jnp.cos(azimuth)]
        )
        angle = jnp.arccos(jnp.clip(d_cam @ centre, -1, 1))
        inside = 1 - _smoothstep(np.deg2rad(radius) - 0.01, np.deg2rad(radius) + 0.01, angle)
        ring = 0.6 + 0.4 * jnp.cos(angle * 60.0)
        colour = (
            colour * (1 - inside[..., None])
            + inside[..., None] * jnp.asarray(rgb) * ring[..., None]
        )
    return colour


def render(directions, time=0.0, scene: Scene | str = "room") -> jax.Array:
    """Colours `(..., 3)` float32 in [0, 1] of unit `directions` `(..., 3)` at `time`."""
    scene = Scene(kind=scene) if isinstance(scene, str) else scene
    return _render(jnp.asarray(directions, jnp.float32), jnp.asarray(time, jnp.float32), scene)


@functools.partial(jax.jit, static_argnums=2)
def _render(d, time, scene: Scene):
    if scene.kind == "smooth":
        colour = _smooth_colour(d)
    elif scene.kind == "graticule":
        colour = _graticule(d)
    else:
        colour = _room(d, time, scene)
    return jnp.clip(colour, 0.0, 1.0).astype(jnp.float32)


def _render_supersampled(directions_at, time, scene, samples: int):
    """Averages `samples x samples` sample points per pixel (anti-aliasing of sharp scenes)."""
    offsets = (np.arange(samples) + 0.5) / samples
    total = 0.0
    for dy in offsets:
        for dx in offsets:
            total = total + render(directions_at((dy, dx)), time, scene)
    return total / samples**2


def render_erp(height: int, time=0.0, scene: Scene | str = "room", samples: int = 1) -> jax.Array:
    """ERP `(H, 2H, 3)` of the scene."""
    return _render_supersampled(
        lambda o: sphere.erp_directions(height, 2 * height, o), time, scene, samples
    )


def render_viewpoint(map_size: int, time=0.0, scene: Scene | str = "room", samples: int = 1):
    """ViewPoint map `(M, M, 3)` of the scene, rendered from the map's pixel directions."""
    return _render_supersampled(
        lambda o: viewpoint_map.map_directions(map_size, o), time, scene, samples
    )


def render_cubemap(face_size: int, time=0.0, scene: Scene | str = "room") -> jax.Array:
    """Cube faces `(6, a, a, 3)` (F R B L U D) of the scene."""
    return render(sphere.cube_face_directions(face_size), time, scene)


def render_perspective(
    fov_deg: float,
    yaw_deg: float,
    pitch_deg: float,
    roll_deg: float,
    out_hw: tuple[int, int],
    time=0.0,
    scene: Scene | str = "room",
) -> jax.Array:
    """Perspective view `(h, w, 3)` of the scene (angles in degrees, horizontal fov)."""
    angles = np.deg2rad([fov_deg, yaw_deg, pitch_deg, roll_deg])
    return render(sphere.perspective_directions(*angles, *out_hw), time, scene)


def render_erp_video(
    height: int, num_frames: int, fps: float = 16.0, scene: Scene | str = "room"
) -> jax.Array:
    """ERP video `(F, H, 2H, 3)` float32: frame f at time f / fps (one vmapped program)."""
    d = jnp.asarray(sphere.erp_directions(height, 2 * height), jnp.float32)
    times = jnp.arange(num_frames, dtype=jnp.float32) / fps
    return jax.vmap(lambda t: render(d, t, scene))(times)


def to_uint8(image: jax.Array) -> np.ndarray:
    """Float [0, 1] image -> uint8 numpy."""
    return np.asarray(jnp.clip(jnp.round(jnp.asarray(image) * 255), 0, 255).astype(jnp.uint8))
