"""Latents precomputed into a dataset: the pipeline's draws, encoded; training on them equals
encoding in the step; mismatched configs are refused by name."""

import json

import jax
import numpy as np
import pytest
from test_train import ONE_DEVICE, micro_config, run_command, write_dataset

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.data import latents, panoramic_videos, pipeline, precompute
from viewpoint_jax.setup import build
from viewpoint_jax.training import loop

NAME = "micro_latents"
SAMPLES, IMAGE_SAMPLES = 2, 1


def _config(data_dir, name):
    config = micro_config()
    config.data.data_dir = str(data_dir)
    config.data.name = name
    return config


def _precompute_cli(config, *args):
    return run_command("precompute_latents", config.data.data_dir, config.data.name, *args)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(data_dir, name) of a panoramic dataset, with latents NAME written by the CLI (float32)."""
    data_dir, name = write_dataset(tmp_path_factory.mktemp("data"))
    config = _config(data_dir, name)
    result = _precompute_cli(
        config,
        f"--name={NAME}",
        f"--samples={SAMPLES}",
        f"--image_samples={IMAGE_SAMPLES}",
        "--dtype=float32",
    )
    assert result.returncode == 0, result.stderr
    assert f"--config.data.precomputed_latents={NAME}" in result.stdout
    return data_dir, name


@pytest.fixture
def dataset(written):
    """A fresh micro config reading the written dataset, and the source records."""
    data_dir, name = written
    return _config(data_dir, name), panoramic_videos.open_data_source(data_dir, name, "train")


def _recomputed(config, record, index, mode, sample):
    """What the record's draw must hold: the pipeline's example for the draw's rng, encoded."""
    kind = ("video", "image").index(mode)
    maker = pipeline.ExampleMaker(config.data, mode, caption_dropout=0.0, with_view=True)
    example = maker(record, precompute._sample_rng(0, "train", index, kind, sample))
    encode = precompute.jitted_encoder(build.build_autoencoder(config))
    encoded = encode({key: example[key][None] for key in pipeline.MAP_KEYS})
    return example, {key: np.asarray(value[0]) for key, value in encoded.items()}


def test_records_are_the_pipelines_draws_encoded(dataset):
    config, source = dataset
    stored = latents.open_latents(config.data.data_dir, NAME, "train")
    assert len(stored) == len(source) * (SAMPLES + IMAGE_SAMPLES)
    counts = panoramic_videos.split_counts(config.data.data_dir, NAME, latents.LATENTS_DATASET)[
        "train"
    ]
    assert counts == {
        "video_samples": SAMPLES * len(source),
        "image_samples": IMAGE_SAMPLES * len(source),
        "skipped_records": 0,
    }
    by_key = {
        (r["source"].decode(), bool(r["is_image"]), int(r["sample"])): r
        for r in (stored[i] for i in range(len(stored)))
    }
    for index, mode, sample in [(0, "video", 0), (3, "video", 1), (5, "image", 0)]:
        record = source[index]
        example, encoded = _recomputed(config, record, index, mode, sample)
        got = by_key[(record["source"].decode(), mode == "image", sample)]
        frames = 1 if mode == "image" else config.data.num_frames  # space-to-depth: f = F
        assert got["latents"].shape == (frames, 8, 8, 192)
        for key in latents.LATENT_KEYS:
            np.testing.assert_array_equal(got[key], encoded[key], err_msg=key)
        np.testing.assert_array_equal(got["view"], example["view"])
        assert got["condition_kind"] == example["condition_kind"]
        assert got["caption"].decode() == record["caption"].decode()  # never dropped when stored
    # Different draws of one record differ (clip, yaw turn and view are all random).
    a, b = by_key[("clip0.mp4", False, 0)], by_key[("clip0.mp4", False, 1)]
    assert not np.array_equal(a["view"], b["view"])
    assert not np.array_equal(a["latents"], b["latents"])


def test_float16_storage_is_the_rounded_float32(dataset):
    config, _ = dataset
    precompute.precompute(
        config, "half", build.build_autoencoder(config), samples=1, progress=False
    )
    half = latents.open_latents(config.data.data_dir, "half", "train")
    exact = latents.open_latents(config.data.data_dir, NAME, "train")
    exact = {
        (r["source"], bool(r["is_image"]), int(r["sample"])): r
        for r in (exact[i] for i in range(len(exact)))
    }
    for record in (half[i] for i in range(len(half))):
        assert record["latents"].dtype == np.float16
        reference = exact[(record["source"], False, 0)]  # the same seed draws the same sample
        for key in ("latents", "condition_latents"):
            np.testing.assert_array_equal(record[key], reference[key].astype(np.float16))
        np.testing.assert_array_equal(record["latent_mask"], reference["latent_mask"])


def test_batched_over_devices_equals_one_at_a_time(dataset):
    """8 samples a batch over 8 devices (a full batch, then padded partial ones) store exactly
    what the CLI stored one sample at a time on one device."""
    config, _ = dataset
    assert len(jax.local_devices()) == 8
    precompute.precompute(
        config,
        "batched",
        build.build_autoencoder(config),
        samples=SAMPLES,
        image_samples=IMAGE_SAMPLES,
        dtype="float32",
        batch_size=8,
        progress=False,
    )
    batched = latents.open_latents(config.data.data_dir, "batched", "train")
    single = latents.open_latents(config.data.data_dir, NAME, "train")

    def by_key(source):
        records = (source[i] for i in range(len(source)))
        return {(r["source"], bool(r["is_image"]), int(r["sample"])): r for r in records}

    batched, single = by_key(batched), by_key(single)
    assert batched.keys() == single.keys()
    for key, record in batched.items():
        for field in (*latents.LATENT_KEYS, "view", "caption"):
            np.testing.assert_array_equal(record[field], single[key][field], err_msg=str(key))
    with pytest.raises(ValueError, match="multiple of the 8 local devices"):
        precompute.precompute(config, "x", build.build_autoencoder(config), batch_size=3)


def _step_losses(config, batches):
    mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), ONE_DEVICE)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    trainer = loop.make_trainer(config, mesh, rules)
    state = trainer.init_state()
    losses = []
    for batch in batches:
        state, metrics = trainer.step(state, trainer.device_batch(batch))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses), jax.device_get(state["params"])


def test_latent_batches_train_exactly_like_map_batches():
    """The step given latents equals the step that encodes the same maps itself."""
    from test_train import procedural_records

    config = micro_config()
    it = pipeline.make_train_iterator(config.data, data_source=procedural_records())
    map_batches = [next(it), next(it)]
    encode = precompute.jitted_encoder(build.build_autoencoder(config))
    latent_batches = [
        {
            **{k: np.asarray(v) for k, v in encode({k: b[k] for k in pipeline.MAP_KEYS}).items()},
            "caption": b["caption"],
        }
        for b in map_batches
    ]
    losses_maps, params_maps = _step_losses(config, map_batches)
    losses_latents, params_latents = _step_losses(config, latent_batches)
    np.testing.assert_array_equal(losses_latents, losses_maps)
    for a, b in zip(jax.tree.leaves(params_latents), jax.tree.leaves(params_maps)):
        np.testing.assert_array_equal(a, b)


def test_train_on_precomputed_latents(dataset, tmp_path):
    config, _ = dataset
    config.data.precomputed_latents = NAME
    config.data.image_ratio = 0.5
    config.num_steps = 4
    config.log.image_every_steps = 2
    result = loop.train(config, tmp_path / "run", devices=ONE_DEVICE, progress=False)
    assert result["step"] == 4 and all(np.isfinite(list(result["losses"].values())))
    # The stored condition kinds are counted as in-step batches are.
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        counts = [v for k, v in record.items() if k.startswith("conditions/")]
        assert len(counts) == 5 and sum(counts) == config.data.batch_size, record
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == [
        "step_0000002.png",
        "step_0000004.png",
    ]
    # The batches of the pipeline: video samples of num_frames latent frames, images of 1.
    it = pipeline.make_train_iterator(config.data)
    shapes = {next(it)["latents"].shape for _ in range(8)}
    assert shapes == {(4, 5, 8, 8, 192), (4, 1, 8, 8, 192)}


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data.map_size", 128, "config.data.map_size is 128"),
        ("data.representation", "erp", "config.data.representation is 'erp'.*'viewpoint'"),
        ("data.num_frames", 9, "config.data.num_frames is 9"),
        ("autoencoder.factor", 4, "config.autoencoder is"),
    ],
)
def test_a_config_that_does_not_match_is_refused(dataset, key, value, message):
    config, _ = dataset
    config.data.precomputed_latents = NAME
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError, match=message):
        latents.check_matches_config(config)


def test_missing_image_samples_and_bad_arguments_are_named(dataset, tmp_path):
    config, _ = dataset
    precompute.precompute(
        config, "videos_only", build.build_autoencoder(config), samples=1, progress=False
    )
    config.data.precomputed_latents = "videos_only"
    config.data.image_ratio = 0.5
    with pytest.raises(ValueError, match=r"has no image samples.*image_ratio = 0\.5"):
        pipeline.make_train_iterator(config.data)
    with pytest.raises(ValueError, match="dtype must be one of"):
        precompute.precompute(config, "x", build.build_autoencoder(config), dtype="bfloat16")
    result = _precompute_cli(config)
    assert result.returncode == 2 and "error: --name is required" in result.stderr
    config.data.data_dir = str(tmp_path / "empty")
    result = _precompute_cli(config, "--name=x")
    assert result.returncode == 2 and "python -m viewpoint_jax.prepare_dataset" in result.stderr


def test_wan_vae_encoder_split_over_devices_equals_one_device():
    from flax import nnx

    from viewpoint_jax.models import vae as vae_lib

    config = vae_lib.WanVAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1)
    vae = vae_lib.WanVAE(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    maps = {
        "target_map": rng.uniform(-1, 1, (8, 1, 16, 16, 3)).astype(np.float32),
        "condition_map": rng.uniform(-1, 1, (8, 1, 16, 16, 3)).astype(np.float32),
        "condition_mask": (rng.random((8, 1, 16, 16, 1)) < 0.5).astype(np.float32),
    }
    split = precompute.jitted_encoder(vae, jax.local_devices())(maps)
    assert split["latents"].sharding.num_devices == 8
    whole = precompute.jitted_encoder(vae)(maps)
    for key in latents.LATENT_KEYS:
        assert (
            split[key].shape == whole[key].shape == (8, 1, 2, 2, 16 if key != "latent_mask" else 1)
        )
        np.testing.assert_allclose(split[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_an_unreadable_record_is_skipped_and_the_rest_still_drawn():
    """A bad record in the middle yields one `bad` key; the records after it are still drawn."""
    from viewpoint_jax.common.progress import Progress

    def maker(record, rng):
        return {"_status": pipeline.BAD} if record["bad"] else {"value": record["value"]}

    source = [{"bad": False, "value": 0}, {"bad": True, "value": 1}, {"bad": False, "value": 2}]
    with Progress(len(source), "drawing", enabled=False) as records:
        draws = list(
            precompute._draws(
                source,
                "train",
                {"video": maker, "image": maker},
                {"video": 2, "image": 0},
                0,
                records,
            )
        )
    assert [key for key, _ in draws] == [
        "0:video:0",
        "0:video:1",
        "1:bad",
        "2:video:0",
        "2:video:1",
    ]
    assert [example["value"] for _, example in draws if example is not None] == [0, 0, 2, 2]
