"""Faults through the real CLI: kill -9 -> resume on the same data order; SIGTERM -> save, exit 0."""

import signal
import subprocess
import time

import numpy as np
import pytest
from test_train import cli, read_losses, subprocess_env, write_dataset

from viewpoint_jax.training import checkpoints


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def _lines(workdir):
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_steps(process, workdir, count, timeout=240):
    """Until `metrics.jsonl` has `count` lines (steps logged, by this run and earlier ones)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _lines(workdir) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.stderr.read()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no {count} steps within {timeout} s")


def _latest(workdir):
    return checkpoints.Checkpointer(workdir / "checkpoints", every_steps=1, keep=9).latest_step()


def test_kill9_resumes_on_the_same_data_order_and_sigterm_saves(tmp_path, dataset):
    data_dir, name = dataset
    env = subprocess_env(devices=1)
    every = "--config.checkpoint.every_steps=2"

    reference = tmp_path / "reference"
    done = subprocess.run(
        cli(reference, data_dir, name, "--config.num_steps=16", every),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    expected = read_losses(reference)
    assert sorted(expected) == list(range(1, 17))

    # kill -9 in the middle of a run (checkpoints may be mid-write): only complete ones count.
    run = tmp_path / "run"
    command = cli(run, data_dir, name, "--config.num_steps=1000", every)
    killed = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(killed, run, 5)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    last_complete = _latest(run)
    assert last_complete is not None and 2 <= last_complete < 14, last_complete
    assert last_complete % 2 == 0

    # The restart resumes there, reads the same batches, and SIGTERM makes it save and exit 0.
    resumed = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(resumed, run, _lines(run) + 3)
    resumed.send_signal(signal.SIGTERM)
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert f"resumed from {run / 'checkpoints'}/{last_complete}" in stderr
    assert "SIGTERM: saved step" in stderr
    losses = read_losses(run)
    stopped_at = max(losses)
    assert _latest(run) == stopped_at  # the SIGTERM checkpoint, off the every-2 schedule or not
    compared = [s for s in range(last_complete + 1, stopped_at + 1) if s in expected]
    assert len(compared) >= 3
    np.testing.assert_allclose(
        [losses[s] for s in compared], [expected[s] for s in compared], rtol=1e-6
    )


def test_sigterm_before_the_first_step_exits_at_once(tmp_path, dataset):
    """SIGTERM while the run sets up or compiles its first step (Python handlers cannot run
    inside an XLA compile): nothing new to save, so it exits 0 at once, not after compiling."""
    data_dir, name = dataset
    env = subprocess_env(devices=1)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "cold_cache")  # a real compile, no hit
    run = tmp_path / "run"
    command = cli(run, data_dir, name, "--config.num_steps=4", "--config.model.dim=40")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # the start-up summary: setting up, the first step still ahead
        if line.startswith("steps: "):
            break
    process.send_signal(signal.SIGTERM)
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 0, stderr
    assert "SIGTERM before the first step finished" in stderr
    assert _lines(run) == 0 and _latest(run) is None  # no step was taken, none saved
