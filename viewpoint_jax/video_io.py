"""Reading and writing images and videos (RGB, uint8, channels last). I/O stays at this edge."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

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
    """Reads frames `start, start + stride, ...` of a video as RGB uint8 `(F, H, W, 3)`, and its fps.

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


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in a video (1 for an image); ValueError naming the file if unreadable."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        read_image(path)
        return 1
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot read video {path}: OpenCV could not open it")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    return count
