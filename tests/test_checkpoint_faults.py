"""Checkpoint faults in a real (micro) training run: a failed save stops the run at once; a
corrupt latest checkpoint falls back to the previous one; a config that does not match the
checkpoint is named key by key."""

import errno
import json

import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint import future
from test_train import ONE_DEVICE, micro_config, procedural_records

from viewpoint_jax.models import weights
from viewpoint_jax.training import checkpoints, loop


@pytest.fixture(scope="module")
def records():
    return procedural_records()


def _train(config, workdir, records):
    return loop.train(config, workdir, data_source=records, devices=ONE_DEVICE, progress=False)


def _logged_steps(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _fail_saves_from(monkeypatch, first_failing_step: int):
    """Makes the background write of every checkpoint from `first_failing_step` on fail the way
    a full disk does (the arrays are written, then the commit raises ENOSPC)."""
    write = ocp.StandardCheckpointHandler.async_save

    async def no_space():
        raise OSError(errno.ENOSPC, "No space left on device")

    async def failing_write(self, directory, *args, **kwargs):
        futures = await write(self, directory, *args, **kwargs)
        step = int(directory.parent.name.split(".")[0])  # <step>.orbax-checkpoint-tmp/state
        if step >= first_failing_step:
            futures = [*(futures or []), future.CommitFutureAwaitingContractedSignals(no_space())]
        return futures

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_write)


def test_failed_save_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, records, monkeypatch):
    config = micro_config()
    config.num_steps = 12
    config.checkpoint.every_steps = 2
    _fail_saves_from(monkeypatch, 4)
    directory = tmp_path / "checkpoints"
    with pytest.raises(checkpoints.CheckpointSaveError, match=str(directory)) as info:
        _train(config, tmp_path, records)
    assert "No space left on device" in str(info.value)
    assert "last complete checkpoint is step 2" in str(info.value)
    # Stopped by the next save at the latest (step 6), not after all 12 steps.
    assert max(_logged_steps(tmp_path)) <= 6
    monkeypatch.undo()
    checkpointer = checkpoints.Checkpointer(directory, every_steps=1, keep=9)
    assert checkpointer.latest_step() == 2
    trainer = loop.make_trainer(config, *loop.mesh_and_rules(config, ONE_DEVICE))
    state = checkpointer.restore(2, trainer.abstract_state_with_shardings())
    assert int(state["step"]) == 2
    checkpointer.close()


def _truncate_array_files(step_dir):
    """Halves every array data file of a checkpoint's state (what a crash mid-copy or a bad
    disk leaves); the metadata still reads."""
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    assert data_files
    for path in data_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, records, capsys):
    config = micro_config()
    config.num_steps = 4
    config.checkpoint.every_steps = 2
    _train(config, tmp_path, records)
    directory = tmp_path / "checkpoints"
    _truncate_array_files(directory / "4")
    capsys.readouterr()
    config.num_steps = 6
    resumed = _train(config, tmp_path, records)
    err = capsys.readouterr().err
    assert "checkpoint step 4 does not read back, skipped" in err
    assert f"resumed from {directory}/2" in err
    assert sorted(resumed["losses"]) == [3, 4, 5, 6]
    assert (tmp_path / "checkpoints.corrupt" / "4" / "state").is_dir()
    checkpointer = checkpoints.Checkpointer(directory, every_steps=1, keep=9)
    assert checkpointer.manager.all_steps() == [4, 6]  # step 4 saved again, readable
    checkpointer.close()


def test_resume_with_other_model_sizes_names_the_arrays(tmp_path, records):
    config = micro_config()
    config.num_steps = 2
    config.checkpoint.every_steps = 2
    _train(config, tmp_path, records)
    config.num_steps = 4
    config.model.dim = 48
    with pytest.raises(weights.ConfigMismatchError) as info:
        _train(config, tmp_path, records)
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "2") in message
    assert (
        "params/blocks/cross_attn/k/kernel: checkpoint (2, 32, 32) vs config (2, 48, 48)" in message
    )
    assert "strict" not in message
    # A mismatch is not corruption: the checkpoint stays where it is.
    assert not (tmp_path / "checkpoints.corrupt").exists()
