"""Two processes on localhost (jax.distributed, gloo CPU collectives) train one model together."""

import json
import socket
import subprocess

import numpy as np
import pytest
from test_train import cli, read_losses, subprocess_env, write_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_two_processes_train_together_and_agree(tmp_path, dataset):
    data_dir, name = dataset
    workdir = tmp_path / "run"
    port = _free_port()
    processes = [
        subprocess.Popen(
            cli(
                workdir,
                data_dir,
                name,
                "--config.num_steps=4",
                "--config.mesh.data=2",
                "--config.checkpoint.every_steps=2",
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
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=280))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    main, other = read_losses(workdir), read_losses(workdir, "metrics.1.jsonl")
    assert sorted(main) == [1, 2, 3, 4]
    np.testing.assert_array_equal([other[s] for s in main], [main[s] for s in main])
    assert all(np.isfinite(list(main.values())))
    # 4 global devices: mesh data 2 x fsdp 2; each host fed 2 of the 4 examples of a batch.
    config = json.loads((workdir / "config.json").read_text())
    assert config["mesh"]["data"] == 2 and config["data"]["batch_size"] == 4
    # Each host checkpointed its own data-iterator state.
    data_states = sorted(p.name for p in (workdir / "checkpoints" / "4" / "data").glob("*.json"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"], data_states
