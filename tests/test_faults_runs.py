"""Faults of training, dataset preparation and evaluation that used to lose work (issue 31), each
reproduced with real processes, signals and disks: two runs on one folder (3), read-only and
full disks (4, small tmpfs mounts), a learning rate that explodes the weights (5), captions
naming files outside --src (8)."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_sample_cli import REPO, run_in_process
from test_train import (
    ONE_DEVICE,
    cli,
    micro_config,
    procedural_records,
    subprocess_env,
    write_dataset,
)

from viewpoint_jax import evaluate
from viewpoint_jax.common import cli as cli_lib
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.data import preparation
from viewpoint_jax.generation import models as models_lib
from viewpoint_jax.training import checkpoints, loop


def one_error_line(stderr):
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def command(name, *args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", f"viewpoint_jax.{name}", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=subprocess_env(), timeout=300,
    )  # fmt: skip


def source_folder(root, height=16, frames=3, noise=False):
    """A --src folder: one ERP clip and its captions.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = (frames, height, 2 * height, 3)
    video = rng.integers(0, 256, shape, np.uint8) if noise else np.full(shape, 90, np.uint8)
    video_io.write_video(root / "clip.mp4", video, fps=8)
    (root / "captions.jsonl").write_text(json.dumps({"file": "clip.mp4", "caption": "grey"}) + "\n")
    return root


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size, read_only) -> a small tmpfs (a real full or read-only disk), unmounted
    at the end; the test is skipped where mounting is not allowed (not root, a container)."""
    mounted = []

    def mount(name, size="2m", read_only=False):
        target = tmp_path / name
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(folder, leave_bytes):
    """Fills `folder`'s filesystem up to `leave_bytes` free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as filler:
        filler.write(b"\0" * max(0, free - leave_bytes))


# --- 3. one run at a time on a folder; a dead run's lock is taken over ---------------------------

HOLD_THE_LOCK = """
import sys, time
from viewpoint_jax.common import locks
with locks.hold(sys.argv[1], "training run", "--workdir"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_locked_folder_is_refused_and_a_dead_runs_lock_is_taken_over(
    tmp_path, capsys
):
    from viewpoint_jax.common import locks

    folder = tmp_path / "shared"
    src = source_folder(tmp_path / "src")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(folder)],
        stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        holder_is = f"a training run (host {socket.gethostname()}, pid {holder.pid}, started 20"
        # A real dataset: the run's inputs are checked before its folder is touched.
        data_dir, name = write_dataset(tmp_path / "dataset")
        train = subprocess.run(
            cli(folder, data_dir, name),
            capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300,
        )  # fmt: skip
        assert train.returncode == 2
        line = one_error_line(train.stderr)
        assert f"--workdir {folder} is in use by {holder_is}" in line
        prepare = command("prepare_dataset", "--src", src, "--out", folder, "--height", "16")
        assert prepare.returncode == 2
        assert f"--out {folder} is in use by {holder_is}" in one_error_line(prepare.stderr)
        assert sorted(p.name for p in folder.iterdir()) == [locks.LOCK_NAME]  # nothing written
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a run that dies without releasing anything
        holder.wait(timeout=30)
    capsys.readouterr()
    with locks.hold(folder, "training run", "--workdir") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over the lock of a training run (host {socket.gethostname()}, " in err
    assert f"pid {holder.pid}," in err


# --- 4. read-only and full disks: one line before the work, or naming what survives -------------


def test_read_only_destinations_are_refused_before_any_work(tmp_path, tmpfs, capsys):
    read_only = tmpfs("ro", size="1m", read_only=True)
    not_writable = "is not writable (Read-only file system)"
    data_dir, name = write_dataset(tmp_path / "dataset")  # inputs are checked first
    train = subprocess.run(
        cli(read_only / "run", data_dir, name),
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert train.returncode == 2
    assert f"cannot write {read_only / 'run'}: {read_only} {not_writable}" in one_error_line(
        train.stderr
    )
    src = source_folder(tmp_path / "src")
    prepare = command("prepare_dataset", "--src", src, "--out", read_only / "data")
    assert prepare.returncode == 2
    assert not_writable in one_error_line(prepare.stderr)
    argv = ["evaluate", "--inputs", str(src / "clip.mp4"), "--out", str(read_only / "eval")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_lib.run(evaluate.evaluate_main, evaluate.define_flags, argv=argv)
    assert exit_info.value.code == 2
    assert not_writable in one_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = micro_config()
    config.num_steps = config.checkpoint.every_steps = 1
    workdir = tmp_path_factory.mktemp("run")
    loop.train(
        config, workdir, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    return workdir


def test_sampling_onto_a_full_disk_is_refused_before_the_model_loads(
    run_dir, tmp_path, tmpfs, capsys, monkeypatch
):
    full = tmpfs("full", size="2m")
    fill(full, leave_bytes=64 * 1024)

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models_lib, "load_models", never)
    args = ["--checkpoint", str(run_dir), "--prompt", "x", "--out", str(full / "out")]
    code, stderr = run_in_process(args, capsys)
    assert code == 2
    line = one_error_line(stderr)
    assert f"cannot write {full / 'out'}: it needs about" in line and f"{full} has 0.1 MiB" in line


def test_training_onto_a_full_disk_is_refused_before_the_first_step(tmp_path, tmpfs):
    full = tmpfs("full", size="2m")
    fill(full, leave_bytes=128 * 1024)  # less than one checkpoint of the micro model
    config = micro_config()
    with pytest.raises(UserError, match=rf"cannot write {full}/run/checkpoints: it needs about"):
        train_in(full / "run")(config)
    assert not (full / "run" / "metrics.jsonl").exists()


def test_a_full_disk_while_preparing_names_what_survives(tmp_path, tmpfs):
    full = tmpfs("full", size="1m")
    src = source_folder(tmp_path / "src", height=128, frames=12, noise=True)
    prepare = command(
        "prepare_dataset", "--src", src, "--out", full, "--height", "0", "--fps", "0",
        "--format", "png",
    )  # fmt: skip
    assert prepare.returncode == 2, prepare.stderr[-2000:]
    line = one_error_line(prepare.stderr)
    assert f"writing under {full} failed" in line and "No space left on device" in line
    assert "the 0 files encoded so far are kept in" in line and "a rerun resumes" in line


# --- 5. the NaN guard: exploded weights are neither kept nor saved, and the message is true ------


def test_an_exploding_learning_rate_saves_nothing_bad_and_says_which_checkpoint_is_good(tmp_path):
    config = micro_config()
    config.num_steps = 2
    config.checkpoint.every_steps = 2
    config.max_consecutive_nonfinite = 3
    train = train_in(tmp_path)
    train(config)  # two good steps: checkpoint 2
    good = checkpoint_params(tmp_path, config, 2)
    config.num_steps = 8
    config.optim.lr = 1e30
    with pytest.raises(loop.NonFiniteLossError) as info:
        train(config)
    assert f"the last good checkpoint is {tmp_path / 'checkpoints' / '2'}" in str(info.value)
    assert saved_steps(tmp_path) == [2]  # no exploded state saved
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_total"] for r in steps[2:]] == [1, 2, 3]  # each skipped and counted
    jax_tree_equal(checkpoint_params(tmp_path, config, 2), good)

    fresh = tmp_path / "fresh"  # from the first step on: no checkpoint, and the message says so
    with pytest.raises(loop.NonFiniteLossError, match="no checkpoint was saved"):
        train_in(fresh)(config)
    assert saved_steps(fresh) == []


def saved_steps(workdir):
    folder = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    )


def train_in(workdir):
    def train(config):
        return loop.train(
            config, workdir, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
        )

    return train


def checkpoint_params(workdir, config, step):
    trainer = loop.make_trainer(config, *loop.mesh_and_rules(config, ONE_DEVICE))
    checkpointer = checkpoints.Checkpointer(workdir / "checkpoints", every_steps=1, keep=9)
    with contextlib.closing(checkpointer):
        state = checkpointer.restore(step, trainer.abstract_state_with_shardings())
    params = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
    assert all(np.isfinite(x).all() and np.abs(x).max() < 100 for x in params)
    return params


def jax_tree_equal(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


# --- 8. captions.jsonl names only files inside --src ---------------------------------------------


def test_captions_must_name_files_inside_the_source_folder(tmp_path):
    src = source_folder(tmp_path / "src")
    outside = tmp_path / "outside.mp4"
    shutil.copy(src / "clip.mp4", outside)
    (src / "link.mp4").symlink_to(outside)
    captions = src / "captions.jsonl"
    for file in ["../outside.mp4", str(outside), "link.mp4"]:
        captions.write_text(
            json.dumps({"file": "clip.mp4", "caption": "in"}) + "\n"
            + json.dumps({"file": file, "caption": "out"}) + "\n"
        )  # fmt: skip
        with pytest.raises(ValueError, match=rf"captions.jsonl:2: .*{src}"):
            preparation.read_captions(src)
        dry = command("prepare_dataset", "--src", src, "--out", tmp_path / "d", "--dry_run")
        assert dry.returncode == 2 and "captions.jsonl:2: " in one_error_line(dry.stderr)
    assert "pass --follow_links" in dry.stderr
    entries = preparation.read_captions(src, follow_links=True)  # the link, when asked for
    assert [e.file for e in entries] == ["clip.mp4", "link.mp4"]
