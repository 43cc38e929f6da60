"""The representation ablation (`python -m viewpoint_jax.ablation`,
studies/representation_ablation.py): Table 2's arms, its rows and references, and a micro run of
the tool."""

import json
import subprocess
import sys

import numpy as np
import pytest
from test_train import ONE_DEVICE, subprocess_env

from viewpoint_jax.data.config import data_representation
from viewpoint_jax.evaluation import outpainting, panorama_metrics
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import validate_config
from viewpoint_jax.studies import ablation, condition_ablation, representation_ablation


def test_each_arm_is_the_demo_config_with_its_overrides(tmp_path):
    kinds = {}
    for name, overrides in representation_ablation.REPRESENTATION_ARMS.items():
        config = ablation.arm_config(tmp_path, True, 3, overrides)
        validate_config(config, num_devices=1)  # subregion blocks only on the ViewPoint map
        assert config.num_steps == 3 and config.data.data_dir == str(tmp_path / "data")
        kinds[name] = (data_representation(config.data), build.dit_config(config).block_kinds)
    assert kinds["viewpoint"][0] == kinds["viewpoint_pano"][0] == "viewpoint"
    assert "subregion" in kinds["viewpoint"][1]
    for name in ("viewpoint_pano", "erp", "cube_2x3"):
        assert set(kinds[name][1]) == {"pano"}, name
    assert (kinds["erp"][0], kinds["cube_2x3"][0]) == ("erp", "cube_2x3")
    # A mapping value replaces the whole sub-config (the condition ablation's mixtures).
    config = ablation.arm_config(
        tmp_path, True, None, condition_ablation.condition_arms()["video_only"]
    )
    assert config.data.condition_mixture.to_dict() == {"perspective_video": 1.0}


def test_consistency_means_skip_what_a_video_does_not_have():
    rng = np.random.default_rng(0)
    erp = rng.integers(0, 256, (3, 16, 32, 3), dtype=np.uint8)
    static = np.repeat(erp[:1], 3, axis=0)
    means = representation_ablation.mean_consistency([(erp, None), (static, None)])
    assert set(means) == set(representation_ablation.CONSISTENCY_METRICS)
    assert means["overlap_disagreement"] is None  # no map video
    flicker = panorama_metrics.temporal_flicker(erp)
    np.testing.assert_allclose(means["flicker"], flicker / 2)  # the static video flickers 0
    map_video = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    with_map = representation_ablation.mean_consistency([(erp, map_video), (static, None)])
    overlap = panorama_metrics.overlap_disagreement(map_video)
    np.testing.assert_allclose(with_map["overlap_disagreement"], overlap)  # only the one


def test_table_has_a_row_per_arm_and_the_references():
    row = dict(
        representation="erp", attention_pattern="pano", frame_size=[48, 96], tokens_per_frame=72,
        mse=0.25, psnr_db=12.04, round_trip_mse=0.0012, seam_ratio=1.1, pole_spread=3.0,
        flicker=2.0, flicker_lowpass=1.0, overlap_disagreement=None,
    )  # fmt: skip
    references = {
        "ground_truth": {
            "mse": 0.0,
            **dict.fromkeys(representation_ablation.CONSISTENCY_METRICS, 1.5),
        },
        "mid_grey_fill": {"mse": 0.3, "psnr_db": 11.25},
    }
    markdown = representation_ablation.representation_markdown({"erp": row}, references)
    lines = markdown.splitlines()
    columns = lines[0].count("|")
    assert all(line.count("|") == columns for line in lines[:5])
    assert "| erp | erp | pano | 48x96 (72) | 0.2500 (12.04 dB) | 0.00120 | 1.100 |" in markdown
    assert lines[3].startswith("| ground truth |") and lines[4].startswith("| mid-grey fill |")
    assert lines[2].endswith("| — |")  # no overlaps outside the ViewPoint map


def test_micro_ablation_writes_table_2(tmp_path):
    out = tmp_path / "ablation"
    arms = ("viewpoint", "cube_2x3")
    summary = representation_ablation.representation_ablation(
        out, train_steps=1, quick=True, seeds=(0,), arms=arms, devices=ONE_DEVICE
    )
    written = json.loads((out / "table2.json").read_text())
    assert written["rows"] == summary["rows"] and list(written["rows"]) == list(arms)
    assert written["train_steps"] == 1 and written["seeds"] == [0]
    viewpoint, cube = written["rows"]["viewpoint"], written["rows"]["cube_2x3"]
    assert (viewpoint["frame_size"], cube["frame_size"]) == ([64, 64], [64, 96])
    assert (viewpoint["tokens_per_frame"], cube["tokens_per_frame"]) == (16, 24)
    for row in (viewpoint, cube):
        assert 0 < row["round_trip_mse"] < 0.05 < row["mse"]  # one step learns little
        assert row["psnr_db"] == pytest.approx(float(outpainting.psnr(row["mse"])))
        for key in ("seam_ratio", "pole_spread", "flicker", "flicker_lowpass"):
            assert np.isfinite(row[key]) and row[key] >= 0, key
    assert viewpoint["overlap_disagreement"] > 0 and cube["overlap_disagreement"] is None
    assert written["references"]["mid_grey_fill"]["mse"] > 0
    markdown = (out / "table2.md").read_text()
    assert "| viewpoint | viewpoint | alternate | 64x64 (16) |" in markdown
    assert "| cube_2x3 | cube_2x3 | pano | 64x96 (24) |" in markdown


def test_tool_refuses_an_unknown_arm_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "viewpoint_jax.ablation", f"--out={tmp_path}", "--quick",
         "--arms=viewpoint,cubemap"],
        env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "error: --arms: unknown ['cubemap']; the arms are" in result.stderr
    assert "Traceback" not in result.stderr
