"""2K end to end (issue 33): a tiny model at the 2K map size (configs/tiny.py:2k: map 1280, ERP
1024 x 2048, 5 frames) trains and samples on 4 simulated CPU devices with its tokens split over
a sequence axis of 4, from a dataset prepared at --height 1024; the sample is a 1024 x 2048
pano.mp4, conditioned on an image (a non-default condition) and made in two windows (a long
video), and the evaluation reads it."""

import functools
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from test_train import REPO, procedural_frames, subprocess_env

from viewpoint_jax.common import video_io
from viewpoint_jax.data import panoramic_videos, preparation
from viewpoint_jax.evaluation import report as report_lib

FFPROBE = shutil.which("ffprobe")
DEVICES = 4


def run_command(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"viewpoint_jax.{module}", *map(str, args)],
        capture_output=True, text=True, env=subprocess_env(DEVICES), timeout=900,
    )  # fmt: skip


def probe(path) -> dict:
    """Width, height and frame count of the first video stream, as ffprobe reads them."""
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-show_entries",
         "stream=width,height,nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream = json.loads(result.stdout)["streams"][0]
    return {key: int(stream[key]) for key in ("width", "height", "nb_read_frames")}


def prepare_at_2k(root) -> tuple:
    """Two small procedural clips prepared at --height 1024: the stored frames are 2K."""
    source = root / "source"
    source.mkdir()
    lines = []
    for i in range(2):
        video_io.write_video(source / f"clip{i}.mp4", procedural_frames(i, 5, 64), 8.0)
        lines.append(json.dumps({"file": f"clip{i}.mp4", "caption": f"bands number {i}"}))
    (source / "captions.jsonl").write_text("\n".join(lines) + "\n")
    preparation.prepare(source, root / "data", "bands", progress=False, height=1024)
    return root / "data", "bands"


@pytest.mark.skipif(FFPROBE is None, reason="ffprobe not installed")
def test_a_tiny_model_at_the_2k_map_trains_and_samples_with_its_tokens_split(tmp_path):
    data_dir, name = prepare_at_2k(tmp_path)
    record = panoramic_videos.open_data_source(data_dir, name, "train")[0]
    assert panoramic_videos.decode_frame(record["frames"][0]).shape == (1024, 2048, 3)

    run = tmp_path / "run"
    config = f"{REPO / 'configs' / 'tiny.py'}:2k"
    trained = run_command(
        "train", f"--config={config}", f"--workdir={run}", f"--config.data.data_dir={data_dir}",
        f"--config.data.name={name}",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "mesh: data=1, fsdp=1, sequence=4, tensor=1" in trained.stdout + trained.stderr
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics)

    image = tmp_path / "view.png"  # a perspective image known at frame 0 (image-to-360)
    cv2.imwrite(str(image), procedural_frames(3, 1, 48)[0][:, :64])
    out = tmp_path / "out"
    sampled = run_command(
        "sample", "--checkpoint", run, "--prompt", "bands", "--image", image, "--fov", "90",
        "--num_frames", "9", "--mesh", f"sequence={DEVICES}", "--out", out,
    )  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert probe(out / "pano.mp4") == {"width": 2048, "height": 1024, "nb_read_frames": 9}
    assert probe(out / "viewpoint.mp4") == {"width": 1280, "height": 1280, "nb_read_frames": 9}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["config"]["data"]["map_size"] == 1280

    report = report_lib.evaluate(
        report_lib.find_inputs([out]), tmp_path / "eval", view_size=64, log=lambda _: None
    )
    (video,) = report["videos"]
    assert video["size"] == [1024, 2048] and video["frames"] == 9
    # The map video (1280) is read back: its overlapping subregions are measured.
    assert video["overlap_disagreement"] is not None and video["seam_ratio"] is not None
    assert len(video["views"]) == 6


def test_a_2k_map_encodes_in_tiles_of_the_1k_size():
    """`encode_tiled`: a 1K map (640) is encoded whole, a 2K map (1280) in 2 x 2 tiles of the 1K
    size: exact for the block DCT, and the Wan VAE's compiled encode then needs less than half
    the temporaries of the whole frame's (a tiny VAE, compiled only)."""
    import jax
    from flax import nnx

    from viewpoint_jax.models import autoencoder as autoencoder_lib
    from viewpoint_jax.models import vae as vae_lib

    dct = autoencoder_lib.BlockDCTAutoencoder(16, 16)
    video = jax.random.uniform(jax.random.key(0), (1, 1, 1280, 1280, 3), minval=-1.0, maxval=1.0)
    tiled = jax.jit(functools.partial(autoencoder_lib.encode_tiled, dct))(video)
    np.testing.assert_allclose(np.asarray(tiled), np.asarray(dct.encode(video)), atol=2e-6)

    vae = vae_lib.WanVAE(vae_lib.WanVAEConfig(base_dim=8, num_res_blocks=1), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vae)

    def temporaries(encode, side):
        frame = jax.ShapeDtypeStruct((1, 1, side, side, 3), np.float32)
        fn = jax.jit(lambda s, v: encode(nnx.merge(graphdef, s), v))
        return fn.lower(state, frame).compile().memory_analysis().temp_size_in_bytes

    whole = temporaries(lambda model, v: model.encode(v), 1280)
    in_tiles = temporaries(autoencoder_lib.encode_tiled, 1280)
    assert in_tiles < 0.5 * whole, (in_tiles, whole)
    one_k = vae.encode(video[:, :, :640, :640])
    np.testing.assert_array_equal(autoencoder_lib.encode_tiled(vae, video[:, :, :640, :640]), one_k)
