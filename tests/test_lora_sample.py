"""Sampling a LoRA training run end to end (`sample --checkpoint RUN --lora_scale S`): scale 0
is the base with the run's fully trained parameters exactly, scale 1 differs, the merged
checkpoint samples as the unmerged run; a base that moved is named with its flag, found again
with --lora_base, and refused when it is not the run's."""

import json
import shutil

import numpy as np
import pytest
from flax import nnx
from test_lora import lora_config, write_base
from test_sample_cli import condition_video, run_in_process
from test_train import ONE_DEVICE, procedural_records

from viewpoint_jax import convert_wan
from viewpoint_jax.common import cli, video_io
from viewpoint_jax.generation import requests
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import lora as lora_models
from viewpoint_jax.setup import build
from viewpoint_jax.training import checkpoints, loop

# One fp32 video on one device, two steps of Euler with guidance (the negative prompt's path too).
SAMPLING = ["--prompt", "a pattern of bands", "--steps", "2", "--guidance_scale", "3"]
SAMPLING += ["--seed", "3", "--dtype", "float32", "--mesh", "fsdp=1"]
GENERATE_REQUEST = requests.generate_request  # what `sample` calls, watched by `sample` below


def train_lora_run(root, num_steps=4):
    """(config, run directory) of a LoRA run on the micro config (`test_lora.lora_config`: rank
    4 on self-attention, cross_o and the FFN) whose base is `root/base`; a large learning rate,
    so that the adapters move the samples."""
    config = lora_config(root)
    config.num_steps = config.checkpoint.every_steps = num_steps
    config.optim.warmup_steps = 0
    config.optim.lr = 1e-2
    run_dir = root / "run"
    loop.train(
        config, run_dir, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    return config, run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return train_lora_run(tmp_path_factory.mktemp("lora_sample"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A perspective condition video: the run's trained patch embedding reads it."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    video_io.write_video(path, condition_video(), fps=8)
    return path


def sample(argv, capsys, monkeypatch):
    """`sample` run in process (`cli.run`, as the command) with `argv`; (exit status, stderr,
    the Generation it wrote or None)."""
    made = []

    def keep(*args, **kwargs):
        made.append(GENERATE_REQUEST(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(requests, "generate_request", keep)
    code, stderr = run_in_process([*map(str, argv)], capsys)
    return code, stderr, (made[-1] if made else None)


def sample_ok(argv, out, capsys, monkeypatch):
    """(settings.json's record, the Generation) of a `sample` that must succeed into `out`."""
    code, stderr, generation = sample([*argv, "--out", out], capsys, monkeypatch)
    assert code == 0, stderr
    return json.loads((out / "settings.json").read_text()), generation


def run_config_file(tmp_path, run_dir):
    """A config file (`--config`) returning the run's own config.json: a converted checkpoint
    samples with exactly the settings the run does."""
    path = tmp_path / "run_config.py"
    path.write_text(
        "from viewpoint_jax.setup.config import run_config_from_file\n\n\n"
        f"def get_config():\n    return run_config_from_file({str(run_dir / 'config.json')!r})\n"
    )
    return path


def adapters_off_checkpoint(config, run_dir, path):
    """Without the LoRA code's merge: the converted base DiT (inflated to the condition
    channels, as training starts from it) with the run's trained patch embedding put in, saved
    as a converted DiT: the run with its adapters off."""
    plain = lora_models.without_lora(build.dit_config(config))
    flat = dict(dit_lib.load_pretrained_params(config.model.init_checkpoint, plain).flat_state())
    run_params = nnx.state(checkpoints.restore_model_for_inference(run_dir, config), nnx.Param)
    trained = dict(run_params.flat_state())
    patch = [p for p in trained if set(p) & set(lora_models.PATCH_EMBEDDING)]
    assert len(patch) == 2 and all(p in flat for p in patch)
    for p in patch:
        assert not np.array_equal(trained[p].get_value(), flat[p].get_value())  # it trained
        flat[p] = trained[p]
    graphdef, _ = nnx.split(dit_lib.abstract_model(plain), nnx.Param)
    dit_lib.save_dit(path, nnx.merge(graphdef, nnx.from_flat_state(list(flat.items()))))
    return path


def merge_in_process(argv, capsys):
    """`convert_wan merge` run in process (`cli.run`, as the command): (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(convert_wan.main, convert_wan.define_flags, argv=["convert_wan", "merge", *argv])
    return exit_info.value.code, capsys.readouterr().err


def test_lora_scale_0_is_the_adapters_off_1_differs_and_merged_samples_the_same(
    lora_run, clip, tmp_path, capsys, monkeypatch
):
    """`sample --checkpoint RUN`: --lora_scale 0 gives exactly the video of the base with the
    run's trained patch embedding (a converted DiT made without the LoRA code), the run's own
    scale (1) another; `convert_wan merge` of the run samples the scale-1 video (fp32). Each
    settings.json records the scale it sampled with."""
    config, run_dir = lora_run
    common = [*SAMPLING, "--video", clip, "--fov", "80", "--yaw", "20"]
    record_0, off = sample_ok(
        ["--checkpoint", run_dir, "--lora_scale", "0", *common], tmp_path / "s0", capsys,
        monkeypatch,
    )  # fmt: skip
    record_1, on = sample_ok(
        ["--checkpoint", run_dir, *common], tmp_path / "s1", capsys, monkeypatch
    )
    assert record_0["config"]["lora"]["scale"] == 0.0
    assert record_1["config"]["lora"]["scale"] == 1.0  # the run's own, without the flag
    assert record_1["checkpoint"] == str(run_dir)
    assert record_1["config"]["model"]["init_checkpoint"] == config.model.init_checkpoint

    run_config = run_config_file(tmp_path, run_dir)
    reference = adapters_off_checkpoint(config, run_dir, tmp_path / "adapters_off")
    _, base = sample_ok(
        ["--checkpoint", reference, "--config", run_config, *common], tmp_path / "ref", capsys,
        monkeypatch,
    )  # fmt: skip
    np.testing.assert_array_equal(off.latents, base.latents)
    np.testing.assert_array_equal(off.panorama, base.panorama)
    assert np.abs(on.latents - off.latents).max() > 0.1  # the adapters change the video

    code, stderr = merge_in_process([f"--src={run_dir}", f"--dst={tmp_path / 'merged'}"], capsys)
    assert code == 0, stderr
    _, merged = sample_ok(
        ["--checkpoint", tmp_path / "merged", "--config", run_config, *common], tmp_path / "m",
        capsys, monkeypatch,
    )  # fmt: skip
    np.testing.assert_allclose(merged.latents, on.latents, rtol=1e-5, atol=1e-5)
    # Decoded to uint8, a difference that small moves a value by one level at most.
    assert np.abs(merged.panorama.astype(int) - on.panorama).max() <= 1


def one_line_error(code, stderr, start):
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith(f"error: {start}"), stderr


def test_a_moved_base_is_named_then_found_with_lora_base(tmp_path, capsys, monkeypatch):
    """The run's base moves (another mount): sampling names the recorded path and --lora_base;
    with --lora_base the video is the one sampled before the move; training resumed against the
    moved base samples without the flag; a base of another config, or a folder that is no
    checkpoint, is refused in one line. `convert_wan merge` likewise."""
    config, run_dir = train_lora_run(tmp_path / "mount_a", num_steps=2)
    recorded = config.model.init_checkpoint  # tmp_path/mount_a/base
    args = ["--checkpoint", run_dir, *SAMPLING]
    _, before = sample_ok(args, tmp_path / "before", capsys, monkeypatch)
    moved = tmp_path / "mount_b" / "wan_base"
    moved.parent.mkdir()
    shutil.move(recorded, moved)

    code, stderr, _ = sample([*args, "--out", tmp_path / "o"], capsys, monkeypatch)
    one_line_error(code, stderr, f"LoRA run {run_dir}: its base checkpoint {recorded} ")
    assert "pass --lora_base=PATH" in stderr and not (tmp_path / "o").exists()
    code, stderr = merge_in_process([f"--src={run_dir}", f"--dst={tmp_path / 'm'}"], capsys)
    one_line_error(code, stderr, f"LoRA run {run_dir}: its base checkpoint {recorded} ")

    record, after = sample_ok(
        [*args, "--lora_base", moved], tmp_path / "after", capsys, monkeypatch
    )
    np.testing.assert_array_equal(after.latents, before.latents)
    assert record["config"]["model"]["init_checkpoint"] == str(moved)  # what it sampled with
    # Training resumed against the moved base (same fingerprint) names it in config.json, which
    # sampling reads where the recorded path is gone: no flag needed any more.
    config.model.init_checkpoint = str(moved)
    config.num_steps = 3
    result = loop.train(
        config, run_dir, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    assert sorted(result["losses"]) == [3]  # resumed, not restarted
    record, _ = sample_ok(args, tmp_path / "resumed", capsys, monkeypatch)
    assert record["config"]["model"]["init_checkpoint"] == str(moved)

    other = write_base(tmp_path / "other", config, rope_theta=500.0)
    for base, message in [
        (other, f"--lora_base {other}: not the base this LoRA run was trained on ({recorded}, "),
        (tmp_path, f"--lora_base {tmp_path}: not a converted DiT (no config.json)"),
    ]:
        code, stderr, _ = sample(
            [*args, "--lora_base", base, "--out", tmp_path / "o"], capsys, monkeypatch
        )
        one_line_error(code, stderr, message)
    code, stderr = merge_in_process(
        [f"--src={run_dir}", f"--dst={tmp_path / 'm'}", f"--lora_base={other}"], capsys
    )
    one_line_error(code, stderr, f"--lora_base {other}: not the base")
    code, stderr = merge_in_process(
        [f"--src={run_dir}", f"--dst={tmp_path / 'm'}", f"--lora_base={moved}"], capsys
    )
    assert code == 0, stderr
    assert dit_lib.load_dit(tmp_path / "m").config.lora_rank == 0


def test_lora_base_on_a_run_without_lora_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = lora_config(tmp_path)
    config.lora.rank = 0
    (run_dir / "config.json").write_text(config.to_json_best_effort())
    argv = ["--checkpoint", run_dir, "--prompt", "a room", "--out", tmp_path / "out"]
    code, stderr = run_in_process([*map(str, argv), f"--lora_base={tmp_path / 'base'}"], capsys)
    one_line_error(code, stderr, f"--lora_base: {run_dir} is not a LoRA run")
