"""Panoramic (ERP) videos and images from a folder the user prepares -> the panoramic_videos
TFDS dataset (data/panoramic_videos.py).

Source folder:

    DIR/captions.jsonl   one JSON object a line: {"file": "clip1.mp4", "caption": "...",
                         "split": "train"}  ("split" is optional, default "train"; "file" is
                         relative to DIR)
    DIR/clip1.mp4 ...    ERP videos (.mp4 .mov .mkv .avi .webm) and images (.png .jpg .jpeg
                         .webp .bmp), width = 2 x height (of one eye, for stereo footage)

`prepare` builds it in three steps:

1. Preflight (`preflight`): every file is probed (ffprobe): size, frame rate, duration, codec,
   stereo layout, projection. Unreadable files and files that are not equirectangular (an
   EAC / cube-map projection in the metadata, or not 2:1 once one eye of a stereo layout is
   kept) are rejected with the reason, before anything is built.
2. Encoding: ffmpeg decodes each file, resampled by timestamp to `fps`, cropped to the top /
   left eye of a stereo layout and scaled to `height` x 2 `height` inside the decoder
   (video_io.decode_frames); frames arrive one at a time and are encoded (JPEG/PNG) into
   records at once, so memory holds one record, never a file. Each file becomes one ArrayRecord
   shard in `data_dir/panoramic_videos/<name>/.staging/`, named by the file and the settings and
   written atomically; `workers` files at a time. A rerun after a crash skips finished shards.
3. Assembly: the shards, in captions order, are linked into a fresh TFDS version directory with
   its dataset_info.json, which replaces any previous build in one rename.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

from viewpoint_jax.common import locks
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    check_writable,
)
from viewpoint_jax.common.progress import Progress
from viewpoint_jax.common.video_io import (
    IMAGE_SUFFIXES,
    STEREO_LAYOUTS,
    VIDEO_SUFFIXES,
    MediaInfo,
    UnreadableMediaError,
    decode_frames,
    probe_media,
)
from viewpoint_jax.data.panoramic_videos import (
    CAPTIONS_FILE,
    DATASET_NAME,
    PanoramaConfig,
    PanoramicVideos,
    encode_frame,
    make_builder,
    quiet_tfds,
)

# ERP frames must be 2:1; a few pixels off (odd encoder sizes) is resized to exactly 2:1.
ASPECT_TOLERANCE = 0.02


# Finished per-file shards of an unfinished build, inside data_dir/panoramic_videos/<name>/.
STAGING_DIR = ".staging"


# As TFDS writes ArrayRecord: one record per chunk, so any record reads on its own.
ARRAY_RECORD_OPTIONS = "group_size:1"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of the captions file."""

    path: Path
    file: str
    caption: str
    split: str
    line: int

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_SUFFIXES

    @property
    def where(self) -> str:
        return f"{self.file} ({CAPTIONS_FILE} line {self.line})"


def _media_path(src: Path, file: str, where: str, follow_links: bool) -> Path:
    """The media file a captions line names, which must lie inside `src`: no absolute path, no
    `..`, and (unless `follow_links`) no link inside `src` to a file outside it."""
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise ValueError(f"{where}: 'file' must be a path inside {src}, got {file!r}")
    media = src / file
    if not follow_links and not media.resolve().is_relative_to(src.resolve()):
        raise ValueError(
            f"{where}: {file!r} is a link to {media.resolve()}, outside {src} "
            "(pass --follow_links to read it)"
        )
    return media


def read_captions(
    src: str | os.PathLike, captions_file: str = CAPTIONS_FILE, follow_links: bool = False
) -> list[Entry]:
    """Parses and checks the captions JSONL of a source folder.

    Raises ValueError naming the file and line of a bad line, a missing key, an unknown file type,
    a missing media file, a file outside `src` (a link out of it only if `follow_links`) or a
    duplicate entry.
    """
    src = Path(src)
    path = src / captions_file
    if not path.is_file():
        raise ValueError(
            f"no captions file {path}: write one JSON object a line with 'file', 'caption'"
        )
    entries, seen = [], {}
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{where}: not UTF-8 (byte {error.object[error.start]:#x} at column "
                    f"{error.start + 1}); save the captions file as UTF-8"
                ) from None
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
            for key in ("file", "caption"):
                if not isinstance(item.get(key), str):
                    raise ValueError(f"{where}: missing or non-string key {key!r}")
            split = item.get("split", "train")
            if not isinstance(split, str) or not split.isidentifier():
                raise ValueError(f"{where}: 'split' must be a name like 'train', got {split!r}")
            media = _media_path(src, item["file"], where, follow_links)
            suffix = media.suffix.lower()
            if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                raise ValueError(
                    f"{where}: {item['file']!r} is neither a video {VIDEO_SUFFIXES} nor an image "
                    f"{IMAGE_SUFFIXES}"
                )
            if not media.is_file():
                raise ValueError(f"{where}: file not found: {media}")
            if item["file"] in seen:
                raise ValueError(
                    f"{where}: {item['file']!r} already listed on line {seen[item['file']]}"
                )
            seen[item["file"]] = number
            entries.append(Entry(media, item["file"], item["caption"], split, number))
    if not entries:
        raise ValueError(f"{path} lists no files")
    return entries


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    """A file preflight accepted, and how it is decoded.

    stereo: the layout whose top / left eye is kept. out_hw: stored (height, width), 2:1.
    fps: stored frame rate (0 for images).
    """

    entry: Entry
    media: MediaInfo
    stereo: str
    out_hw: tuple[int, int]
    fps: float

    @property
    def eye_hw(self) -> tuple[int, int]:
        """(height, width) of the kept eye in the source."""
        height, width = self.media.height, self.media.width
        if self.stereo == "top-bottom":
            return height // 2, width
        if self.stereo == "left-right":
            return height, width // 2
        return height, width

    @property
    def expected_frames(self) -> int:
        """Frames the build should store: duration x fps (1 for an image)."""
        if self.entry.is_image:
            return 1
        return max(1, round(self.media.duration * self.fps))


def plan_file(entry: Entry, media: MediaInfo, config: PanoramaConfig) -> PlannedFile:
    """Checks a probed file against the config; ValueError with the reason if it is refused."""
    if media.projection not in (None, "equirectangular"):
        hint = "; convert it with ffmpeg -vf v360=eac:e" if media.projection == "cubemap" else ""
        raise ValueError(
            f"not equirectangular: its metadata says {media.projection} projection{hint}"
        )
    stereo = config.stereo or media.stereo or "mono"
    if stereo not in STEREO_LAYOUTS:
        raise ValueError(f"unsupported stereo layout {stereo!r} in its metadata (pass --stereo)")
    plan = PlannedFile(entry, media, stereo, (0, 0), 0.0)
    height, width = plan.eye_hw
    if min(height, width) < 2 or abs(width / height - 2) > 2 * ASPECT_TOLERANCE:
        found = f"{media.width}x{media.height}"
        if stereo != "mono":
            found += f" ({stereo} stereo, one eye {width}x{height})"
        hint = ""
        if stereo == "mono" and height and abs(width / height - 1) <= 2 * ASPECT_TOLERANCE:
            hint = "; top-bottom stereo? pass --stereo top-bottom"
        elif stereo == "mono" and height and abs(width / height - 4) <= 2 * ASPECT_TOLERANCE:
            hint = "; left-right stereo? pass --stereo left-right"
        raise ValueError(f"not equirectangular: {found} is not 2:1{hint}")
    fps = 0.0 if entry.is_image else float(config.fps or media.fps)
    if not entry.is_image and not fps > 0:
        raise ValueError("no frame rate in its metadata (pass --fps)")
    out_height = config.height or height
    return dataclasses.replace(plan, out_hw=(out_height, 2 * out_height), fps=fps)


@dataclasses.dataclass(frozen=True)
class Preflight:
    """The files of a source folder: accepted (`planned`) and rejected with reasons."""

    planned: list[PlannedFile]
    rejected: list[tuple[Entry, str]]

    def summary(self) -> str:
        """Counts, durations, resolutions, frame rates, stereo layouts and rejected files."""

        def tally(values) -> str:
            counts = collections.Counter(values)
            return ", ".join(f"{value} ({count})" for value, count in counts.most_common())

        videos = [p for p in self.planned if not p.entry.is_image]
        images = [p for p in self.planned if p.entry.is_image]
        lines = [
            f"preflight: {len(self.planned) + len(self.rejected)} files, {len(videos)} videos "
            f"and {len(images)} images accepted, {len(self.rejected)} rejected"
        ]
        splits = dict.fromkeys(p.entry.split for p in self.planned)
        for split in splits:
            in_split = [p for p in self.planned if p.entry.split == split]
            split_videos = [p for p in in_split if not p.entry.is_image]
            seconds = sum(p.media.duration for p in split_videos)
            frames = sum(p.expected_frames for p in split_videos)
            lines.append(
                f"  {split}: {len(split_videos)} videos ({seconds:.1f} s, ~{frames} frames "
                f"stored), {len(in_split) - len(split_videos)} images"
            )
        if self.planned:
            lines += [
                f"  resolutions: {tally(f'{p.media.width}x{p.media.height}' for p in self.planned)}",
                f"  codecs: {tally(p.media.codec for p in self.planned)}",
                f"  stereo: {tally(p.stereo for p in self.planned)}",
                f"  stored as: {tally(f'{p.out_hw[1]}x{p.out_hw[0]}' for p in self.planned)}",
            ]
        if videos:
            lines.append(
                f"  frame rates: {tally(f'{p.media.fps:g}' for p in videos)} -> stored at "
                f"{tally(f'{p.fps:g}' for p in videos)} fps"
            )
        upscaled = [p for p in self.planned if p.out_hw[0] > p.eye_hw[0]]
        if upscaled:
            lines.append(f"  upscaled: {len(upscaled)} files smaller than their stored size")
        if self.rejected:
            lines.append("  rejected:")
            lines += [f"    {entry.where}: {reason}" for entry, reason in self.rejected]
        return "\n".join(lines)

    def error(self) -> str:
        """One line per rejected file, for refusing the build."""
        if len(self.rejected) == 1:
            ((entry, reason),) = self.rejected
            return f"{entry.where}: {reason}"
        listed = "\n".join(f"  {entry.where}: {reason}" for entry, reason in self.rejected)
        return (
            f"{len(self.rejected)} files rejected (fix or drop them, or skip them with "
            f"--skip_unreadable):\n{listed}"
        )


def preflight(
    src: str | os.PathLike,
    config: PanoramaConfig | None = None,
    workers: int = 1,
    follow_links: bool = False,
) -> Preflight:
    """Reads the captions of a source folder and probes every file (`workers` at a time)."""
    config = config or PanoramaConfig(name="default")
    entries = read_captions(src, config.captions_file, follow_links)

    def check(entry: Entry) -> PlannedFile | str:
        try:
            return plan_file(entry, probe_media(entry.path), config)
        except UnreadableMediaError as error:
            return f"unreadable: {error.reason}"
        except ValueError as error:
            return str(error)

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(check, entries))
    return Preflight(
        planned=[r for r in results if isinstance(r, PlannedFile)],
        rejected=[(e, r) for e, r in zip(entries, results) if isinstance(r, str)],
    )


class _Cancelled(Exception):
    """Raised in a worker when the build stops (another file failed, or an interrupt)."""


def _examples(plan: PlannedFile, config: PanoramaConfig, threads: int, stop) -> Iterator[dict]:
    """Records of one file: one for an image, one per `max_frames` segment of a video.

    Frames come one at a time from ffmpeg and are encoded at once, so a segment holds
    `max_frames` encoded frames and no decoded one.
    """
    entry = plan.entry
    frames = decode_frames(
        entry.path,
        plan.out_hw,
        fps=None if entry.is_image or config.fps is None else plan.fps,
        stereo=plan.stereo,
        threads=threads,
    )
    segment, encoded = 0, []

    def example():
        return {
            "frames": encoded,
            "caption": entry.caption,
            "source": entry.file,
            "segment": segment,
            "fps": plan.fps,
            "num_frames": len(encoded),
            "height": plan.out_hw[0],
            "width": plan.out_hw[1],
            "is_image": entry.is_image,
        }

    with contextlib.closing(frames):
        for frame in frames:
            if stop.is_set():
                raise _Cancelled
            encoded.append(encode_frame(frame, config.frame_format, config.jpeg_quality))
            if entry.is_image:
                break
            if len(encoded) == config.max_frames:
                yield example()
                segment, encoded = segment + 1, []
    if encoded:
        yield example()
    elif segment == 0:
        raise ValueError(f"{entry.where}: no decodable frames")


def _encode_file(
    plan: PlannedFile,
    shard: Path,
    config: PanoramaConfig,
    features: tfds.features.FeaturesDict,
    threads: int,
    stop,
) -> dict:
    """Writes the records of one file to `shard` (ArrayRecord), then its summary `shard.json`.

    Both files appear complete or not at all, the summary last: it marks the shard finished.
    """
    records = frames = 0
    with atomic_path(shard) as tmp:
        writer = ArrayRecordWriter(str(tmp), ARRAY_RECORD_OPTIONS)
        try:
            for example in _examples(plan, config, threads, stop):
                writer.write(features.serialize_example(example))
                records, frames = records + 1, frames + example["num_frames"]
        finally:
            writer.close()
    if not plan.entry.is_image and frames < plan.expected_frames // 2:
        log.warning(
            "%s: decoded %d frames, expected about %d: is the file cut off?",
            plan.entry.where, frames, plan.expected_frames,
        )  # fmt: skip
    summary = {
        "file": plan.entry.file,
        "records": records,
        "frames": frames,
        "bytes": shard.stat().st_size,
    }
    atomic_write_text(shard.with_suffix(".json"), json.dumps(summary))
    return summary


def _shard_key(plan: PlannedFile, config: PanoramaConfig) -> str:
    """Names a file's shard by everything its records depend on: a changed source, caption or
    setting gets a new shard, an unchanged one is reused by a resumed build."""
    stat = plan.entry.path.stat()
    identity = {
        "file": plan.entry.file,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "caption": plan.entry.caption,
        "split": plan.entry.split,
        "stereo": plan.stereo,
        "out_hw": plan.out_hw,
        "fps": plan.fps,
        "resample": config.fps is not None,
        "frame_format": config.frame_format,
        "jpeg_quality": config.jpeg_quality,
        "max_frames": config.max_frames,
        "version": str(PanoramicVideos.VERSION),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:24]


def prepare(
    src: str | os.PathLike,
    data_dir: str | os.PathLike,
    name: str = "default",
    *,
    workers: int = 1,
    progress: bool = True,
    follow_links: bool = False,
    **config,
) -> Path:
    """Builds the dataset of a source folder; returns its directory (with dataset_info.json).

    Preflight first: any rejected file stops the build before it starts (unless
    skip_unreadable). Then each file is encoded into its own shard in a staging folder
    (`data_dir/panoramic_videos/<name>/.staging`), `workers` files at a time; a rerun after a
    crash reuses the finished shards. Last the shards are assembled into a dataset that
    replaces any previous one of the same name and version in one rename. `config`: the fields
    of `PanoramaConfig`. `progress` prints the preflight summary and the files encoded
    (`progress.Progress`: a bar on a terminal, else a line per file). `follow_links`: captions
    may name links inside `src` to files outside it.

    `data_dir` is checked for writability first and locked for the build (a second build into
    it is refused, naming the first: `common.locks`); a full disk during the build is a
    UserError naming the path and the files kept for a rerun.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"source folder not found: {src}")
    config = PanoramaConfig(name=name, **config)
    check_writable(data_dir)
    with locks.hold(data_dir, "prepare_dataset", "--out"):
        return _prepare(src, Path(data_dir), config, workers, progress, follow_links)


def _no_space(error: Exception) -> bool:
    """Whether a write failed for want of room (or of a writable disk): ENOSPC as an OSError,
    or in the text of the RuntimeError the ArrayRecord writer raises."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    text = str(error)
    return any(s in text for s in ("No space left", "Disk quota", "Read-only file system"))


def _prepare(
    src: Path,
    data_dir: Path,
    config: PanoramaConfig,
    workers: int,
    progress: bool,
    follow_links: bool,
) -> Path:
    """`prepare` with `data_dir` locked."""
    report = print if progress else lambda *args: None
    check = preflight(src, config, workers, follow_links)
    report(check.summary())
    if check.rejected and not config.skip_unreadable:
        raise ValueError(check.error())
    if not check.planned:
        raise ValueError(f"no readable files in {src}: nothing to build")

    version_dir = data_dir / DATASET_NAME / config.name / str(PanoramicVideos.VERSION)
    staging = version_dir.parent / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    features = make_builder(data_dir, config).info.features
    jobs = [(plan, staging / f"{_shard_key(plan, config)}.array_record") for plan in check.planned]
    summaries = {
        shard: json.loads(shard.with_suffix(".json").read_text())
        for _, shard in jobs
        if shard.with_suffix(".json").is_file()
    }
    if summaries:
        report(f"resuming: {len(summaries)} of {len(jobs)} files already encoded")
    files = Progress(
        len(jobs), "encoding", unit="file", every=1, initial=len(summaries), enabled=progress
    )
    try:
        with files:
            _encode_files(jobs, summaries, config, features, workers, files)
        out = _assemble(version_dir, config, check, jobs, summaries)
    except (OSError, RuntimeError) as error:
        if not _no_space(error):
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"writing under {data_dir} failed ({reason}); the {len(summaries)} files encoded "
            f"so far are kept in {staging} and a rerun resumes from them"
        ) from None
    shutil.rmtree(staging, ignore_errors=True)
    return out


def _encode_files(
    jobs: list,
    summaries: dict,
    config: PanoramaConfig,
    features: Any,
    workers: int,
    files: Progress,
) -> None:
    """Encodes every job whose shard is not finished yet, `workers` files at a time; adds each
    file's summary to `summaries` (a skipped file's too, when config.skip_unreadable) and
    counts it in `files`."""
    # Files are decoded `workers` at a time; ffmpeg's own threads share the cores among them.
    threads = 0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {
            pool.submit(_encode_file, plan, shard, config, features, threads, stop): (plan, shard)
            for plan, shard in jobs
            if shard not in summaries
        }
        try:
            for future in concurrent.futures.as_completed(futures):
                plan, shard = futures[future]
                try:
                    summary = future.result()
                except UnreadableMediaError as error:
                    if not config.skip_unreadable:
                        raise ValueError(f"{plan.entry.where}: {error.reason}") from None
                    summary = {"file": plan.entry.file, "skipped": error.reason}
                except ValueError as error:
                    if not config.skip_unreadable:
                        raise
                    summary = {"file": plan.entry.file, "skipped": str(error)}
                if "skipped" in summary:
                    log.warning("skipping %s: %s", plan.entry.where, summary["skipped"])
                    atomic_write_text(shard.with_suffix(".json"), json.dumps(summary))
                summaries[shard] = summary
                files.update(
                    1,
                    f"{plan.entry.file}: "
                    + (
                        f"skipped ({summary['skipped']})"
                        if "skipped" in summary
                        else f"{summary['records']} records, {summary['frames']} frames"
                    ),
                )
        except BaseException:
            stop.set()  # running workers stop at their next frame; queued ones never start
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy, and the staged shard survives until the build is done)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _assemble(
    version_dir: Path,
    config: PanoramaConfig,
    check: Preflight,
    jobs: list[tuple[PlannedFile, Path]],
    summaries: dict[Path, dict],
) -> Path:
    """Puts the finished shards, in captions order, into a TFDS dataset directory (atomically)."""
    splits = dict.fromkeys(entry.split for entry in [p.entry for p in check.planned])
    counts = {
        split: {"videos": 0, "video_segments": 0, "images": 0, "skipped_files": []}
        for split in dict.fromkeys([*splits, *(entry.split for entry, _ in check.rejected)])
    }
    for entry, _ in check.rejected:
        counts[entry.split]["skipped_files"].append(entry.file)
    shards_by_split = collections.defaultdict(list)
    for plan, shard in jobs:
        summary, count = summaries[shard], counts[plan.entry.split]
        if "skipped" in summary:
            count["skipped_files"].append(plan.entry.file)
            continue
        count["images" if plan.entry.is_image else "videos"] += 1
        if not plan.entry.is_image:
            count["video_segments"] += summary["records"]
        shards_by_split[plan.entry.split].append((shard, summary))
    if not shards_by_split:
        raise ValueError("every file was skipped: nothing to build")
    with atomic_directory(version_dir, overwrite=True) as tmp:
        split_infos = []
        for split, shards in shards_by_split.items():
            template = tfds.core.ShardedFileTemplate(
                data_dir=tmp, dataset_name=DATASET_NAME, split=split, filetype_suffix="array_record"
            )
            for index, (shard, _) in enumerate(shards):
                target = template.sharded_filepath(shard_index=index, num_shards=len(shards))
                _link_or_copy(shard, Path(target))
            split_infos.append(
                tfds.core.SplitInfo(
                    name=split,
                    shard_lengths=[summary["records"] for _, summary in shards],
                    num_bytes=sum(summary["bytes"] for _, summary in shards),
                    filename_template=template,
                )
            )
        builder = make_builder(version_dir.parents[2], config)
        builder.info.set_splits(tfds.core.SplitDict(split_infos))
        builder.info.metadata["counts"] = counts
        with quiet_tfds():
            builder.info.write_to_directory(tmp)
    return version_dir
