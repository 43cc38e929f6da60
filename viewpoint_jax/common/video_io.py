"""Reading and writing images and videos (RGB, uint8, channels last). I/O stays at this edge."""

from __future__ import annotations

import dataclasses
import fractions
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from viewpoint_jax.common.fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")

log = logging.getLogger(__name__)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB uint8 `(H, W, 3)`; ValueError naming the file if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}: missing, unreadable or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_video(
    path: str | os.PathLike, start: int = 0, num_frames: int | None = None, stride: int = 1
) -> tuple[np.ndarray, float]:
    """Reads frames `start, start + stride, ...` of a video as RGB uint8 `(F, H, W, 3)` and fps.

    An image file reads as a 1-frame video. Raises ValueError naming the file if it cannot be
    decoded or holds no frames in the requested range.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)[None], 0.0
    if not path.exists():
        raise ValueError(f"cannot read video {path}: no such file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot read video {path}: OpenCV could not open it")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        index = 0
        while num_frames is None or len(frames) < num_frames:
            ok, frame = capture.read()
            if not ok:
                break
            if index % stride == 0:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"cannot read video {path}: no decodable frames from frame {start}")
    wanted_more = num_frames is None or len(frames) < num_frames
    if wanted_more and start + index < declared:
        # A cut-off file whose index survived (moov first) still opens: say what is missing.
        log.warning(
            "%s: decoding stopped at frame %d of the %d its header declares (truncated file?)",
            path,
            start + index,
            declared,
        )
    return np.stack(frames), fps


def frame_count(path: str | os.PathLike) -> int:
    """The number of frames of a video as its container states it (1 for an image file);
    ValueError naming the file if it cannot be opened."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return 1
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot read video {path}: OpenCV could not open it")
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def to_uint8(video: np.ndarray) -> np.ndarray:
    """Pixels in [-1, 1] (any shape; numpy or jax) -> uint8, rounded, out-of-range clipped."""
    return np.round((np.clip(np.asarray(video, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(
        np.uint8
    )


def encode_png(image: np.ndarray) -> bytes:
    """An RGB uint8 `(H, W, 3)` image as PNG bytes."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as PNG")
    return data.tobytes()


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes an RGB uint8 `(H, W, 3)` image as a PNG, atomically."""
    try:
        data = encode_png(image)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: float, spherical: bool = False, crf: int = 18
) -> None:
    """Writes RGB uint8 frames `(F, H, W, 3)` as an H.264 MP4 (yuv420p), atomically.

    Odd sizes are padded by repeating the last row/column (yuv420p needs even sides). With
    `spherical`, the video is tagged as a monoscopic equirectangular 360 video (Spherical Video
    V1 and V2 metadata).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        height, width = height + height % 2, width + width % 2
    with atomic_path(path) as tmp:
        command = [
            ffmpeg_exe(),
            "-y",
            "-loglevel", "error",
            "-f", "rawvideo",
            "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}",
            "-r", f"{fps:.6g}",
            "-i", "-",
            "-c:v", "libx264",
            "-preset", "medium",
            "-crf", str(crf),
            "-pix_fmt", "yuv420p",
            "-f", "mp4",
            str(tmp),
        ]  # fmt: skip
        result = subprocess.run(
            command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False
        )
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"ffmpeg failed writing {path}: {message}")
        if spherical:
            tmp.write_bytes(add_spherical_metadata(tmp.read_bytes()))


# Spherical Video V1 (Google): an XML document in a `uuid` box of the video track.
SPHERICAL_V1_UUID = bytes.fromhex("ffcc8263f8554a938814587a02521fdd")
SPHERICAL_V1_XML = (
    '<?xml version="1.0"?>'
    '<rdf:SphericalVideo xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
    'xmlns:GSpherical="http://ns.google.com/videos/1.0/spherical/">'
    "<GSpherical:Spherical>true</GSpherical:Spherical>"
    "<GSpherical:Stitched>true</GSpherical:Stitched>"
    "<GSpherical:StitchingSoftware>viewpoint_jax</GSpherical:StitchingSoftware>"
    "<GSpherical:ProjectionType>equirectangular</GSpherical:ProjectionType>"
    "</rdf:SphericalVideo>"
)

# Boxes whose payload is only child boxes, and the bytes of fields before the children of those
# that have some (stsd: version/flags + entry count; visual sample entries: 78 bytes of fields).
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}
_VISUAL_SAMPLE_ENTRIES = {b"avc1", b"avc3", b"hvc1", b"hev1", b"vp09", b"av01", b"mp4v"}


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def _full_box(kind: bytes, payload: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(kind, bytes([version]) + flags.to_bytes(3, "big") + payload)


def spherical_v2_boxes(source: str = "viewpoint_jax") -> bytes:
    """`st3d` (monoscopic) + `sv3d` (equirectangular, full sphere, no pose) boxes, V2 RFC."""
    st3d = _full_box(b"st3d", bytes([0]))
    svhd = _full_box(b"svhd", source.encode() + b"\0")
    prhd = _full_box(b"prhd", bytes(12))  # yaw, pitch, roll = 0 (16.16 fixed point)
    equi = _full_box(b"equi", bytes(16))  # projection bounds top, bottom, left, right = 0
    return st3d + _box(b"sv3d", svhd + _box(b"proj", prhd + equi))


def _iter_boxes(data: bytes, start: int, end: int):
    """Yields (type, box start, payload start, box end) of the boxes laid end to end in a range."""
    offset = start
    while offset + 8 <= end:
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        header = 8
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
            header = 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise ValueError(f"malformed MP4: box {kind!r} at byte {offset} has size {size}")
        yield kind, offset, offset + header, offset + size
        offset += size


def _rebuild(data: bytes, start: int, end: int, append) -> bytes:
    """Re-serialises the boxes in `data[start:end]`, descending into containers and sample
    descriptions; `append(kind, box_start)` returns bytes to add after a box's children. Box
    sizes are recomputed."""

    def walk(start: int, end: int, parent: bytes) -> bytes:
        out = []
        for kind, box_start, payload_start, box_end in _iter_boxes(data, start, end):
            if kind in _CONTAINERS:
                fields = 0
            elif kind == b"stsd":
                fields = 8
            elif kind in _VISUAL_SAMPLE_ENTRIES and parent == b"stsd":
                fields = 78
            else:
                out.append(data[box_start:box_end])
                continue
            prefix = data[payload_start : payload_start + fields]
            body = walk(payload_start + fields, box_end, kind)
            out.append(_box(kind, prefix + body + append(kind, box_start)))
        return b"".join(out)

    return walk(start, end, b"")


def _handler_type(data: bytes, trak_payload: int, trak_end: int) -> bytes | None:
    for kind, _, payload, end in _iter_boxes(data, trak_payload, trak_end):
        if kind == b"mdia":
            for sub, _, sub_payload, _ in _iter_boxes(data, payload, end):
                if sub == b"hdlr":
                    return data[sub_payload + 8 : sub_payload + 12]
    return None


def _shift_chunk_offsets(moov: bytes, delta: int) -> bytes:
    """Adds `delta` to every chunk offset (stco/co64) of a serialised moov box."""
    buffer = bytearray(moov)

    def walk(start: int, end: int) -> None:
        for kind, _, payload, box_end in _iter_boxes(moov, start, end):
            if kind in _CONTAINERS:
                walk(payload, box_end)
            elif kind in (b"stco", b"co64"):
                count = int.from_bytes(moov[payload + 4 : payload + 8], "big")
                width = 4 if kind == b"stco" else 8
                for k in range(count):
                    at = payload + 8 + k * width
                    value = int.from_bytes(moov[at : at + width], "big") + delta
                    buffer[at : at + width] = value.to_bytes(width, "big")

    walk(0, len(moov))
    return bytes(buffer)


def add_spherical_metadata(mp4: bytes) -> bytes:
    """Returns the MP4 bytes with the video track tagged as a 360 equirectangular video.

    Adds Spherical Video V2 `st3d`/`sv3d` boxes to the video sample entry (read by ffmpeg,
    YouTube, most players) and the V1 XML `uuid` box to the video track (older readers).
    Chunk offsets are fixed up when `moov` precedes `mdat`.
    """
    top = list(_iter_boxes(mp4, 0, len(mp4)))
    moovs = [box for box in top if box[0] == b"moov"]
    if len(moovs) != 1:
        raise ValueError("not an MP4 file with one moov box")
    _, moov_start, moov_payload, moov_end = moovs[0]
    video = [
        (start, end)
        for kind, start, payload, end in _iter_boxes(mp4, moov_payload, moov_end)
        if kind == b"trak" and _handler_type(mp4, payload, end) == b"vide"
    ]
    if not video:
        raise ValueError("the MP4 file has no video track")
    trak_start, trak_end = video[0]

    def append(kind: bytes, box_start: int) -> bytes:
        if not trak_start <= box_start < trak_end:
            return b""
        if kind == b"trak":
            return _box(b"uuid", SPHERICAL_V1_UUID + SPHERICAL_V1_XML.encode())
        if kind in _VISUAL_SAMPLE_ENTRIES:
            return spherical_v2_boxes()
        return b""

    new_moov = _rebuild(mp4, moov_start, moov_end, append)
    if any(kind == b"mdat" and start > moov_start for kind, start, _, _ in top):
        new_moov = _shift_chunk_offsets(new_moov, len(new_moov) - (moov_end - moov_start))
    return mp4[:moov_start] + new_moov + mp4[moov_end:]


# --- Probing and decoding with ffmpeg -----------------------------------------------------------
# Panoramic footage is 4K-8K: the ffmpeg binary (imageio-ffmpeg's, or $IMAGEIO_FFMPEG_EXE) picks
# frames by timestamp, crops the stereo eye and shrinks each frame inside the decoder, so only
# small RGB frames cross the pipe. Metadata comes from ffprobe when installed, else from the
# stream summary ffmpeg prints.

STEREO_LAYOUTS = ("mono", "top-bottom", "left-right")
# Stereo 3D side data types (ffprobe / ffmpeg) and Matroska `stereo_mode` tags -> layout.
_STEREO_NAMES = {
    "2d": "mono",
    "mono": "mono",
    "top and bottom": "top-bottom",
    "top_bottom": "top-bottom",
    "bottom_top": "top-bottom",
    "side by side": "left-right",
    "left_right": "left-right",
    "right_left": "left-right",
}
# The filter that keeps the first eye (top / left) of a stereo layout.
_EYE_CROPS = {"top-bottom": "crop=iw:ih/2:0:0", "left-right": "crop=iw/2:ih:0:0"}


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What the container says about the first video stream of a file.

    width, height: pixels of the whole frame (both eyes for stereo). fps: average frame rate
    (0 if unknown). duration: seconds (0 if unknown, as for images). stereo: the layout named
    by the file's metadata ("mono", "top-bottom", "left-right", or an unsupported layout's own
    name), None without stereo metadata. projection: the spherical projection named by the
    metadata ("equirectangular", "cubemap", ...), None without spherical metadata.
    """

    width: int
    height: int
    fps: float
    duration: float
    codec: str
    stereo: str | None = None
    projection: str | None = None


class UnreadableMediaError(ValueError):
    """A file ffprobe or ffmpeg cannot read; `reason` is ffmpeg's explanation."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot read {path}: {reason}")
        self.reason = reason


def ffmpeg_exe() -> str:
    """The ffmpeg binary: $IMAGEIO_FFMPEG_EXE, else the one imageio-ffmpeg ships."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffprobe_exe() -> str | None:
    """ffprobe on the PATH (or $FFPROBE), None when not installed."""
    return os.environ.get("FFPROBE") or shutil.which("ffprobe")


def _stderr_reason(text: str, path: str | os.PathLike = "") -> str:
    """ffmpeg's error lines in one line, without `[demuxer @ 0x...]`, the file name or the
    repeats ffmpeg adds when it gives up."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\[[^\]]*\]\s*", "", line.replace(f"{path}: ", "") if path else line)
        line = re.sub(r"^Error opening input(?: files)?: ", "", line.strip())
        if line and not line.startswith(("At least one output", "Error opening input file")):
            lines.append(line)
    return "; ".join(dict.fromkeys(lines)) or "no details"


def _rate(text: str | None) -> float:
    try:
        value = float(fractions.Fraction(text or "0"))
    except (ValueError, ZeroDivisionError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _stereo_name(text: str) -> str:
    text = text.strip().lower()
    return _STEREO_NAMES.get(text, text)


def probe_media(path: str | os.PathLike) -> MediaInfo:
    """Reads a video's or image's metadata; UnreadableMediaError if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableMediaError(path, "no such file")
    ffprobe = ffprobe_exe()
    if ffprobe is None:
        return _probe_with_ffmpeg(path)
    command = [ffprobe, "-v", "error", "-select_streams", "v:0", "-show_streams", "-show_format"]
    result = subprocess.run(
        [*command, "-of", "json", str(path)], capture_output=True, text=True, check=False
    )
    streams = json.loads(result.stdout or "{}").get("streams") if result.returncode == 0 else None
    if not streams:
        reason = _stderr_reason(result.stderr, path) if result.returncode else "no video stream"
        raise UnreadableMediaError(path, reason)
    stream, container = streams[0], json.loads(result.stdout).get("format", {})
    stereo = projection = None
    for side_data in stream.get("side_data_list", []):
        if side_data.get("side_data_type") == "Stereo 3D":
            stereo = _stereo_name(side_data.get("type", ""))
        elif side_data.get("side_data_type") == "Spherical Mapping":
            projection = side_data.get("projection")
    tags = {key.lower(): value for key, value in stream.get("tags", {}).items()}
    if stereo is None and "stereo_mode" in tags:
        stereo = _stereo_name(tags["stereo_mode"])
    return MediaInfo(
        width=int(stream["width"]),
        height=int(stream["height"]),
        fps=_rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")),
        duration=_rate(stream.get("duration")) or _rate(container.get("duration")),
        codec=str(stream.get("codec_name", "?")),
        stereo=stereo,
        projection=projection,
    )


def _probe_with_ffmpeg(path: Path) -> MediaInfo:
    """`probe_media` without ffprobe: parses the stream summary of `ffmpeg -i` (stderr)."""
    result = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    text = result.stderr
    video = re.search(r"Stream #\d+:\d+.*?: Video: (\w+)(.*)", text)
    size = re.search(r", (\d+)x(\d+)", video.group(2)) if video else None
    if video is None or size is None:
        lines = [line for line in text.splitlines() if "Error" in line or "@ 0x" in line]
        raise UnreadableMediaError(path, _stderr_reason("\n".join(lines), path))
    duration = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    rate = re.search(r", (\d+(?:\.\d+)?k?) (?:fps|tbr)", video.group(2))
    # Side data and stream tags follow the stream line; older ffmpeg writes `stereo3d:`.
    after = text[video.end() :]
    stereo = re.search(r"^\s*(?:Stereo 3D|stereo3d): ([^,\n]+)", after, re.M | re.I)
    tag = re.search(r"^\s*stereo_mode\s*: (\S+)", after, re.M | re.I)
    projection = re.search(r"^\s*(?:Spherical Mapping|spherical): ([a-z ]+)", after, re.M | re.I)
    fps = 0.0
    if rate:
        fps = float(rate.group(1).rstrip("k")) * (1000 if rate.group(1).endswith("k") else 1)
    return MediaInfo(
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=fps,
        duration=(
            int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
            if duration
            else 0.0
        ),
        codec=video.group(1),
        stereo=_stereo_name((stereo or tag).group(1)) if stereo or tag else None,
        projection=projection.group(1).strip() if projection else None,
    )


def decode_frames(
    path: str | os.PathLike,
    out_hw: tuple[int, int],
    *,
    fps: float | None = None,
    stereo: str = "mono",
    threads: int = 0,
) -> Iterator[np.ndarray]:
    """Streams the frames of a video (or an image) as RGB uint8 `(H, W, 3)` = out_hw.

    ffmpeg does the work: `fps` resamples by timestamp (None keeps every decoded frame), a stereo
    layout keeps its top / left eye, and the frame is scaled (area averaging) to out_hw. One
    frame at a time crosses the pipe, so memory does not grow with the file. `threads`: decoder
    and filter threads (0: ffmpeg's choice). Raises UnreadableMediaError if ffmpeg fails.
    """
    if stereo not in STEREO_LAYOUTS:
        raise ValueError(f"stereo must be one of {STEREO_LAYOUTS}, got {stereo!r}")
    height, width = out_hw
    filters = [f"fps={fps:.6g}"] if fps else []
    if stereo in _EYE_CROPS:
        filters.append(_EYE_CROPS[stereo])
    filters.append(f"scale={width}:{height}:flags=area")
    # threads > 0 caps decoder and filter threads (parallel builds share the cores).
    thread_options = ["-threads", str(threads), "-filter_threads", str(threads)] if threads else []
    command = [
        ffmpeg_exe(), "-nostdin", "-loglevel", "error", *thread_options,
        "-i", str(path),
        "-map", "0:v:0", "-an", "-sn", "-dn",
        "-vf", ",".join(filters), "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    frame_bytes = height * width * 3
    # stderr goes to a file: a full stderr pipe would block ffmpeg while we read stdout.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        finished = False
        try:
            while True:
                frame = np.empty((height, width, 3), np.uint8)
                view, filled = memoryview(frame).cast("B"), 0
                while filled < frame_bytes:
                    count = process.stdout.readinto(view[filled:])
                    if not count:
                        break
                    filled += count
                if filled < frame_bytes:  # end of stream (a partial frame is a cut-off file)
                    break
                yield frame
            finished = True
        finally:
            if not finished:  # the consumer stopped early (or failed): stop ffmpeg too
                process.kill()
            process.stdout.close()
            process.wait()
        stderr.seek(0)
        message = _stderr_reason(stderr.read().decode(errors="replace"), path)
        if process.returncode != 0:
            raise UnreadableMediaError(path, f"ffmpeg failed: {message}")
        if message != "no details":
            log.warning("%s: ffmpeg reported: %s", path, message)
