"""Writes the ViewPoint map, the six cube faces and the round-trip ERP of a panorama as PNGs.

  python tools/show_projection.py INPUT --out DIR [--map-size 640] [--frame 0]
  python tools/show_projection.py --scene room --out DIR      # a rendered procedural scene

INPUT is an ERP image or video (2:1). Files: input_erp.png, viewpoint_map.png,
face_{F,R,B,L,U,D}.png, roundtrip_erp.png, all written atomically.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from viewpoint_jax import geometry, io_utils, video_io
from viewpoint_jax.cli import UserError, run_main
from viewpoint_jax.data import scenes


def write_png(path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"cannot encode {path}")
    io_utils.atomic_write_bytes(path, encoded.tobytes())


def show_projection(erp: np.ndarray, out_dir, map_size: int = 640) -> dict[str, np.ndarray]:
    """Projects one uint8 ERP `(H, 2H, 3)`; writes and returns the images by file stem."""
    height = erp.shape[0]
    vp = np.asarray(geometry.erp_to_viewpoint(erp, map_size))
    faces = np.asarray(geometry.erp_to_cubemap(erp, map_size // 2))
    roundtrip = np.asarray(geometry.viewpoint_to_erp(vp, height))
    images = {"input_erp": erp, "viewpoint_map": vp, "roundtrip_erp": roundtrip}
    images |= {f"face_{name}": face for name, face in zip(geometry.FACE_NAMES, faces)}
    for stem, image in images.items():
        write_png(f"{out_dir}/{stem}.png", image)
    return images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", nargs="?", help="ERP image or video")
    parser.add_argument("--scene", choices=scenes.KINDS, help="render a procedural scene instead")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--map-size", type=int, default=640)
    parser.add_argument("--frame", type=int, default=0, help="frame of a video input")
    parser.add_argument("--height", type=int, default=512, help="ERP height of a rendered scene")
    args = parser.parse_args(argv)
    if (args.input is None) == (args.scene is None):
        raise UserError("give exactly one of INPUT or --scene")
    if args.map_size < 2 or args.map_size % 2:
        raise UserError(f"--map-size must be a positive even number, got {args.map_size}")
    if args.scene:
        erp = scenes.to_uint8(scenes.render_erp(args.height, 0.0, args.scene, samples=2))
    else:
        frames, _ = video_io.read_video(args.input, start=args.frame, num_frames=1)
        erp = frames[0]
        if erp.shape[1] != 2 * erp.shape[0]:
            raise UserError(
                f"{args.input} is not an ERP panorama (2:1), got {erp.shape[0]}x{erp.shape[1]}"
            )
    show_projection(erp, args.out, args.map_size)
    print(f"wrote {args.out}/viewpoint_map.png, face_*.png, roundtrip_erp.png")
    return 0


if __name__ == "__main__":
    run_main(main)
