"""The evaluation CLI and its library (evaluation/report.py): six-view export for VBench,
panorama metrics, its files and its errors.

The inputs are made here: a smooth panorama that turns slowly, written as a sampler output
folder (pano.mp4, viewpoint.mp4, settings.json naming a condition video cut from the same
panorama) and as a bare ERP mp4.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from viewpoint_jax import geometry
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.evaluation import panorama_metrics
from viewpoint_jax.evaluation import report as report_lib
from viewpoint_jax.geometry import sphere

REPO = Path(__file__).resolve().parents[1]
HEIGHT, FRAMES, MAP_SIZE, VIEW = 32, 5, 32, 32
CONDITION_VIEW = dict(fov=90.0, yaw=30.0, pitch=10.0, roll=0.0)


def turning_panorama(frames: int = FRAMES, height: int = HEIGHT) -> np.ndarray:
    """ERP video `(F, H, 2H, 3)` uint8: smooth colours of the direction, turning 5 degrees a
    frame."""
    directions = sphere.erp_directions(height, 2 * height)
    video = []
    for t in range(frames):
        angle = np.deg2rad(5.0 * t)
        x = np.cos(angle) * directions[..., 0] + np.sin(angle) * directions[..., 2]
        colour = np.stack([x, directions[..., 1], x * directions[..., 1]], axis=-1)
        video.append(128 + 100 * colour)
    return np.round(np.stack(video)).astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with one sampler output folder (`scene/`) and one bare ERP video (`bare.mp4`)."""
    root = tmp_path_factory.mktemp("inputs")
    erp = turning_panorama()
    folder = root / "scene"
    folder.mkdir()
    video_io.write_video(folder / "pano.mp4", erp, 16.0, spherical=True)
    map_video = geometry.erp_to_viewpoint(jnp.asarray(erp), MAP_SIZE)
    video_io.write_video(folder / "viewpoint.mp4", np.asarray(map_video), 16.0)
    view = CONDITION_VIEW
    condition = geometry.erp_to_perspective(
        jnp.asarray(erp), view["fov"], view["yaw"], view["pitch"], view["roll"], out_hw=(24, 32)
    )
    video_io.write_video(folder / "condition.mp4", np.asarray(condition), 16.0)
    # As the sampler writes it; a relative path is also looked up beside settings.json.
    settings = {"prompt": "p", "condition": {"video": "condition.mp4", "frames": FRAMES, **view}}
    (folder / "settings.json").write_text(json.dumps(settings))
    video_io.write_video(root / "bare.mp4", erp[:, :, ::-1], 16.0)  # mirrored: another video
    return root


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "viewpoint_jax.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=300,
    )


def test_face_views_are_the_cube_faces():
    assert tuple(report_lib.FACE_VIEWS) == geometry.FACE_NAMES
    erp = turning_panorama(frames=2)
    faces = np.asarray(geometry.erp_to_cubemap(jnp.asarray(erp, jnp.float32), 16))
    for k, face in enumerate(geometry.FACE_NAMES):
        view = report_lib.face_view(erp, face, 16)
        assert view.shape == (2, 16, 16, 3) and view.dtype == np.uint8
        np.testing.assert_allclose(view, faces[:, k], atol=0.51)  # rounding to uint8 only


def test_inputs_are_found_in_folders_and_named_uniquely(inputs, tmp_path):
    found = report_lib.find_inputs([inputs])
    assert [item.name for item in found] == ["bare", "scene"]
    bare, scene = found
    assert bare.map_video is None and bare.condition is None
    assert scene.panorama == inputs / "scene" / "pano.mp4"
    assert scene.map_video == inputs / "scene" / "viewpoint.mp4"
    assert scene.condition == report_lib.Condition(
        inputs / "scene" / "condition.mp4", 90, 30, 10, 0
    )
    again = report_lib.find_inputs([inputs / "scene", inputs / "scene" / "pano.mp4"])
    assert [item.name for item in again] == ["scene", "pano"]
    twice = report_lib.find_inputs([inputs / "bare.mp4", inputs / "bare.mp4"])
    assert [item.name for item in twice] == ["bare", "bare_2"]
    given = report_lib.Condition(Path("other.mp4"), 60, 0, 0, 0)
    assert all(item.condition == given for item in report_lib.find_inputs([inputs], given))
    with pytest.raises(UserError, match="nowhere: no such file or folder"):
        report_lib.find_inputs([tmp_path / "nowhere"])
    with pytest.raises(UserError, match=r"no pano\.mp4 output folders or videos"):
        report_lib.find_inputs([tmp_path])


def test_bad_videos_are_named_and_leave_no_output(inputs, tmp_path):
    square = tmp_path / "square.mp4"
    video_io.write_video(square, np.zeros((2, 16, 16, 3), np.uint8), 16.0)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    good = report_lib.find_inputs([inputs / "bare.mp4"])
    for bad, message in [(square, "not an equirectangular video"), (text, "cannot read video")]:
        out = tmp_path / "out"
        with pytest.raises(ValueError, match=message) as error:
            report_lib.evaluate([*good, report_lib.EvalInput("bad", bad)], out, view_size=16)
        assert str(bad) in str(error.value)
        assert not out.exists()  # checked before any work: nothing is written


def test_cli_exports_views_and_writes_the_metrics(inputs, tmp_path):
    out = tmp_path / "eval"
    result = run_cli("--inputs", inputs, "--out", out, "--view_size", VIEW, "--crf", 0)
    assert result.returncode == 0, result.stderr
    # stderr: one progress line per video and nothing else (no INFO logging from JAX).
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["bare", "scene"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "views"]
    names = [f"{video}_{face}.mp4" for video in ("bare", "scene") for face in "FRBLUD"]
    assert sorted(p.name for p in (out / "views").iterdir()) == sorted(names)

    # Each view is erp_to_perspective of the decoded panorama, up to the H.264 4:2:0 encoding.
    erp, _ = video_io.read_video(inputs / "scene" / "pano.mp4")
    for face, (yaw, pitch) in report_lib.FACE_VIEWS.items():
        exported, fps = video_io.read_video(out / "views" / f"scene_{face}.mp4")
        expected = np.asarray(
            geometry.erp_to_perspective(jnp.asarray(erp), 90.0, yaw, pitch, out_hw=(VIEW, VIEW))
        )
        assert exported.shape == (FRAMES, VIEW, VIEW, 3) and fps == pytest.approx(16.0)
        error = np.abs(exported.astype(np.float32) - expected)
        # Measured at crf 0 on these 32 x 32 views: mean 1.6-2.1, 99th percentile 5-8 levels
        # (4:2:0 chroma of a colourful pattern); another face is tens of levels away.
        assert error.mean() < 3 and np.percentile(error, 99) < 12, face
        other = report_lib.face_view(erp, "U" if face != "U" else "D", VIEW)
        assert np.abs(exported.astype(np.float32) - other).mean() > 10, face

    report = json.loads((out / "metrics.json").read_text())
    assert set(report["metrics"]) == set(panorama_metrics.PANORAMA_METRICS)
    for info in report["metrics"].values():
        assert info["better"] in ("lower", "higher") and info["unit"]
    bare, scene = report["videos"]
    assert (bare["name"], scene["name"]) == ("bare", "scene")
    assert scene["frames"] == FRAMES and scene["size"] == [HEIGHT, 2 * HEIGHT]
    assert len(scene["views"]) == 6 and scene["condition"]["yaw"] == 30
    # The numbers are those of the pure metrics on the decoded videos.
    assert scene["seam_ratio"] == pytest.approx(panorama_metrics.seam_ratio(erp))
    assert scene["pole_spread"] == pytest.approx(panorama_metrics.pole_spread(erp))
    assert scene["flicker"] == pytest.approx(panorama_metrics.temporal_flicker(erp))
    assert scene["flicker_lowpass"] == pytest.approx(
        panorama_metrics.temporal_flicker(erp, block=8)
    )
    map_video, _ = video_io.read_video(inputs / "scene" / "viewpoint.mp4")
    assert scene["overlap_disagreement"] == pytest.approx(
        panorama_metrics.overlap_disagreement(map_video)
    )
    # A smooth turning panorama: copies that agree (up to the codec noise of two separately
    # coded copies, 3.7 levels measured; a random map scores about 85), a condition that
    # matches its region.
    assert scene["overlap_disagreement"] < 6 and scene["flicker"] > 0
    assert scene["condition_psnr"] > 28 and scene["condition_ssim"] > 0.8
    assert bare["overlap_disagreement"] is None and bare["condition_psnr"] is None
    assert report["mean"]["seam_ratio"] == pytest.approx(
        (bare["seam_ratio"] + scene["seam_ratio"]) / 2
    )
    assert report["mean"]["condition_psnr"] == pytest.approx(scene["condition_psnr"])

    table = (out / "metrics.md").read_text()
    assert "| video | seam_ratio ↓ |" in table and "condition_psnr ↑" in table
    assert table.count("\n| scene |") == 1 and "| **mean** |" in table
    assert "| condition_psnr | higher | dB |" in table
    assert f"--videos_path {out / 'views'} --mode=custom_input" in table

    with pytest.raises(FileExistsError, match="pass overwrite"):
        report_lib.evaluate(report_lib.find_inputs([inputs]), out, view_size=16)


def test_cli_metrics_only_with_a_condition_flag(inputs, tmp_path):
    out = tmp_path / "eval"
    condition = inputs / "scene" / "condition.mp4"
    result = run_cli(
        inputs / "bare.mp4", "--out", out, "--noexport_views", "--condition", condition,
        "--fov", 90, "--yaw", 30, "--pitch", 10,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]
    (bare,) = json.loads((out / "metrics.json").read_text())["videos"]
    # The bare video is the mirrored panorama: the condition's region does not match.
    assert bare["condition_psnr"] < 25 and bare["views"] == []


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--help"], 0, None),
        (["--view_sise", "3"], 2, "unknown flag --view_sise (did you mean --view_size?)"),
        (["--inputs", "notes.mp4", "--out", "o"], 2, "cannot read video notes.mp4"),
    ],
)
def test_cli_help_and_one_line_errors(args, code, message, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    if message is None:
        assert "--view_size" in result.stdout and "VBench" in result.stdout
        return
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]  # nothing written
