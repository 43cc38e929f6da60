"""The generation CLI: a tiny random model end to end, valid outputs, clear errors."""

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from viewpoint_jax import sample, video_io
from viewpoint_jax.diffusion import sampler
from viewpoint_jax.models.autoencoder import SpaceToDepthAutoencoder
from viewpoint_jax.models.dit import DiTConfig, WanDiT

FFPROBE = shutil.which("ffprobe")
REPO = Path(__file__).resolve().parents[1]
MAP_SIZE, ERP_HEIGHT, FRAMES = 64, 32, 5

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


class HashTextEncoder:
    """Stand-in text encoder: a fixed random embedding per prompt, zero-padded like Wan's."""

    def __init__(self, dim: int, length: int = 8):
        self.dim, self.length = dim, length

    def encode_text(self, prompts):
        embeddings = np.zeros((len(prompts), self.length, self.dim), np.float32)
        mask = np.zeros((len(prompts), self.length), np.int32)
        for b, prompt in enumerate(prompts):
            n = min(len(prompt.split()), self.length)
            rng = np.random.default_rng(zlib.crc32(prompt.encode()))
            embeddings[b, :n] = rng.normal(size=(n, self.dim))
            mask[b, :n] = 1
        return jnp.asarray(embeddings), jnp.asarray(mask)


@pytest.fixture(scope="module")
def pipeline():
    import ml_collections

    autoencoder = SpaceToDepthAutoencoder(factor=4)
    channels = autoencoder.latent_channels
    config = DiTConfig.tiny(in_dim=2 * channels + 1, out_dim=channels)
    namespace = {}
    exec(CONFIG_FILE, namespace)
    settings: ml_collections.ConfigDict = namespace["get_config"]()
    return sample.Pipeline(
        model=WanDiT(config, rngs=nnx.Rngs(0)),
        autoencoder=autoencoder,
        text_encoder=HashTextEncoder(config.text_dim),
        config=settings,
    )


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


def test_generate_and_write_outputs(pipeline, tmp_path):
    settings = sampler.SampleSettings(num_steps=3, seed=11, guidance_scale=4.0)
    ticks = []
    generation = sample.generate(
        pipeline,
        "a bright square",
        settings,
        video=condition_video(),
        yaw_deg=45.0,
        progress=lambda i: ticks.append(int(i)),
    )
    jax.effects_barrier()
    assert sorted(ticks) == [0, 1, 2]
    assert generation.map_video.shape == (FRAMES, MAP_SIZE, MAP_SIZE, 3)
    assert generation.panorama.shape == (FRAMES, ERP_HEIGHT, 2 * ERP_HEIGHT, 3)
    assert generation.panorama.dtype == np.uint8 and generation.panorama.std() > 5

    out = tmp_path / "out"
    record = {"prompt": "a bright square", "seed": 11, "settings": settings.to_dict()}
    sample.write_outputs(out, generation, fps=8.0, record=record)
    assert sorted(p.name for p in out.iterdir()) == [
        "faces.png", "pano.mp4", "settings.json", "viewer.html", "viewpoint.mp4",
    ]  # fmt: skip
    assert all(path.stat().st_mode & 0o044 for path in [out, *out.iterdir()])  # not private
    pano, fps = video_io.read_video(out / "pano.mp4")
    assert pano.shape == generation.panorama.shape and fps == pytest.approx(8.0)

    # The random model makes noise, which H.264 cannot keep pixel for pixel; its local means
    # (4 x 4 blocks) must survive.
    def block_means(video):
        f, h, w, c = video.shape
        return video.reshape(f, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))

    assert np.abs(block_means(pano) - block_means(generation.panorama)).mean() < 8
    vp, _ = video_io.read_video(out / "viewpoint.mp4")
    assert vp.shape == generation.map_video.shape
    faces = cv2.imread(str(out / "faces.png"))
    assert faces is not None and faces.shape[0] > 6 and faces.shape[1] > 6 * ERP_HEIGHT // 2
    assert json.loads((out / "settings.json").read_text()) == json.loads(json.dumps(record))
    assert "data:video/mp4;base64," in (out / "viewer.html").read_text()
    if FFPROBE:
        assert spherical_projection(out / "pano.mp4") == "equirectangular"


def test_faces_contact_sheet_shows_the_six_views():
    """Each cell of the sheet is the cube face of that frame: a panorama coloured by face."""
    from viewpoint_jax import geometry

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
    faces = np.broadcast_to(np.array(colours, np.float32)[:, None, None], (6, 16, 16, 3))
    erp = np.asarray(geometry.cubemap_to_erp(jnp.asarray(faces), 32, 64))
    video = np.repeat(np.round(erp).astype(np.uint8)[None], 3, axis=0)
    sheet = sample.faces_contact_sheet(video, face_size=16)
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
        timeout=120,
    )


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.py"
    path.write_text(CONFIG_FILE)
    return path


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--video", "missing.mp4"], "cannot read video missing.mp4"),
        (["--video", "CONFIG"], "cannot read video"),
        (["--fov", "190"], "--fov must be in (0, 180) degrees, got 190"),
        (["--fov", "0"], "--fov must be in (0, 180) degrees"),
        (["--num-frames", "6"], "--num-frames must be 1 + 4k"),
        (["--pitch", "100"], "--pitch must be in [-90, 90]"),
    ],
)
def test_bad_input_gives_one_clear_message(config_file, tmp_path, extra, message):
    extra = [str(config_file) if arg == "CONFIG" else arg for arg in extra]
    result = run_cli(
        "--config", config_file, "--checkpoint", tmp_path, "--prompt", "x",
        "--out", tmp_path / "out", *extra, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_existing_output_and_missing_config_are_reported(config_file, tmp_path):
    (tmp_path / "out").mkdir()
    result = run_cli(
        "--config",
        config_file,
        "--checkpoint",
        tmp_path,
        "--prompt",
        "x",
        "--out",
        tmp_path / "out",
    )
    assert result.returncode == 2 and "exists (pass --overwrite" in result.stderr
    result = run_cli("--config", tmp_path / "nope.py", "--checkpoint", tmp_path, "--prompt", "x",
                     "--out", tmp_path / "new")  # fmt: skip
    assert result.returncode == 2 and "--config: no such file" in result.stderr


def test_frame_counts_are_trimmed_to_one_plus_4k(tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    video_io.write_video(path, condition_video(frames=8), fps=10)
    video, fps = sample.read_condition(str(path), max_frames=None)
    assert len(video) == 5 and fps == pytest.approx(10)
    assert "has 8 frames; using the first 5" in capsys.readouterr().err
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), condition_video(frames=1)[0])
    assert len(sample.read_condition(str(image), max_frames=49)[0]) == 1


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random DiT sized by `configs/tiny.py:micro`, saved as a converted checkpoint
    (`config.json` + Orbax `params/`, the layout `load_dit` reads)."""
    import orbax.checkpoint as ocp

    from viewpoint_jax import components

    config = sample.load_config(str(REPO / "configs" / "tiny.py:micro"))
    model_config = components.dit_config(config)
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
        "--yaw", "-30", "--pitch", "10", "--num-frames", "9", "--steps", "3", "--seed", "5",
        "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "has 6 frames; using the first 5" in result.stderr
    assert "3/3" in result.stderr  # the progress bar reached the last step
    record = json.loads((out / "settings.json").read_text())
    assert record["seed"] == 5 and record["settings"]["num_steps"] == 3
    assert record["settings"]["scheduler"] == "euler"  # from the config
    assert record["condition"]["fov"] == 75 and record["condition"]["frames"] == 5
    pano, fps = video_io.read_video(out / "pano.mp4")
    assert pano.shape == (5, 32, 64, 3) and fps == pytest.approx(10)
    assert video_io.read_video(out / "viewpoint.mp4")[0].shape == (5, 64, 64, 3)
    assert cv2.imread(str(out / "faces.png")) is not None
    assert (out / "viewer.html").stat().st_size > 1000
    if FFPROBE:
        assert spherical_projection(out / "pano.mp4") == "equirectangular"
