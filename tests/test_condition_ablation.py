"""The condition ablation (`python -m viewpoint_jax.condition_ablation`,
studies/condition_ablation.py): video-only vs mixture training, errors under three conditions;
and the error masks each condition is measured with."""

import json

import numpy as np
import pytest
from test_train import ONE_DEVICE

from viewpoint_jax.data.conditions import ConditionKind
from viewpoint_jax.evaluation import outpainting
from viewpoint_jax.studies import condition_ablation


def _clips(count=2, frames=5, map_size=16, seed=0) -> outpainting.EvalClips:
    rng = np.random.default_rng(seed)
    target = rng.uniform(-1, 1, (count, frames, map_size, map_size, 3)).astype(np.float32)
    mask = np.zeros((count, frames, map_size, map_size, 1), np.float32)
    mask[:, :, 4:8, 4:8] = 1.0  # a perspective view's patch, on every frame
    return outpainting.EvalClips(
        target_map=target,
        condition_map=target * mask,
        condition_mask=mask,
        perspective=np.zeros((count, frames, 4, 6, 3), np.float32),
        view=np.zeros((count, 4), np.float32),
        captions=("a",) * count,
        sources=("s",) * count,
    )


def test_continuation_error_counts_only_the_frames_after_the_prefix():
    clips = _clips()
    prefix = outpainting.clips_with_condition(clips, ConditionKind.PREFIX, known_frames=2)
    np.testing.assert_array_equal(prefix.condition_mask[:, :2], 1.0)
    np.testing.assert_array_equal(prefix.condition_mask[:, 2:], 0.0)
    np.testing.assert_array_equal(prefix.condition_map[:, :2], clips.target_map[:, :2])
    np.testing.assert_array_equal(prefix.condition_map[:, 2:], 0.0)

    # Wrong on the known frames, right on the unknown ones: no error.
    generated = clips.target_map.copy()
    generated[:, :2] = -clips.target_map[:, :2]
    error = outpainting.outpainted_mse(generated, prefix.target_map, prefix.condition_mask)
    np.testing.assert_array_equal(error, 0.0)
    # Wrong by 0.5 on one of the three unknown frames of clip 1 only: a third of 0.25 there.
    generated[1, 3] += 0.5
    error = outpainting.outpainted_mse(generated, prefix.target_map, prefix.condition_mask)
    np.testing.assert_allclose(error, [0.0, 0.25 / 3], rtol=1e-5)


def test_text_only_error_is_over_the_whole_map():
    clips = _clips()
    none = outpainting.clips_with_condition(clips, ConditionKind.NONE)
    np.testing.assert_array_equal(none.condition_mask, 0.0)
    np.testing.assert_array_equal(none.condition_map, 0.0)
    generated = np.zeros_like(clips.target_map)
    error = outpainting.outpainted_mse(generated, none.target_map, none.condition_mask)
    np.testing.assert_allclose(error, np.mean(np.square(clips.target_map), axis=(1, 2, 3, 4)))
    # The perspective condition is the clips' own; other kinds and bad prefixes are refused.
    assert outpainting.clips_with_condition(clips, ConditionKind.PERSPECTIVE_VIDEO) is clips
    with pytest.raises(ValueError, match="multi_view"):
        outpainting.clips_with_condition(clips, ConditionKind.MULTI_VIEW)
    with pytest.raises(ValueError, match=r"known_frames in 1 \.\. 4"):
        outpainting.clips_with_condition(clips, ConditionKind.PREFIX, known_frames=5)


def test_goals_compare_the_right_models():
    errors = {
        "outpainting": {"untrained": 1.0, "video_only": 0.20, "mixture": 0.21},
        "text_only": {"untrained": 1.0, "video_only": 0.9, "mixture": 0.5},
        "continuation": {"untrained": 0.4, "video_only": 0.3, "mixture": 0.5},
    }
    grey = {name: 0.25 for name in errors}
    table = condition_ablation.ablation_table(errors, grey, known_latent_frames=1)
    goals = table["goals"]
    assert goals["outpainting_mixture_over_video_only"] == pytest.approx(1.05)
    assert goals["outpainting_within_10_percent"]
    assert goals["text_only_mixture_beats_untrained"]
    assert not goals["continuation_mixture_beats_untrained"]
    markdown = condition_ablation.markdown_table(table)
    assert "| continuation |" in markdown and "0.5000 (9.03 dB)" in markdown


def test_micro_ablation_writes_every_row(tmp_path):
    out = tmp_path / "ablation"
    summary = condition_ablation.condition_ablation(
        out, train_steps=2, quick=True, devices=ONE_DEVICE
    )
    assert summary["train_steps"] == 2
    for name in condition_ablation.TRAINING_MIXTURES:
        assert (out / f"run_{name}" / "metrics.jsonl").is_file()
    written = json.loads((out / "ablation.json").read_text())
    assert written["rows"] == summary["rows"]
    assert set(written["rows"]) == {"outpainting", "text_only", "continuation"}
    for name, row in written["rows"].items():
        for model in condition_ablation.MODELS:
            assert np.isfinite(row[model]["mse"]) and row[model]["mse"] > 0, (name, model)
            assert row[model]["psnr_db"] == pytest.approx(
                float(outpainting.psnr(row[model]["mse"]))
            )
        assert np.isfinite(row["grey_fill_mse"])
    # Two steps from the same init: a trained model samples other maps than the untrained one.
    outpainting_row = written["rows"]["outpainting"]
    assert outpainting_row["video_only"]["mse"] != outpainting_row["untrained"]["mse"]
    markdown = (out / "ablation.md").read_text()
    for name in ("outpainting", "text_only", "continuation"):
        assert f"| {name} |" in markdown
    assert set(written["goals"]) == {
        "outpainting_mixture_over_video_only",
        "outpainting_within_10_percent",
        "text_only_mixture_beats_untrained",
        "continuation_mixture_beats_untrained",
    }
