"""`make demo` end to end at the test size (`--quick`: a handful of clips, 8 training steps), so
the newcomer's path cannot rot; and the demo's parts: the untrained baseline, the pictures."""

import json
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from flax import nnx
from test_train import ONE_DEVICE, subprocess_env

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.diffusion import flow_matching
from viewpoint_jax.evaluation import outpainting
from viewpoint_jax.studies import demo, figures
from viewpoint_jax.training import loop, telemetry


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`python -m viewpoint_jax.demo --quick` as a newcomer runs it: its own process, one device."""
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    command = [sys.executable, "-m", "viewpoint_jax.demo", "--out", str(out), "--quick"]
    env = subprocess_env()
    del env["JAX_COMPILATION_CACHE_DIR"]  # the demo's own cache, out/jax_cache (every program)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Open:" in result.stdout and str(out / "sample" / "viewer.html") in result.stdout
    assert str(out / "continuation" / "viewer.html") in result.stdout
    return out


def _read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a readable PNG"
    return image[..., ::-1]


def test_quick_demo_writes_every_output(quick_demo):
    out = quick_demo
    sample = out / "sample"
    for name in ("pano.mp4", "viewpoint.mp4", "faces.png", "viewer.html", "settings.json"):
        assert (sample / name).is_file(), name
    config = demo.demo_config(out, quick=True, train_steps=None)
    pano, fps = video_io.read_video(sample / "pano.mp4")
    assert pano.shape == (
        config.data.num_frames, config.data.erp_height, config.data.erp_width, 3
    )  # fmt: skip
    assert fps == pytest.approx(demo.DATASET_FPS)
    assert video_io.read_video(sample / "viewpoint.mp4")[0].shape[1:3] == (64, 64)
    assert b"sv3d" in (sample / "pano.mp4").read_bytes()  # tagged as a 360 video
    assert "<video" in (sample / "viewer.html").read_text()

    summary = json.loads((out / "evaluation.json").read_text())
    settings = json.loads((sample / "settings.json").read_text())
    assert settings["prompt"] == summary["clips"][0]["caption"]
    assert settings["condition"]["video"] == summary["clips"][0]["source"]
    assert not list(out.rglob(".*.tmp*")), "a temporary file was left behind"
    # Three training runs (the micro pretraining, the fine-tuning, the scratch run), two train
    # step programs in the compilation cache: the scratch run reused the fine-tuning's.
    cached = [p.name for p in (out / "jax_cache").iterdir()]
    assert len([name for name in cached if name.startswith("jit_train_step-")]) == 2


def test_quick_demo_continues_its_360_video(quick_demo, tmp_path):
    """continuation/ holds the sample's video and one more window: its first frames are the
    sample's, as close as the same frames simply written again."""
    out = quick_demo
    continuation = out / "continuation"
    for name in ("pano.mp4", "viewpoint.mp4", "faces.png", "viewer.html", "settings.json"):
        assert (continuation / name).is_file(), name
    config = demo.demo_config(out, quick=True, train_steps=None)
    given, _ = video_io.read_video(out / "sample" / "pano.mp4")
    extended, fps = video_io.read_video(continuation / "pano.mp4")
    window = config.data.num_frames  # the micro model: 5 frames, time not compressed
    assert extended.shape == (len(given) + window - 1, *given.shape[1:])
    assert fps == pytest.approx(demo.DATASET_FPS)
    record = json.loads((continuation / "settings.json").read_text())
    assert record["frames"] == len(extended)
    assert record["condition"]["source_frames"] == len(given)
    assert record["window_starts"] == [len(given) - 1]

    video_io.write_video(tmp_path / "again.mp4", given, fps=demo.DATASET_FPS)
    again, _ = video_io.read_video(tmp_path / "again.mp4")
    codec_error = np.abs(again.astype(int) - given.astype(int)).mean()
    kept_error = np.abs(extended[: len(given)].astype(int) - given.astype(int)).mean()
    assert kept_error <= 1.05 * codec_error + 0.1, (kept_error, codec_error)


def test_quick_demo_reports_the_evaluation(quick_demo):
    summary = json.loads((quick_demo / "evaluation.json").read_text())
    num_clips = demo.QUICK["dataset"]["num_test"]
    assert len(summary["clips"]) == num_clips
    assert summary["trained_steps"] == {demo.FINETUNED: 8, demo.SCRATCH: 8}
    assert summary["pretrained"] == str(quick_demo / "pretrained")  # pretrained here, micro size
    for name in ("untrained", demo.SCRATCH, demo.FINETUNED):
        result = summary[name]
        assert len(result["per_clip_mse"]) == num_clips
        assert result["mse"] == pytest.approx(np.mean(result["per_clip_mse"]))
        assert result["psnr_db"] == pytest.approx(float(outpainting.psnr(result["mse"])))
        assert result["seeds"] == list(demo.QUICK["eval_seeds"])
    # 8 steps teach little; the full demo's claims (fine-tuned beats scratch and the grey fill
    # by 3 dB) are what these record.
    finetuned, scratch = summary[demo.FINETUNED]["mse"], summary[demo.SCRATCH]["mse"]
    assert summary["finetuned_beats_scratch"] == (finetuned < scratch)
    gain = summary[demo.FINETUNED]["psnr_db"] - summary["grey_fill"]["psnr_db"]
    assert summary["finetuned_over_grey_db"] == pytest.approx(gain)
    # The no-input reference: the mean map of every training clip (the demo dataset's train split).
    mean_fill = summary["training_mean_fill"]
    assert mean_fill["clips"] == demo.QUICK["dataset"]["num_train"]
    assert mean_fill["psnr_db"] == pytest.approx(float(outpainting.psnr(mean_fill["mse"])))
    assert 0 < mean_fill["mse"] != summary["grey_fill"]["mse"]
    assert len({summary[k]["mse"] for k in ("untrained", demo.SCRATCH, demo.FINETUNED)}) == 3
    # The micro size's space-to-depth stand-in is lossless: the ceiling is the ground truth.
    ceiling = summary["autoencoder_ceiling"]
    assert ceiling["mse"] < 1e-10 and ceiling["seeds"] == []
    assert len(ceiling["per_clip_mse"]) == num_clips

    for run in (demo.FINETUNED, demo.SCRATCH):
        steps, losses = telemetry.read_losses(quick_demo / run / "metrics.jsonl")
        np.testing.assert_array_equal(steps, np.arange(1, 9))
        assert np.all(np.isfinite(losses))
    finetune_config = json.loads((quick_demo / demo.FINETUNED / "config.json").read_text())
    assert finetune_config["model"]["init_checkpoint"] == summary["pretrained"]
    scratch_config = json.loads((quick_demo / demo.SCRATCH / "config.json").read_text())
    assert scratch_config["model"]["init_checkpoint"] == ""
    assert {**scratch_config["model"], "init_checkpoint": ""} == {
        **finetune_config["model"], "init_checkpoint": ""
    }  # fmt: skip

    curve = _read_png(quick_demo / "loss_curve.png")
    assert curve.shape == (500, 900, 3)
    comparison = _read_png(quick_demo / "outpainting.png")
    assert comparison.shape[1] == 2 * 8 + 5 * 2 * 64 + 4 * 6  # five 128-pixel columns
    assert comparison.shape[0] > num_clips * 128


def test_an_output_folder_of_other_settings_is_refused(quick_demo):
    with pytest.raises(UserError, match="other settings"):
        demo.run_demo(quick_demo, quick=False)


def test_bad_train_steps_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--train_steps"):
        demo.run_demo(tmp_path / "out", train_steps=0, quick=True)


def test_untrained_model_is_the_training_init():
    config = demo.demo_config(demo.CONFIG_FILE.parent, quick=True, train_steps=None)
    config.mesh.update(dict(data=1, fsdp=1, sequence=1, tensor=1))
    mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), ONE_DEVICE)
    trainer = loop.make_trainer(config, mesh, tuple(config.sharding_rules))
    expected = trainer.init_state()["params"]
    got = nnx.state(demo.untrained_model(config), nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_moving_average_is_a_trailing_mean():
    values = np.asarray([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(figures.moving_average(values, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(figures.moving_average(values, 1), values)


def test_loss_curve_draws_the_losses_where_they_are():
    # A constant loss of 1 (axis 0 .. 1.05 of the highest) is a horizontal line at 1/1.05 of
    # the height, dark blue for the first run; the second run's, at 0.5, is dark orange.
    steps = np.arange(1, 101)
    curves = {"one": (steps, np.ones(100)), "two": (steps, np.full(100, 0.5))}
    image = figures.loss_curve_image(curves, width=900, height=500)
    top, bottom = 50, 500 - 60
    column = image[:, 450].astype(int)
    for value, colour in ((1.0, figures.CURVE_COLOURS[0][1]), (0.5, figures.CURVE_COLOURS[1][1])):
        y = round(bottom - (bottom - top) * value / 1.05)
        rows = np.flatnonzero(np.abs(column - colour).max(axis=1) < 40)
        assert rows.size and abs(rows.mean() - y) <= 2, (value, rows)
    with pytest.raises(ValueError, match="no losses"):
        figures.loss_curve_image({"empty": (np.zeros(0), np.zeros(0))})


def test_loss_curve_names_every_loss():
    """The title names the run's `diffusion.loss`; a new loss without a description fails."""
    steps = np.arange(1, 11)
    images = [
        figures.loss_curve_image({"one": (steps, np.ones(10))}, loss=loss)
        for loss in flow_matching.Loss
    ]
    assert np.any(images[0][:40] != images[1][:40])  # the titles differ
