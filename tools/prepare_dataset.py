"""Builds a panoramic dataset (ArrayRecord, read without TensorFlow) from a folder you prepare.

    python tools/prepare_dataset.py --src DIR --out DATA_DIR [--name NAME] [--height 512]
        [--fps 16] [--stereo top-bottom|left-right|mono] [--workers N] [--dry-run]

DIR holds ERP videos (.mp4 ...) and images (.png/.jpg ...) and captions.jsonl with one
{"file": "clip1.mp4", "caption": "...", "split": "train"} a line ("split" optional). Every file is
probed first (the preflight summary; --dry-run stops there). Frames are stored at 512 x 1024 and
videos at 16 fps by default (the paper's ERP size, Wan's frame rate). A build that stops
(crash, kill) resumes where it was when run again. Training reads it with
config.data.data_dir = DATA_DIR and config.data.name = NAME.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from viewpoint_jax.cli import run_main
from viewpoint_jax.data import builder
from viewpoint_jax.video_io import STEREO_LAYOUTS


def optional(kind):
    """An argparse type where 0 means None (keep the source's height or frame rate)."""
    return lambda text: kind(text) or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="folder with the media and captions.jsonl")
    parser.add_argument("--out", required=True, help="TFDS data dir to write")
    parser.add_argument("--name", default="default", help="dataset name (config.data.name)")
    parser.add_argument("--captions", default=builder.CAPTIONS_FILE, help="JSONL file inside --src")
    parser.add_argument(
        "--height", type=optional(int), default=512, help="store frames at H x 2H (0: source size)"
    )
    parser.add_argument(
        "--fps", type=optional(float), default=16.0, help="resample videos (0: every frame)"
    )
    parser.add_argument(
        "--stereo",
        choices=STEREO_LAYOUTS,
        default=None,
        help="keep the top / left eye of every file (default: each file's stereo metadata)",
    )
    parser.add_argument("--format", choices=builder.FRAME_FORMATS, default="jpeg")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--max-frames", type=int, default=256, help="longest segment a record")
    parser.add_argument("--workers", type=int, default=1, help="files encoded at once")
    parser.add_argument(
        "--skip-unreadable", action="store_true", help="skip rejected or undecodable files"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the preflight summary only")
    args = parser.parse_args()
    config = dict(
        captions_file=args.captions,
        height=args.height,
        fps=args.fps,
        stereo=args.stereo,
        frame_format=args.format,
        jpeg_quality=args.jpeg_quality,
        max_frames=args.max_frames,
        skip_unreadable=args.skip_unreadable,
    )
    if args.dry_run:
        check = builder.preflight(
            args.src, builder.PanoramaConfig(name=args.name, **config), args.workers
        )
        print(check.summary())
        return
    start = time.time()
    out = builder.prepare(args.src, args.out, args.name, workers=args.workers, **config)
    counts = builder.split_counts(args.out, args.name)
    for split, count in sorted(counts.items()):
        print(
            f"{split}: {count['videos']} videos ({count['video_segments']} records), "
            f"{count['images']} images, {len(count['skipped_files'])} skipped"
        )
    print(f"wrote {out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    run_main(main)
