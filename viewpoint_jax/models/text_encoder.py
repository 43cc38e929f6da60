"""Prompts -> umT5 text context as Wan2.1's DiT receives it; an on-disk cache of caption embeddings.

Wan's `T5EncoderModel.__call__` keeps each prompt's first `n` hidden states (n = its tokens with
`</s>`) and the DiT zero-pads them back to 512 (`text_len`). `encode_text` returns that tensor
directly: the encoder's states with every padded position set to zero, plus the mask.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from viewpoint_jax.common import fileio
from viewpoint_jax.common.progress import Progress
from viewpoint_jax.models.umt5 import UMT5Encoder


def masked_embeddings(encoder: nnx.Module, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids `(B, L)`, mask `(B, L)` -> `(B, L, D)` float32 hidden states, zero where mask is 0."""
    embeddings = encoder(ids, mask).astype(jnp.float32)
    return embeddings * mask[..., None].astype(jnp.float32)


@jax.jit
def _encode(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, mask: jax.Array):
    return masked_embeddings(nnx.merge(graphdef, state), ids, mask)


class TextEncoder:
    """A tokenizer and an umT5 encoder; `encode_text(prompts)` runs both (the encoder jitted).

    Attributes:
      encoder: the `UMT5Encoder` (an nnx.Module; training splits it to pass its arrays).
      tokenizer: `tokenizer(prompts) -> (ids (B, L) int32, mask (B, L))`, e.g. `Tokenizer`.
    """

    def __init__(self, encoder: UMT5Encoder, tokenizer: Callable[[Sequence[str]], Any]):
        self.encoder = encoder
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return int(self.encoder.config.d_model)

    def encode_ids(self, ids: Any, mask: Any) -> jax.Array:
        """Token ids and mask `(B, L)` -> `(B, L, d_model)` float32, zero past each prompt."""
        ids, mask = np.asarray(ids), np.asarray(mask)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"ids {ids.shape} and mask {mask.shape} must both be (batch, length)")
        vocab = self.encoder.config.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            # Out-of-range ids would silently gather clamped rows of the embedding.
            raise ValueError(
                f"token ids span [{ids.min()}, {ids.max()}], outside the encoder's vocabulary "
                f"of {vocab}: is the tokenizer the one this encoder was trained with?"
            )
        ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
        # Split on every call (cheap) so an encoder updated in place is never served stale.
        graphdef, state = nnx.split(self.encoder)
        return _encode(graphdef, state, ids, mask)

    def encode_text(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """Prompts -> (embeddings `(B, L, d_model)` float32 zero-padded as Wan pads its context,
        mask `(B, L)` int32); `L` is the tokenizer's max_length (512 for Wan)."""
        ids, mask = self.tokenizer(prompts)
        return self.encode_ids(ids, mask), jnp.asarray(mask, jnp.int32)


# ---------------------------------------------------------------------------------------------
# Precomputed caption embeddings.


class TextEmbeddingCache:
    """Caption embeddings held as their real tokens only (padding is zeros, not stored).

    `lookup(captions)` gives what `encode_text(captions)` would: `(B, max_length, D)` float32
    zero-padded embeddings and the `(B, max_length)` int32 mask.
    """

    def __init__(
        self, captions: Sequence[str], lengths: np.ndarray, tokens: np.ndarray, max_length: int
    ):
        self.captions = list(captions)
        self.lengths = np.asarray(lengths, np.int64)
        self.tokens = np.asarray(tokens, np.float32)
        self.max_length = int(max_length)
        starts = np.concatenate([[0], np.cumsum(self.lengths)])
        self._rows = {c: (int(starts[i]), int(starts[i + 1])) for i, c in enumerate(self.captions)}

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[-1])

    def __len__(self) -> int:
        return len(self.captions)

    def __contains__(self, caption: str) -> bool:
        return caption in self._rows

    def lookup(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = [c for c in captions if c not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} captions are not in the cache, e.g. {missing[0]!r}")
        embeddings = np.zeros((len(captions), self.max_length, self.dim), np.float32)
        mask = np.zeros((len(captions), self.max_length), np.int32)
        for row, caption in enumerate(captions):
            start, stop = self._rows[caption]
            embeddings[row, : stop - start] = self.tokens[start:stop]
            mask[row, : stop - start] = 1
        return embeddings, mask

    def merged(self, other: TextEmbeddingCache) -> TextEmbeddingCache:
        """This cache plus the captions of `other` it lacks (same width and max_length)."""
        if not len(other):
            return self
        if not len(self):
            return other
        if other.dim != self.dim or other.max_length != self.max_length:
            raise ValueError(
                f"cannot merge embeddings of {other.max_length} x {other.dim} into a cache of "
                f"{self.max_length} x {self.dim}"
            )
        keep = [i for i, c in enumerate(other.captions) if c not in self]
        starts = np.concatenate([[0], np.cumsum(other.lengths)])
        rows = [other.tokens[starts[i] : starts[i + 1]] for i in keep]
        return TextEmbeddingCache(
            self.captions + [other.captions[i] for i in keep],
            np.concatenate([self.lengths, other.lengths[keep]]),
            np.concatenate([self.tokens, *rows]),
            self.max_length,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Writes an `.npz` atomically (no pickles: captions are stored as a unicode array)."""
        with fileio.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                captions=np.array(self.captions, dtype=str),
                lengths=self.lengths,
                tokens=self.tokens,
                max_length=np.int64(self.max_length),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextEmbeddingCache:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    [str(c) for c in data["captions"]],
                    data["lengths"],
                    data["tokens"],
                    int(data["max_length"]),
                )
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a text embedding cache ({e})") from None


def cache_text_embeddings(
    text_encoder: TextEncoder,
    captions: Iterable[str],
    path: str | os.PathLike,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> TextEmbeddingCache:
    """Embeddings of every distinct caption, computed once and kept in an `.npz` at `path`.

    An existing cache is reloaded and only the captions it lacks are encoded (then the file is
    rewritten atomically with all of them). Batches have a fixed size (the last one is filled by
    repeating captions), so the encoder compiles once. `progress`: report the captions encoded
    (`progress.Progress`).

    Raises:
      ValueError if the existing file was written for another width or max_length (delete it to
      rebuild; a different encoder of the same sizes cannot be detected).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    captions = list(dict.fromkeys(captions))
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(f"caption {i} is a {type(caption).__name__}, not a str")
    path = Path(path)
    if path.exists():
        cache = TextEmbeddingCache.load(path)
    else:
        cache = None
    todo = [c for c in captions if cache is None or c not in cache]
    if cache is not None and not todo:
        _check_compatible(cache, text_encoder, path)
        return cache

    new = encode_captions(text_encoder, todo, batch_size=batch_size, progress=progress)
    if cache is not None:
        _check_compatible(cache, text_encoder, path, new)
        new = cache.merged(new)
    if todo:
        new.save(path)
    return new


def encode_captions(
    text_encoder: TextEncoder,
    captions: Sequence[str],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> TextEmbeddingCache:
    """An in-memory cache of `captions` (distinct), encoded in fixed-size batches (the last one
    filled by repeating captions) so the encoder compiles once; `progress` reports them."""
    lengths, tokens, mask = [], [], None
    with Progress(len(captions), "embedding", unit="caption", enabled=progress) as done:
        for start in range(0, len(captions), batch_size):
            batch = list(captions[start : start + batch_size])
            padded = batch + [batch[-1]] * (batch_size - len(batch))
            embeddings, mask = text_encoder.encode_text(padded)
            embeddings, mask = np.asarray(embeddings), np.asarray(mask)
            for row in range(len(batch)):
                n = int(mask[row].sum())
                lengths.append(n)
                tokens.append(embeddings[row, :n])
            done.update(len(batch))
    return TextEmbeddingCache(
        captions,
        np.array(lengths, np.int64),
        np.concatenate(tokens) if tokens else np.zeros((0, 0)),
        int(mask.shape[1]) if mask is not None else 0,
    )


def _check_compatible(
    cache: TextEmbeddingCache,
    text_encoder: TextEncoder,
    path: Path,
    new: TextEmbeddingCache | None = None,
) -> None:
    width = text_encoder.dim
    max_length = (
        new.max_length
        if new is not None
        else getattr(text_encoder.tokenizer, "max_length", cache.max_length)
    )
    if cache.dim != width or cache.max_length != max_length:
        raise ValueError(
            f"{path}: cached embeddings are {cache.max_length} x {cache.dim}, the text encoder "
            f"gives {max_length} x {width}; delete the file to rebuild it"
        )


# --- Training's text inputs ------------------------------------------------------------------

# The file `python -m viewpoint_jax.precompute_text` writes into a text cache dir, read by every host.
SHARED_TEXT_CACHE = "embeddings.npz"


class TextFeeder:
    """Captions -> the step's text inputs: token ids (encoded in the step) or, with `precompute`,
    embeddings computed once per distinct caption (`text_encoder.encode_captions`).

    With `cache_path` (`text_cache_path(cache_dir, process)`), the feeder starts from the
    captions `python -m viewpoint_jax.precompute_text` embedded into `cache_dir/embeddings.npz` (shared by all
    hosts, read only) and from this host's own file; captions met later (as batches arrive; a
    dropped caption is "") are embedded then, and `flush()` writes those to this host's file
    atomically (hosts see different captions and never write the same file), so a restarted run
    reloads them.
    """

    def __init__(
        self, text_encoder: Any, precompute: bool, cache_path: Path | None, batch_size: int
    ):
        self.text_encoder = text_encoder
        self.precompute = precompute
        self.cache_path = cache_path if precompute else None
        self.batch_size = batch_size
        self.cache: TextEmbeddingCache | None = None  # everything known
        self.own: TextEmbeddingCache | None = None  # what this host writes
        if self.cache_path is not None:
            shared = self.cache_path.parent / SHARED_TEXT_CACHE
            if shared.is_file():
                self.cache = TextEmbeddingCache.load(shared)
            if self.cache_path.is_file():
                self.own = TextEmbeddingCache.load(self.cache_path)
                self.cache = self.own if self.cache is None else self.cache.merged(self.own)
        self._dirty = False

    def __call__(self, captions: list[str]) -> dict[str, np.ndarray]:
        if not self.precompute:
            ids, mask = self.text_encoder.tokenizer(list(captions))
            return {"ids": np.asarray(ids, np.int32), "ids_mask": np.asarray(mask, np.int32)}
        missing = list(dict.fromkeys(c for c in captions if not self.cache or c not in self.cache))
        if missing:
            new = encode_captions(self.text_encoder, missing, batch_size=self.batch_size)
            self.cache = new if self.cache is None else self.cache.merged(new)
            self.own = new if self.own is None else self.own.merged(new)
            self._dirty = True
        embeddings, _ = self.cache.lookup(captions)
        return {"context": embeddings}

    def flush(self) -> None:
        """Writes this host's captions (all it embedded, atomically) if any are new."""
        if self._dirty and self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.own.save(self.cache_path)
            self._dirty = False


def text_cache_path(cache_dir: Path, process_index: int) -> Path:
    """This host's own text cache file in `cache_dir`."""
    return Path(cache_dir) / f"embeddings.process{process_index}.npz"
