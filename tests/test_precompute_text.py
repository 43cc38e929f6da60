"""`python -m viewpoint_jax.precompute_text`: a dataset's captions embedded once, read by every host's TextFeeder."""

import numpy as np
import pytest
from test_train import CountingEncoder, micro_config, run_command, write_dataset

from viewpoint_jax.models import text_encoder as text_lib
from viewpoint_jax.setup import build


def _tool(data_dir, name, *args):
    return run_command("precompute_text", data_dir, name, *args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), count=4)


def test_tool_embeds_every_caption_and_feeders_reuse_them(dataset, tmp_path):
    data_dir, name = dataset
    cache_dir = tmp_path / "text_cache"
    result = _tool(data_dir, name, f"--cache_dir={cache_dir}", "--batch_size=3")
    assert result.returncode == 0, result.stderr
    assert "--config.text_encoder.precompute=True" in result.stdout
    shared = cache_dir / text_lib.SHARED_TEXT_CACHE
    cache = text_lib.TextEmbeddingCache.load(shared)
    captions = ["", *(f"bands number {i}" for i in range(4))]
    assert sorted(cache.captions) == sorted(captions)
    encoder = build.build_text_encoder(micro_config())
    # The tool's batches (3 captions, its order): a float32 matmul's rounding depends on the
    # batch shape XLA tiles, so another batching agrees only to about 2e-6.
    in_process = text_lib.encode_captions(encoder, cache.captions, batch_size=3)
    want, want_mask = in_process.lookup(captions)
    got, got_mask = cache.lookup(captions)
    np.testing.assert_array_equal(got_mask, want_mask)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    # A host's feeder encodes nothing the tool embedded, and writes only what it adds.
    counting = CountingEncoder(encoder)
    own = text_lib.text_cache_path(cache_dir, 1)
    feeder = text_lib.TextFeeder(counting, True, own, batch_size=2)
    context = feeder(["bands number 2", ""])["context"]
    assert counting.encoded == []
    np.testing.assert_array_equal(context, got[[3, 0]])
    feeder(["a caption the dataset lacks", "bands number 0"])
    assert set(counting.encoded) == {"a caption the dataset lacks"}
    before = shared.read_bytes()
    feeder.flush()
    assert shared.read_bytes() == before
    assert text_lib.TextEmbeddingCache.load(own).captions == ["a caption the dataset lacks"]
    restarted = text_lib.TextFeeder(counting, True, own, batch_size=2)
    restarted(["a caption the dataset lacks", "bands number 3"])
    assert len(counting.encoded) == 2  # one batch of 2 (padded), nothing re-encoded since


def test_tool_errors_name_the_argument(dataset, tmp_path):
    data_dir, name = dataset
    result = _tool(data_dir, name)
    assert result.returncode == 2 and "error: --cache_dir is required" in result.stderr
    result = _tool(data_dir, "missing", f"--cache_dir={tmp_path}")
    assert result.returncode == 2 and "no dataset 'missing'" in result.stderr
