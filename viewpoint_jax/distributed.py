"""Several processes, one run: `jax.distributed` start-up and a stop request every host agrees on.

Training and sampling call `maybe_initialize_distributed` before touching a device; a job's
SIGTERM (preemption, cancellation) sets a `StopFlag` that the hosts combine, so all of them stop
at the same step.
"""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


def maybe_initialize_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """`jax.distributed.initialize` when several processes are asked for (flags or environment:
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0) or None
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if not coordinator_address or not num_processes or num_processes < 2:
        return
    if process_id is None:
        raise ValueError("--process_id (or JAX_PROCESS_ID) is needed with several processes")
    # CPU processes exchange their collectives over gloo (GPU/TPU use their own transports).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


class StopFlag:
    """Set by SIGTERM (a preempted or cancelled job); agreed on by every host before acting."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
