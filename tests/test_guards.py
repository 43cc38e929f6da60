"""Guards that a deliberate change of the code showed missing (each change left the suite green):
multi_view drawing only 2 views, `generate(prefix_map=...)` not re-imposing the known frames, and
pole_spread reading the north cap twice. Each test fails under its change."""

import sys
from pathlib import Path

import numpy as np
import pytest

from viewpoint_jax.data import conditions
from viewpoint_jax.data.conditions import ConditionKind
from viewpoint_jax.evaluation import panorama_metrics
from viewpoint_jax.generation import conditioning
from viewpoint_jax.generation.generate import generate

sys.path.insert(0, str(Path(__file__).parent))
from test_condition_mixture import _only
from test_long_video import SETTINGS, _models


def test_multi_view_draws_both_two_and_three_views_over_seeds():
    """Guards `rng.integers(2, MAX_VIEWS)` (never 3 views) in ExampleMaker._views."""
    maker = _only(ConditionKind.MULTI_VIEW)
    counts = set()
    for seed in range(40):
        _, active = maker._views(int(ConditionKind.MULTI_VIEW), np.random.default_rng(seed))
        counts.add(int(active.sum()))
    assert counts == set(range(2, conditions.MAX_VIEWS + 1)) == {2, 3}
    # The other kinds render one view (perspective ones) or none.
    _, active = maker._views(int(ConditionKind.PERSPECTIVE_VIDEO), np.random.default_rng(0))
    assert int(active.sum()) == 1


def test_generate_with_a_prefix_map_gives_the_known_frames_back_exactly():
    """Guards `generate(..., prefix_map=...)` without `denoising.impose_known_frames`."""
    models = _models()  # space-to-depth latents: every frame is a latent frame, window 5
    source = np.random.default_rng(2).integers(0, 256, (2, 32, 64, 3), dtype=np.uint8)
    prefix = np.asarray(conditioning.panorama_to_canvas(source, 64))  # (2, 64, 64, 3) in [-1, 1]
    result = generate(models, "more of it", SETTINGS, prefix_map=prefix)
    given = np.asarray(models.autoencoder.encode(prefix[None]))
    np.testing.assert_array_equal(np.asarray(result.latents)[:, :2], given)
    assert not np.array_equal(np.asarray(result.latents)[:, 2:3], given[:, 1:2])  # the rest is new


def test_pole_spread_reads_the_south_cap():
    """Guards pole_spread reading the north cap twice: a uniform panorama whose south cap alone
    holds two colours (half the columns 0, half 100, every channel) scores (0 + 50) / 2."""
    erp = np.full((2, 64, 128, 3), 60, np.uint8)
    rows = panorama_metrics._cap_rows(64, 3.0)
    assert rows == 1  # the 3 degree cap of a 64-row ERP: one row at each pole
    erp[:, -rows:, :64] = 0
    erp[:, -rows:, 64:] = 100
    assert panorama_metrics.pole_spread(erp) == pytest.approx(25.0, rel=1e-12)
    assert panorama_metrics.pole_spread(erp[:, ::-1]) == pytest.approx(25.0, rel=1e-12)  # north
    erp[:, -rows:] = 60
    assert panorama_metrics.pole_spread(erp) == pytest.approx(0.0, abs=1e-9)
