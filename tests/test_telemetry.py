"""Training telemetry: the analytic FLOPs, MFU, and what the logger writes."""

import json
import sys

import cv2
import numpy as np
import pytest

from viewpoint_jax.models.dit import DiTConfig
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import telemetry


def test_subregion_attention_costs_a_quarter_of_pano_attention():
    # Only the scores and the weighted sum differ: 4 N^2 D FLOPs on the whole map, 4 * 4 (N/4)^2 D
    # on its four subregions, per block.
    kwargs = dict(num_layers=4, dim=64, ffn_dim=128, num_heads=2, text_dim=32, in_dim=33)
    grid, text_tokens = (3, 8, 8), 16
    pano = telemetry.dit_forward_flops(
        DiTConfig.tiny(attention_pattern="pano", **kwargs), grid, text_tokens
    )
    subregion = telemetry.dit_forward_flops(
        DiTConfig.tiny(attention_pattern="subregion", **kwargs), grid, text_tokens
    )
    n = 3 * 4 * 4  # tokens after 1 x 2 x 2 patches
    assert pano - subregion == pytest.approx(4 * (4 * n * n * 64 - 4 * 4 * (n // 4) ** 2 * 64))
    step = telemetry.train_step_flops(DiTConfig.tiny(**kwargs), grid, text_tokens, batch=2)
    assert step == pytest.approx(
        3 * 2 * telemetry.dit_forward_flops(DiTConfig.tiny(**kwargs), grid, text_tokens)
    )


def test_mfu_is_achieved_over_peak_flops():
    out = telemetry.throughput(2.0, 8e12, 1000, num_devices=4, peak=1e12)
    assert out == {"tokens_per_s": 500.0, "mfu": pytest.approx(8e12 / 2.0 / 4e12)}
    assert "mfu" not in telemetry.throughput(2.0, 8e12, 1000, num_devices=4, peak=None)


def test_logger_writes_every_step_and_plain_progress_lines_off_a_terminal(tmp_path, capsys):
    config = config_lib.load_config_file("configs/tiny.py:micro")
    config.log.every_steps = 2
    logger = telemetry.TrainLogger(
        tmp_path, config, DiTConfig.tiny(), num_devices=1, start_step=0, progress=True
    )
    for step in (1, 2, 3):
        metrics = {"loss": np.float32(1.0 / step), "nonfinite_run": np.int32(0)}
        logger.log(step, metrics, latent_grid=(5, 8, 8), skipped=step - 1)
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert [x["data/skipped_records"] for x in lines] == [0, 1, 2]
    assert "tokens_per_s" in lines[1] and "tokens_per_s" not in lines[0]  # timed from step 2
    assert logger.losses == {1: 1.0, 2: 0.5, 3: pytest.approx(1 / 3)}
    progress = capsys.readouterr().err.splitlines()
    # pytest's stderr is no terminal: no bar, a line every log.every_steps steps.
    assert [line.split()[2] for line in progress if line.startswith("train: step ")] == ["2/8"]
    assert not any("\r" in line for line in progress)


def _events(logdir):
    """The Event protos of the TFRecord event files under `logdir` (8-byte length, 4-byte CRC,
    the record, 4-byte CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 8], "little")
            events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_preview_images_reach_tensorboard_without_pillow(tmp_path, monkeypatch):
    """The package installs OpenCV, not Pillow (tensorboardX's add_image needs it): the image
    written is the PNG of the array, read back exactly."""
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` raises
    image = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    writer = telemetry.Writer(tmp_path)
    writer.image(7, "maps/preview", image)
    writer.close()
    (value,) = [v for e in _events(tmp_path) for v in e.summary.value if v.tag == "maps/preview"]
    assert (value.image.height, value.image.width, value.image.colorspace) == (6, 10, 3)
    png = np.frombuffer(value.image.encoded_image_string, np.uint8)
    np.testing.assert_array_equal(cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1], image)
    (step,) = [e.step for e in _events(tmp_path) if e.summary.value]
    assert step == 7
