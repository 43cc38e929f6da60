"""The seam metrics on the ffmpeg-made footage of tests/test_seam_metric.py: seam_ratio (this
project's) and end_continuity (PanoWan's End Continuity as we read it), for seamless smooth and
textured panoramas at two sizes turned by several offsets, with a seam put in (the ends from
longitudes 45 degrees apart) and a mild one (5.6 degrees), raw and through H.264 / H.265 at
crf 18-28. Prints a Markdown table (BENCHMARKS.md).

    python tools/bench_seam_metric.py [--turns 0,37,123,201,290]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_seam_metric import CODECS, SIZES, SOURCES, TURNS, encode_decode, make_footage, put_seam

from viewpoint_jax.common.cli import refuse_positional, run
from viewpoint_jax.evaluation import panorama_metrics

SEAMS = {"seamless": None, "seam 45°": 1 / 8, "mild seam 5.6°": 1 / 64}


def define_flags() -> None:
    flags.DEFINE_list("turns", [str(t) for t in TURNS], "horizontal turns of the footage, columns")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    turns = [int(t) for t in flags.FLAGS.turns]
    print(
        "| footage | H x W | codec | seam_ratio (turns " + ", ".join(map(str, turns)) + ") "
        "| end_continuity |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in SOURCES:
            for size in SIZES:
                frames = make_footage(name, size)
                for label, fraction in SEAMS.items():
                    for codec in ("raw", *CODECS):
                        seam, end = [], []
                        for turn in turns:
                            video = np.roll(frames, turn, axis=2)
                            video = put_seam(video, fraction) if fraction else video
                            video = encode_decode(video, codec, Path(tmp) / "v.mp4")
                            seam.append(panorama_metrics.seam_ratio(video))
                            end.append(panorama_metrics.end_continuity(video))
                        print(
                            f"| {name}, {label} | {size[0]} x {size[1]} | {codec} | "
                            + ", ".join(f"{s:.2f}" for s in seam)
                            + f" | {min(end):.1f}–{max(end):.1f} |",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    run(main, define_flags)
