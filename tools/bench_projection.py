"""Benchmark: 49 frames of 512 x 1024 x 3 uint8 ERP -> 640 ViewPoint map -> ERP, on CPU.

Side by side in one run: our jitted projection (one gather-and-blend program per direction for
the whole clip), py360convert e2c + c2e (its nearest equivalent: cube faces and back, per frame),
and cv2.remap on precomputed fixed-point maps (a floor for CPU resampling: forward map, then the
back map reading one copy per ERP pixel, without overlap blending).

  python tools/bench_projection.py [--frames 49] [--height 512] [--map_size 640] [--repeats 3]
"""

from __future__ import annotations

import time

import cv2
import jax
import numpy as np
import py360convert
from absl import flags

from viewpoint_jax import geometry
from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.data import scenes
from viewpoint_jax.geometry import sphere
from viewpoint_jax.geometry import viewpoint_map as layout


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cv2_maps(height: int, width: int, map_size: int):
    """Fixed-point remap tables: ERP -> map, and map -> ERP through each pixel's main copy."""
    rows, cols = sphere.direction_to_erp_pixel(layout.map_directions(map_size), height, width)
    forward = cv2.convertMaps(
        np.mod(cols, width).astype(np.float32), rows.astype(np.float32), cv2.CV_16SC2
    )
    copies = layout.direction_to_copies(sphere.erp_directions(height, width), map_size)
    main = np.argmax(copies.weight, axis=-1)[..., None]
    back_rows = np.take_along_axis(copies.row, main, -1)[..., 0].astype(np.float32)
    back_cols = np.take_along_axis(copies.col, main, -1)[..., 0].astype(np.float32)
    backward = cv2.convertMaps(back_cols, back_rows, cv2.CV_16SC2)
    return forward, backward


def define_flags() -> None:
    flags.DEFINE_integer("frames", 49, "frames of the clip")
    flags.DEFINE_integer("height", 512, "ERP height (width 2 x height)")
    flags.DEFINE_integer("map_size", 640, "ViewPoint map side")
    flags.DEFINE_integer("repeats", 3, "best of this many runs", lower_bound=1)


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    height, width, m = args.height, 2 * args.height, args.map_size
    frame = scenes.to_uint8(scenes.render_erp(height, 0.0, "room"))
    clip = np.stack([np.roll(frame, 7 * f, axis=1) for f in range(args.frames)])

    round_trip = jax.jit(
        lambda x: geometry.viewpoint_to_erp(geometry.erp_to_viewpoint(x, m), height)
    )
    clip_device = jax.device_put(clip)
    start = time.perf_counter()
    jax.block_until_ready(round_trip(clip_device))
    compile_s = time.perf_counter() - start
    ours = best_time(lambda: jax.block_until_ready(round_trip(clip_device)), args.repeats)

    face = m // 2

    def py360():
        for f in range(args.frames):
            faces = py360convert.e2c(clip[f], face, cube_format="list")
            py360convert.c2e(faces, height, width, cube_format="list")

    py360_s = best_time(py360, max(1, args.repeats - 2))

    forward, backward = cv2_maps(height, width, m)

    def remap():
        for f in range(args.frames):
            vp = cv2.remap(clip[f], *forward, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
            cv2.remap(vp, *backward, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    cv2_s = best_time(remap, args.repeats)

    per_frame = lambda s: 1e3 * s / args.frames
    print(
        f"{args.frames} frames, ERP {height}x{width}x3 uint8 -> {m} map -> ERP; "
        f"CPU, {jax.device_count()} device(s); ours compiled in {compile_s:.1f} s\n"
    )
    print("| method | ms/frame | vs ours |")
    print("|---|---:|---:|")
    for name, seconds in [
        ("viewpoint_jax (jit, fused overlaps)", ours),
        (f"py360convert e2c + c2e (face {face})", py360_s),
        ("cv2.remap, precomputed maps (floor)", cv2_s),
    ]:
        print(f"| {name} | {per_frame(seconds):.2f} | {seconds / ours:.2f}x |")
    return 0


if __name__ == "__main__":
    run(main, define_flags)
