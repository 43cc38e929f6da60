"""A lock on a folder that one run writes (a training run's --workdir, prepare_dataset's --out):
a second run on the same folder is refused in one line naming the first (host, pid, start time).

The lock is an advisory `flock` on `<folder>/.viewpoint.lock`, so the kernel releases it when its
process dies however it dies (kill -9 included): a lock left by a killed run is stale by
construction and the next run takes it over, atomically (two runs starting at once cannot both
get it). The file's text only says who holds it; it stays (truncated) when the run ends, since
deleting it would let a third run lock a new file while a second holds the old one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from viewpoint_jax.common.cli import UserError

LOCK_NAME = ".viewpoint.lock"


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(record: dict) -> str:
    """`a training run (host h, pid 12, started 2026-12-07 19:20:01 UTC)`."""
    started = record.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else "?"
    who = f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {when}"
    return f"{record.get('what', 'another run')} ({who})"


def _read(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


@contextlib.contextmanager
def hold(folder: str | os.PathLike, what: str, flag: str) -> Iterator[Path]:
    """Holds the lock of `folder` (created if missing) while the block runs; yields the lock
    file. UserError naming `flag`, the folder and the holder (host, pid, start time) if another
    `what` (e.g. "training run") holds it, or if the lock file cannot be written."""
    folder = Path(folder).absolute()
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UserError(f"{flag} {folder}: cannot write {path} ({error.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                # A filesystem without locks: run unguarded rather than not at all.
                print(f"warning: cannot lock {path} ({error.strerror})", file=sys.stderr)
            else:
                raise UserError(
                    f"{flag} {folder} is in use by {_describe(_read(fd))}; wait for it to "
                    f"finish or stop it (lock: {path})"
                ) from None
        previous = _read(fd)
        if previous.get("pid"):  # the lock of a run that ended without releasing it
            print(
                f"taking over the lock of {_describe(previous)}, which is gone",
                file=sys.stderr,
            )
        record = {
            "what": f"a {what}",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        except OSError as error:
            raise UserError(f"{flag} {folder}: cannot write {path} ({error.strerror})") from None
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: no holder to name
    finally:
        os.close(fd)  # closing releases the flock
