"""The seam metrics on equirectangular footage made with ffmpeg at test time: smooth and textured
panoramas that wrap seamlessly (integer numbers of cycles around the sphere) and move, at two
sizes (one not a multiple of the codecs' 16-pixel macroblock), encoded with H.264 and H.265 at
usual quality (crf 18-28), turned by arbitrary offsets (still seamless), and with a seam put in
(the two ends from longitudes 45 degrees apart, and a mild one: 5.6 degrees)."""

import subprocess

import numpy as np
import pytest

from viewpoint_jax.common.video_io import ffmpeg_exe, read_video
from viewpoint_jax.evaluation import panorama_metrics

FRAMES = 17
SIZES = ((160, 320), (180, 360))  # (H, W); 360 = 22.5 macroblocks
# ffmpeg's geq: every term has a whole number of cycles over the width (seamless at the wrap),
# moves with the time T, and varies with the row Y.
SOURCES = {
    "smooth": "r='128+90*sin(2*PI*X/W+T)*cos(PI*Y/H)':g='128+60*cos(4*PI*X/W-2*T+Y/40)'"
    ":b='128+50*sin(2*PI*X/W+PI*Y/H+T)'",
    "textured": "r='128+50*sin(2*PI*X/W+T)+40*sin(2*PI*23*X/W+Y/5+2*T)+30*sin(2*PI*41*X/W-Y/7)'"
    ":g='128+40*cos(2*PI*13*X/W+Y/3-T)+40*sin(2*PI*57*X/W+Y/9)'"
    ":b='128+60*sin(2*PI*7*X/W+Y/11+3*T)+30*cos(2*PI*31*X/W-Y/4)'",
}
# Usual quality: the encoders' defaults (libx264 crf 23, libx265 crf 28) and the ends of the
# range people use (18 is about visually lossless for x264).
CODECS = {
    "h264_crf18": ["-c:v", "libx264", "-crf", "18"],
    "h264_crf23": ["-c:v", "libx264", "-crf", "23"],
    "h264_crf28": ["-c:v", "libx264", "-crf", "28"],
    "h265_crf20": ["-c:v", "libx265", "-crf", "20", "-x265-params", "log-level=error"],
    "h265_crf28": ["-c:v", "libx265", "-crf", "28", "-x265-params", "log-level=error"],
}
TURNS = (0, 37, 123, 201, 290)  # columns
SEAMLESS_BOUND = 0.10  # README and seam_ratio's docstring: within 10% of 1
# What a seam scores at least, by the longitudes its two ends come from: 45 degrees, three times
# the seamless bound away from 1; 5.6 degrees (a 5-level step on the smooth footage), above it.
SEAM_FLOORS = {1 / 8: 1.3, 1 / 64: 1 + 1.5 * SEAMLESS_BOUND}


def _ffmpeg_has(encoder: str) -> bool:
    listing = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True)
    return encoder in listing.stdout.decode()


def _skip_without(codec: str) -> None:
    encoder = CODECS[codec][1] if codec in CODECS else None
    if encoder and not _ffmpeg_has(encoder):
        pytest.skip(f"this ffmpeg has no {encoder} encoder")


def make_footage(source: str, size: tuple[int, int] = SIZES[0]) -> np.ndarray:
    """`(F, H, W, 3)` uint8 frames of a SOURCES panorama of `size` (H, W), rendered by ffmpeg."""
    height, width = size
    graph = f"nullsrc=s={width}x{height}:r=16,format=rgb24,geq={SOURCES[source]}"
    command = [ffmpeg_exe(), "-loglevel", "error", "-filter_complex", graph]
    command += ["-frames:v", str(FRAMES), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    data = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(data, np.uint8).reshape(FRAMES, height, width, 3)


def encode_decode(frames: np.ndarray, codec: str, path) -> np.ndarray:
    """The frames through an ffmpeg encoder (yuv420p mp4) and back, as a player decodes them;
    "raw" returns them as they are."""
    if codec == "raw":
        return frames
    height, width = frames.shape[1:3]
    command = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    command += ["-s", f"{width}x{height}", "-r", "16", "-i", "-", *CODECS[codec]]
    subprocess.run([*command, "-pix_fmt", "yuv420p", str(path)], input=frames.tobytes(), check=True)
    return read_video(path)[0]


def put_seam(frames: np.ndarray, fraction: float = 1 / 8) -> np.ndarray:
    """The left half taken from `fraction` of the width further on: at the wrap the two ends come
    from longitudes 360 * `fraction` degrees apart (and the middle repeats as many columns)."""
    half, shift = frames.shape[2] // 2, round(frames.shape[2] * fraction)
    out = frames.copy()
    out[:, :, :half] = frames[:, :, shift : half + shift]
    return out


@pytest.fixture(scope="module")
def footage():
    return {(name, size): make_footage(name, size) for name in SOURCES for size in SIZES}


def test_the_footage_is_seamless_before_any_codec(footage):
    for frames in footage.values():
        rolled = np.roll(frames, 1, axis=2)  # the wrap pair becomes an interior pair
        inside = np.abs(np.diff(frames.astype(np.float32), axis=2)).mean()
        assert np.abs(rolled[:, :, 1].astype(np.float32) - rolled[:, :, 0]).mean() < 1.2 * inside
        assert frames.std() > 20 and np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 1


@pytest.mark.parametrize("codec", ["raw", *CODECS])
def test_seamless_footage_and_its_turned_copies_score_as_seamless(footage, codec, tmp_path):
    _skip_without(codec)
    for (name, size), frames in footage.items():
        scores = []
        for turn in TURNS if size == SIZES[0] else TURNS[1::2]:
            video = np.roll(frames, turn, axis=2)
            video = encode_decode(video, codec, tmp_path / f"{name}_{size[0]}_{turn}.mp4")
            scores.append(panorama_metrics.seam_ratio(video))
        assert max(abs(s - 1) for s in scores) <= SEAMLESS_BOUND, (name, size, codec, scores)
        if codec != "raw" and name == "smooth":
            # What the per-pixel measure makes of the same seamless video: the codec's edges.
            raw = np.roll(frames, turn, axis=2)
            assert panorama_metrics.end_continuity(video) > 2 * panorama_metrics.end_continuity(raw)


@pytest.mark.parametrize("codec", ["raw", "h264_crf23", "h265_crf28"])
def test_a_seam_scores_far_from_seamless_also_in_fine_texture_and_when_mild(
    footage, codec, tmp_path
):
    _skip_without(codec)
    for name in SOURCES:
        frames = footage[(name, SIZES[0])]
        for fraction, floor in SEAM_FLOORS.items():
            for turn in TURNS[::2]:
                video = put_seam(np.roll(frames, turn, axis=2), fraction)
                video = encode_decode(video, codec, tmp_path / f"seam_{name}_{turn}.mp4")
                score = panorama_metrics.seam_ratio(video)
                assert score > floor, (name, fraction, turn, codec, score)


def test_the_frame_edges_the_codec_codes_apart_are_not_read(footage):
    """Whatever happens to the outermost SEAM_GAP columns on each side (what H.264 / H.265 do to
    them differs from the interior) cannot change the score."""
    frames = footage[("textured", SIZES[0])]
    gap = panorama_metrics.SEAM_GAP
    noisy = frames.copy()
    rng = np.random.default_rng(0)
    for columns in (slice(0, gap), slice(-gap, None)):
        noisy[:, :, columns] = rng.integers(0, 256, noisy[:, :, columns].shape, dtype=np.uint8)
    assert panorama_metrics.seam_ratio(noisy) == panorama_metrics.seam_ratio(frames)
    # ...while the next column in is read: noise there is a seam.
    noisy[:, :, gap] = rng.integers(0, 256, noisy[:, :, gap].shape, dtype=np.uint8)
    assert panorama_metrics.seam_ratio(noisy) > SEAM_FLOORS[1 / 8]
