"""encode_text (Wan's zero-padded context) and the on-disk caption embedding cache."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from viewpoint_jax.models import text_encoder as text_lib
from viewpoint_jax.models import umt5
from viewpoint_jax.models.tokenizer import Tokenizer, train_sentencepiece

CORPUS = [
    "a panoramic video of a busy city street at night with neon lights",
    "the camera slowly pans across a mountain lake under a clear blue sky",
    "waves crash on a rocky beach while seagulls fly overhead",
] * 20


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    model = train_sentencepiece(CORPUS, tmp_path_factory.mktemp("spm") / "spiece", 100)
    tokenizer = Tokenizer(model, max_length=512)
    config = umt5.UMT5Config.tiny(vocab_size=tokenizer.vocab_size)
    return text_lib.TextEncoder(umt5.UMT5Encoder(config, rngs=nnx.Rngs(0)), tokenizer)


def test_encode_text_zeroes_padding(text_encoder):
    prompts = ["a city street at night", "waves on a rocky beach under a clear blue sky", ""]
    embeddings, mask = text_encoder.encode_text(prompts)
    assert embeddings.shape == (3, 512, 32) and embeddings.dtype == jnp.float32
    ids, expected_mask = text_encoder.tokenizer(prompts)
    np.testing.assert_array_equal(mask, expected_mask)
    embeddings = np.asarray(embeddings)
    for row, n in enumerate(np.asarray(mask).sum(axis=1)):
        assert (embeddings[row, n:] == 0).all()
        assert (np.abs(embeddings[row, :n]).sum(axis=-1) > 0).all()
    # The real positions are the encoder's states (Wan keeps u[:seq_len]).
    states = np.asarray(text_encoder.encoder(jnp.asarray(ids), jnp.asarray(mask)))
    valid = np.asarray(mask)[..., None] > 0
    np.testing.assert_allclose(np.where(valid, states, 0), embeddings, atol=1e-5, rtol=1e-5)


def test_prompt_embedding_does_not_depend_on_its_batch(text_encoder):
    prompt = "the camera slowly pans across a mountain lake"
    alone, _ = text_encoder.encode_text([prompt])
    others = ["waves crash on a rocky beach while seagulls fly overhead " * 3, "a", prompt]
    batched, _ = text_encoder.encode_text(others)
    np.testing.assert_allclose(np.asarray(batched)[2], np.asarray(alone)[0], atol=1e-5, rtol=1e-5)


def test_bad_input(text_encoder):
    with pytest.raises(ValueError, match="no prompts"):
        text_encoder.encode_text([])
    ids = np.full((1, 8), text_encoder.encoder.config.vocab_size, np.int32)
    with pytest.raises(ValueError, match="outside the encoder's vocabulary"):
        text_encoder.encode_ids(ids, np.ones_like(ids))
    with pytest.raises(ValueError, match="must both be"):
        text_encoder.encode_ids(ids, np.ones((1, 9), np.int32))


def test_cache_round_trip(text_encoder, tmp_path, monkeypatch):
    path = tmp_path / "cache" / "captions.npz"
    captions = ["a city street at night", "", "a clear blue sky", "a city street at night"]
    # batch_size 3 throughout this file: one compiled encoder program for all these tests.
    cache = text_lib.cache_text_embeddings(text_encoder, captions, path, batch_size=3)
    assert path.is_file() and len(cache) == 3 and cache.captions[1] == ""
    expected, expected_mask = text_encoder.encode_text(
        ["a clear blue sky", "", "a city street at night"]
    )
    got, got_mask = text_lib.TextEmbeddingCache.load(path).lookup(
        ["a clear blue sky", "", "a city street at night"]
    )
    np.testing.assert_array_equal(got_mask, expected_mask)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)

    # A reload encodes only what is missing, and rewrites the file with everything.
    encoded = []
    original = text_encoder.encode_text

    def counting_encode(prompts):
        encoded.extend(prompts)
        return original(prompts)

    monkeypatch.setattr(text_encoder, "encode_text", counting_encode)
    again = text_lib.cache_text_embeddings(text_encoder, captions, path, batch_size=3)
    assert encoded == [] and again.captions == cache.captions
    grown = text_lib.cache_text_embeddings(
        text_encoder, ["waves", "a clear blue sky"], path, batch_size=3
    )
    assert set(encoded) == {"waves"} and len(grown) == 4
    reloaded = text_lib.TextEmbeddingCache.load(path)
    np.testing.assert_array_equal(reloaded.lookup(captions)[0], cache.lookup(captions)[0])
    with pytest.raises(KeyError, match="not in the cache"):
        reloaded.lookup(["never encoded"])
    assert not list(path.parent.glob(".*tmp*"))  # atomic writes left no temporary files


def test_cache_rejects_other_encoders_and_corrupt_files(text_encoder, tmp_path):
    path = tmp_path / "captions.npz"
    text_lib.cache_text_embeddings(text_encoder, ["a city"], path, batch_size=3)
    wider = umt5.UMT5Config.tiny(vocab_size=text_encoder.encoder.config.vocab_size, d_model=16)
    other = text_lib.TextEncoder(
        nnx.eval_shape(lambda: umt5.UMT5Encoder(wider, rngs=nnx.Rngs(0))),
        text_encoder.tokenizer,
    )
    with pytest.raises(ValueError, match=r"512 x 32.*512 x 16.*delete the file"):
        text_lib.cache_text_embeddings(other, ["a city"], path, batch_size=3)
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"broken\.npz: not a text embedding cache"):
        text_lib.cache_text_embeddings(
            text_encoder, ["a city"], tmp_path / "broken.npz", batch_size=3
        )


def test_encode_captions_and_merge_in_memory(text_encoder):
    first = text_lib.encode_captions(text_encoder, ["a city", ""], batch_size=3)
    second = text_lib.encode_captions(text_encoder, ["", "waves", "a sky", "a lake"], batch_size=3)
    merged = first.merged(second)
    assert merged.captions == ["a city", "", "waves", "a sky", "a lake"]
    captions = ["a lake", "a city", "", "waves", "a sky"]
    expected, expected_mask = text_encoder.encode_text(captions)
    got, got_mask = merged.lookup(captions)
    np.testing.assert_array_equal(got_mask, expected_mask)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    empty = text_lib.encode_captions(text_encoder, [], batch_size=3)
    assert len(empty) == 0 and empty.merged(first) is first and first.merged(empty) is first
    narrow = text_lib.TextEmbeddingCache(["x"], np.array([1]), np.zeros((1, 16)), 512)
    with pytest.raises(ValueError, match=r"512 x 16 into a cache of 512 x 32"):
        first.merged(narrow)
