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


def wan(arg):
    from viewpoint_jax.setup.config import load_config_file

    return load_config_file(f"{REPO / 'configs' / 'wan.py'}:{arg}")


# A v5p chip's HBM as XLA's TPU compiler counts it (95.74 GiB), and what the compiled 2K steps
# hold beyond the analytic plan (issue 33's compiles on 8 chips; BENCHMARKS.md "2K").
V5P_BYTES, HEADROOM = 95.74 * 1024**3, 26 * 1024**3


@pytest.mark.parametrize("size", ["14b", "1_3b"])
def test_the_2k_configs_are_the_recipe_at_map_1280_on_the_mesh_the_plan_finds(size):
    from viewpoint_jax.setup.config import mesh_shape, validate_config
    from viewpoint_jax.training import memory

    one_k, two_k = wan(size), wan(f"{size}_2k")
    assert (two_k.data.erp_height, two_k.data.erp_width, two_k.data.map_size) == (1024, 2048, 1280)
    assert two_k.data.num_frames == 49 and two_k.model.remat_policy == "full"
    assert two_k.model.preset == one_k.model.preset and two_k.diffusion == one_k.diffusion
    assert dict(two_k.sharding_rules)["embed"] == ("fsdp", "sequence")

    rows = memory.smallest_mesh(two_k, (4, 8, 16), V5P_BYTES, HEADROOM)
    first = next(row for row in rows if row["fits"])
    validate_config(two_k, first["devices"])  # the config runs on the smallest topology
    mesh = mesh_shape(two_k, first["devices"])
    chosen = next(row for row in rows if row["mesh"] == mesh)
    assert chosen["fits"]
    if size == "1_3b":  # the 1K mesh on a v5p-8 (4 chips)
        assert first["devices"] == 4 and mesh["sequence"] == 1
    else:  # 8 chips, and only with the tokens split: FSDP alone is refused (as compiled)
        assert first["devices"] == 8 and mesh["sequence"] > 1
        assert two_k.data.batch_size == mesh["fsdp"]  # one sample per fsdp group
        fsdp_only = next(r for r in rows if r["devices"] == 8 and r["mesh"]["sequence"] == 1)
        assert not fsdp_only["fits"]
        assert not any(row["fits"] for row in rows if row["devices"] == 4)


@pytest.mark.parametrize("sequence_parallel", ["gather", "ulysses"])
def test_a_sequence_axis_splits_tokens_not_weights_and_counts_the_gathered_keys(sequence_parallel):
    """With `embed` over fsdp x sequence, fsdp 2 x sequence 4 holds the weights, optimizer state
    and gradients of fsdp 8; the activations are those of a quarter of the tokens plus the keys
    and values a device holds in self-attention (4 b N D c): every token's with gather, its own
    quarter's with Ulysses (all tokens for a quarter of the heads)."""
    import dataclasses

    from viewpoint_jax.setup import build
    from viewpoint_jax.training import memory

    config = wan("14b_2k")
    assert config.model.sequence_parallel == "ulysses"  # the 2K recipe's
    model_config = dataclasses.replace(
        build.dit_config(config), sequence_parallel=sequence_parallel
    )
    one = dict(data=1, fsdp=8, sequence=1, tensor=1)
    split = dict(data=1, fsdp=2, sequence=4, tensor=1)
    config.data.batch_size = 8
    fsdp = memory.training_plan(config, one, model_config)
    config.data.batch_size = 2
    seq = memory.training_plan(config, split, model_config)
    for key in ("param_bytes", "optimizer_bytes", "gradient_bytes"):
        assert seq[key] == fsdp[key], key
    tokens, d = fsdp["tokens_per_sample"], model_config.dim
    assert tokens == 13 * 80 * 80
    # One sample per device, bf16, in each block of the scan group recomputed at once (remat full).
    held = tokens / 4 if sequence_parallel == "ulysses" else tokens
    gathered = 4 * held * d * 2 * len(model_config.scan_group)
    quarter = fsdp["activations"] / 4  # the fsdp-only plan is linear in the tokens per device
    assert seq["activations"] == pytest.approx(quarter + gathered, rel=1e-9)


def test_the_compile_command_gives_one_sample_per_chip_group_a_sample_spans():
    """`compile --batch_per_chip 1` on a 2K mesh: a sample's tokens span sequence chips, so the
    batch is one per fsdp group (14B on v5p-16, fsdp 2 x sequence 4: 2), not one per chip."""
    from viewpoint_jax.studies import tpu_compile

    v5p_16, v5p_8 = tpu_compile.parse_target("v5p-16"), tpu_compile.parse_target("v5p-8")
    config, notes = tpu_compile.for_target(wan("14b_2k"), 1, v5p_16, "train")
    assert config.data.batch_size == 2 and not any(n.startswith("batch") for n in notes)
    config, notes = tpu_compile.for_target(wan("14b_2k"), 2, v5p_16, "train")
    assert config.data.batch_size == 4 and "batch: 2 per 4 chips (sequence x tensor)" in notes[-1]
    config, _ = tpu_compile.for_target(wan("1_3b_2k"), 1, v5p_8, "train")
    assert config.data.batch_size == 4  # FSDP alone: one per chip
