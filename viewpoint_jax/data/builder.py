"""TFDS builder for panoramic (ERP) videos and images from a folder the user prepares.

Source folder:

    DIR/captions.jsonl   one JSON object a line: {"file": "clip1.mp4", "caption": "...",
                         "split": "train"}  ("split" is optional, default "train"; "file" is
                         relative to DIR)
    DIR/clip1.mp4 ...    ERP videos (.mp4 .mov .mkv .avi .webm) and images (.png .jpg .jpeg
                         .webp .bmp), width = 2 x height

The dataset is written as ArrayRecord and read back without TensorFlow:
`open_data_source(data_dir, name, split)` (or `tfds.data_source("panoramic_videos/<name>",
data_dir=...)` once this module is imported). One record per image or per video segment (long
videos are cut into segments of at most `max_frames` frames so a record stays small):

    frames      list of encoded RGB frames (PNG or JPEG bytes), decoded with OpenCV by the
                pipeline, so a random clip decodes only the frames it uses
    caption     str (bytes when read back)
    source      the file name from the JSONL; segment: int32 index of the segment in the file
    fps         float32 (0 for images); num_frames, height, width: int32; is_image: bool

`info.metadata["counts"][split]` holds the number of video segments and images per split.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import tensorflow_datasets as tfds

from viewpoint_jax.io_utils import atomic_directory
from viewpoint_jax.video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES

DATASET_NAME = "panoramic_videos"
# The datasets of this package and the tools that write them (for error messages).
BUILD_TOOLS = {
    DATASET_NAME: "tools/prepare_dataset.py",
    "panoramic_latents": "tools/precompute_latents.py",
}
CAPTIONS_FILE = "captions.jsonl"
FRAME_FORMATS = ("png", "jpeg")
# ERP frames must be 2:1; a few pixels off (odd encoder sizes) is resized to exactly 2:1.
ASPECT_TOLERANCE = 0.02

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


def read_captions(src: str | os.PathLike, captions_file: str = CAPTIONS_FILE) -> list[Entry]:
    """Parses and checks the captions JSONL of a source folder.

    Raises ValueError naming the file and line of a bad line, a missing key, an unknown file type,
    a missing media file or a duplicate entry.
    """
    src = Path(src)
    path = src / captions_file
    if not path.is_file():
        raise ValueError(
            f"no captions file {path}: write one JSON object a line with 'file', 'caption'"
        )
    entries, seen = [], {}
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
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
            media = src / item["file"]
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


def _erp_size(height: int, width: int, target_height: int | None, where: str) -> tuple[int, int]:
    if abs(width / height - 2) > 2 * ASPECT_TOLERANCE:
        raise ValueError(f"{where}: not an ERP panorama, {width}x{height} is not 2:1")
    height = target_height or height
    return height, 2 * height


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB frame -> (height, width) = size; area averaging when shrinking."""
    if frame.shape[:2] == size:
        return frame
    shrink = size[0] < frame.shape[0]
    return cv2.resize(
        frame, size[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def encode_frame(frame: np.ndarray, frame_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """RGB uint8 (H, W, 3) -> PNG or JPEG bytes."""
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if frame_format == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError(f"could not encode a {frame.shape} frame as {frame_format}")
    return data.tobytes()


def decode_frame(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> RGB uint8 (H, W, 3); ValueError if the bytes are not an image."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"undecodable frame ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_frames(entry: Entry) -> tuple[Iterator[np.ndarray], float]:
    """Streams the RGB frames of an image or video (a video is never held whole in memory)."""
    if entry.is_image:
        image = cv2.imread(str(entry.path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{entry.where}: cannot decode the image")
        return iter([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)]), 0.0
    capture = cv2.VideoCapture(str(entry.path))
    if not capture.isOpened():
        raise ValueError(f"{entry.where}: OpenCV cannot open the video")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)

    def frames():
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    return frames(), fps


def _segments(entry: Entry, config: PanoramaConfig) -> Iterator[dict]:
    """Examples of one file: one for an image, one per `max_frames` segment of a video."""
    frames, fps = _read_frames(entry)
    size = None
    segment, encoded = 0, []

    def example():
        return {
            "frames": encoded,
            "caption": entry.caption,
            "source": entry.file,
            "segment": segment,
            "fps": fps,
            "num_frames": len(encoded),
            "height": size[0],
            "width": size[1],
            "is_image": entry.is_image,
        }

    for frame in frames:
        if size is None:
            size = _erp_size(frame.shape[0], frame.shape[1], config.height, entry.where)
        frame = resize_frame(frame, size)
        encoded.append(encode_frame(frame, config.frame_format, config.jpeg_quality))
        if len(encoded) == config.max_frames:
            yield example()
            segment, encoded = segment + 1, []
    if encoded:
        yield example()
    elif segment == 0:
        raise ValueError(f"{entry.where}: no decodable frames")


@dataclasses.dataclass(eq=False)
class PanoramaConfig(tfds.core.BuilderConfig):
    """How a source folder becomes records.

    height: resize frames to height x 2 height at build time (None keeps the source size; the
      pipeline resizes anyway, a smaller store reads faster). frame_format: "png" (lossless) or
      "jpeg". max_frames: longest video segment in one record. skip_unreadable: warn and skip
      files that cannot be decoded instead of failing the build.
    """

    height: int | None = None
    frame_format: str = "jpeg"
    jpeg_quality: int = 95
    max_frames: int = 256
    captions_file: str = CAPTIONS_FILE
    skip_unreadable: bool = False

    def __post_init__(self):
        if self.frame_format not in FRAME_FORMATS:
            raise ValueError(
                f"frame_format must be one of {FRAME_FORMATS}, got {self.frame_format!r}"
            )
        if self.height is not None and (self.height < 2 or self.height % 2):
            raise ValueError(f"height must be an even number of pixels, got {self.height}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"dataset name must be letters, digits and '_', got {self.name!r}")


class PanoramicVideos(tfds.core.GeneratorBasedBuilder):
    """ERP panoramic videos and images with captions, from a user folder (the manual dir)."""

    name = DATASET_NAME
    # TFDS looks for a checksums file next to the builder's code through `importlib_resources`
    # (not installed); this builder downloads nothing, so it has no code path to search.
    code_path = None
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIG_CLASS = PanoramaConfig
    BUILDER_CONFIGS: ClassVar[list] = []  # every dataset is a custom config named by the user
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put ERP videos/images and a {CAPTIONS_FILE} ({{'file': ..., 'caption': ...}} a line) in "
        "a folder and pass it as the manual dir (tools/prepare_dataset.py --src DIR)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
                "caption": tfds.features.Text(),
                "source": tfds.features.Text(),
                "segment": np.int32,
                "fps": np.float32,
                "num_frames": np.int32,
                "height": np.int32,
                "width": np.int32,
                "is_image": np.bool_,
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="Panoramic (equirectangular) videos and images with captions.",
            features=features,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        entries = read_captions(dl_manager.manual_dir, self.builder_config.captions_file)
        by_split = collections.defaultdict(list)
        for entry in entries:
            by_split[entry.split].append(entry)
        self.info.metadata["counts"] = {}
        return {split: self._generate_examples(split, items) for split, items in by_split.items()}

    def _generate_examples(self, split: str, entries: list[Entry]):
        counts = {"videos": 0, "video_segments": 0, "images": 0, "skipped_files": []}
        for entry in entries:
            try:
                examples = list(_segments(entry, self.builder_config))
            except ValueError as error:
                if not self.builder_config.skip_unreadable:
                    raise
                log.warning("skipping unreadable %s: %s", entry.where, error)
                counts["skipped_files"].append(entry.file)
                continue
            if entry.is_image:
                counts["images"] += 1
            else:
                counts["videos"] += 1
                counts["video_segments"] += len(examples)
            for example in examples:
                yield f"{entry.line}:{entry.file}#{example['segment']}", example
        self.info.metadata["counts"][split] = counts


def make_builder(data_dir: str | os.PathLike, name: str = "default", **config) -> PanoramicVideos:
    """A builder writing `data_dir/panoramic_videos/<name>/1.0.0` as ArrayRecord."""
    return PanoramicVideos(
        data_dir=str(data_dir),
        config=PanoramaConfig(name=name, **config),
        file_format="array_record",
    )


def prepare(
    src: str | os.PathLike,
    data_dir: str | os.PathLike,
    name: str = "default",
    *,
    progress: bool = True,
    **config,
) -> Path:
    """Builds the dataset of a source folder; returns its directory (with dataset_info.json).

    The build runs in a temporary data dir and its result replaces any dataset of the same name
    and version in one rename, so a failed build leaves the previous dataset untouched.
    """
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"source folder not found: {src}")
    read_captions(src, config.get("captions_file", CAPTIONS_FILE))  # fail before TFDS starts
    return build_atomically(
        lambda staging: make_builder(staging, name, **config),
        data_dir,
        download_config=tfds.download.DownloadConfig(manual_dir=str(src)),
        progress=progress,
    )


def build_atomically(
    make: Callable[[Path], tfds.core.DatasetBuilder],
    data_dir: str | os.PathLike,
    *,
    download_config: tfds.download.DownloadConfig | None = None,
    progress: bool = True,
) -> Path:
    """Runs `make(staging_data_dir).download_and_prepare()` and moves the result into `data_dir`
    in one rename (replacing the same name and version); returns the dataset's directory."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    if not progress:
        tfds.disable_progress_bar()
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=data_dir))
    try:
        builder = make(staging)
        builder.download_and_prepare(download_config=download_config)
        built = Path(builder.data_dir)
        out = Path(data_dir) / built.relative_to(staging)
        with atomic_directory(out, overwrite=True) as tmp:
            tmp.rmdir()
            os.replace(built, tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def dataset_dir(
    data_dir: str | os.PathLike, name: str = "default", dataset: str = DATASET_NAME
) -> Path:
    """The directory of a built dataset (the newest version); ValueError if there is none."""
    root = Path(data_dir) / dataset / name
    versions = sorted(
        (
            p
            for p in root.glob("*")
            if re.fullmatch(r"\d+\.\d+\.\d+", p.name) and (p / "dataset_info.json").is_file()
        ),
        key=lambda p: tuple(int(x) for x in p.name.split(".")),
    )
    if not versions:
        raise ValueError(
            f"no dataset {name!r} under {data_dir} (expected {root}/<version>/dataset_info.json); "
            f"build it with {BUILD_TOOLS.get(dataset, 'its tool')}"
        )
    return versions[-1]


def open_data_source(
    data_dir: str | os.PathLike,
    name: str = "default",
    split: str = "train",
    dataset: str = DATASET_NAME,
):
    """Random-access records of a split (`tfds` ArrayRecord data source; no TensorFlow).

    Every shard of the split is checked first (`check_shards`): a missing or truncated file is
    named here, not discovered as a reader crash in the middle of training.
    """
    builder = tfds.builder_from_directory(str(dataset_dir(data_dir, name, dataset)))
    if split not in builder.info.splits:
        raise ValueError(
            f"dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}"
        )
    check_shards(builder.info.splits[split])
    return builder.as_data_source(split=split)


def check_shards(split_info: Any) -> None:
    """Raises naming the file if a shard of the split (a tfds SplitInfo) is missing
    (FileNotFoundError) or does not hold the records the dataset info lists (ValueError: a
    truncated or overwritten file). Opening a shard reads only its footer and index."""
    from array_record.python.array_record_module import ArrayRecordReader

    paths = [Path(str(p)) for p in split_info.filepaths]
    for path, expected in zip(paths, split_info.shard_lengths, strict=True):
        if not path.is_file():
            raise FileNotFoundError(
                f"dataset shard {path} is missing ({len(paths)} shards listed for split "
                f"{split_info.name!r}): restore it or rebuild the dataset"
            )
        try:
            reader = ArrayRecordReader(str(path))
            try:
                count = reader.num_records()
            finally:
                reader.close()
        except Exception as error:  # the reader's errors are RuntimeError/ValueError by version
            raise ValueError(
                f"dataset shard {path} cannot be opened (truncated or corrupt: "
                f"{type(error).__name__}: {error}); restore it or rebuild the dataset"
            ) from None
        if count != expected:
            raise ValueError(
                f"dataset shard {path} holds {count} records, the dataset lists {expected}: "
                "truncated or replaced; restore it or rebuild the dataset"
            )


def as_text(value: Any) -> str:
    """A record's text field (bytes as ArrayRecord stores it, or str) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def split_captions(data_dir: str | os.PathLike, name: str, split: str) -> list[str]:
    """The distinct captions of a split, in record order."""
    source = open_data_source(data_dir, name, split)
    captions = (source[i]["caption"] for i in range(len(source)))
    return list(dict.fromkeys(as_text(c) for c in captions))


def split_counts(
    data_dir: str | os.PathLike, name: str = "default", dataset: str = DATASET_NAME
) -> dict[str, dict]:
    """Per-split counts written by a builder (here: videos, video_segments, images,
    skipped_files)."""
    path = dataset_dir(data_dir, name, dataset) / "metadata.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("counts", {})
