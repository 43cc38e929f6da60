"""Faults of sampling and its outputs that used to lose work (issue 31), each reproduced on real
files and processes: --overwrite of a folder sample did not write (1), one bad --prompts line
or one failed video ending the batch (2), an unreadable latest checkpoint (6), a corrupt run
config.json (7), non-finite flags (9), the viewer's placeholders, NUL names and the temporaries
of a killed output (10). Full and read-only disks are in test_faults_runs.py."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_checkpoint_faults import _truncate_array_files
from test_sample_cli import REPO, run_in_process
from test_train import ONE_DEVICE, micro_config, procedural_records, subprocess_env

from viewpoint_jax import evaluate
from viewpoint_jax.common import cli, video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.fileio import atomic_directory
from viewpoint_jax.generation import outputs, viewer
from viewpoint_jax.generation.models import sampling_config
from viewpoint_jax.generation.requests import Request, read_prompt_file
from viewpoint_jax.training import loop


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run of configs/tiny.py:micro, two steps, a checkpoint after each."""
    config = micro_config()
    config.num_steps = 2
    config.checkpoint.every_steps = 1
    config.checkpoint.keep = 3
    workdir = tmp_path_factory.mktemp("run")
    loop.train(
        config, workdir, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    return workdir


def copy_of(run_dir, tmp_path):
    """A copy of the run that a test may break (the module's run stays whole)."""
    return shutil.copytree(run_dir, tmp_path / "run")


def sample_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "viewpoint_jax.sample", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=subprocess_env(), timeout=300,
    )  # fmt: skip


def one_error_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# --- 1. --overwrite replaces only a folder sample wrote -------------------------------------------


def test_overwrite_never_replaces_the_run_or_the_current_directory(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    result = sample_cli(
        "--checkpoint", run, "--out", run, "--overwrite", "--prompt", "x", cwd=tmp_path
    )
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert f"--out {run}: refusing to replace it" in line and "input of this command" in line
    assert sorted(p.name for p in run.iterdir()) == before  # checkpoints/, config.json kept

    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    result = sample_cli("--checkpoint", run, "--out", ".", "--overwrite", "--prompt", "x", cwd=work)
    assert result.returncode == 2 and "the current directory" in one_error_line(result.stderr)
    assert (work / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_sample_folder_but_not_one_with_other_files(
    run_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    common = ["--checkpoint", str(run_dir), "--prompt", "x", "--steps", "1", "--out", "out"]
    code, stderr = run_in_process(common, capsys)
    assert code == 0, stderr
    (tmp_path / "out" / "pano.mp4").write_bytes(b"stale")
    code, stderr = run_in_process([*common, "--overwrite"], capsys)
    assert code == 0, stderr  # a folder sample wrote: replaced
    assert video_io.read_video(tmp_path / "out" / "pano.mp4")[0].shape[0] > 0
    (tmp_path / "out" / "my_notes.txt").write_text("mine")
    code, stderr = run_in_process([*common, "--overwrite"], capsys)
    assert code == 2 and "not a folder this program wrote (it holds my_notes.txt)" in stderr
    assert (tmp_path / "out" / "my_notes.txt").read_text() == "mine"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    argv = ["evaluate", "--inputs", str(tmp_path / "out"), "--out", str(mine), "--overwrite"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(evaluate.evaluate_main, evaluate.define_flags, argv=argv)
    assert exit_info.value.code == 2
    assert "not a folder this program wrote" in one_error_line(capsys.readouterr().err)
    assert (mine / "thesis.tex").read_text() == "mine"


# --- 2. a bad --prompts line, or a failed video, is reported and the batch goes on ---------------


def test_bad_lines_and_failed_videos_are_reported_and_the_rest_are_made(
    run_dir, tmp_path, capsys, monkeypatch
):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a", "seed": 1.5}\n'
        '{"prompt": "b", "num_frames": 5.0}\n'
        '{"prompt": "c", "seed": 1e23}\n'
        '{"prompt": "d", "fps": 1e999}\n'
        '{"prompt": "e", "name": "full"}\n'
        '{"prompt": "f", "name": "good"}\n'
    )
    write = outputs.cv2.imwrite

    def full_disk_for_one(path, image):  # what cv2 does on a full disk: False, nothing written
        return False if "/.full." in str(path) else write(path, image)

    monkeypatch.setattr(outputs.cv2, "imwrite", full_disk_for_one)
    out = tmp_path / "out"
    args = ["--checkpoint", str(run_dir), "--prompts", str(prompts), "--steps", "1"]
    code, stderr = run_in_process([*args, "--out", str(out)], capsys)
    assert code == 1, stderr  # some lines failed
    assert f"{prompts} line 1: seed must be an integer, got 1.5" in stderr
    assert "line 2: num_frames must be an integer, got 5.0" in stderr
    assert "line 3: seed must be an integer, got 1e+23" in stderr
    assert "line 4: fps must be a finite number, got inf" in stderr
    assert f"{prompts} line 5 (full): cannot write {out / 'full'}" in stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # the line after the failure too
    monkeypatch.undo()
    code, stderr = run_in_process([*args, "--out", str(out)], capsys)
    assert "1 to generate, 1 finished skipped" in stderr  # a rerun makes only the failed one
    assert sorted(p.name for p in out.iterdir()) == ["full", "good"]


# --- 6. sample falls back to the newest readable checkpoint, as training does --------------------


def test_sample_reads_the_previous_checkpoint_when_the_latest_is_truncated(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    _truncate_array_files(run / "checkpoints" / "2")
    result = sample_cli(
        "--checkpoint", run, "--prompt", "x", "--steps", "1", "--out", tmp_path / "o", cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 2 does not read back, skipped" in result.stderr
    assert f"using the newest readable checkpoint, {run / 'checkpoints' / '1'}" in result.stderr
    assert "Traceback" not in result.stderr
    # 10: no Orbax warnings that mean nothing to the user.
    assert "Metadata file does not exist" not in result.stderr
    assert "read only" not in result.stderr
    assert (run / "checkpoints" / "2").is_dir()  # the run is not sample's to change
    assert (tmp_path / "o" / "pano.mp4").is_file()


# --- 7. a corrupt run config.json is one line naming the file and the key ------------------------


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "is not valid JSON (Expecting value: line 1 column 1)"),
        ('{"data": {"num_frames": ', "is not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
        ('{"data": {}, "model": 5}', "config.model must be a section (a JSON object), got 5"),
        ('{"data": {"num_frames": "five"}}', "config.data.num_frames has the wrong type"),
        ('{"data": {}, "model": {"preset": "huge"}}', "config.model.preset: must be one of"),
        ("{}", "has no 'data' section: not a training run's config (pass --config)"),
    ],
)
def test_a_corrupt_run_config_is_named_with_its_key(run_dir, tmp_path, capsys, text, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    with pytest.raises(UserError) as info:
        sampling_config(run)
    assert str(info.value).startswith(str(run / "config.json")) and message in str(info.value)
    args = ["--checkpoint", str(run), "--prompt", "x", "--out", str(tmp_path / "o")]
    code, stderr = run_in_process(args, capsys)
    assert code == 2 and message in one_error_line(stderr)


def test_a_real_run_config_reads_back_through_the_schema(run_dir):
    config = sampling_config(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    assert config.model.dim == saved["model"]["dim"]
    assert config.data.num_frames == saved["data"]["num_frames"]


# --- 9. non-finite numbers are refused at the flag -------------------------------------------------


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--guidance_scale", "inf"], "--guidance_scale must be a finite number, got inf"),
        (["--shift", "nan"], "--shift must be a finite number, got nan"),
        (["--fps", "inf"], "--fps must be a finite number > 0, got inf"),
    ],
)
def test_non_finite_flags_are_refused(run_dir, tmp_path, capsys, extra, message):
    args = ["--checkpoint", str(run_dir), "--prompt", "x", "--out", str(tmp_path / "o"), *extra]
    code, stderr = run_in_process(args, capsys)
    assert code == 2 and message in one_error_line(stderr)
    assert not (tmp_path / "o").exists()


# --- 10. the viewer's placeholders, NUL names, the temporaries of a killed output -----------------


def test_a_title_with_a_placeholder_stays_text():
    video = b"\x00\x01 not really an mp4" * 50
    frame = np.zeros((8, 16, 3), np.uint8)
    page = viewer.viewer_html(video, frame, title="__VIDEO__ and __POSTER__")
    assert page.count(viewer.base64.b64encode(video).decode("ascii")) == 1
    assert "<title>__VIDEO__ and __POSTER__</title>" in page


def test_a_name_with_a_nul_is_a_bad_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x", "name": "a\u0000b"}) + "\n")
    (error,) = read_prompt_file(prompts, Request(prompt=""))
    assert isinstance(error, UserError) and "line 1: name 'a\\x00b' is not a folder name" in str(
        error
    )


HOLD_AN_OUTPUT = """
import sys, time
from viewpoint_jax.common.fileio import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "pano.mp4").write_bytes(b"half written")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_the_temporary_of_a_killed_output_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "out"
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_AN_OUTPUT, str(out)],
        stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO,
    )  # fmt: skip
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGTERM)
    writer.wait(timeout=30)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert len(left) == 1 and left[0].name.endswith(".tmp")  # what SIGTERM leaves
    (tmp_path / "other").mkdir()  # not an output's temporary: left alone
    with atomic_directory(out) as tmp:
        (tmp / "settings.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]
