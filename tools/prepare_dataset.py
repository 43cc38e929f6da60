"""Builds a panoramic dataset (ArrayRecord, read without TensorFlow) from a folder you prepare.

    python tools/prepare_dataset.py --src DIR --out DATA_DIR [--name NAME] [--height 512]

DIR holds ERP videos (.mp4 ...) and images (.png/.jpg ...) and captions.jsonl with one
{"file": "clip1.mp4", "caption": "...", "split": "train"} a line ("split" optional). Training reads
it with config.data.data_dir = DATA_DIR and config.data.name = NAME.
"""

from __future__ import annotations

import argparse
import time

from viewpoint_jax.cli import run_main
from viewpoint_jax.data import builder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="folder with the media and captions.jsonl")
    parser.add_argument("--out", required=True, help="TFDS data dir to write")
    parser.add_argument("--name", default="default", help="dataset name (config.data.name)")
    parser.add_argument("--captions", default=builder.CAPTIONS_FILE, help="JSONL file inside --src")
    parser.add_argument("--height", type=int, default=None, help="store frames at H x 2H")
    parser.add_argument("--format", choices=builder.FRAME_FORMATS, default="jpeg")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--max-frames", type=int, default=256, help="longest segment a record")
    parser.add_argument(
        "--skip-unreadable", action="store_true", help="warn and skip undecodable files"
    )
    args = parser.parse_args()
    start = time.time()
    out = builder.prepare(
        args.src,
        args.out,
        args.name,
        captions_file=args.captions,
        height=args.height,
        frame_format=args.format,
        jpeg_quality=args.jpeg_quality,
        max_frames=args.max_frames,
        skip_unreadable=args.skip_unreadable,
    )
    counts = builder.split_counts(args.out, args.name)
    for split, count in sorted(counts.items()):
        print(
            f"{split}: {count['videos']} videos ({count['video_segments']} records), "
            f"{count['images']} images, {len(count['skipped_files'])} skipped"
        )
    print(f"wrote {out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    run_main(main)
