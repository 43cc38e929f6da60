"""`python -m viewpoint_jax.prepare_dataset` on real footage made by ffmpeg at test time: 4K 30 fps ERP, stereo,
cut-off and wrongly shaped files; preflight, resampling, stereo eyes, memory, kill -9 + resume,
and `python -m viewpoint_jax.inspect_dataset` on the result."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_train import run_command

from viewpoint_jax.common import video_io
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.data import panoramic_videos, pipeline, preparation

ROOT = Path(__file__).resolve().parents[1]
PREPARE = [sys.executable, "-m", "viewpoint_jax.prepare_dataset"]
# Peak RSS of the Python process building the 4K clip at 512 x 1024: it measures about 0.27 GB,
# mostly imports, as ffmpeg hands over one small frame at a time. Holding the file's decoded 4K
# frames (60 x 22 MB) would pass 1.3 GB, its 512 x 1024 frames (32 x 1.5 MB) 0.3 GB more.
PEAK_RSS_BOUND_MB = 500


def ffmpeg(*args: str) -> None:
    subprocess.run(
        [video_io.ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True, timeout=120
    )


def lavfi_clip(path: Path, source: str, size: str, seconds: float, rate: int = 30) -> Path:
    """An H.264 clip of an ffmpeg test source (fast to encode)."""
    ffmpeg(
        "-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path),
    )  # fmt: skip
    return path


def top_bottom_clip(path: Path, eye: str = "1024x512", seconds: float = 1.0) -> Path:
    """Top-bottom stereo: a red top eye over a blue bottom eye, tagged as stereo (Matroska)."""
    ffmpeg(
        "-f", "lavfi", "-i", f"color=red:size={eye}:rate=30:duration={seconds}",
        "-f", "lavfi", "-i", f"color=blue:size={eye}:rate=30:duration={seconds}",
        "-filter_complex", "vstack", "-c:v", "libx264", "-preset", "ultrafast",
        "-pix_fmt", "yuv420p", "-metadata:s:v", "stereo_mode=top_bottom", str(path),
    )  # fmt: skip
    return path


def cubemap_clip(path: Path, monkeypatch) -> Path:
    """A clip whose spherical metadata says cube map (Spherical Video V2 `cbmp` projection)."""
    st3d = video_io._full_box(b"st3d", bytes([0]))
    svhd = video_io._full_box(b"svhd", b"test\0")
    prhd = video_io._full_box(b"prhd", bytes(12))
    cbmp = video_io._full_box(b"cbmp", bytes(8))  # layout 0, padding 0
    proj = video_io._box(b"proj", prhd + cbmp)
    with monkeypatch.context() as patch:
        patch.setattr(
            video_io, "spherical_v2_boxes", lambda: st3d + video_io._box(b"sv3d", svhd + proj)
        )
        video_io.write_video(path, np.zeros((2, 96, 128, 3), np.uint8), fps=8, spherical=True)
    return path


def write_captions(folder: Path, lines: list[dict]) -> Path:
    (folder / panoramic_videos.CAPTIONS_FILE).write_text(
        "".join(json.dumps(x) + "\n" for x in lines)
    )
    return folder


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """A folder of real files: 4K 30 fps ERP (2 s), tagged top-bottom stereo, a 2:1 image,
    and the bad ones: cut off, 16:9, cube map."""
    folder = tmp_path_factory.mktemp("footage")
    erp = lavfi_clip(folder / "erp_4k.mp4", "testsrc2", "3840x1920", 2)
    top_bottom_clip(folder / "stereo_tb.mkv")
    cv2.imwrite(str(folder / "still.png"), np.full((256, 512, 3), 200, np.uint8))
    (folder / "cut_off.mp4").write_bytes(erp.read_bytes()[: erp.stat().st_size // 2])
    lavfi_clip(folder / "wide.mp4", "testsrc2", "640x360", 0.5)
    with pytest.MonkeyPatch.context() as monkeypatch:
        cubemap_clip(folder / "cube.mp4", monkeypatch)
    return folder


GOOD = [
    {"file": "erp_4k.mp4", "caption": "a 4K test pattern"},
    {"file": "stereo_tb.mkv", "caption": "a stereo clip", "split": "test"},
    {"file": "still.png", "caption": "a grey still"},
]
BAD = [
    {"file": "cut_off.mp4", "caption": "cut off"},
    {"file": "wide.mp4", "caption": "16:9"},
    {"file": "cube.mp4", "caption": "cube map"},
]


def test_preflight_lists_everything_and_refuses_bad_files(footage, tmp_path):
    write_captions(footage, GOOD + BAD)
    check = preparation.preflight(
        footage, panoramic_videos.PanoramaConfig(name="x", height=512, fps=16)
    )
    assert [p.entry.file for p in check.planned] == ["erp_4k.mp4", "stereo_tb.mkv", "still.png"]
    erp, stereo, _ = check.planned
    assert (erp.media.width, erp.media.height, erp.media.fps) == (3840, 1920, 30.0)
    assert erp.media.duration == pytest.approx(2.0) and erp.expected_frames == 32
    assert stereo.stereo == "top-bottom" and stereo.out_hw == (512, 1024)
    reasons = {entry.file: reason for entry, reason in check.rejected}
    assert reasons["cut_off.mp4"].startswith("unreadable: moov atom not found")
    assert reasons["wide.mp4"] == "not equirectangular: 640x360 is not 2:1"
    assert reasons["cube.mp4"].startswith("not equirectangular: its metadata says cubemap")
    summary = check.summary()
    for text in ("3840x1920 (1)", "top-bottom (1)", "30 (2) -> stored at 16 (2) fps", "cube.mp4"):
        assert text in summary, summary

    # --dry-run prints the same summary and writes nothing; a build stops before it starts.
    command = [*PREPARE, "--src", str(footage), "--out", str(tmp_path / "data")]
    dry = subprocess.run([*command, "--dry_run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == summary
    assert not (tmp_path / "data").exists()
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: 3 files rejected")
    assert not (tmp_path / "data" / "panoramic_videos" / "default" / "1.0.0").exists()


def test_one_bad_file_is_one_line(footage, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "wide.mp4").symlink_to(footage / "wide.mp4")  # out of --src: --follow_links
    write_captions(src, [{"file": "wide.mp4", "caption": "x"}])
    result = subprocess.run(
        [*PREPARE, "--src", str(src), "--out", str(tmp_path / "data"), "--follow_links"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"error: wide.mp4 ({panoramic_videos.CAPTIONS_FILE} line 1): not equirectangular: 640x360 is not "
        "2:1\n"
    )


def test_untagged_stereo_needs_the_flag(tmp_path):
    lavfi_clip(tmp_path / "square.mp4", "testsrc2", "256x256", 0.2)
    write_captions(tmp_path, [{"file": "square.mp4", "caption": "x"}])
    ((_, reason),) = preparation.preflight(tmp_path).rejected
    assert reason.endswith("is not 2:1; top-bottom stereo? pass --stereo top-bottom")
    config = panoramic_videos.PanoramaConfig(name="x", stereo="top-bottom")
    (plan,) = preparation.preflight(tmp_path, config).planned
    assert plan.eye_hw == (128, 256)


@pytest.fixture(scope="module")
def built(footage, tmp_path_factory):
    """The CLI's default build (512 x 1024, 16 fps) of the good files, skipping the bad ones,
    in a subprocess that reports its peak RSS."""
    write_captions(footage, GOOD + BAD)
    data_dir = tmp_path_factory.mktemp("built")
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a
    # large test process would report its parent's peak.
    measure = (
        "import re, runpy, sys\n"
        "module = sys.argv[2]  # after '-c': '-m', the command's module, its flags\n"
        "sys.argv = [module, *sys.argv[3:]]\n"
        "try:\n"
        "    runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    status = open('/proc/self/status').read()\n"
        "    print('peak_rss_kb', re.search(r'VmHWM:\\s*(\\d+)', status).group(1))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", measure, *PREPARE[1:], "--src", str(footage),
         "--out", str(data_dir), "--name", "real", "--max_frames", "20", "--workers", "2",
         "--skip_unreadable"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return data_dir, result.stdout


def test_records_are_512x1024_at_16fps_and_memory_stays_bounded(built):
    data_dir, stdout = built
    peak_mb = int(stdout.split("peak_rss_kb")[-1]) / 1024
    assert peak_mb < PEAK_RSS_BOUND_MB, stdout
    assert "train: 1 videos (2 records), 1 images, 3 skipped" in stdout
    assert "Downloading" not in stdout and "Dataset panoramic_videos" not in stdout
    records = [
        source[i]
        for split in ("train", "test")
        for source in [panoramic_videos.open_data_source(data_dir, "real", split)]
        for i in range(len(source))
    ]
    assert all((r["height"], r["width"]) == (512, 1024) for r in records)
    assert [float(r["fps"]) for r in records] == [0.0 if r["is_image"] else 16.0 for r in records]
    erp = [r for r in records if r["source"] == b"erp_4k.mp4"]
    assert [int(r["segment"]) for r in erp] == [0, 1]  # 20 frames a record at most
    assert abs(sum(int(r["num_frames"]) for r in erp) - 2 * 16) <= 1  # 2 s at 16 fps
    assert all(len(r["frames"]) == r["num_frames"] for r in records)
    # The stereo clip keeps its top (red) eye, at the ERP size.
    stereo = [r for r in records if r["source"] == b"stereo_tb.mkv"]
    assert abs(sum(int(r["num_frames"]) for r in stereo) - 16) <= 1
    frame = panoramic_videos.decode_frame(stereo[0]["frames"][0])
    assert frame.shape == (512, 1024, 3)
    assert frame[..., 0].mean() > 200 and frame[..., 2].mean() < 60
    (still,) = [r for r in records if r["is_image"]]
    assert still["source"] == b"still.png" and panoramic_videos.decode_frame(
        still["frames"][0]
    ).shape == (
        512,
        1024,
        3,
    )
    counts = panoramic_videos.split_counts(data_dir, "real")
    assert counts["train"]["skipped_files"] == ["cut_off.mp4", "wide.mp4", "cube.mp4"]
    assert not (data_dir / "panoramic_videos" / "real" / preparation.STAGING_DIR).exists()


def test_pipeline_says_what_it_does_with_images(built, caplog):
    data_dir, _ = built
    config = data_config_lib.data_config()
    config.data_dir, config.name = str(data_dir), "real"
    with caplog.at_level(logging.WARNING):
        pipeline._train_source(config)  # video-only training of a split with an image
    assert "has 1 images that config.data.image_ratio = 0 leaves unused" in caplog.text
    caplog.clear()
    config.train_split, config.image_ratio = "test", 0.2
    with caplog.at_level(logging.WARNING):
        pipeline._train_source(config)
    assert "has no images: its image batches (config.data.image_ratio = 0.2)" in caplog.text


def test_inspect_dataset(built, tmp_path):
    data_dir, _ = built
    sheet = tmp_path / "sheet.png"
    result = run_command(
        "inspect_dataset", data_dir, "real", f"--out={sheet}", "--config.data.batch_size=2",
        "--config.data.image_ratio=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "train: 3 records: 1 videos (" in result.stdout
    assert "test: 1 records: 1 videos (" in result.stdout
    assert "skipped at build: cut_off.mp4, wide.mp4, cube.mp4" in result.stdout
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[0] > 2 * 160 and image.shape[1] > 5 * 160


def _small_footage(folder: Path) -> Path:
    """Three short clips (the second and third long enough to be killed in)."""
    folder.mkdir()
    lavfi_clip(folder / "a.mp4", "testsrc2", "640x320", 1)
    lavfi_clip(folder / "b.mp4", "testsrc2", "1280x640", 4)
    lavfi_clip(folder / "c.mp4", "testsrc2", "1280x640", 4)
    lines = [{"file": f"{n}.mp4", "caption": n} for n in "abc"]
    return write_captions(folder, [*lines[:2], {**lines[2], "split": "test"}])


def _all_records(data_dir: Path, name: str) -> dict:
    records = {}
    for split in ("train", "test"):
        source = panoramic_videos.open_data_source(data_dir, name, split)
        records[split] = [
            {key: (list(v) if key == "frames" else v) for key, v in source[i].items()}
            for i in range(len(source))
        ]
    return records


def _finished(staging):
    """The staged files' summaries; not a summary still being written (`.<name>.<random>.tmp.json`,
    io_utils.atomic_path), which the builder never reads."""
    return sorted(p for p in staging.glob("*.json") if not p.name.startswith("."))


def test_kill_9_then_rerun_resumes_and_equals_an_uninterrupted_build(tmp_path):
    src = _small_footage(tmp_path / "src")
    command = [*PREPARE, "--src", str(src), "--name", "k", "--height", "64", "--workers", "1"]
    data_dir = tmp_path / "data"
    staging = data_dir / "panoramic_videos" / "k" / preparation.STAGING_DIR
    process = subprocess.Popen([*command, "--out", str(data_dir)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not _finished(staging) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = _finished(staging)
    assert len(finished) == 1, "the build ended before it could be killed after its first file"
    assert not (data_dir / "panoramic_videos" / "k" / "1.0.0").exists()
    first_shard = finished[0].with_suffix(".array_record")
    inode = first_shard.stat().st_ino

    rerun = subprocess.run(
        [*command, "--out", str(data_dir)], capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming: 1 of 3 files already encoded" in rerun.stdout
    assert "a.mp4:" not in rerun.stderr  # not encoded again
    assert "file 2/3 (" in rerun.stderr and "b.mp4: 1 records" in rerun.stderr
    assert "file 3/3 (" in rerun.stderr and "c.mp4: 1 records" in rerun.stderr
    shard = (
        data_dir
        / "panoramic_videos"
        / "k"
        / "1.0.0"
        / "panoramic_videos-train.array_record-00000-of-00002"
    )
    assert shard.stat().st_ino == inode  # the first file's shard is the one written before the kill

    # The same build uninterrupted (in this process: the CLI is a thin layer over prepare).
    preparation.prepare(src, tmp_path / "clean", "k", height=64, fps=16, progress=False)
    resumed, uninterrupted = _all_records(data_dir, "k"), _all_records(tmp_path / "clean", "k")
    assert [len(resumed[s]) for s in ("train", "test")] == [2, 1]
    assert resumed == uninterrupted
