"""Atomic output (a file or directory appears complete under its final name, or not at all) and
the JSON records the package writes beside its outputs (config.json, settings.json)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from viewpoint_jax.common.cli import UserError

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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory; on success it replaces `path` in one rename.

    Raises FileExistsError naming `path` if it exists and `overwrite` is False. A failure inside
    the block leaves no directory under the final name (and an existing one untouched). The
    yielded path is absolute (writers such as Orbax refuse relative ones).
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"destination already exists: {path} (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
            f"cannot write {path}: it needs about {expected_bytes / 2**30:.2f} GiB but the "
            f"filesystem of {ancestor} has {free / 2**30:.2f} GiB free"
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
