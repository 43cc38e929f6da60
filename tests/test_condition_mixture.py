"""Training conditions drawn from a mixture of kinds: frequencies, each kind's mask, validation."""

import json
import math

import jax
import numpy as np
import pytest

from viewpoint_jax.data import conditions, panoramic_videos, pipeline
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.data.conditions import ConditionKind
from viewpoint_jax.models.autoencoder import latent_mask

H, W, M, F = 16, 32, 16, 9  # 9 frames: 3 latent frames under the Wan VAE's grouping of 4


def _record(index: int, num_frames: int = F) -> dict:
    rng = np.random.default_rng(index)
    frames = (rng.random((num_frames, H, W, 3)) * 255).astype(np.uint8)
    return {
        "frames": [panoramic_videos.encode_frame(f, "png") for f in frames],
        "caption": f"clip {index}".encode(),
        "source": f"clip{index}".encode(),
        "is_image": False,
        "num_frames": num_frames,
    }


def _config(mixture: dict, **overrides):
    config = data_config_lib.data_config()
    config.update(dict(erp_height=H, erp_width=W, map_size=M, num_frames=F, batch_size=2))
    config.update(overrides)
    config.condition_mixture = mixture
    return config


def _only(kind: ConditionKind, **overrides) -> pipeline.ExampleMaker:
    return pipeline.ExampleMaker(_config({kind.key: 1.0}, **overrides), "video")


def test_kind_frequencies_over_2000_draws_match_the_config():
    mixture = conditions.parse_mixture(conditions.DEFAULT_CONDITION_MIXTURE)
    rng, draws = np.random.default_rng(0), 2000
    kinds = [conditions.sample_condition_kind(rng, mixture) for _ in range(draws)]
    for kind in ConditionKind:
        p = conditions.DEFAULT_CONDITION_MIXTURE[kind.key]
        # 4 binomial standard deviations: a correct sampler fails this about once in 16000 runs.
        tolerance = 4 * math.sqrt(draws * p * (1 - p))
        assert abs(kinds.count(kind) - draws * p) <= tolerance, (kind, kinds.count(kind))


def test_mixture_weights_are_normalised_and_zero_weights_dropped():
    mixture = conditions.parse_mixture({"none": 1, "prefix": 3.0, "multi_view": 0.0})
    assert mixture == {ConditionKind.NONE: 0.25, ConditionKind.PREFIX: 0.75}
    # A single frame cannot have a prefix: the rest is renormalised, or nothing is left.
    assert conditions.allowed_mixture(mixture, num_latent_frames=1) == {ConditionKind.NONE: 1.0}
    with pytest.raises(ValueError, match=r"condition_mixture.*prefix needs 2 or more"):
        conditions.allowed_mixture({ConditionKind.PREFIX: 1.0}, num_latent_frames=1)


@pytest.mark.parametrize(
    "mixture, message",
    [
        ({"perspective_video": 1.0, "panorama": 0.5}, r"condition_mixture\.panorama: unknown"),
        ({"none": -0.1, "prefix": 1.0}, r"condition_mixture\.none: must be >= 0"),
        ({"none": float("nan")}, r"condition_mixture\.none: must be >= 0"),
        ({"none": "a lot"}, r"condition_mixture\.none: a number"),
        ({"none": 0.0, "prefix": 0.0}, r"condition_mixture: weights must sum to > 0"),
    ],
)
def test_bad_mixtures_are_refused_naming_the_key(mixture, message):
    with pytest.raises(ValueError, match=message):
        data_config_lib.validate_data_config(_config(mixture))


def test_none_knows_nothing():
    example = _only(ConditionKind.NONE)(_record(0), np.random.default_rng(0))
    assert example["condition_kind"] == ConditionKind.NONE
    assert example["condition_kind"].dtype == np.int32
    assert not example["condition_mask"].any() and not example["condition_map"].any()


def test_perspective_image_is_known_at_frame_0_only():
    image = _only(ConditionKind.PERSPECTIVE_IMAGE, yaw_augment=False)
    video = _only(ConditionKind.PERSPECTIVE_VIDEO, yaw_augment=False)
    example = image(_record(0), np.random.default_rng(3))
    same_view = video(_record(0), np.random.default_rng(3))  # the same draws, every frame known
    mask, condition = example["condition_mask"], example["condition_map"]
    assert mask[0].any() and not mask[1:].any() and not condition[1:].any()
    np.testing.assert_array_equal(mask[0], same_view["condition_mask"][0])
    np.testing.assert_array_equal(condition[0], same_view["condition_map"][0])
    pooled = latent_mask(mask, spatial_factor=4, temporal_factor=4)
    assert pooled[0].any() and not pooled[1:].any()


def test_prefix_knows_exactly_the_first_k_latent_frames():
    maker = _only(ConditionKind.PREFIX)
    seen = set()
    for seed in range(12):
        example = maker(_record(seed), np.random.default_rng(seed))
        assert example["condition_kind"] == ConditionKind.PREFIX
        mask = example["condition_mask"]
        known_frames = int(mask.any(axis=(1, 2, 3)).sum())
        known = 1 + (known_frames - 1) // 4  # latent frames: 1 + 4 (k - 1) pixel frames
        assert known_frames == conditions.prefix_pixel_frames(known, 4)
        assert 1 <= known <= 2  # k in [1, latent frames - 1], 3 latent frames
        seen.add(known)
        assert np.all(mask[:known_frames] == 1) and not mask[known_frames:].any()
        np.testing.assert_array_equal(
            example["condition_map"][:known_frames], example["target_map"][:known_frames]
        )
        assert not example["condition_map"][known_frames:].any()
        pooled = np.asarray(latent_mask(jax.numpy.asarray(mask), 4, 4))
        assert np.all(pooled[:known] == 1) and not pooled[known:].any()
    assert seen == {1, 2}


def test_prefix_follows_the_autoencoders_frame_grouping():
    config = _config({"prefix": 1.0}, num_frames=5)
    maker = pipeline.ExampleMaker(config, "video", temporal_factor=1)
    counts = set()
    for seed in range(12):
        mask = maker(_record(seed), np.random.default_rng(seed))["condition_mask"]
        counts.add(int(mask.any(axis=(1, 2, 3)).sum()))
    assert counts == {1, 2, 3, 4}  # grouping 1: every frame is a latent frame, k in [1, 4]


def test_multi_view_is_the_union_of_its_views():
    erp = np.random.default_rng(0).uniform(-1, 1, (2, H, W, 3)).astype(np.float32)
    views = np.asarray([[90, 0, 0, 0], [70, 120, 10, 0], [100, -100, -20, 0]], np.float32)
    out_hw = conditions.condition_size(H)
    both = conditions.target_and_views(erp, views, np.asarray([1.0, 1.0, 0.0]), M, out_hw)
    singles = [conditions.target_and_condition(erp, v, M, out_hw) for v in views[:2]]
    union = np.maximum(singles[0]["condition_mask"], singles[1]["condition_mask"])
    np.testing.assert_array_equal(both["condition_mask"], union)
    only_first = np.asarray(singles[0]["condition_mask"] * (1 - singles[1]["condition_mask"]))
    np.testing.assert_allclose(
        both["condition_map"] * only_first, singles[0]["condition_map"] * only_first, atol=1e-6
    )
    assert union.sum() > max(s["condition_mask"].sum() for s in singles)

    example = _only(ConditionKind.MULTI_VIEW)(_record(0), np.random.default_rng(0))
    mask = example["condition_mask"]
    assert example["condition_kind"] == ConditionKind.MULTI_VIEW
    assert mask.any() and np.all(mask == mask[:1])  # views over every frame


def test_eval_keeps_the_papers_condition_and_batches_count_kinds():
    config = _config({"none": 1.0, "prefix": 1.0})
    assert pipeline.ExampleMaker(config, "eval").mixture == {ConditionKind.PERSPECTIVE_VIDEO: 1.0}
    it = pipeline.make_train_iterator(config, data_source=[_record(i) for i in range(4)])
    batch = next(it)
    assert batch["condition_kind"].shape == (2,) and batch["condition_kind"].dtype == np.int32
    counts = pipeline.condition_counts(batch)
    assert set(counts) == {f"conditions/{kind.key}" for kind in ConditionKind}
    assert counts["conditions/none"] + counts["conditions/prefix"] == 2
    assert sum(counts.values()) == 2
    assert pipeline.condition_counts({"latents": np.zeros(1)}) == {}


def test_training_logs_the_count_of_each_kind(tmp_path):
    from test_train import ONE_DEVICE, micro_config, procedural_records

    from viewpoint_jax.training import loop

    config = micro_config()
    config.num_steps = 2
    config.data.condition_mixture = {"none": 1.0, "prefix": 1.0}
    loop.train(
        config, tmp_path, data_source=procedural_records(), devices=ONE_DEVICE, progress=False
    )
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        counts = {k: v for k, v in record.items() if k.startswith("conditions/")}
        assert set(counts) == {f"conditions/{kind.key}" for kind in ConditionKind}
        assert counts["conditions/none"] + counts["conditions/prefix"] == config.data.batch_size
        assert sum(counts.values()) == config.data.batch_size


def test_precomputed_latents_record_the_mixture_they_were_drawn_with():
    from viewpoint_jax.data import latents

    mixture = data_config_lib.data_config().condition_mixture
    stored = json.loads(json.dumps(latents.jsonable(mixture)))
    assert "condition_mixture" in latents.DRAW_DATA_KEYS
    assert stored == conditions.DEFAULT_CONDITION_MIXTURE == latents.jsonable(mixture)
