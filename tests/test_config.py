"""The configs load, describe the paper's setup, and bad values fail naming their key."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from viewpoint_jax.data import conditions, pipeline
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import check_run_inputs, mesh_shape, validate_config

REPO = Path(__file__).resolve().parents[1]


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(f"_c_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    if config.autoencoder.kind == "wan_vae":  # paths the user passes; validation needs them set
        config.autoencoder.checkpoint = "/ckpt/wan_vae"
        config.text_encoder.checkpoint = "/ckpt/umt5_xxl"
        config.text_encoder.tokenizer = "/ckpt/umt5_xxl/spiece.model"
    return config


def test_wan14b_is_the_papers_setup():
    config = load("wan14b")
    assert (config.data.erp_height, config.data.erp_width) == (512, 1024)
    assert config.data.map_size == 640 and config.data.num_frames == 49
    assert config.optim.lr == 1e-4 and config.data.batch_size == 8
    model = build.dit_config(config)
    assert (model.in_dim, model.out_dim, model.text_dim) == (33, 16, 4096)
    assert (model.dim, model.num_layers, model.num_heads) == (5120, 40, 40)
    assert model.dtype == "bfloat16" and model.param_dtype == "float32"
    validate_config(config, num_devices=8)
    assert mesh_shape(config, 8) == dict(data=1, fsdp=8, sequence=1, tensor=1)


def test_wan1_3b_and_tiny_validate():
    config = load("wan1_3b")
    assert build.dit_config(config).dim == 1536
    validate_config(config, num_devices=8)
    # The demo's block DCT keeps Wan's 16 latent channels; the tests' space-to-depth keeps all
    # 3 x 8 x 8 pixel values of a block.
    for arg, channels in ((None, 16), ("micro", 3 * 8**2)):
        tiny = load("tiny", arg)
        validate_config(tiny, num_devices=1)
        model = build.dit_config(tiny)
        assert (model.in_dim, model.out_dim) == (2 * channels + 1, channels)


def test_the_demo_sees_its_scenes_from_the_front_and_real_footage_from_anywhere():
    """configs/tiny.py: the condition camera faces the demo scene's front and the panorama is
    not turned, so what lies around the view follows from it (BENCHMARKS.md, "The demo's
    front view"); the paper's configs, and the tests' micro size, keep random turns and views,
    as real footage needs."""
    rng = np.random.default_rng(0)
    maker = pipeline.ExampleMaker(load("tiny").data, "video")
    assert not maker.yaw_augment
    views = [conditions.sample_view(rng, **maker.view_ranges) for _ in range(20)]
    assert {view.yaw_deg for view in views} == {0.0}
    assert len({view.pitch_deg for view in views}) == 20  # the rest of the view still varies
    for data in (load("wan14b").data, load("tiny", "micro").data):
        maker = pipeline.ExampleMaker(data, "video")
        assert maker.yaw_augment
        yaws = [conditions.sample_view(rng, **maker.view_ranges).yaw_deg for _ in range(20)]
        assert min(yaws) < -90 and max(yaws) > 90


@pytest.mark.parametrize(
    "key, value, devices, message",
    [
        ("mesh.fsdp", 4, 8, r"config\.mesh: .*needs 4 devices, but 8"),
        ("data.map_size", 624, 8, r"config\.data\.map_size: must be a multiple of 32"),
        ("data.num_frames", 48, 8, r"config\.data\.num_frames: must be 1 \+ 4k"),
        ("data.erp_width", 1000, 8, r"config\.data\.erp_width"),
        ("data.batch_size", 4, 8, r"config\.data\.batch_size: 4 must be divisible"),
        ("optim.lr", 0.0, 8, r"config\.optim\.lr"),
        ("optim.ema_decay", 1.0, 8, r"config\.optim\.ema_decay"),
        ("diffusion.timestep_sampler", "cosine", 8, r"config\.diffusion\.timestep_sampler"),
        ("diffusion.loss", "epsilon", 8, r"config\.diffusion\.loss: must be one of"),
        ("model.num_heads", 7, 8, r"config\.model: dim 5120 is not divisible by num_heads 7"),
        ("autoencoder.kind", "vqgan", 8, r"config\.autoencoder\.kind"),
        ("checkpoint.every_steps", 0, 8, r"config\.checkpoint\.every_steps"),
    ],
)
def test_invalid_values_name_the_key(key, value, devices, message):
    config = load("wan14b")
    section, field = key.split(".")
    if key == "mesh.fsdp":
        config.mesh.fsdp = value
    else:
        config[section][field] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config, num_devices=devices)


def test_wan_configs_need_their_checkpoints():
    config = load("wan14b")
    config.autoencoder.checkpoint = ""
    validate_config(config, num_devices=8)  # the values; the paths are check_run_inputs'
    with pytest.raises(ValueError, match=r"config\.autoencoder\.checkpoint: not set"):
        check_run_inputs(config)


def run_train_cli(workdir, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m viewpoint_jax.train` on configs/tiny.py:micro with config overrides."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "viewpoint_jax.train",
            f"--config={REPO / 'configs/tiny.py'}:micro",
            f"--workdir={workdir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    result = run_train_cli(tmp_path, "--config.data.map_size=72")
    assert result.returncode == 2, result.stderr
    assert "error: config.data.map_size: must be a multiple of 32, got 72" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_representation_validates_and_sizes_its_frames():
    from viewpoint_jax.data.config import canvas_hw

    config = load("wan14b")
    assert canvas_hw(config.data) == (640, 640)  # the ViewPoint map, the default
    config.model.attention_pattern = "pano"
    for representation, frames in (("erp", (448, 896)), ("cube_2x3", (512, 768))):
        config.data.representation = representation
        validate_config(config, num_devices=8)
        assert canvas_hw(config.data) == frames


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Subregions exist only in the ViewPoint map (tiny's preset pattern alternates them).
        (
            {"data.representation": "erp"},
            r"config\.model\.attention_pattern: 'alternate' has subregion blocks, which split the "
            r"ViewPoint map into its 4 subregions; config\.data\.representation 'erp' has none: "
            r"use 'pano'",
        ),
        (
            {"data.representation": "cube_2x3", "model.attention_pattern": "subregion"},
            r"config\.model\.attention_pattern: 'subregion' has subregion blocks",
        ),
        (
            {"data.representation": "erp", "model.attention_pattern": "pano",
             "sample.fuse_every_step": True},
            r"config\.sample\.fuse_every_step: fuses the ViewPoint map's overlapping subregions",
        ),
        ({"data.representation": "cubemap"}, r"config\.data\.representation: must be one of"),
        # Space-to-depth by 16: 32-pixel tokens do not tile the 48 x 96 ERP of a 64 map.
        (
            {"data.representation": "erp", "model.attention_pattern": "pano",
             "autoencoder.factor": 16},
            r"config\.data\.representation: 'erp' frames of map_size 64 are 48x96, not multiples "
            r"of 32",
        ),
    ],
)  # fmt: skip
def test_a_representation_without_subregions_refuses_them_by_key(overrides, message):
    config = load("tiny", "micro")
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        validate_config(config, num_devices=1)


def test_cli_refuses_subregion_attention_on_erp_in_one_line(tmp_path):
    result = run_train_cli(tmp_path, "--config.data.representation=erp")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: config.model.attention_pattern: 'alternate' has subregion blocks, which split the "
        "ViewPoint map into its 4 subregions; config.data.representation 'erp' has none: use "
        "'pano'"
    ]
    assert "Traceback" not in result.stderr
