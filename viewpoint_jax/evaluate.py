"""Evaluate generated 360 videos: perspective views for VBench, and panorama metrics.

    python -m viewpoint_jax.evaluate --inputs outputs/ --out eval/run1 [--view_size 512] \\
        [--condition front.mp4 --fov 90 --yaw 0 --pitch 0 --roll 0]

--inputs (comma separated; more may follow as plain arguments) takes sampler output folders
(pano.mp4, viewpoint.mp4, settings.json), folders holding such folders or ERP videos, and ERP
video files. It writes, atomically (the folder appears complete or not at all):

  views/<video>_<face>.mp4  the six 90-degree views F R B L U D of every video, view_size square,
                            in one flat folder: VBench's custom-input mode reads all of it
  metrics.json              panorama metrics per video and their mean, each with its direction
                            (lower/higher is better) and unit
  metrics.md                the same as a Markdown table

The condition-fidelity metrics need the condition video and its view: the `condition` entry of an
output folder's settings.json, or --condition with --fov/--yaw/--pitch/--roll for every input.
The work is evaluation/report.py's; this module is its flags.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from viewpoint_jax.common.cli import UserError, run
from viewpoint_jax.common.fileio import check_replaceable, check_writable
from viewpoint_jax.evaluation.report import REPORT_NAMES, Condition, evaluate, find_inputs


def define_flags() -> None:
    """The command's flags; defined only when this module is the program."""
    from absl import flags

    flags.DEFINE_list("inputs", [], "output folders, folders of them, or ERP videos")
    flags.DEFINE_string("out", None, "output folder (views/, metrics.json, metrics.md)")
    flags.DEFINE_integer(
        "view_size", 512, "side of the exported square views, pixels", lower_bound=2
    )
    flags.DEFINE_boolean(
        "export_views", True, "export the six views (--noexport_views: metrics only)"
    )
    flags.DEFINE_integer(
        "crf", 18, "H.264 quality of the exported views (0 = best)", lower_bound=0, upper_bound=51
    )
    flags.DEFINE_string("condition", None, "condition video for every input (else settings.json's)")
    flags.DEFINE_float("fov", 90.0, "--condition's horizontal field of view, degrees")
    flags.DEFINE_float("yaw", 0.0, "--condition's yaw, degrees, positive turns right")
    flags.DEFINE_float("pitch", 0.0, "--condition's pitch, degrees, positive looks up")
    flags.DEFINE_float("roll", 0.0, "--condition's roll, degrees")
    flags.DEFINE_float("pole_cap_deg", 3.0, "polar cap of the pole metric, degrees from the pole")
    flags.DEFINE_boolean("overwrite", False, "replace an existing --out")


def evaluate_main(argv: list[str]) -> int:
    """Checks the flags (one line for a bad one, before any work), then `report.evaluate`;
    `argv[1:]`: more inputs."""
    from absl import flags

    values = flags.FLAGS
    if not values.out:
        raise UserError("--out is required (the output folder)")
    if values.view_size % 2:
        raise UserError(f"--view_size must be even (H.264 4:2:0), got {values.view_size}")
    if not 0 < values.pole_cap_deg <= 90:
        raise UserError(f"--pole_cap_deg must be in (0, 90], got {values.pole_cap_deg:g}")
    if Path(values.out).exists() and not values.overwrite:
        raise UserError(f"--out {values.out} exists (pass --overwrite to replace it)")
    if values.overwrite:  # only a folder evaluate wrote, never an input or the cwd
        check_replaceable(
            values.out, owned=REPORT_NAMES, marker="metrics.json",
            keep=[*values.inputs, *argv[1:]],
        )  # fmt: skip
    check_writable(values.out)  # before the work, not at its end
    condition = None
    if values.condition:
        if not 0 < values.fov < 180:
            raise UserError(f"--fov must be in (0, 180) degrees, got {values.fov:g}")
        if not Path(values.condition).is_file():
            raise UserError(f"--condition: no such file {values.condition}")
        condition = Condition(
            Path(values.condition), values.fov, values.yaw, values.pitch, values.roll
        )
    inputs = find_inputs([*values.inputs, *argv[1:]], condition)
    try:
        report = evaluate(
            inputs,
            values.out,
            view_size=values.view_size,
            export=values.export_views,
            crf=values.crf,
            pole_cap_deg=values.pole_cap_deg,
            overwrite=values.overwrite,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (OSError, RuntimeError) as error:  # a full disk: one line, nothing half written
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not any(s in reason for s in ("No space left", "Disk quota", "Read-only")):
            raise
        raise UserError(f"writing {values.out} failed ({reason}); nothing was written") from None
    print(f"wrote {values.out}/metrics.json, metrics.md" + (", views/" if report["views"] else ""))
    return 0


def main() -> None:
    """The command and its console script (viewpoint-evaluate)."""
    # OpenCV's FFmpeg backend prints its own line for an unreadable file ("moov atom not
    # found") before video_io's error names it: one line is enough. Read at the first capture.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    run(evaluate_main, define_flags)


if __name__ == "__main__":
    main()
