"""Atomic output (a file or directory appears complete under its final name, or not at all) and
the JSON records the package writes beside its outputs (config.json, settings.json)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.locks import process_alive

_Record = TypeVar("_Record")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling path to write a file to; renames it onto `path` on success.

    The temporary file lives in the same directory, so the final `os.replace` is atomic.
    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The real suffix stays last: writers such as cv2.imwrite pick the format from it.
    suffix = ".tmp" + path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); the final file gets the usual mode for new files.
    tmp_path.chmod(0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _owner_tag() -> str:
    """`<host>-<pid>`: which process made a temporary (so a later run knows when it is stale)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_leftovers(path: Path) -> None:
    """Removes the temporaries of `atomic_directory(path)` that a killed process of this host
    left beside `path` (`.<name>.<host>-<pid>.*.tmp`, `.<name>.<host>-<pid>.old`): a SIGTERM or
    kill -9 skips the cleanup of its `finally`. Those of live processes (a concurrent writer)
    and of other hosts are left alone."""
    prefix = f".{path.name}.{socket.gethostname()}-"
    # The .old first: it may have to come back under the final name.
    leftovers = sorted(path.parent.glob(f".{glob_escape(path.name)}.*"), key=lambda p: p.suffix)
    for leftover in leftovers:
        rest = leftover.name[len(prefix) :]
        pid = rest.split(".", 1)[0]
        if not leftover.name.startswith(prefix) or not pid.isdigit():
            continue
        if not leftover.name.endswith((".tmp", ".old")) or process_alive(int(pid)):
            continue
        if leftover.name.endswith(".old") and not path.exists():
            os.replace(leftover, path)  # killed between its two renames: the old one comes back
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory; on success it replaces `path` in one rename.

    Raises FileExistsError naming `path` if it exists and `overwrite` is False. A failure inside
    the block leaves no directory under the final name (and an existing one untouched); what a
    killed process left is removed by the next call for the same `path`. The yielded path is
    absolute (writers such as Orbax refuse relative ones).
    """
    path = Path(path).absolute()
    if path.parent.is_dir():
        _remove_leftovers(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"destination already exists: {path} (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{owner}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(
    path: str | os.PathLike,
    *,
    owned: Iterable[str],
    marker: str,
    flag: str = "--out",
    keep: Iterable[str | os.PathLike] = (),
) -> None:
    """Before `--overwrite` replaces an existing `path`: refuses (UserError naming `flag` and
    the folder) unless it is an output folder this program wrote, one holding `marker` and
    nothing but the `owned` names, and it is neither the current directory nor a folder above
    it, nor any of `keep` (a checkpoint, the inputs) or a folder above one. A missing `path` is
    fine."""
    path = Path(path).absolute()
    if not path.exists() and not path.is_symlink():
        return
    real = path.resolve()
    cwd = Path.cwd().resolve()
    refuse = f"{flag} {path}: refusing to replace it"
    if real == cwd or real in cwd.parents:
        raise UserError(f"{refuse}, it is the current directory or holds it")
    for kept in keep:
        kept = Path(kept).resolve()
        if real == kept or real in kept.parents:
            raise UserError(f"{refuse}, it is (or holds) {kept}, an input of this command")
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"{refuse}, it is not an output folder (a file or a link)")
    names = {entry.name for entry in path.iterdir()}
    others = sorted(names - set(owned))
    if marker not in names or others:
        what = f"it holds {', '.join(others[:3])}" if others else f"it has no {marker}"
        raise UserError(
            f"{refuse}, it is not a folder this program wrote ({what}); remove it yourself or "
            f"pick another {flag}"
        )


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def check_writable(path: str | os.PathLike, expected_bytes: int = 0) -> Path:
    """Checks, before any work, that `path` (a file or directory still to be written) can be
    created and that its filesystem has `expected_bytes` free; returns it absolute.

    Probes by creating and deleting a file in the nearest existing ancestor (permission bits
    do not tell: read-only mounts, ACLs, root), so an hour-long job fails in a second, not at
    its final write. Raises UserError naming `path` and the directory that refuses it.
    """
    path = Path(path).absolute()
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {path}: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(
            f"cannot write {path}: {ancestor} is not writable ({error.strerror or error})"
        ) from None
    free = shutil.disk_usage(ancestor).free
    if free < expected_bytes:
        raise UserError(
            f"cannot write {path}: it needs about {_size(expected_bytes)} but the "
            f"filesystem of {ancestor} has {_size(free)} free"
        )
    return path


def dataclass_from_dict(cls: type[_Record], record: dict[str, Any]) -> _Record:
    """A dataclass from its JSON record; unknown keys are refused by name (a typo or a record
    of another kind), never dropped silently."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
    return cls(**record)
