"""umT5 tokenizer: a tiny SentencePiece model trained here, checked against transformers' T5 one."""

import numpy as np
import pytest
import sentencepiece as spm
from transformers import T5Tokenizer

from viewpoint_jax.models.tokenizer import Tokenizer, clean_prompt, train_sentencepiece

CORPUS = [
    "a panoramic video of a busy city street at night with neon lights",
    "the camera slowly pans across a mountain lake under a clear blue sky",
    "waves crash on a rocky beach while seagulls fly overhead",
    "a cozy living room with a fireplace, bookshelves and a sleeping cat",
    "aerial view of a forest in autumn, red and orange leaves",
    "inside a cathedral: tall stained glass windows and candles",
] * 20

PROMPTS = [
    "a city street at night",
    "waves on a beach, seagulls and a blue sky over the mountain lake",
    "",  # Wan encodes an empty (negative) prompt as just </s>
    "Unseen wörds: zebra quartz 123 ✓",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("umt5-xxl")
    model = train_sentencepiece(CORPUS, folder / "spiece", vocab_size=120)
    assert model == folder / "spiece.model" and model.is_file()
    return folder


def test_matches_transformers_t5_tokenizer(model_dir):
    """Same ids and mask as Wan's call: AutoTokenizer(umt5-xxl)(..., padding='max_length',
    truncation=True, max_length=512, add_special_tokens=True)."""
    tokenizer = Tokenizer(model_dir)  # the folder, as Wan's google/umt5-xxl/
    ids, mask = tokenizer(PROMPTS)
    assert ids.shape == mask.shape == (4, 512) and ids.dtype == mask.dtype == np.int32
    reference = T5Tokenizer.from_pretrained(str(model_dir), extra_ids=0)
    expected = reference(PROMPTS, padding="max_length", truncation=True, max_length=512)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "spiece.model"))
    for row, prompt in enumerate(PROMPTS):
        n = int(mask[row].sum())
        assert list(ids[row, :n]) == [*sp.encode(prompt), 1]  # pieces, then </s>
        assert (ids[row, n:] == 0).all() and (mask[row, n:] == 0).all()  # <pad> = 0


def test_long_prompt_is_truncated_with_a_warning(model_dir):
    tokenizer = Tokenizer(model_dir / "spiece.model", max_length=512)
    long_prompt = " ".join(CORPUS[:40])
    assert len(tokenizer.encode(long_prompt)) > 512
    with pytest.warns(UserWarning, match=r"prompt 1 has \d+ tokens.*truncated to 512"):
        ids, mask = tokenizer(["short", long_prompt])
    assert mask[1].all() and ids[1, -1] == 1
    reference = T5Tokenizer.from_pretrained(str(model_dir), extra_ids=0)
    expected = reference([long_prompt], padding="max_length", truncation=True, max_length=512)
    np.testing.assert_array_equal(ids[1], expected["input_ids"][0])


def test_prompt_cleaning():
    assert clean_prompt("  a\tcat \n\n on   a mat  ") == "a cat on a mat"
    assert clean_prompt("rock &amp;amp; roll &lt;3") == "rock & roll <3"  # unescaped twice
    assert clean_prompt("\u201cquoted\u201d and \u2018single\u2019") == "\"quoted\" and 'single'"
    assert clean_prompt("e\u0301t\u00e9") == "\u00e9t\u00e9"  # NFC
    assert clean_prompt("\ufb01sh \uff21\uff22\u3000c") == "fish AB c"  # ligature, full width
    assert clean_prompt("bold\x1b[1m text\x00") == "bold text"
    assert (
        clean_prompt("caf\u00c3\u00a9 cr\u00c3\u00a8me") == "caf\u00e9 cr\u00e8me"
    )  # mojibake repaired
    assert clean_prompt("日本語 の テキスト") == "日本語 の テキスト"


def test_cleaning_is_applied_before_encoding(model_dir):
    tokenizer = Tokenizer(model_dir, max_length=32)
    ids, _ = tokenizer(["a  city\n street &amp;amp; lights", "a city street & lights"])
    np.testing.assert_array_equal(ids[0], ids[1])


def test_model_file_resolution_and_errors(model_dir, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "custom.model").write_bytes((model_dir / "spiece.model").read_bytes())
    single = Tokenizer(tmp_path / "other", max_length=16)
    np.testing.assert_array_equal(single(["a cat"])[0], Tokenizer(model_dir, 16)(["a cat"])[0])
    with pytest.raises(FileNotFoundError, match=r"spiece\.model"):
        Tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothing\.model"):
        Tokenizer(tmp_path / "nothing.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"bad\.model: not a SentencePiece model"):
        Tokenizer(tmp_path / "bad.model")
    with pytest.raises(ValueError, match="max_length"):
        Tokenizer(model_dir, max_length=1)


def test_bad_prompts(model_dir):
    tokenizer = Tokenizer(model_dir, max_length=16)
    with pytest.raises(ValueError, match="no prompts"):
        tokenizer([])
    with pytest.raises(ValueError, match="prompt 1 is a int"):
        tokenizer(["ok", 3])
    ids, mask = tokenizer("one prompt")  # a bare string is one prompt, as in Wan
    assert ids.shape == mask.shape == (1, 16)
    with pytest.raises(ValueError, match="at least one non-empty text"):
        train_sentencepiece(["", "  "], model_dir / "empty", vocab_size=50)
