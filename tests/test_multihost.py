"""Two processes on localhost (jax.distributed, gloo CPU collectives) train one model together.

Every 2-process run costs ~30-45 s on 2 CPU cores, mostly process 1 compiling: JAX writes the
persistent compilation cache from process 0 only, and process 1's cache keys differ from process
0's (its own devices), so process 1 recompiles in every run. Hence one uninterrupted run, shared,
and the SIGTERM test starts from a copy of its checkpoint (no init to compile).
"""

import functools
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train import cli, micro_config, read_losses, subprocess_env, write_dataset

from viewpoint_jax.training import checkpoints, optim
from viewpoint_jax.training import step as step_lib

STEPS = 12  # the uninterrupted run (checkpoints at 6 and 12)
RESUME_AT = 6  # the interrupted run starts from the uninterrupted run's checkpoint here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, dataset, *overrides: str) -> list[subprocess.Popen]:
    """Processes 0 and 1 of one run: mesh data 2 x fsdp 2 over 2 devices per process."""
    data_dir, name = dataset
    port = _free_port()
    return [
        subprocess.Popen(
            cli(
                workdir,
                data_dir,
                name,
                "--config.mesh.data=2",
                *overrides,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=subprocess_env(devices=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _finish(processes, timeout=280) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process once all exited 0; kills them all on any failure."""
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for i, (process, (_, stderr)) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i} exited {process.returncode}: {stderr[-3000:]}"
    return outputs


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, dataset):
    """A 2-process run of STEPS steps (checkpoints every RESUME_AT): its workdir."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    overrides = (f"--config.num_steps={STEPS}", f"--config.checkpoint.every_steps={RESUME_AT}")
    _finish(_launch(workdir, dataset, *overrides))
    return workdir


@pytest.mark.slow
def test_two_processes_train_together_and_agree(uninterrupted):
    workdir = uninterrupted
    main, other = read_losses(workdir), read_losses(workdir, "metrics.1.jsonl")
    assert sorted(main) == list(range(1, STEPS + 1))
    np.testing.assert_array_equal([other[s] for s in main], [main[s] for s in main])
    assert all(np.isfinite(list(main.values())))
    # 4 global devices: mesh data 2 x fsdp 2; each host fed 2 of the 4 examples of a batch.
    config = json.loads((workdir / "config.json").read_text())
    assert config["mesh"]["data"] == 2 and config["data"]["batch_size"] == 4
    # Each host checkpointed its own data-iterator state.
    data_dir = workdir / "checkpoints" / str(STEPS) / "data"
    data_states = sorted(p.name for p in data_dir.glob("*.json"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"], data_states


def _stop_step(stdout: str, stderr: str) -> int:
    assert "(stopped by SIGTERM)" in stdout, stdout
    saved = re.findall(r"SIGTERM: saved step (\d+)", stderr)
    assert len(saved) == 1, stderr[-3000:]
    return int(saved[0])


def _wait_until_stopped(pid: int) -> None:
    """Until the kernel has stopped `pid` (SIGSTOP takes effect asynchronously)."""
    stat = Path(f"/proc/{pid}/stat")
    while stat.read_text().rsplit(") ", 1)[1][0] not in "Tt":  # the state field
        time.sleep(0.001)


def _sigterm_after(process, metrics_file, lines: int, timeout=240) -> int:
    """SIGTERM to `process` once `metrics_file` has `lines` lines; returns the exact count then.

    The process is frozen (SIGSTOP) while its lines are counted and the signal is queued, so
    the count is the one it resumes with (SIGCONT delivers the SIGTERM).
    """
    deadline = time.monotonic() + timeout
    while _lines(metrics_file) < lines:
        if process.poll() is not None:
            raise AssertionError(f"process exited early: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {lines} steps logged in {metrics_file} within {timeout} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGSTOP)
    try:
        _wait_until_stopped(process.pid)
        logged = _lines(metrics_file)
        process.send_signal(signal.SIGTERM)
    finally:
        process.send_signal(signal.SIGCONT)
    return logged


def _restore(checkpoint_dir, step: int) -> dict:
    """The train state of checkpoint `step`, restored into this (single) process."""
    config = micro_config()
    tx, _ = optim.make_optimizer(config.optim, config.num_steps)
    abstract = jax.eval_shape(functools.partial(step_lib.init_state, config, tx), jax.random.key(0))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
    )
    checkpointer = checkpoints.Checkpointer(checkpoint_dir, every_steps=1, keep=9)
    try:
        assert checkpointer.latest_step() == step
        return jax.device_get(checkpointer.restore(step, abstract))
    finally:
        checkpointer.close()


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(
    tmp_path, dataset, uninterrupted
):
    expected = read_losses(uninterrupted)
    workdir = tmp_path / "run"
    # Started from a copy of the uninterrupted run's checkpoint (so process 1, which never hits
    # the compilation cache, skips compiling the init); no scheduled checkpoint after it.
    checkpoints = workdir / "checkpoints"
    shutil.copytree(uninterrupted / "checkpoints" / str(RESUME_AT), checkpoints / str(RESUME_AT))
    never = "--config.checkpoint.every_steps=1000"
    processes = _launch(workdir, dataset, "--config.num_steps=1000", never)
    try:
        last_logged = RESUME_AT + _sigterm_after(processes[1], workdir / "metrics.1.jsonl", lines=1)
    except BaseException:
        for process in processes:
            process.kill()
        raise
    outputs = _finish(processes)
    for _, stderr in outputs:
        assert f"resumed from {checkpoints}/{RESUME_AT}" in stderr, stderr[-3000:]
    stops = [_stop_step(stdout, stderr) for stdout, stderr in outputs]
    # Process 0 never got the signal but stopped at the same step, the next one that asked
    # (a step is logged while the next one runs: the stop is the last logged step + 1 or + 2).
    assert stops[0] == stops[1], stops
    stop = stops[0]
    assert last_logged + 1 <= stop <= last_logged + 2, (last_logged, stop)
    assert stop + 2 <= STEPS, f"stopped at {stop}: too late to compare resumed steps"
    for name in ("metrics.jsonl", "metrics.1.jsonl"):
        losses = read_losses(workdir, name)
        assert sorted(losses) == list(range(RESUME_AT + 1, stop + 1)), (name, sorted(losses))
        np.testing.assert_allclose(
            [losses[s] for s in losses], [expected[s] for s in losses], rtol=1e-6
        )

    # The SIGTERM checkpoint is complete: the latest one, and it restores, with both data states.
    state = _restore(checkpoints, stop)
    assert int(state["step"]) == stop
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    data_states = sorted(p.name for p in (checkpoints / str(stop) / "data").glob("*.json"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"], data_states

    # A restart of both processes resumes there, on the same data, and finishes.
    outputs = _finish(_launch(workdir, dataset, f"--config.num_steps={STEPS}", never))
    for _, stderr in outputs:
        assert f"resumed from {checkpoints}/{stop}" in stderr, stderr[-3000:]
    resumed = list(range(stop + 1, STEPS + 1))
    for name in ("metrics.jsonl", "metrics.1.jsonl"):
        lines = [json.loads(x) for x in (workdir / name).read_text().splitlines()]
        steps = [r["step"] for r in lines]
        assert steps == list(range(RESUME_AT + 1, STEPS + 1)), name  # nothing redone
        losses = read_losses(workdir, name)
        np.testing.assert_allclose(
            [losses[s] for s in resumed], [expected[s] for s in resumed], rtol=1e-6
        )
