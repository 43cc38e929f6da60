"""fileio.check_writable: an output that cannot be written is refused before any work."""

import errno
import os
import tempfile

import pytest

from viewpoint_jax.common import fileio
from viewpoint_jax.common.cli import UserError


def test_writable_destination_is_returned_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fileio.check_writable("new/deeper/out.mp4") == tmp_path / "new" / "deeper" / "out.mp4"
    assert sorted(os.listdir(tmp_path)) == []  # the probe is gone, nothing was created


def test_read_only_directory_is_named(tmp_path, monkeypatch):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o500)
    if os.geteuid() == 0:  # root writes through permission bits: refuse the probe as they would
        make_file = tempfile.mkstemp

        def refusing_mkstemp(*args, dir=None, **kwargs):
            if dir is not None and os.path.samefile(dir, read_only):
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))
            return make_file(*args, dir=dir, **kwargs)

        monkeypatch.setattr(fileio.tempfile, "mkstemp", refusing_mkstemp)
    try:
        with pytest.raises(UserError) as info:
            fileio.check_writable(read_only / "sub" / "out")
    finally:
        read_only.chmod(0o700)
    message = str(info.value)
    assert str(read_only / "sub" / "out") in message
    assert f"{read_only} is not writable (Permission denied)" in message


def test_too_little_free_space_is_named(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'big'}: it needs about"):
        fileio.check_writable(tmp_path / "big", expected_bytes=free + 2**40)
    assert fileio.check_writable(tmp_path / "small", expected_bytes=1) == tmp_path / "small"


def test_file_in_the_way_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="a_file is not a directory"):
        fileio.check_writable(tmp_path / "a_file" / "out")
