"""The generation CLI: a tiny random model end to end, valid outputs, clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import subprocess_env

from viewpoint_jax import sample
from viewpoint_jax.common import cli, video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.generation.models import (
    load_config,
    load_models,
    sampling_config,
    sampling_meshes,
)
from viewpoint_jax.generation.outputs import canvas_video_name, faces_contact_sheet
from viewpoint_jax.generation.requests import Request, read_condition, run_request
from viewpoint_jax.models.dit import WanDiT

FFPROBE = shutil.which("ffprobe")
REPO = Path(__file__).resolve().parents[1]
FRAMES = 5

# A config that loads fast, for the argument checks (the end-to-end test uses tiny.py:micro).
CONFIG_FILE = """
import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        dict(map_size=64, erp_height=32, erp_width=64, num_frames=5)
    )
    config.sample = ml_collections.ConfigDict(
        dict(scheduler="unipc", steps=3, shift=5.0, guidance_scale=5.0)
    )
    return config
"""


def spherical_projection(path):
    """The projection ffprobe reads from the video stream's spherical side data (or None)."""
    probe = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    side_data = json.loads(probe.stdout)["streams"][0].get("side_data_list", [])
    return next((e["projection"] for e in side_data if "projection" in e), None)


def condition_video(frames=FRAMES):
    """A perspective clip: a bright square moving right over a dark background."""
    video = np.full((frames, 24, 32, 3), 30, np.uint8)
    for f in range(frames):
        video[f, 8:16, 4 + 3 * f : 12 + 3 * f] = (240, 200, 40)
    return video


def test_faces_contact_sheet_shows_the_six_views():
    """Each cell of the sheet is the cube face of that frame: a panorama coloured by face."""
    from viewpoint_jax import geometry

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
    faces = np.broadcast_to(np.array(colours, np.float32)[:, None, None], (6, 16, 16, 3))
    erp = np.asarray(geometry.cubemap_to_erp(jnp.asarray(faces), 32, 64))
    video = np.repeat(np.round(erp).astype(np.uint8)[None], 3, axis=0)
    sheet = faces_contact_sheet(video, face_size=16)
    gap, label_width, header = 4, 56, 22  # the sheet's layout
    for row in range(3):
        for k, colour in enumerate(colours):
            y, x = header + row * (16 + gap) + 8, label_width + k * (16 + gap) + 8
            np.testing.assert_allclose(sheet[y, x], colour, atol=40)


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "viewpoint_jax.sample", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=subprocess_env(),
        timeout=120,
    )


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.py"
    path.write_text(CONFIG_FILE)
    return path


BAD_INPUT = [
    (["--video", "missing.mp4"], "cannot read video missing.mp4"),
    (["--video", "CONFIG"], "cannot read video"),
    (["--fov", "190"], "--fov must be in (0, 180) degrees, got 190"),
    (["--fov", "0"], "--fov must be in (0, 180) degrees"),
    (["--num_frames", "6"], "--num_frames must be 1 + 4k"),
    (["--pitch", "100"], "--pitch must be in [-90, 90]"),
    (["--checkpoint", "nowhere"], "--checkpoint: no such directory nowhere"),
]


def bad_input_args(config_file, tmp_path, extra):
    args = ["--config", config_file, "--checkpoint", tmp_path, "--prompt", "x"]
    args += ["--out", tmp_path / "out"]
    return [str(config_file) if arg == "CONFIG" else str(arg) for arg in args + extra]


@pytest.mark.parametrize("extra,message", [BAD_INPUT[i] for i in (0, 2, 4)])
def test_bad_input_gives_one_clear_message(config_file, tmp_path, extra, message):
    result = run_cli(*bad_input_args(config_file, tmp_path, extra), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def run_in_process(argv, capsys) -> tuple[int, str]:
    """The same path as the subprocess tests (`cli.run`), without a Python start each: the
    sample flags defined afresh on absl's global FLAGS (another CLI's, from an earlier test in
    this process, are dropped first), so each parse starts from the defaults."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(sample.main, sample.define_flags, argv=["sample", *argv])
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [BAD_INPUT[i] for i in (1, 3, 5, 6)])
def test_more_bad_input_in_process(config_file, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    code, stderr = run_in_process(bad_input_args(config_file, tmp_path, extra), capsys)
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_fusing_every_step_is_refused_without_a_viewpoint_map(tmp_path, capsys):
    path = tmp_path / "erp_config.py"
    path.write_text(CONFIG_FILE.replace("num_frames=5", "num_frames=5, representation='erp'"))
    argv = bad_input_args(path, tmp_path, ["--fuse_every_step"])
    code, stderr = run_in_process(argv, capsys)
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.startswith(
        "error: --fuse_every_step fuses the ViewPoint map's overlapping subregions; "
        "config.data.representation 'erp' has none"
    )


def test_existing_output_and_missing_config_are_reported(config_file, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, stderr = run_in_process(bad_input_args(config_file, tmp_path, []), capsys)
    assert code == 2 and "exists (pass --overwrite" in stderr
    code, stderr = run_in_process(
        bad_input_args(tmp_path / "nope.py", tmp_path, ["--out", tmp_path / "new"]), capsys
    )
    assert code == 2 and "--config: cannot load the config file" in stderr and "nope.py" in stderr


def test_frame_counts_are_trimmed_to_one_plus_4k(tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    video_io.write_video(path, condition_video(frames=8), fps=10)
    video, fps = read_condition(str(path), max_frames=None)
    assert len(video) == 5 and fps == pytest.approx(10)
    assert "has 8 frames; using the first 5" in capsys.readouterr().err
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), condition_video(frames=1)[0])
    assert len(read_condition(str(image), max_frames=49)[0]) == 1


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random DiT sized by `configs/tiny.py:micro`, saved as a converted checkpoint
    (`config.json` + Orbax `params/`, the layout `load_dit` reads)."""
    import orbax.checkpoint as ocp

    from viewpoint_jax.setup import build

    config = load_config(str(REPO / "configs" / "tiny.py:micro"))
    model_config = build.dit_config(config)
    model = nnx.jit(lambda: WanDiT(model_config, rngs=nnx.Rngs(0)))()
    path = tmp_path_factory.mktemp("checkpoint") / "dit"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(model_config.to_dict()))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = jax.tree_util.tree_map(np.asarray, params)
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save((path / "params").absolute(), _string_keys(params))
    return path


def _string_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def test_cli_end_to_end(tiny_checkpoint, tmp_path):
    clip = tmp_path / "clip.mp4"
    video_io.write_video(clip, condition_video(frames=6), fps=10)  # 6 frames: trimmed to 5
    out = tmp_path / "out"
    result = run_cli(
        "--config", REPO / "configs" / "tiny.py:micro", "--checkpoint", tiny_checkpoint,
        "--prompt", "a bright square moves right", "--video", clip, "--fov", "75",
        "--yaw", "-30", "--pitch", "10", "--num_frames", "9", "--steps", "3", "--seed", "5",
        "--keep_known", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "has 6 frames; using the first 5" in result.stderr
    assert "3/3" in result.stderr  # the progress bar reached the last step
    record = json.loads((out / "settings.json").read_text())
    assert record["seed"] == 5 and record["settings"]["num_steps"] == 3
    assert record["settings"]["scheduler"] == "euler"  # from the config
    assert record["settings"]["keep_known"] is True  # from the flag
    assert record["condition"]["fov"] == 75 and record["condition"]["frames"] == 5
    assert record["condition"]["source_frames"] == 6  # the clip's, of which the first 5 used
    pano, fps = video_io.read_video(out / "pano.mp4")
    assert pano.shape == (5, 32, 64, 3) and fps == pytest.approx(10)
    assert video_io.read_video(out / "viewpoint.mp4")[0].shape == (5, 64, 64, 3)
    assert cv2.imread(str(out / "faces.png")) is not None
    assert (out / "viewer.html").stat().st_size > 1000
    assert all(path.stat().st_mode & 0o044 for path in [out, *out.iterdir()])  # not private
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    if FFPROBE:
        assert spherical_projection(out / "pano.mp4") == "equirectangular"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A training run of configs/tiny.py:micro, two steps: RUN_DIR/config.json + checkpoints/."""
    from test_train import ONE_DEVICE, micro_config, procedural_records

    from viewpoint_jax.training import loop

    config = micro_config()
    config.num_steps = 2
    config.checkpoint.every_steps = 2
    workdir = tmp_path_factory.mktemp("run")
    loop.train(
        config, workdir, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    return workdir


def test_a_run_directory_samples_with_the_config_that_trained_it(tiny_run, tmp_path):
    out = tmp_path / "out"
    result = run_cli("--checkpoint", tiny_run, "--prompt", "x", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "settings.json").read_text())
    trained = json.loads((tiny_run / "config.json").read_text())
    assert record["config"]["model"] == trained["model"]
    assert record["settings"]["num_steps"] == trained["sample"]["steps"]
    assert video_io.read_video(out / "pano.mp4")[0].shape[1:3] == (
        trained["data"]["erp_height"],
        trained["data"]["erp_width"],
    )


def test_component_paths_come_from_flags_or_are_refused_by_name(tiny_run, tmp_path):
    config = sampling_config(tiny_run)
    config.autoencoder.kind = "wan_vae"
    config.autoencoder.checkpoint = ""
    with pytest.raises(UserError, match=r"config.autoencoder.checkpoint is empty.*--vae=PATH"):
        sampling_config(tiny_run, config)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"config.autoencoder.checkpoint .*nowhere.*--vae=PATH"):
        sampling_config(tiny_run, config, {"vae": missing})
    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    chosen = sampling_config(tiny_run, config, {"vae": str(vae_dir), "tokenizer": None})
    assert chosen.autoencoder.checkpoint == str(vae_dir)
    with pytest.raises(UserError, match=r"no config.json of a training run: pass --config$"):
        sampling_config(tmp_path)


def test_long_image_and_continued_videos_through_the_cli(tiny_run, tmp_path, monkeypatch, capsys):
    """--num_frames past the model's clip goes window by window; --image seeds frame 0;
    --continue extends a 360 video, its frames kept as given."""
    monkeypatch.chdir(tmp_path)
    common = ["--checkpoint", str(tiny_run), "--prompt", "x", "--steps", "2"]
    clip = sampling_config(tiny_run).data.num_frames  # 5 for the micro config
    code, stderr = run_in_process([*common, "--num_frames", "13", "--out", "long"], capsys)
    assert code == 0, stderr
    record = json.loads((tmp_path / "long" / "settings.json").read_text())
    assert record["frames"] == 13 and record["window_starts"][0] == 0
    assert len(record["window_starts"]) > 1 and record["overlap"] == 1
    assert video_io.read_video(tmp_path / "long" / "pano.mp4")[0].shape[0] == 13

    image = tmp_path / "view.png"
    video_io.write_png(image, condition_video(frames=1)[0])
    code, stderr = run_in_process([*common, "--image", str(image), "--out", "img"], capsys)
    assert code == 0, stderr
    record = json.loads((tmp_path / "img" / "settings.json").read_text())
    assert record["condition"]["image"] == str(image) and record["frames"] == clip

    source = tmp_path / "long" / "pano.mp4"
    args = [*common, "--continue", str(source), "--num_frames", "17", "--out", "more"]
    code, stderr = run_in_process(args, capsys)
    assert code == 0, stderr
    record = json.loads((tmp_path / "more" / "settings.json").read_text())
    assert record["frames"] == 17 and record["condition"]["source_frames"] == 13
    given, _ = video_io.read_video(source)
    extended, _ = video_io.read_video(tmp_path / "more" / "pano.mp4")
    # The given frames come back as they were, up to one more round of video compression:
    # as close as the same frames simply written again.
    video_io.write_video(tmp_path / "again.mp4", given, fps=16)
    again, _ = video_io.read_video(tmp_path / "again.mp4")
    codec_error = np.abs(again.astype(int) - given.astype(int)).mean()
    kept_error = np.abs(extended[:13].astype(int) - given.astype(int)).mean()
    assert kept_error <= 1.05 * codec_error + 0.1, (kept_error, codec_error)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--video", "a.mp4", "--image", "b.png"], "--video and --image cannot be combined"),
        (["--continue", "a.mp4"], "--continue needs --num_frames"),
        (["--continue", "WIDE", "--num_frames", "9"], "not a 2:1 360 (ERP) video"),
        (["--num_frames", "9", "--overlap", "0"], "--overlap must be >= 1"),
    ],
)
def test_bad_condition_combinations_are_refused(tiny_run, tmp_path, capsys, extra, message):
    wide = tmp_path / "wide.mp4"
    video_io.write_video(wide, np.zeros((3, 32, 48, 3), np.uint8), fps=8)
    extra = [str(wide) if arg == "WIDE" else arg for arg in extra]
    args = ["--checkpoint", str(tiny_run), "--prompt", "x", "--out", str(tmp_path / "o"), *extra]
    code, stderr = run_in_process(args, capsys)
    assert code == 2 and stderr.startswith("error: ") and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1


def test_mesh_flag_is_parsed_or_refused_by_name():
    devices = jax.local_devices()
    n = len(devices)
    (mesh,) = sampling_meshes(f"fsdp={n}")
    assert dict(mesh.shape)["fsdp"] == n
    (default,) = sampling_meshes(None)
    assert dict(default.shape)["fsdp"] == n
    # Smaller than the devices: one mesh per group of consecutive devices (8 devices: 4 groups).
    groups = sampling_meshes("fsdp=1,tensor=2")
    assert [list(m.devices.flat) for m in groups] == [devices[i : i + 2] for i in range(0, n, 2)]
    assert all(dict(m.shape)["tensor"] == 2 for m in groups)
    (everything,) = sampling_meshes("tensor=2,fsdp=-1")
    assert dict(everything.shape)["fsdp"] == n // 2
    with pytest.raises(UserError, match=r"--mesh 'bogus=2': expected axis=size pairs"):
        sampling_meshes("bogus=2")
    with pytest.raises(UserError, match=r"--mesh 'fsdp=3,tensor=5': a model on 15 devices"):
        sampling_meshes("fsdp=3,tensor=5")  # 15 devices: never this machine's count


@pytest.mark.parametrize("representation", ["erp", "cube_2x3"])
def test_another_representation_trains_a_step_and_samples_the_same_files(representation, tmp_path):
    """A micro model of ERP or cube-raster frames trains one step; sampling its run writes the
    outputs a ViewPoint model writes, its own frames under the representation's name."""
    from test_train import ONE_DEVICE, micro_config, procedural_records

    from viewpoint_jax import geometry
    from viewpoint_jax.diffusion import denoising
    from viewpoint_jax.training import loop

    config = micro_config()
    config.data.representation = representation
    config.model.attention_pattern = "pano"
    config.num_steps = config.checkpoint.every_steps = config.log.image_every_steps = 1
    run_dir = tmp_path / "run"
    result = loop.train(
        config, run_dir, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    assert np.isfinite(result["losses"][1])
    assert (run_dir / "images" / "step_0000001.png").is_file()  # the preview of its frames

    clip = tmp_path / "clip.mp4"
    video_io.write_video(clip, condition_video(), fps=8)
    request = Request(prompt="bands", video=str(clip), fov=80.0, yaw=40.0)
    models = load_models(config, run_dir, dtype="float32")
    settings = denoising.SampleSettings(num_steps=2, scheduler="euler", guidance_scale=2.0)
    out = run_request(models, config, request, settings, tmp_path / "out", checkpoint="x")
    frames = canvas_video_name(representation)
    assert frames == f"{representation}.mp4"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["pano.mp4", frames, "faces.png", "viewer.html", "settings.json"]
    )
    assert video_io.read_video(out / "pano.mp4")[0].shape == (FRAMES, 32, 64, 3)
    canvas_hw = geometry.canvas_size(representation, config.data.map_size)
    assert video_io.read_video(out / frames)[0].shape == (FRAMES, *canvas_hw, 3)
    assert json.loads((out / "settings.json").read_text())["representation"] == representation
