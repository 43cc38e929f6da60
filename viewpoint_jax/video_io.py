"""Reading and writing images and videos (RGB, uint8, channels last). I/O stays at this edge."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from viewpoint_jax.io_utils import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


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
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"cannot read video {path}: no decodable frames from frame {start}")
    return np.stack(frames), fps


def to_uint8(video: np.ndarray) -> np.ndarray:
    """Pixels in [-1, 1] (any shape; numpy or jax) -> uint8, rounded, out-of-range clipped."""
    return np.round((np.clip(np.asarray(video, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(
        np.uint8
    )


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes an RGB uint8 `(H, W, 3)` image as a PNG, atomically."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG (image shape {image.shape})")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: float, spherical: bool = False, crf: int = 18
) -> None:
    """Writes RGB uint8 frames `(F, H, W, 3)` as an H.264 MP4 (yuv420p), atomically.

    Odd sizes are padded by repeating the last row/column (yuv420p needs even sides). With
    `spherical`, the video is tagged as a monoscopic equirectangular 360 video (Spherical Video
    V1 and V2 metadata).
    """
    import subprocess

    import imageio_ffmpeg

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
            imageio_ffmpeg.get_ffmpeg_exe(),
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
