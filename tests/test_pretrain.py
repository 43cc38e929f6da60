"""Pretraining the plain text-to-video DiT: the committed checkpoint, the command that made it,
and the path from it into a ViewPoint model (the restore path of converted Wan weights)."""

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from test_train import ONE_DEVICE, REPO, load_config, micro_config, subprocess_env

from viewpoint_jax.common.cli import UserError
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import loop, telemetry
from viewpoint_jax.training import pretrain as pretrain_lib

ASSET = REPO / "viewpoint_jax" / "assets" / "tiny_perspective"
REPRODUCED_STEPS = 3


def _one_device(config):
    config.mesh.update(dict(data=1, fsdp=1, sequence=1, tensor=1))
    return config


def test_committed_checkpoint_is_the_pretrain_configs_plain_wan_dit():
    pretrain_config = load_config("tiny", "pretrain")
    model = dit_lib.load_dit(ASSET)
    assert model.config == build.dit_config(pretrain_config)
    channels = build.latent_channels(pretrain_config)
    assert model.config.in_dim == model.config.out_dim == channels  # no condition channels
    assert set(model.config.block_kinds) == {dit_lib.BlockKind.PANO}
    size = sum(f.stat().st_size for f in ASSET.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{size} bytes"


def test_tiny_config_fine_tunes_from_it_through_the_wan_restore_path():
    config = load_config("tiny", None)
    assert Path(config.model.init_checkpoint) == ASSET
    model_config = build.dit_config(config)
    params = dit_lib.load_pretrained_params(ASSET, model_config)
    pretrained = dit_lib.load_dit(ASSET)
    channels = pretrained.config.in_dim
    kernel = np.asarray(params["patch_kernel"][...])
    assert kernel.shape[3] == model_config.in_dim == 2 * channels + 1
    np.testing.assert_array_equal(kernel[..., :channels, :], pretrained.patch_kernel[...])
    np.testing.assert_array_equal(kernel[..., channels:, :], 0.0)
    np.testing.assert_array_equal(params["head"]["kernel"][...], pretrained.head.kernel[...])


def test_committed_checkpoint_is_package_data():
    """A non-editable install ships it: pyproject's package-data globs cover every file."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["viewpoint_jax"]
    package = REPO / "viewpoint_jax"
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    files = {path for path in ASSET.rglob("*") if path.is_file()}
    assert files and files <= shipped, sorted(map(str, files - shipped))


def test_the_readme_command_reproduces_the_committed_losses(tmp_path):
    """The command in the checkpoint's README, stopped after a few steps, logs the losses the
    committed run logged at those steps (deterministic on CPU: same data, init and noise)."""
    readme = (ASSET / "README.md").read_text()
    (command,) = re.findall(r"```bash\n(python -m viewpoint_jax\.pretrain [^\n]*)\n```", readme)
    assert command in (REPO / "README.md").read_text()  # the main README states it too
    arguments = [
        *shlex.split(command)[1:],
        f"--config.num_steps={REPRODUCED_STEPS}",  # within the warmup: the same learning rates
        f"--workdir={tmp_path / 'run'}",
        f"--out={tmp_path / 'out'}",
    ]
    result = subprocess.run(
        [sys.executable, *arguments], cwd=REPO, env=subprocess_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    committed_steps, committed = telemetry.read_losses(ASSET / "metrics.jsonl")
    steps, losses = telemetry.read_losses(tmp_path / "out" / "metrics.jsonl")
    np.testing.assert_array_equal(steps, np.arange(1, REPRODUCED_STEPS + 1))
    np.testing.assert_array_equal(committed_steps[:REPRODUCED_STEPS], steps)
    np.testing.assert_allclose(losses, committed[:REPRODUCED_STEPS], rtol=1e-5)
    assert (tmp_path / "out" / "config.json").read_text() == (ASSET / "config.json").read_text()


def test_pretraining_then_fine_tuning_at_the_micro_size(tmp_path):
    """A plain text-to-video run (no condition input; its preview too) exported as a converted
    checkpoint, from which a ViewPoint run starts: its initial weights are the pretrained ones
    with zero condition channels."""
    config = _one_device(load_config("tiny", "micro_pretrain"))
    config.num_steps = 2
    config.log.image_every_steps = 1
    out = tmp_path / "pretrained"
    result = pretrain_lib.pretrain(
        config, tmp_path / "run", out, command="test", progress=False, devices=ONE_DEVICE
    )
    assert all(np.isfinite(list(result["losses"].values())))
    assert (tmp_path / "run" / "images" / "step_0000002.png").is_file()
    pretrained = dit_lib.load_dit(out)
    assert pretrained.config.in_dim == build.latent_channels(config)
    assert "```bash\ntest\n```" in (out / "README.md").read_text()

    finetune = micro_config()
    finetune.model.init_checkpoint = str(out)
    mesh, rules = config_lib.mesh_and_rules(finetune, ONE_DEVICE)
    params = loop.make_trainer(finetune, mesh, rules).init_state()["params"]
    channels = pretrained.config.in_dim
    kernel = np.asarray(params["patch_kernel"][...])
    np.testing.assert_array_equal(kernel[..., :channels, :], pretrained.patch_kernel[...])
    np.testing.assert_array_equal(kernel[..., channels:, :], 0.0)
    expected = nnx.state(pretrained, nnx.Param)
    np.testing.assert_array_equal(
        params["blocks"]["ffn_in"]["kernel"][...], expected["blocks"]["ffn_in"]["kernel"][...]
    )


def test_pretraining_needs_a_plain_text_to_video_config(tmp_path):
    with pytest.raises(UserError, match="plain text-to-video"):
        pretrain_lib.pretrain(micro_config(), tmp_path / "run", tmp_path / "out", command="x")


def test_pretrain_config_is_a_plain_wan_on_perspective_clips():
    for arg in ("pretrain", "micro_pretrain"):
        config = load_config("tiny", arg)
        config_lib.validate_config(config, num_devices=1)
        model = build.dit_config(config)
        assert model.in_dim == model.out_dim == build.latent_channels(config)
        assert not config_lib.takes_condition(config)
    config = load_config("tiny", "pretrain")
    config.data.scenes.size = (32, 36)  # 9 latent columns: not whole 2x2 patches
    with pytest.raises(ValueError, match=r"config\.data\.scenes\.size: must be multiples of 8"):
        config_lib.validate_config(config, num_devices=1)
