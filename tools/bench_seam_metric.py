"""The seam metrics on the ffmpeg-made footage of tests/test_seam_metric.py: seam_ratio (this
project's), end_continuity (PanoWan's End Continuity as we read it) and the per-pixel ratio
seam_ratio had before (wrap difference / mean adjacent-column difference), for seamless smooth and
textured panoramas turned by several offsets and with a seam put in, raw and through H.264 /
H.265 at the encoders' default quality. Prints a Markdown table (BENCHMARKS.md).

    python tools/bench_seam_metric.py [--turns 0,37,123,201,290]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_seam_metric import CODECS, SOURCES, TURNS, encode_decode, make_footage, put_seam

from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.evaluation import panorama_metrics


def per_pixel_ratio(video: np.ndarray) -> float:
    """seam_ratio's definition before issue 30: |column W-1 - column 0| / mean |column j+1 - j|."""
    video = video.astype(np.float32)
    wrap = np.abs(video[:, :, -1] - video[:, :, 0]).mean()
    return float(wrap / np.abs(np.diff(video, axis=2)).mean())


def define_flags() -> None:
    flags.DEFINE_list("turns", [str(t) for t in TURNS], "horizontal turns of the footage, columns")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    turns = [int(t) for t in flags.FLAGS.turns]
    print(
        "| footage | codec | seam_ratio (turns " + ", ".join(map(str, turns)) + ") "
        "| end_continuity | per-pixel ratio (before) |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in SOURCES:
            frames = make_footage(name)
            for seam in (False, True):
                for codec in ("raw", *CODECS):
                    scores = {"seam": [], "end": [], "pixel": []}
                    for turn in turns:
                        video = np.roll(frames, turn, axis=2)
                        video = put_seam(video) if seam else video
                        if codec != "raw":
                            video = encode_decode(video, codec, Path(tmp) / "v.mp4")
                        scores["seam"].append(panorama_metrics.seam_ratio(video))
                        scores["end"].append(panorama_metrics.end_continuity(video))
                        scores["pixel"].append(per_pixel_ratio(video))
                    label = f"{name}, {'seam put in' if seam else 'seamless'}"
                    print(
                        f"| {label} | {codec} | "
                        + ", ".join(f"{s:.2f}" for s in scores["seam"])
                        + f" | {min(scores['end']):.1f}–{max(scores['end']):.1f} "
                        f"| {min(scores['pixel']):.2f}–{max(scores['pixel']):.2f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    run(main, define_flags)
