"""Checkpoint faults in a real (micro) training run: a failed save stops the run at once; a
corrupt latest checkpoint falls back to the previous one; a config that does not match the
checkpoint is named key by key."""

import errno
import json

import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint import future
from test_train import ONE_DEVICE, micro_config, procedural_records

from viewpoint_jax import checkpointing, train


@pytest.fixture(scope="module")
def records():
    return procedural_records()


def _train(config, workdir, records):
    return train.train(config, workdir, data_source=records, devices=ONE_DEVICE, progress=False)


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
    with pytest.raises(checkpointing.CheckpointSaveError, match=str(directory)) as info:
        _train(config, tmp_path, records)
    assert "No space left on device" in str(info.value)
    assert "last complete checkpoint is step 2" in str(info.value)
    # Stopped by the next save at the latest (step 6), not after all 12 steps.
    assert max(_logged_steps(tmp_path)) <= 6
    monkeypatch.undo()
    checkpointer = checkpointing.Checkpointer(directory, every_steps=1, keep=9)
    assert checkpointer.latest_step() == 2
    trainer = train.make_trainer(config, *train.mesh_and_rules(config, ONE_DEVICE))
    state = checkpointer.restore(2, trainer.abstract_state_with_shardings())
    assert int(state["step"]) == 2
    checkpointer.close()
