"""The seam metrics on equirectangular footage made with ffmpeg at test time: smooth and textured
panoramas that wrap seamlessly (integer numbers of cycles around the sphere) and move, encoded
with H.264 and H.265 at their usual quality, turned by arbitrary offsets (still seamless), and with
a seam put in (the two ends from longitudes 45 degrees apart)."""

import subprocess

import numpy as np
import pytest

from viewpoint_jax.common.video_io import ffmpeg_exe, read_video
from viewpoint_jax.evaluation import panorama_metrics

HEIGHT, WIDTH, FRAMES = 160, 320, 17
# ffmpeg's geq: every term has a whole number of cycles over the width (seamless at the wrap),
# moves with the time T, and varies with the row Y.
SOURCES = {
    "smooth": "r='128+90*sin(2*PI*X/W+T)*cos(PI*Y/H)':g='128+60*cos(4*PI*X/W-2*T+Y/40)'"
    ":b='128+50*sin(2*PI*X/W+PI*Y/H+T)'",
    "textured": "r='128+50*sin(2*PI*X/W+T)+40*sin(2*PI*23*X/W+Y/5+2*T)+30*sin(2*PI*41*X/W-Y/7)'"
    ":g='128+40*cos(2*PI*13*X/W+Y/3-T)+40*sin(2*PI*57*X/W+Y/9)'"
    ":b='128+60*sin(2*PI*7*X/W+Y/11+3*T)+30*cos(2*PI*31*X/W-Y/4)'",
}
# The encoders' default quality (libx264 crf 23, libx265 crf 28).
CODECS = {
    "h264": ["-c:v", "libx264", "-crf", "23"],
    "h265": ["-c:v", "libx265", "-crf", "28", "-x265-params", "log-level=error"],
}
TURNS = (0, 37, 123, 201, 290)  # columns


def _ffmpeg_has(encoder: str) -> bool:
    listing = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True)
    return encoder in listing.stdout.decode()


def make_footage(source: str) -> np.ndarray:
    """`(F, H, W, 3)` uint8 frames of a SOURCES panorama, rendered by ffmpeg."""
    graph = f"nullsrc=s={WIDTH}x{HEIGHT}:r=16,format=rgb24,geq={SOURCES[source]}"
    command = [ffmpeg_exe(), "-loglevel", "error", "-filter_complex", graph]
    command += ["-frames:v", str(FRAMES), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    data = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(data, np.uint8).reshape(FRAMES, HEIGHT, WIDTH, 3)


def encode_decode(frames: np.ndarray, codec: str, path) -> np.ndarray:
    """The frames through an ffmpeg encoder (yuv420p mp4) and back, as a player decodes them."""
    command = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    command += ["-s", f"{WIDTH}x{HEIGHT}", "-r", "16", "-i", "-", *CODECS[codec]]
    subprocess.run([*command, "-pix_fmt", "yuv420p", str(path)], input=frames.tobytes(), check=True)
    return read_video(path)[0]


def put_seam(frames: np.ndarray) -> np.ndarray:
    """The left half turned by an eighth of the width: the two ends no longer meet."""
    out = frames.copy()
    out[:, :, : WIDTH // 2] = np.roll(frames[:, :, : WIDTH // 2], WIDTH // 8, axis=2)
    return out


@pytest.fixture(scope="module")
def footage():
    return {name: make_footage(name) for name in SOURCES}


def test_the_footage_is_seamless_before_any_codec(footage):
    for frames in footage.values():
        rolled = np.roll(frames, 1, axis=2)  # the wrap pair becomes an interior pair
        inside = np.abs(np.diff(frames.astype(np.float32), axis=2)).mean()
        assert np.abs(rolled[:, :, 1].astype(np.float32) - rolled[:, :, 0]).mean() < 1.2 * inside
        assert frames.std() > 20 and np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 1


@pytest.mark.parametrize("codec", ["raw", *CODECS])
def test_seamless_footage_and_its_turned_copies_score_as_seamless(footage, codec, tmp_path):
    if codec != "raw" and not _ffmpeg_has(f"lib{codec.replace('h', 'x')}"):
        pytest.skip(f"this ffmpeg has no {codec} encoder")
    for name, frames in footage.items():
        scores = []
        for turn in TURNS:
            video = np.roll(frames, turn, axis=2)
            if codec != "raw":
                video = encode_decode(video, codec, tmp_path / f"{name}_{turn}.mp4")
            scores.append(panorama_metrics.seam_ratio(video))
        assert max(abs(s - 1) for s in scores) <= 0.12, (name, codec, scores)
        assert max(scores) - min(scores) <= 0.2, (name, codec, scores)
        if codec != "raw" and name == "smooth":
            # What the per-pixel measures make of the same seamless videos: the codec's edges.
            assert panorama_metrics.end_continuity(video) > 2.5 * panorama_metrics.end_continuity(
                np.roll(frames, TURNS[-1], axis=2)
            )


@pytest.mark.parametrize("codec", ["raw", *CODECS])
def test_a_seam_scores_far_from_seamless(footage, codec, tmp_path):
    if codec != "raw" and not _ffmpeg_has(f"lib{codec.replace('h', 'x')}"):
        pytest.skip(f"this ffmpeg has no {codec} encoder")
    for turn in TURNS[:3]:
        video = put_seam(np.roll(footage["smooth"], turn, axis=2))
        if codec != "raw":
            video = encode_decode(video, codec, tmp_path / f"seam_{turn}.mp4")
        assert panorama_metrics.seam_ratio(video) > 3, (codec, turn)
