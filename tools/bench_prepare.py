"""Benchmark: dataset preparation of a 4K 30 fps ERP video against plain ffmpeg decoding of it.

    python tools/bench_prepare.py [--src FILE] [--seconds 10] [--repeats 2] [--workdir DIR]

Without --src, makes a 3840 x 1920, 30 fps H.264 clip of `--seconds` (ffmpeg's testsrc2, x264
`veryfast`: CABAC and B-frames, as real footage has). Side by side, in one run:

  ffmpeg decode only         ffmpeg -i FILE -f null -                      (the decoder's floor)
  ffmpeg raw rgb24 frames    ffmpeg -i FILE -f rawvideo -pix_fmt rgb24 -   (plain decoding)
  ffmpeg fps + scale         the same with -vf fps=16,scale=1024:512       (our decoder's command)
  prepare_dataset            preparation.prepare at the CLI defaults (512 x 1024, 16 fps, JPEG 95)

Speeds are source frames (duration x source fps) per second of wall time; prepare's time covers
preflight, decoding, JPEG encoding, writing and assembly, not the Python imports. Its peak RSS is
measured in a child process (ru_maxrss), with its RSS after the imports for reference.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags

from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import refuse_positional, run


def make_clip(path: Path, seconds: float) -> Path:
    command = [
        video_io.ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "lavfi", "-i", f"testsrc2=size=3840x1920:rate=30:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return path


def time_ffmpeg(src: Path, *output: str) -> float:
    command = [video_io.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(src), *output]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def child(src: Path, out: Path, height: int, fps: float, workers: int) -> None:
    """Runs in its own process: one build, then its time and peak memory as JSON."""
    from viewpoint_jax.data import panoramic_videos, preparation

    imported_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder = out / "src"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / src.name).unlink(missing_ok=True)
    (folder / src.name).symlink_to(src.resolve())
    line = json.dumps({"file": src.name, "caption": "benchmark"})
    (folder / panoramic_videos.CAPTIONS_FILE).write_text(line + "\n")
    start = time.perf_counter()
    preparation.prepare(folder, out / "data", "bench", height=height, fps=fps, workers=workers, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "imported_rss_mb": imported_kb / 1024,
        "ffmpeg_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "records": panoramic_videos.split_counts(out / "data", "bench")["train"]["video_segments"],
    }
    print(json.dumps(result))


def define_flags() -> None:
    flags.DEFINE_string("src", None, "a video (default: make one)")
    flags.DEFINE_float("seconds", 10.0, "length of the made clip")
    flags.DEFINE_integer("repeats", 2, "best of this many runs", lower_bound=1)
    flags.DEFINE_integer("height", 512, "stored ERP height")
    flags.DEFINE_float("fps", 16.0, "stored frame rate")
    flags.DEFINE_integer("workers", 1, "files encoded at once")
    flags.DEFINE_string("workdir", None, "where the clip and the builds go (default: a temp dir)")
    flags.DEFINE_string("child", None, "(internal) one build into this folder, as JSON")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS
    if args.child is not None:
        child(Path(args.src), Path(args.child), args.height, args.fps, args.workers)
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    src = Path(args.src) if args.src else make_clip(workdir / "erp_4k.mp4", args.seconds)
    media = video_io.probe_media(src)
    frames = round(media.duration * media.fps)
    print(
        f"source: {src} {media.width}x{media.height} {media.codec} {media.fps:g} fps, "
        f"{media.duration:.1f} s = {frames} frames"
    )
    width = 2 * args.height
    baselines = {
        "ffmpeg decode only": ("-f", "null", "-"),
        "ffmpeg raw rgb24 frames": ("-f", "rawvideo", "-pix_fmt", "rgb24", "-"),
        f"ffmpeg fps={args.fps:g} + scale={width}:{args.height}": (
            "-vf", f"fps={args.fps:g},scale={width}:{args.height}:flags=area",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ),
    }  # fmt: skip
    times = {
        name: min(time_ffmpeg(src, *output) for _ in range(args.repeats))
        for name, output in baselines.items()
    }
    builds = []
    for repeat in range(args.repeats):
        command = [
            sys.executable, __file__, "--src", str(src), "--child", str(workdir / f"run{repeat}"),
            "--height", str(args.height), "--fps", str(args.fps), "--workers", str(args.workers),
        ]  # fmt: skip
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        builds.append(json.loads(result.stdout.strip().splitlines()[-1]))
    best = min(builds, key=lambda b: b["seconds"])
    times["prepare_dataset (default flags)"] = best["seconds"]
    reference = times["ffmpeg raw rgb24 frames"]
    print("\n| step | wall s | source frames/s | vs ffmpeg raw rgb24 |")
    print("|---|---:|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {frames / seconds:.1f} | {reference / seconds:.2f}x |")
    print(
        f"\nprepare: {best['records']} records; peak RSS {max(b['peak_rss_mb'] for b in builds):.0f}"
        f" MB ({best['imported_rss_mb']:.0f} MB after imports), ffmpeg child peak RSS "
        f"{max(b['ffmpeg_peak_rss_mb'] for b in builds):.0f} MB"
    )
    return 0


if __name__ == "__main__":
    run(main, define_flags)
