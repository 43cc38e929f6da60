"""Several processes, one run: `jax.distributed` start-up and a stop request every host agrees on.

Training and sampling call `maybe_initialize_distributed` before touching a device; a job's
SIGTERM (preemption, cancellation) sets a `StopFlag` that the hosts combine, so all of them stop
at the same step.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Mapping

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

KUBERNETES = "Kubernetes"


def cluster_environment(env: Mapping[str, str] | None = None) -> str | None:
    """The multi-process launcher this process runs under, if `jax.distributed.initialize()`
    can read everything it needs from it (None: a single process)."""
    env = os.environ if env is None else env

    def count(key: str) -> int:
        try:
            return int(env.get(key, "1") or 1)
        except ValueError:
            return 1

    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if env.get("SLURM_JOB_ID") and count("SLURM_NTASKS") > 1:
        return "SLURM"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    # A multi-host TPU slice lists its workers (a single host lists one, or none).
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "TPU pod"
    # An Indexed Job's pods (JAX reads the peers from the Kubernetes API; needs `kubernetes`).
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("JOB_COMPLETION_INDEX"):
        return KUBERNETES
    return None


def define_flags() -> None:
    """The multi-process flags of a CLI (`initialize_from_flags` reads them)."""
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs)")
    flags.DEFINE_integer("num_processes", None, "number of processes")
    flags.DEFINE_integer("process_id", None, "this process's index")


def initialize_from_flags() -> str | None:
    """`maybe_initialize_distributed` with the flags `define_flags` defined."""
    given = flags.FLAGS
    return maybe_initialize_distributed(
        given.coordinator_address, given.num_processes, given.process_id
    )


def maybe_initialize_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> str | None:
    """`jax.distributed.initialize` when several processes are asked for: by flags or the
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID variables (explicit), or by a
    cluster launcher (SLURM, Open MPI, a TPU pod, a Kubernetes Indexed Job: JAX reads the rest
    itself). Returns how the
    processes were found, or None for a single process."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0) or None
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = bool(coordinator_address and num_processes and num_processes >= 2)
    launcher = None if explicit else cluster_environment(env)
    if not explicit and launcher is None:
        return None
    if explicit and process_id is None:
        raise ValueError("--process_id (or JAX_PROCESS_ID) is needed with several processes")
    if launcher == KUBERNETES and importlib.util.find_spec("kubernetes") is None:
        raise ValueError(
            "a Kubernetes Indexed Job starts JAX through the Kubernetes API, which needs the "
            "`kubernetes` package: pip install 'viewpoint_jax[k8s]' (or pass --coordinator_address, "
            "--num_processes and --process_id)"
        )
    # CPU processes exchange their collectives over gloo (GPU/TPU use their own transports).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return "flags"
    jax.distributed.initialize()
    return launcher


class StopFlag:
    """Set by SIGTERM (a preempted or cancelled job); agreed on by every host before acting.

    Before the run has made progress (`progressed` False: setting up, restoring, compiling the
    first step) there is nothing to save: the last checkpoint, or a fresh start, is the resume
    point. Then SIGTERM exits at once (status 0), even inside a long XLA compilation, where
    Python handlers cannot run until it returns: the C-level handler writes the signal to a
    wakeup pipe that a watcher thread reads. Preemption grace periods are often 30 s.
    """

    def __init__(self):
        self.requested = False
        self.progressed = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def _watch(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as wakeups:
            while signals := wakeups.read(1):  # b"" once restore() closes the pipe
                if signals[0] == signal.SIGTERM and not self.progressed:
                    print(
                        "SIGTERM before the first step finished: nothing new to save, exiting "
                        "(the run resumes from its last checkpoint)",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(0)

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    def restore(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._write_fd)
        signal.signal(signal.SIGTERM, self._previous)
