"""The TFDS builder: a user folder of ERP videos, images and captions.jsonl -> ArrayRecord."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from viewpoint_jax.common.video_io import read_video, write_video
from viewpoint_jax.data import panoramic_videos, preparation

ROOT = Path(__file__).resolve().parents[1]


def _frames(rng, count, height=16):
    return (rng.random((count, height, 2 * height, 3)) * 255).astype(np.uint8)


def _write_folder(folder: Path, lines: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_video(folder / "long.mp4", _frames(rng, 7), fps=8)
    write_video(folder / "short.mp4", _frames(rng, 3), fps=8)
    cv2.imwrite(str(folder / "still.png"), _frames(rng, 1)[0])
    (folder / panoramic_videos.CAPTIONS_FILE).write_text(
        "".join(json.dumps(x) + "\n" for x in lines)
    )
    return folder


LINES = [
    {"file": "long.mp4", "caption": "a long clip, é"},
    {"file": "still.png", "caption": "a still"},
    {"file": "short.mp4", "caption": "held out", "split": "test"},
]


def test_round_trip_without_tensorflow(tmp_path):
    src = _write_folder(tmp_path / "src", LINES)
    out = preparation.prepare(
        src, tmp_path / "data", "tiny", frame_format="png", max_frames=4, progress=False
    )
    assert out == tmp_path / "data" / "panoramic_videos" / "tiny" / "1.0.0"
    train = panoramic_videos.open_data_source(tmp_path / "data", "tiny", "train")
    records = sorted(train, key=lambda r: (r["source"], r["segment"]))
    assert [(r["source"], r["segment"], r["num_frames"], bool(r["is_image"])) for r in records] == [
        (b"long.mp4", 0, 4, False),
        (b"long.mp4", 1, 3, False),
        (b"still.png", 0, 1, True),
    ]
    # PNG frames are lossless: the records hold exactly what OpenCV decodes from the sources.
    video, fps = read_video(src / "long.mp4")
    frames = [panoramic_videos.decode_frame(f) for r in records[:2] for f in r["frames"]]
    np.testing.assert_array_equal(np.stack(frames), video)
    assert records[0]["fps"] == pytest.approx(fps)
    assert (records[0]["height"], records[0]["width"]) == (16, 32)
    image = cv2.cvtColor(cv2.imread(str(src / "still.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(panoramic_videos.decode_frame(records[2]["frames"][0]), image)
    assert records[0]["caption"].decode() == "a long clip, é"
    # The registered builder also reads through the public tfds entry point.
    test = tfds.data_source("panoramic_videos/tiny", data_dir=str(tmp_path / "data"), split="test")
    assert len(test) == 1 and test[0]["caption"] == b"held out"
    counts = panoramic_videos.split_counts(tmp_path / "data", "tiny")
    assert counts["train"] == {"videos": 1, "video_segments": 2, "images": 1, "skipped_files": []}
    assert counts["test"]["videos"] == 1
    assert "tensorflow" not in sys.modules


def test_resize_at_build_time_and_rebuild_replaces(tmp_path):
    src = _write_folder(tmp_path / "src", LINES[:1])
    preparation.prepare(src, tmp_path / "data", height=8, progress=False)
    (record,) = panoramic_videos.open_data_source(tmp_path / "data")
    assert panoramic_videos.decode_frame(record["frames"][0]).shape == (8, 16, 3)
    (src / panoramic_videos.CAPTIONS_FILE).write_text(
        json.dumps({"file": "long.mp4", "caption": "new"})
    )
    preparation.prepare(src, tmp_path / "data", progress=False)
    (record,) = panoramic_videos.open_data_source(tmp_path / "data")
    assert record["caption"] == b"new" and record["height"] == 16


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"file": "long.mp4", "caption": "ok"}\n{"file": oops}\n',
            "captions.jsonl:2: invalid JSON",
        ),
        ('{"file": "long.mp4"}\n', "captions.jsonl:1: missing or non-string key 'caption'"),
        ('{"file": "gone.mp4", "caption": "x"}\n', "captions.jsonl:1: file not found"),
        ('{"file": "notes.txt", "caption": "x"}\n', "'notes.txt' is neither a video"),
        ('{"file": "long.mp4", "caption": "x", "split": "a b"}\n', "'split' must be a name"),
        (
            '{"file": "long.mp4", "caption": "x"}\n{"file": "long.mp4", "caption": "y"}\n',
            "captions.jsonl:2: 'long.mp4' already listed on line 1",
        ),
        ("\n", "lists no files"),
    ],
)
def test_bad_captions_name_the_line(tmp_path, text, message):
    src = _write_folder(tmp_path / "src", [])
    (src / panoramic_videos.CAPTIONS_FILE).write_text(text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        preparation.prepare(src, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "panoramic_videos").exists()


def test_unreadable_and_non_erp_files(tmp_path):
    src = _write_folder(tmp_path / "src", [])
    (src / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    cv2.imwrite(str(src / "square.png"), np.zeros((16, 16, 3), np.uint8))
    lines = [{"file": "long.mp4", "caption": "ok"}, {"file": "broken.mp4", "caption": "bad"}]
    (src / panoramic_videos.CAPTIONS_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        preparation.prepare(src, tmp_path / "data", progress=False)
    preparation.prepare(src, tmp_path / "data", skip_unreadable=True, progress=False)
    assert [r["source"] for r in panoramic_videos.open_data_source(tmp_path / "data")] == [
        b"long.mp4"
    ]
    assert panoramic_videos.split_counts(tmp_path / "data")["train"]["skipped_files"] == [
        "broken.mp4"
    ]
    (src / panoramic_videos.CAPTIONS_FILE).write_text(
        json.dumps({"file": "square.png", "caption": "x"})
    )
    with pytest.raises(ValueError, match=r"square\.png.*not 2:1"):
        preparation.prepare(src, tmp_path / "data2", progress=False)
    with pytest.raises(ValueError, match="no dataset 'missing'"):
        panoramic_videos.open_data_source(tmp_path / "data", "missing")
    with pytest.raises(ValueError, match="no split 'valid'"):
        panoramic_videos.open_data_source(tmp_path / "data", split="valid")


def test_prepare_dataset_cli(tmp_path):
    src = _write_folder(tmp_path / "src", LINES)
    command = [sys.executable, "-m", "viewpoint_jax.prepare_dataset", "--src", str(src)]
    ok = subprocess.run(
        [*command, "--out", str(tmp_path / "data"), "--name", "cli", "--height", "8"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "train: 1 videos (1 records), 1 images, 0 skipped" in ok.stdout
    assert len(panoramic_videos.open_data_source(tmp_path / "data", "cli", "test")) == 1
    (src / panoramic_videos.CAPTIONS_FILE).write_text('{"file": "long.mp4"')
    bad = subprocess.run(
        [*command, "--out", str(tmp_path / "data"), "--name", "bad"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "captions.jsonl:1: invalid JSON" in bad.stderr


def test_parallel_build_equals_serial_and_a_failed_build_resumes(tmp_path, monkeypatch, capsys):
    src = _write_folder(tmp_path / "src", LINES)
    preparation.prepare(src, tmp_path / "serial", frame_format="png", max_frames=4, progress=False)

    def crash(*args):
        raise RuntimeError("crash before assembly")

    with monkeypatch.context() as patch:
        patch.setattr(preparation, "_assemble", crash)
        with pytest.raises(RuntimeError, match="crash"):
            preparation.prepare(
                src, tmp_path / "parallel", frame_format="png", max_frames=4, workers=3
            )
    staging = tmp_path / "parallel" / "panoramic_videos" / "default" / preparation.STAGING_DIR
    assert len(list(staging.glob("*.json"))) == 3
    capsys.readouterr()
    preparation.prepare(src, tmp_path / "parallel", frame_format="png", max_frames=4, workers=3)
    assert "resuming: 3 of 3 files already encoded" in capsys.readouterr().out
    assert not staging.exists()
    for split in ("train", "test"):
        serial = panoramic_videos.open_data_source(tmp_path / "serial", split=split)
        parallel = panoramic_videos.open_data_source(tmp_path / "parallel", split=split)
        assert [serial[i] for i in range(len(serial))] == [
            parallel[i] for i in range(len(parallel))
        ]


def test_non_utf8_captions_name_the_file_and_line(tmp_path):
    folder = _write_folder(tmp_path / "src", LINES)
    text = (folder / "captions.jsonl").read_bytes().splitlines()
    text[1] = text[1].replace(b"a still", b"caf\xe9 (latin-1)")
    (folder / "captions.jsonl").write_bytes(b"\n".join(text) + b"\n")
    with pytest.raises(ValueError, match=r"captions.jsonl:2: not UTF-8 \(byte 0xe9 at column"):
        preparation.read_captions(folder)
