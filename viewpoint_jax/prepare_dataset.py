"""Builds a panoramic dataset (ArrayRecord, read without TensorFlow) from a folder you prepare.

    viewpoint-prepare --src DIR --out DATA_DIR [--name NAME] [--height 512] [--fps 16]
        [--stereo top-bottom|left-right|mono] [--workers N] [--dry_run]

DIR holds ERP videos (.mp4 ...) and images (.png/.jpg ...) and captions.jsonl with one
{"file": "clip1.mp4", "caption": "...", "split": "train"} a line ("split" optional). Every file is
probed first (the preflight summary; --dry_run stops there). Frames are stored at 512 x 1024 and
videos at 16 fps by default (configs/wan.py's ERP size, our choice: docs/paper-recipe.md; Wan's frame rate). A build that stops
(crash, kill) resumes where it was when run again. Training reads it with
config.data.data_dir = DATA_DIR and config.data.name = NAME.

(`python -m viewpoint_jax.prepare_dataset` is the same command.)
"""

from __future__ import annotations

import time

from absl import flags

from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.common.video_io import STEREO_LAYOUTS
from viewpoint_jax.data import panoramic_videos, preparation


def define_flags() -> None:
    flags.DEFINE_string("src", None, "folder with the media and captions.jsonl", required=True)
    flags.DEFINE_string("out", None, "TFDS data dir to write", required=True)
    flags.DEFINE_string("name", "default", "dataset name (config.data.name)")
    flags.DEFINE_string("captions", panoramic_videos.CAPTIONS_FILE, "JSONL file inside --src")
    flags.DEFINE_integer("height", 512, "store frames at H x 2H (0: source size)", lower_bound=0)
    flags.DEFINE_float("fps", 16.0, "resample videos (0: every frame)", lower_bound=0)
    flags.DEFINE_enum(
        "stereo",
        None,
        STEREO_LAYOUTS,
        "keep the top / left eye of every file (default: each file's stereo metadata)",
    )
    flags.DEFINE_enum("format", "jpeg", panoramic_videos.FRAME_FORMATS, "how frames are stored")
    flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of stored frames", 1, 100)
    flags.DEFINE_integer("max_frames", 256, "longest segment a record", lower_bound=1)
    flags.DEFINE_integer("workers", 1, "files encoded at once", lower_bound=1)
    flags.DEFINE_bool("skip_unreadable", False, "skip rejected or undecodable files")
    flags.DEFINE_bool("dry_run", False, "print the preflight summary only")
    flags.DEFINE_bool(
        "follow_links",
        False,
        "read links inside --src that point outside it (else such a captions line is refused)",
    )


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    values = flags.FLAGS
    config = dict(
        captions_file=values.captions,
        height=values.height or None,
        fps=values.fps or None,
        stereo=values.stereo,
        frame_format=values.format,
        jpeg_quality=values.jpeg_quality,
        max_frames=values.max_frames,
        skip_unreadable=values.skip_unreadable,
    )
    if values.dry_run:
        check = preparation.preflight(
            values.src,
            panoramic_videos.PanoramaConfig(name=values.name, **config),
            values.workers,
            follow_links=values.follow_links,
        )
        print(check.summary())
        return 0
    start = time.time()
    out = preparation.prepare(
        values.src, values.out, values.name, workers=values.workers,
        follow_links=values.follow_links, **config,
    )  # fmt: skip
    counts = panoramic_videos.split_counts(values.out, values.name)
    for split, count in sorted(counts.items()):
        print(
            f"{split}: {count['videos']} videos ({count['video_segments']} records), "
            f"{count['images']} images, {len(count['skipped_files'])} skipped"
        )
    print(f"wrote {out} in {time.time() - start:.1f} s")
    return 0


def console_main() -> None:
    """The `viewpoint-prepare` console script."""
    run(main, define_flags)


if __name__ == "__main__":
    console_main()
