"""models/weights.py: reading Orbax checkpoints, and what a corrupt one prints."""

import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import subprocess_env

from viewpoint_jax.models import weights


def _truncated_checkpoint(path):
    """An Orbax PyTree checkpoint whose data files (metadata and arrays: OCDBT keeps both under
    d/) lost their second half, as a crash mid-copy leaves them."""
    tree = {"a": np.ones((64, 64), np.float32), "b": {"c": np.arange(5.0)}}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)
    data_files = [p for p in path.rglob("*") if p.is_file() and "/d/" in str(p)]
    assert data_files
    for file in data_files:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return tree


def test_saved_tree_reads_shapes_and_dtypes(tmp_path):
    tree = {"a": np.ones((3, 4), np.float32), "b": {"c": np.zeros(5, np.int32)}}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", tree)
    assert weights.leaf_shapes(weights.saved_tree(tmp_path / "state")) == {
        "a": (3, 4),
        "b/c": (5,),
    }


def test_a_truncated_checkpoint_is_one_error_naming_it(tmp_path):
    path = (tmp_path / "state").absolute()
    _truncated_checkpoint(path)
    with pytest.raises(ValueError, match=f"the metadata of checkpoint {path} does not read"):
        weights.saved_tree(path)


def test_reads_of_a_corrupt_checkpoint_leave_no_tracebacks(tmp_path):
    """Orbax's failed concurrent reads echo after the error was raised (late tensorstore
    callbacks into a closed event loop, never-retrieved task errors): a process that reads a
    corrupt checkpoint many times, then collects its garbage, prints none of it."""
    path = (tmp_path / "state").absolute()
    _truncated_checkpoint(path)
    script = textwrap.dedent(f"""
        import gc, time
        from viewpoint_jax.models import weights
        for _ in range(20):
            try:
                weights.saved_tree({str(path)!r})
            except ValueError:
                pass
        gc.collect()
        time.sleep(1)
        print("read 20 times")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read 20 times" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Event loop is closed" not in result.stderr
    assert "never retrieved" not in result.stderr


def test_the_echo_filter_passes_other_errors_on():
    assert weights._is_echo_of_a_failed_read(RuntimeError("Event loop is closed"))
    assert not weights._is_echo_of_a_failed_read(RuntimeError("something else"))
    assert not weights._is_echo_of_a_failed_read(ValueError("a user's own error"))
    assert not weights._is_echo_of_a_failed_read(None)
