"""`sample --video` with a clip longer than the video it makes: the frames used are said in one
line and settings.json records the clip's frames and the frames used, both with the model's clip
as the limit and with a smaller --num_frames."""

from pathlib import Path

import ml_collections
import numpy as np
import pytest

from viewpoint_jax.common import video_io
from viewpoint_jax.generation.requests import Request, read_inputs

CLIP = 5  # the model's clip (config.data.num_frames)


def _config():
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(num_frames=CLIP))
    return config


@pytest.fixture
def long_clip(tmp_path) -> Path:
    """A 17-frame perspective clip whose frames are numbered by their brightness."""
    video = np.repeat(np.arange(17, dtype=np.uint8)[:, None, None, None] * 14, 24, axis=1)
    path = tmp_path / "long.mp4"
    video_io.write_video(path, np.broadcast_to(video[:, :, :1], (17, 24, 32, 3)).copy(), fps=8)
    return path


@pytest.mark.parametrize(
    "num_frames, used, limit",
    [
        (None, CLIP, f"(the model's clip, config.data.num_frames = {CLIP})"),
        (1, 1, "(--num_frames 1)"),
    ],
)
def test_a_long_clip_says_which_frames_it_uses(long_clip, capsys, num_frames, used, limit):
    inputs = read_inputs(
        Request(prompt="p", video=str(long_clip), num_frames=num_frames), _config()
    )
    assert len(inputs.video) == used
    # The first frames, in order (the codec keeps each frame's brightness within a few levels).
    np.testing.assert_allclose(inputs.video[:, 12, 16, 0], np.arange(used) * 14, atol=4)
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == [
        f"note: {long_clip} has 17 frames; the 360 video follows its first {used} {limit}"
    ]
    assert inputs.record["frames"] == used and inputs.record["source_frames"] == 17


def test_a_clip_that_fits_says_nothing(long_clip, tmp_path, capsys):
    short = tmp_path / "short.mp4"
    video_io.write_video(short, video_io.read_video(long_clip, num_frames=CLIP)[0], fps=8)
    inputs = read_inputs(Request(prompt="p", video=str(short)), _config())
    assert len(inputs.video) == CLIP and capsys.readouterr().err == ""
    assert inputs.record["source_frames"] == inputs.record["frames"] == CLIP
    assert video_io.frame_count(short) == CLIP and video_io.frame_count(long_clip) == 17
