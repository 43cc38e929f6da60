"""umT5's SentencePiece tokenizer as Wan2.1 calls it: cleaned prompts -> fixed-length ids and mask.

Wan2.1 (`wan/modules/tokenizers.py`, `clean='whitespace'`) cleans each prompt with `ftfy.fix_text`,
a double HTML unescape and whitespace collapsing, then runs the transformers T5 tokenizer of
`google/umt5-xxl` with `add_special_tokens=True, padding='max_length', truncation=True`: the
SentencePiece ids, then `</s>`, padded with `<pad>` (id 0) to `max_length` tokens; a prompt that
is too long keeps its first `max_length - 1` pieces and still ends with `</s>`.

`clean_prompt` is that cleaning: ftfy's repair of mojibake, curly quotes, ligatures, full-width
forms, terminal escapes and control characters, so the ids match Wan's for any prompt.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import numpy as np

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Wan's `whitespace_clean(basic_clean(text))`: ftfy, HTML unescaped twice, spaces collapsed."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text.strip()).strip()


def find_model_file(model_file: str | os.PathLike) -> Path:
    """A SentencePiece model path, or a folder holding `spiece.model` (or a single `*.model`)."""
    path = Path(model_file)
    if path.is_dir():
        if (path / "spiece.model").is_file():
            return path / "spiece.model"
        models = sorted(path.glob("*.model"))
        if len(models) == 1:
            return models[0]
        found = [p.name for p in models] or "none"
        raise FileNotFoundError(
            f"tokenizer folder {path} must hold spiece.model (or exactly one *.model); "
            f"found {found}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer model not found: {path}")
    return path


class Tokenizer:
    """umT5 tokenizer: `tokenizer(prompts) -> (ids, mask)`, both `(B, max_length)` int32.

    Args:
      model_file: umt5-xxl's `spiece.model`, or the folder holding it (Wan's `google/umt5-xxl/`).
      max_length: tokens per prompt including `</s>` (Wan: 512).
    """

    def __init__(self, model_file: str | os.PathLike, max_length: int = 512):
        import sentencepiece as spm

        if int(max_length) < 2:
            raise ValueError(
                f"max_length must be at least 2 (one piece and </s>), got {max_length}"
            )
        self.model_file = find_model_file(model_file)
        self.max_length = int(max_length)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.model_file}: not a SentencePiece model ({e})") from None
        if self._sp.eos_id() < 0:
            raise ValueError(f"{self.model_file}: the SentencePiece model has no </s> (eos) piece")
        # T5 models reserve id 0 for <pad>; transformers pads with it even if spm has no pad piece.
        self.pad_id = max(self._sp.pad_id(), 0)
        self.eos_id = self._sp.eos_id()
        self.vocab_size = self._sp.GetPieceSize()

    def encode(self, prompt: str) -> list[int]:
        """Ids of one cleaned prompt followed by `</s>`, not truncated or padded."""
        return [*self._sp.EncodeAsIds(clean_prompt(prompt)), self.eos_id]

    def __call__(self, prompts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray]:
        """Prompts (a list, or one string) -> padded ids and the mask of real tokens (1) vs pad (0).

        Raises:
          ValueError for an empty list or a non-string prompt. A prompt longer than `max_length`
          tokens is truncated (its first `max_length - 1` pieces and `</s>`) with a warning.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts: the tokenizer needs a non-empty list of strings")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} is a {type(prompt).__name__}, not a str: {prompt!r}")
        ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), self.max_length), np.int32)
        for row, prompt in enumerate(prompts):
            tokens = self.encode(prompt)
            if len(tokens) > self.max_length:
                warnings.warn(
                    f"prompt {row} has {len(tokens)} tokens with </s>, more than max_length "
                    f"{self.max_length}; truncated to {self.max_length}: {prompt[:60]!r}...",
                    stacklevel=2,
                )
                tokens = [*tokens[: self.max_length - 1], self.eos_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


def train_sentencepiece(
    texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int
) -> Path:
    """Trains a small unigram SentencePiece model with T5's special ids (pad 0, </s> 1, unk 2).

    For tests and the CPU demo. Writes `<out_prefix>.model` (and `.vocab`) atomically.

    Args:
      texts: training sentences (cleaned like prompts before training).
      out_prefix: output path without extension.
      vocab_size: an upper bound; a corpus too small for it gets a smaller vocabulary.
    Returns:
      the path of the `.model` file.
    """
    import sentencepiece as spm

    sentences = [clean_prompt(t) for t in texts]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    out = Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_prefix = Path(tmp) / out.name
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences),
            model_prefix=str(tmp_prefix),
            vocab_size=int(vocab_size),
            hard_vocab_limit=False,
            model_type="unigram",
            character_coverage=1.0,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            num_threads=1,
            minloglevel=2,
        )
        for ext in (".vocab", ".model"):  # the .model last: its presence means "complete"
            os.replace(f"{tmp_prefix}{ext}", f"{out}{ext}")
    return Path(f"{out}.model")


class ByteTokenizer:
    """UTF-8 bytes as token ids (byte + 2; 0 = pad, 1 = end), for the tiny random text encoder.

    Needs no files, so a CPU run and its sampler agree without sharing a tokenizer model.
    `__call__(prompts) -> (ids (B, max_length) int32, mask (B, max_length) int32)`.
    """

    vocab_size = 258

    def __init__(self, max_length: int = 512):
        self.max_length = int(max_length)

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(prompts), self.max_length), np.int32)
        for row, prompt in enumerate(prompts):
            tokens = [b + 2 for b in " ".join(prompt.split()).encode("utf-8")]
            tokens = [*tokens[: self.max_length - 1], 1]
            ids[row, : len(tokens)] = tokens
        return ids, (ids > 0).astype(np.int32)
