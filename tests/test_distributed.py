"""Multi-process start-up: explicit flags, or a cluster launcher's environment, or nothing."""

import importlib.util

import jax
import pytest

from viewpoint_jax.common import distributed

CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "KUBERNETES_SERVICE_HOST",
    "JOB_COMPLETION_INDEX",
)


@pytest.fixture
def initialize_calls(monkeypatch):
    """A clean environment and a fake `jax.distributed.initialize` that records its arguments."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)
    return calls


def test_a_single_process_initializes_nothing(initialize_calls, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is one process
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # a single-host TPU
    assert distributed.maybe_initialize_distributed(None, None, None) is None
    assert initialize_calls == []


@pytest.mark.parametrize(
    "variables,launcher",
    [
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "SLURM"),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI"),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "TPU pod"),
        ({"JAX_COORDINATOR_ADDRESS": "head:1234"}, "JAX_COORDINATOR_ADDRESS"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3"}, "Kubernetes"),
    ],
)
def test_a_cluster_launcher_initializes_without_arguments(
    initialize_calls, monkeypatch, variables, launcher
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # JAX asks the Kubernetes API for the peers: the package is found (not imported) first.
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: object() if name == "kubernetes" else found(name)
    )
    assert distributed.maybe_initialize_distributed(None, None, None) == launcher
    assert initialize_calls == [()]


def test_explicit_flags_win_over_the_launcher(initialize_calls, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed.maybe_initialize_distributed("head:1234", 2, 1) == "flags"
    assert initialize_calls == [("head:1234", 2, 1)]


def test_explicit_processes_need_a_process_id(initialize_calls):
    with pytest.raises(ValueError, match="--process_id"):
        distributed.maybe_initialize_distributed("head:1234", 2, None)
    assert initialize_calls == []


def test_kubernetes_without_its_package_is_refused_with_the_fix(initialize_calls, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"viewpoint_jax\[k8s\]"):
        distributed.maybe_initialize_distributed(None, None, None)
    assert initialize_calls == []


def test_a_pod_outside_an_indexed_job_is_one_process(initialize_calls, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # every pod has this
    assert distributed.maybe_initialize_distributed(None, None, None) is None
