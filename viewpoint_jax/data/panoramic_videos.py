"""The panoramic_videos TFDS dataset: its definition (`PanoramaConfig`, `PanoramicVideos`) and
how it is read (`open_data_source`); data/preparation.py builds it from a folder of footage.

The dataset is read back without TensorFlow: `open_data_source(data_dir, name, split)` (or
`tfds.data_source("panoramic_videos/<name>", data_dir=...)` once this module is imported). One
record per image or per video segment (long videos are cut into segments of at most
`max_frames` frames so a record stays small):

    frames      list of encoded RGB frames (PNG or JPEG bytes), decoded with OpenCV by the
                pipeline, so a random clip decodes only the frames it uses
    caption     str (bytes when read back)
    source      the file name from the JSONL; segment: int32 index of the segment in the file
    fps         float32: the stored frame rate (the resampling rate, else the source's; 0 for
                images); num_frames, height, width: int32; is_image: bool

`info.metadata["counts"][split]` holds the number of video segments and images per split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
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

from viewpoint_jax.common.fileio import atomic_directory
from viewpoint_jax.common.video_io import (
    STEREO_LAYOUTS,
)

DATASET_NAME = "panoramic_videos"


# The datasets of this package and the tools that write them (for error messages).
BUILD_TOOLS = {
    DATASET_NAME: "python -m viewpoint_jax.prepare_dataset",
    "panoramic_latents": "python -m viewpoint_jax.precompute_latents",
}


CAPTIONS_FILE = "captions.jsonl"
FRAME_FORMATS = ("png", "jpeg")


log = logging.getLogger(__name__)


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


@dataclasses.dataclass(eq=False)
class PanoramaConfig(tfds.core.BuilderConfig):
    """How a source folder becomes records.

    height: store frames at height x 2 height (None keeps the source size; the pipeline resizes
      anyway, a smaller store reads faster). fps: resample videos to this frame rate by timestamp
      (None keeps every source frame). stereo: "top-bottom" / "left-right" keeps the top / left
      eye of every file, "mono" none; None follows each file's stereo metadata (mono without).
      frame_format: "png" (lossless) or "jpeg". max_frames: longest video segment in one record.
      skip_unreadable: warn and skip files that preflight rejects or that fail to decode instead
      of failing the build.
    """

    height: int | None = None
    fps: float | None = None
    stereo: str | None = None
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
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.stereo is not None and self.stereo not in STEREO_LAYOUTS:
            raise ValueError(f"stereo must be one of {STEREO_LAYOUTS}, got {self.stereo!r}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"dataset name must be letters, digits and '_', got {self.name!r}")


class PanoramicVideos(tfds.core.GeneratorBasedBuilder):
    """ERP panoramic videos and images with captions, from a user folder.

    It describes the records (features, metadata) and reads built datasets; `prepare` builds
    them (sharded, parallel, resumable), not TFDS's `download_and_prepare`.
    """

    name = DATASET_NAME
    # TFDS looks for a checksums file next to the builder's code through `importlib_resources`
    # (not installed); this builder downloads nothing, so it has no code path to search.
    code_path = None
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIG_CLASS = PanoramaConfig
    BUILDER_CONFIGS: ClassVar[list] = []  # every dataset is a custom config named by the user

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
        raise ValueError(f"build {DATASET_NAME} datasets with {BUILD_TOOLS[DATASET_NAME]}")

    def _generate_examples(self):
        raise NotImplementedError  # never called: `_split_generators` refuses


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """Silences TFDS's chatter: absl warnings such as "Using custom data configuration" and the
    "Downloading and preparing dataset" banners it prints to stdout."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)


def make_builder(data_dir: str | os.PathLike, config: PanoramaConfig) -> PanoramicVideos:
    """The builder of `data_dir/panoramic_videos/<config.name>/1.0.0` (ArrayRecord)."""
    with quiet_tfds():
        return PanoramicVideos(data_dir=str(data_dir), config=config, file_format="array_record")


def build_atomically(
    make: Callable[[Path], tfds.core.DatasetBuilder],
    data_dir: str | os.PathLike,
    *,
    download_config: tfds.download.DownloadConfig | None = None,
) -> Path:
    """Runs `make(staging_data_dir).download_and_prepare()` and moves the result into `data_dir`
    in one rename (replacing the same name and version); returns the dataset's directory.
    TFDS's own bars (redrawn even in a log file) are off: the examples' generator reports its
    progress (`progress.Progress`)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    tfds.disable_progress_bar()
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=data_dir))
    try:
        with quiet_tfds():
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
