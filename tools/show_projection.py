"""Writes the ViewPoint map, the six cube faces and the round-trip ERP of a panorama as PNGs.

  python tools/show_projection.py INPUT --out DIR [--map_size=640] [--frame 0]
  python tools/show_projection.py --scene room --out DIR      # a rendered procedural scene
  python tools/show_projection.py --diagram docs/viewpoint-map.png --map_size=512

INPUT is an ERP image or video (2:1). Files: input_erp.png, viewpoint_map.png,
face_{F,R,B,L,U,D}.png, roundtrip_erp.png, all written atomically.

--diagram PNG draws the labelled diagram of docs/viewpoint-map.md instead: a panorama whose cube
faces each have their own colour and letter (U four times, once near each of its edges), with
lon/lat lines every 30 degrees, projected onto the ViewPoint map with `erp_to_viewpoint`; black
lines mark the four subregions.
"""

from __future__ import annotations

import cv2
import numpy as np
from absl import flags

from viewpoint_jax import geometry
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError, run
from viewpoint_jax.data import scenes


def show_projection(erp: np.ndarray, out_dir, map_size: int = 640) -> dict[str, np.ndarray]:
    """Projects one uint8 ERP `(H, 2H, 3)`; writes and returns the images by file stem."""
    height = erp.shape[0]
    vp = np.asarray(geometry.erp_to_viewpoint(erp, map_size))
    faces = np.asarray(geometry.erp_to_cubemap(erp, map_size // 2))
    roundtrip = np.asarray(geometry.viewpoint_to_erp(vp, height))
    images = {"input_erp": erp, "viewpoint_map": vp, "roundtrip_erp": roundtrip}
    images |= {f"face_{name}": face for name, face in zip(geometry.FACE_NAMES, faces)}
    for stem, image in images.items():
        video_io.write_png(f"{out_dir}/{stem}.png", image)
    return images


# Diagram -----------------------------------------------------------------------------------------

# Fill colour (RGB) of each cube face in the diagram.
FACE_COLOURS = {
    "F": (232, 98, 86),  # red
    "R": (104, 190, 96),  # green
    "B": (86, 140, 228),  # blue
    "L": (240, 200, 64),  # yellow
    "U": (150, 222, 236),  # light cyan
    "D": (196, 134, 226),  # violet
}
LETTER_COLOUR = (0, 0, 0)
GRID_COLOUR = (255, 255, 255)
BORDER_COLOUR = (0, 0, 0)


# Each face letter as strokes in a unit box (x right, y down; width 0.7 of the height). Drawn as
# lines rather than with cv2.putText, whose glyphs change between OpenCV releases (4.x and 5.x
# draw D and B differently enough to read as other shapes).
LETTER_STROKES = {
    "F": (((0, 0), (0, 1)), ((0, 0), (1, 0)), ((0, 0.5), (0.75, 0.5))),
    "L": (((0, 0), (0, 1), (1, 1)),),
    "U": (((0, 0), (0, 0.8), (0.2, 1), (0.8, 1), (1, 0.8), (1, 0)),),
    "D": (((0, 0), (0, 1)), ((0, 0), (0.6, 0), (1, 0.3), (1, 0.7), (0.6, 1), (0, 1))),
    "R": (
        ((0, 0), (0, 1)),
        ((0, 0), (0.75, 0), (1, 0.12), (1, 0.38), (0.75, 0.5), (0, 0.5)),
        ((0.4, 0.5), (1, 1)),
    ),
    "B": (
        ((0, 0), (0, 1)),
        ((0, 0), (0.55, 0), (0.8, 0.18), (0.8, 0.32), (0.55, 0.5), (0, 0.5)),
        ((0.55, 0.5), (0.9, 0.68), (0.9, 0.82), (0.6, 1), (0, 1)),
    ),
}


def _letter_mask(letter: str, size: int, height_frac: float) -> np.ndarray:
    """Alpha `(size, size)` in [0, 1] of `letter` drawn upright and centred, `height_frac` tall."""
    height = height_frac * size
    width = 0.7 * height
    thickness = max(1, round(0.115 * height))
    origin = np.array([(size - width) / 2, (size - height) / 2])
    canvas = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel vertices (cv2 fixed point)
    for stroke in LETTER_STROKES[letter]:
        points = origin + np.asarray(stroke, np.float64) * [width, height]
        points = np.round(points * 2**shift).astype(np.int32)
        cv2.polylines(canvas, [points], False, 255, thickness, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255


def _grid_alpha(directions: np.ndarray, pixel_rad: float, step_deg: float) -> np.ndarray:
    """Alpha of lon/lat lines every `step_deg`, about 3.5 pixels wide (at a face centre), antialiased."""
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    lon, lat = np.arctan2(x, z), np.arcsin(np.clip(y, -1, 1))
    step = np.deg2rad(step_deg)
    to_lat_line = np.abs(lat - step * np.round(lat / step))
    to_lon_line = np.abs(lon - step * np.round(lon / step)) * np.cos(lat)  # on the sphere
    distance = np.minimum(to_lat_line, to_lon_line) / pixel_rad
    return np.clip(1.75 - distance, 0, 1)


def labelled_faces(face_size: int, grid_deg: float = 30.0) -> np.ndarray:
    """Cube faces `(6, a, a, 3)` uint8 (order F R B L U D): colour, lon/lat grid and letters.

    Letters are upright in each face's own frame (spec section 2). U's letter is drawn four
    times, near each edge and with its top towards U's centre, so that every corner of the map
    (the half-disk of U next to one side face) shows one U upright as seen from that side face.
    """
    a = face_size
    directions = geometry.cube_face_directions(a)
    grid = _grid_alpha(directions, pixel_rad=2.0 / a, step_deg=grid_deg)[..., None]
    faces = []
    for k, name in enumerate(geometry.FACE_NAMES):
        image = np.broadcast_to(np.array(FACE_COLOURS[name], np.float32), (a, a, 3))
        image = image * (1 - grid[k]) + np.array(GRID_COLOUR, np.float32) * grid[k]
        letters = np.zeros((a, a), np.float32)
        if name == "U":
            half = a // 2
            small = _letter_mask(name, half, 0.85)
            # (top-left corner of the half-size canvas, quarter turns counter-clockwise): the
            # copy next to F (bottom edge: U's "up" is towards B), R (right), B (top), L (left).
            spots = [((half, a // 4), 0), ((a // 4, half), 1), ((0, a // 4), 2), ((a // 4, 0), 3)]
            for (i, j), turns in spots:
                letters[i : i + half, j : j + half] = np.maximum(
                    letters[i : i + half, j : j + half], np.rot90(small, turns)
                )
        else:
            letters = _letter_mask(name, a, 0.45)
        image = image * (1 - letters[..., None]) + np.array(LETTER_COLOUR) * letters[..., None]
        faces.append(image)
    return np.clip(np.round(np.stack(faces)), 0, 255).astype(np.uint8)


def draw_subregion_borders(vp: np.ndarray) -> np.ndarray:
    """The map with its four subregions outlined: 2-pixel lines between them, 1 at the edge."""
    vp = vp.copy()
    r = vp.shape[0] // 2
    vp[r - 1 : r + 1, :] = BORDER_COLOUR
    vp[:, r - 1 : r + 1] = BORDER_COLOUR
    for edge in (0, -1):
        vp[edge, :] = BORDER_COLOUR
        vp[:, edge] = BORDER_COLOUR
    return vp


def viewpoint_diagram(map_size: int = 512, grid_deg: float = 30.0) -> dict[str, np.ndarray]:
    """The labelled panorama and its ViewPoint map, as uint8 images by name.

    "faces" `(6, a, a, 3)` are drawn at twice the map's face resolution (a = M); "erp" `(2M, 4M,
    3)` is `cubemap_to_erp` of them; "viewpoint_map" `(M, M, 3)` is `erp_to_viewpoint` of the ERP
    with the subregion borders drawn on top.
    """
    faces = labelled_faces(map_size, grid_deg)
    erp = np.asarray(geometry.cubemap_to_erp(faces, 2 * map_size))
    vp = np.asarray(geometry.erp_to_viewpoint(erp, map_size))
    return {"faces": faces, "erp": erp, "viewpoint_map": draw_subregion_borders(vp)}


def define_flags() -> None:
    flags.DEFINE_enum("scene", None, list(scenes.KINDS), "render a procedural scene instead")
    flags.DEFINE_string(
        "diagram", None, "write the labelled diagram of the map to this PNG instead"
    )
    flags.DEFINE_string("out", None, "output directory (not with --diagram)")
    flags.DEFINE_integer("map_size", 640, "side of the ViewPoint map, pixels")
    flags.DEFINE_integer("frame", 0, "frame of a video input")
    flags.DEFINE_integer("height", 512, "ERP height of a rendered scene")


def run_tool(
    input: str | None = None,
    *,
    scene: str | None = None,
    diagram: str | None = None,
    out: str | None = None,
    map_size: int = 640,
    frame: int = 0,
    height: int = 512,
) -> int:
    """The tool's work, given its arguments (INPUT or --scene or --diagram)."""
    if sum(x is not None for x in (input, scene, diagram)) != 1:
        raise UserError("give exactly one of INPUT, --scene or --diagram")
    if map_size < 2 or map_size % 2:
        raise UserError(f"--map_size must be a positive even number, got {map_size}")
    if diagram:
        if out is not None:
            raise UserError("--diagram takes the PNG path itself; drop --out")
        video_io.write_png(diagram, viewpoint_diagram(map_size)["viewpoint_map"])
        print(f"wrote {diagram}")
        return 0
    if out is None:
        raise UserError("--out is required")
    if scene:
        erp = scenes.to_uint8(scenes.render_erp(height, 0.0, scene, samples=2))
    else:
        frames, _ = video_io.read_video(input, start=frame, num_frames=1)
        erp = frames[0]
        if erp.shape[1] != 2 * erp.shape[0]:
            raise UserError(
                f"{input} is not an ERP panorama (2:1), got {erp.shape[0]}x{erp.shape[1]}"
            )
    show_projection(erp, out, map_size)
    print(f"wrote {out}/viewpoint_map.png, face_*.png, roundtrip_erp.png")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        raise UserError(f"one INPUT at most, got {argv[1:]}")
    names = ("scene", "diagram", "out", "map_size", "frame", "height")
    return run_tool(argv[1] if len(argv) == 2 else None, **{n: flags.FLAGS[n].value for n in names})


if __name__ == "__main__":
    run(main, define_flags)
