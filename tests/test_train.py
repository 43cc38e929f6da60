"""The train loop on a micro config: loss falls, resume is exact, sharded equals unsharded, NaNs.

Helpers here (micro_config, procedural_records, write_dataset, subprocess_env, cli, run_command,
CountingEncoder) are shared with other test files.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.data import panoramic_videos, preparation
from viewpoint_jax.models import text_encoder as text_lib
from viewpoint_jax.setup import build
from viewpoint_jax.training import checkpoints, loop

REPO = Path(__file__).resolve().parents[1]
# Every run of the micro config compiles the same programs: keep them across tests and processes.
COMPILE_CACHE = Path(tempfile.gettempdir()) / "viewpoint_jax_test_compile_cache"
jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def load_config(name: str = "tiny", arg: str | None = "micro"):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def micro_config():
    """configs/tiny.py:micro on one device (the sharded runs pass their own mesh)."""
    config = load_config()
    config.mesh.update(dict(data=1, fsdp=1, sequence=1, tensor=1))
    return config


ONE_DEVICE = jax.devices()[:1]


def procedural_frames(index: int, num_frames: int, height: int) -> np.ndarray:
    """A moving pattern (uint8 `(F, H, 2H, 3)`): smooth colour bands and a drifting blob."""
    h, w = height, 2 * height
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    frames = []
    for t in range(num_frames):
        phase = 0.15 * t + 0.7 * index
        r = 0.5 + 0.5 * np.sin(2 * np.pi * (x + phase))
        g = 0.5 + 0.5 * np.cos(2 * np.pi * (y * 2 + 0.3 * index))
        blob = np.exp(-(((x - (0.1 * t + 0.2 * index) % 1) * 8) ** 2 + ((y - 0.5) * 6) ** 2))
        b = np.clip(0.3 + blob, 0, 1)
        frames.append(np.stack([r, g, b], -1))
    return np.round(np.stack(frames) * 255).astype(np.uint8)


def procedural_records(count: int = 6, num_frames: int = 7, height: int = 32) -> list[dict]:
    """Records as the TFDS builder writes them, in memory."""
    return [
        {
            "frames": [
                panoramic_videos.encode_frame(f, "png")
                for f in procedural_frames(i, num_frames, height)
            ],
            "caption": f"a pattern of bands number {i}",
            "is_image": False,
            "source": f"clip{i}.mp4",
        }
        for i in range(count)
    ]


def write_dataset(root: Path, count: int = 6, num_frames: int = 7, height: int = 32):
    """A real TFDS dataset (ArrayRecord) of procedural clips: returns (data_dir, name)."""
    from viewpoint_jax.common.video_io import write_video

    source = root / "source"
    source.mkdir(parents=True)
    lines = []
    for i in range(count):
        write_video(source / f"clip{i}.mp4", procedural_frames(i, num_frames, height), 8.0)
        lines.append(json.dumps({"file": f"clip{i}.mp4", "caption": f"bands number {i}"}))
    (source / "captions.jsonl").write_text("\n".join(lines) + "\n")
    preparation.prepare(source, root / "data", "micro", progress=False, frame_format="png")
    return root / "data", "micro"


def subprocess_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(COMPILE_CACHE),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def cli(workdir: Path, data_dir: Path, name: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "viewpoint_jax.train",
        f"--config={REPO / 'configs' / 'tiny.py'}:micro",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--config.data.name={name}",
        "--config.mesh.fsdp=-1",
        *overrides,
    ]


def run_command(command: str, data_dir, name: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m viewpoint_jax.<command> --config=configs/tiny.py:micro` on the dataset
    (data_dir, name)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"viewpoint_jax.{command}",
            f"--config={REPO / 'configs' / 'tiny.py'}:micro",
            f"--config.data.data_dir={data_dir}",
            f"--config.data.name={name}",
            *args,
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_losses(workdir: Path, name: str = "metrics.jsonl") -> dict[int, float]:
    """step -> loss, the last record of each step winning (a resumed run re-logs steps)."""
    losses = {}
    for line in (workdir / name).read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


# --- Tests ---------------------------------------------------------------------------------------


def test_loss_falls_and_logs(tmp_path):
    config = micro_config()
    config.num_steps = 24
    config.checkpoint.every_steps = 12
    config.log.image_every_steps = 12
    result = loop.train(
        config, tmp_path, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    losses = [result["losses"][s] for s in range(1, 25)]
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 25))
    for key in ("loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "nonfinite_total"):
        assert key in records[-1], key
    assert records[0]["lr"] == 0.0 and records[-1]["lr"] == pytest.approx(config.optim.lr)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "images").glob("*.png")) == [
        "step_0000012.png",
        "step_0000024.png",
    ]
    assert (
        checkpoints.Checkpointer(tmp_path / "checkpoints", every_steps=1, keep=2).latest_step()
        == 24
    )
    # The sampler's entry point restores the trained weights from the run directory.
    model = checkpoints.restore_model_for_inference(tmp_path, config)
    assert model.config == build.dit_config(config)


def straight_and_resumed(config, tmp_path) -> tuple[dict, dict]:
    """Six steps straight (`tmp_path/straight`), and three, then resumed to six
    (`tmp_path/resumed`), on the same records; checkpoints every 3 steps. The two results."""
    records = procedural_records()
    config.num_steps = 6
    config.checkpoint.every_steps = 3
    straight = loop.train(
        config, tmp_path / "straight", data_source=records, devices=ONE_DEVICE, progress=False
    )
    config.num_steps = 3
    loop.train(
        config, tmp_path / "resumed", data_source=records, devices=ONE_DEVICE, progress=False
    )
    config.num_steps = 6
    resumed = loop.train(
        config, tmp_path / "resumed", data_source=records, devices=ONE_DEVICE, progress=False
    )
    return straight, resumed


def test_resume_gives_the_same_losses(tmp_path):
    straight, resumed = straight_and_resumed(micro_config(), tmp_path)
    assert sorted(resumed["losses"]) == [4, 5, 6]  # it did not redo steps 1-3
    np.testing.assert_allclose(
        [resumed["losses"][s] for s in (4, 5, 6)],
        [straight["losses"][s] for s in (4, 5, 6)],
        rtol=1e-6,
    )


def _two_steps(config, mesh, batches):
    trainer = loop.make_trainer(config, mesh, tuple(config.sharding_rules))
    state = trainer.init_state()
    losses = []
    for batch in batches:
        state, metrics = trainer.step(state, trainer.device_batch(batch))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["params"])


def test_sharded_step_equals_single_device():
    config = micro_config()
    from viewpoint_jax.data import pipeline

    it = pipeline.make_train_iterator(config.data, data_source=procedural_records())
    batches = [next(it), next(it)]
    single = sharding_lib.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), jax.devices()[:1])
    sharded = sharding_lib.make_mesh(dict(data=2, fsdp=2, sequence=1, tensor=2))
    losses_1, params_1 = _two_steps(config, single, batches)
    losses_8, params_8 = _two_steps(config, sharded, batches)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _nan_batches(good: list[dict], nan_from: int):
    for i, batch in enumerate(good):
        if i >= nan_from:
            batch = dict(batch, target_map=np.full_like(batch["target_map"], np.nan))
        yield batch


def test_nonfinite_loss_skips_update_then_stops(tmp_path):
    config = micro_config()
    config.num_steps = 10
    config.checkpoint.every_steps = 2
    config.max_consecutive_nonfinite = 3
    from viewpoint_jax.data import pipeline

    it = pipeline.make_train_iterator(config.data, data_source=procedural_records())
    batches = [next(it) for _ in range(10)]
    with pytest.raises(loop.NonFiniteLossError, match="3 NaN/Inf losses in a row at step 6"):
        loop.train(
            config,
            tmp_path,
            data_iterator=_nan_batches(batches, 3),
            devices=ONE_DEVICE,
            progress=False,
        )
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_total"] for r in records] == [0, 0, 0, 1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records[:3])
    # Checkpoints are only written for finite steps: the last good one is step 2.
    manager = checkpoints.Checkpointer(tmp_path / "checkpoints", every_steps=1, keep=3)
    assert manager.latest_step() == 2

    # A skipped step leaves the weights and optimizer moments exactly as they were.
    mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), ONE_DEVICE)
    trainer = loop.make_trainer(config, mesh, tuple(config.sharding_rules))
    state = trainer.init_state()
    before = jax.device_get({k: state[k] for k in ("params", "opt_state")})
    bad = dict(batches[0], target_map=np.full_like(batches[0]["target_map"], np.inf))
    state, metrics = trainer.step(state, trainer.device_batch(bad))
    after = jax.device_get({k: state[k] for k in ("params", "opt_state")})
    jax.tree.map(np.testing.assert_array_equal, after, before)
    assert int(state["nonfinite"]["run"]) == 1 and int(state["step"]) == 1
    state, metrics = trainer.step(state, trainer.device_batch(batches[1]))
    assert np.isfinite(float(metrics["loss"])) and int(state["nonfinite"]["run"]) == 0
    assert int(state["nonfinite"]["total"]) == 1


def test_precomputed_text_gives_the_same_losses_and_writes_the_cache(tmp_path):
    records = procedural_records()
    config = micro_config()
    config.num_steps = 4
    config.data.caption_dropout = 0.5  # some batches hold "", a caption no record has
    encoded = loop.train(
        config, tmp_path / "encoded", data_source=records, devices=ONE_DEVICE, progress=False
    )
    config.text_encoder.precompute = True
    cached = loop.train(
        config, tmp_path / "cached", data_source=records, devices=ONE_DEVICE, progress=False
    )
    np.testing.assert_allclose(
        [cached["losses"][s] for s in range(1, 5)],
        [encoded["losses"][s] for s in range(1, 5)],
        rtol=1e-5,
    )
    path = text_lib.text_cache_path(tmp_path / "cached" / "text_cache", 0)
    cache = text_lib.TextEmbeddingCache.load(path)
    assert "" in cache and len(cache) > 1
    assert set(cache.captions) <= {r["caption"] for r in records} | {""}
    embeddings, mask = build.build_text_encoder(config).encode_text(cache.captions)
    got, got_mask = cache.lookup(cache.captions)
    np.testing.assert_array_equal(got_mask, mask)
    np.testing.assert_allclose(got, embeddings, rtol=1e-6, atol=1e-6)


class CountingEncoder:
    """A text encoder that records every prompt it encodes."""

    def __init__(self, text_encoder):
        self.text_encoder = text_encoder
        self.tokenizer = text_encoder.tokenizer
        self.encoded: list[str] = []

    def encode_text(self, prompts):
        self.encoded.extend(prompts)
        return self.text_encoder.encode_text(prompts)


def test_text_feeder_embeds_each_caption_once_and_reloads_its_cache(tmp_path):
    config = micro_config()
    encoder = CountingEncoder(build.build_text_encoder(config))
    path = text_lib.text_cache_path(tmp_path / "text_cache", 0)
    feeder = text_lib.TextFeeder(encoder, True, path, batch_size=2)
    first = feeder(["a", "b", "a"])["context"]
    second = feeder(["b", ""])["context"]
    assert sorted(set(encoder.encoded)) == ["", "a", "b"]
    assert len(encoder.encoded) == 4  # two batches of 2: ["a", "b"], then ["", ""] (padded)
    assert not path.exists()  # written at checkpoints, not per step
    feeder.flush()
    reloaded = text_lib.TextFeeder(encoder, True, path, batch_size=2)
    np.testing.assert_array_equal(reloaded(["a", "b", "a"])["context"], first)
    np.testing.assert_array_equal(reloaded(["b", ""])["context"], second)
    assert len(encoder.encoded) == 4  # nothing re-encoded
    want, _ = encoder.text_encoder.encode_text(["a", "b", ""])
    np.testing.assert_allclose(first[:2], want[:2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second[1], want[2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss", ["velocity", "clean"])
def test_step_loss_is_the_flow_matching_formula(loss):
    """The loss of the jitted train step equals the rectified-flow loss written out here: with
    rng = fold_in(key(seed), step) split into (noise, sigma) keys, e ~ N(0, I), s from the
    config's timestep sampler, the model sees concat[(1 - s) x + s e, condition, mask] at
    t = 1000 s and the loss is mean((prediction - (e - x))^2), or for `diffusion.loss = "clean"`
    the error of the clean latent it implies, mean((s (prediction - (e - x)))^2) = mean((x_s -
    s prediction - x)^2). Two steps: the rng follows the
    step. Latents and text embeddings come precomputed (as from `python -m viewpoint_jax.precompute_*`), so x,
    the condition, the mask (a random 0/1 pattern, the condition zero outside it) and the
    context are chosen here."""
    import jax.numpy as jnp
    from flax import nnx

    from viewpoint_jax.diffusion import flow_matching as fm
    from viewpoint_jax.models import dit as dit_lib

    config = micro_config()
    config.text_encoder.precompute = True  # the batch carries the context
    config.diffusion.loss = loss
    mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), ONE_DEVICE)
    trainer = loop.make_trainer(config, mesh, tuple(config.sharding_rules))
    model_config = trainer.model_config
    rng = np.random.default_rng(0)

    def device_batch():
        shape = (config.data.batch_size, 2, 8, 8)  # (B, f, h, w): an even token grid
        mask = (rng.random((*shape, 1)) < 0.4).astype(np.float32)
        text = (shape[0], config.text_encoder.max_length, model_config.text_dim)
        arrays = {
            "latents": rng.standard_normal((*shape, model_config.out_dim)),
            "condition_latents": mask * rng.standard_normal((*shape, model_config.out_dim)),
            "latent_mask": mask,
            "context": rng.standard_normal(text),
        }
        return {
            key: jax.device_put(np.asarray(value, np.float32), trainer.batch_sharding)
            for key, value in arrays.items()
        }

    graphdef, _ = nnx.split(dit_lib.abstract_model(model_config), nnx.Param)
    diffusion = config.diffusion

    @jax.jit
    def expected_loss(params, x, condition, mask, context, step):
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        noise_key, sigma_key = jax.random.split(key)
        e = jax.random.normal(noise_key, x.shape, jnp.float32)
        s = fm.sample_sigmas(
            sigma_key,
            x.shape[0],
            diffusion.timestep_sampler,
            diffusion.shift,
            diffusion.logit_mean,
            diffusion.logit_std,
        )
        s_b = s[:, None, None, None, None]
        noisy = (1 - s_b) * x + s_b * e
        inputs = jnp.concatenate([noisy, condition, mask], axis=-1)
        prediction = nnx.merge(graphdef, params)(inputs, 1000.0 * s, context)
        weight = s_b**2 if loss == "clean" else 1.0
        return jnp.mean(weight * (prediction - (e - x)) ** 2)

    state = trainer.init_state()
    for step in range(2):
        batch = device_batch()
        params = jax.device_get(state["params"])  # before the step donates the state
        want = expected_loss(
            params,
            batch["latents"],
            batch["condition_latents"],
            batch["latent_mask"],
            batch["context"],
            step,
        )
        state, metrics = trainer.step(state, batch)
        assert int(state["step"]) == step + 1
        np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)
