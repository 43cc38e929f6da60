"""Streaming PyTorch -> Orbax checkpoint conversion, shared by the DiT, VAE and umT5 converters.

Reading: `open_checkpoint(src)` gives a `TensorSource` that reads one tensor at a time from a
single `.safetensors` file, sharded safetensors with a `*.safetensors.index.json`, a `.pth/.pt/.bin`
pickle, or a folder holding one of these (plus its `config.json`). Safetensors are read with plain
`seek + readinto` rather than mmap, so pages of tensors already converted never stay resident.

Mapping: a converter describes the target parameter tree as flat `targets` ("a/b/kernel" ->
`jax.ShapeDtypeStruct`) and lists `TensorRule`s: torch key -> target path (+ a slot `index` along
the leading axis for stacked layers) + a numpy `transform` (transpose, reshape, pad, ...). Nothing
is read until every rule has been validated against the source's shapes; all problems are reported
at once in one `ConversionError`.

Writing: `convert_checkpoint` saves the tree as a standard Orbax PyTree checkpoint under
`dst/params`, inside `fileio.atomic_directory(dst)`. A custom Orbax type handler streams each
target leaf piece by piece (one torch tensor at a time, stacked leaves chunked one layer per chunk),
so peak memory is one tensor plus one chunk, independent of the checkpoint size.

Usage (a converter):

    from viewpoint_jax.convert import core

    source = core.open_checkpoint("Wan2.1-T2V-1.3B/")          # file or folder
    cfg = source.config                                          # config.json beside the weights
    targets = {"head/kernel": jax.ShapeDtypeStruct((1536, 64), jnp.bfloat16),
               "blocks/q/kernel": jax.ShapeDtypeStruct((30, 1536, 1536), jnp.bfloat16)}
    rules = [core.TensorRule("head.head.weight", "head/kernel", transform=core.linear_kernel,
                             source_shape=(64, 1536))]
    rules += [core.TensorRule(f"blocks.{i}.self_attn.q.weight", "blocks/q/kernel", index=i,
                              transform=core.linear_kernel, source_shape=(1536, 1536))
              for i in range(30)]
    core.convert_checkpoint(source, rules, targets, "out_dir",
                            extra_files={"config.json": json.dumps(cfg)})
    params = weights.restore_params("out_dir/params", abstract_tree)  # nested dict
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from viewpoint_jax.common import fileio
from viewpoint_jax.common.progress import BYTES, Progress
from viewpoint_jax.models import weights

SUPPORTED_FORMATS = (
    "a single .safetensors file",
    "sharded .safetensors with a *.safetensors.index.json",
    "a .pth/.pt/.bin torch pickle",
    "a folder holding one of these (and optionally config.json)",
)


class ConversionError(ValueError):
    """A checkpoint does not match the model: lists every missing, unexpected, misshapen tensor."""

    def __init__(
        self,
        message: str = "",
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        misshapen: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
        source: str | os.PathLike | None = None,
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.misshapen = list(misshapen)
        lines = [message or f"checkpoint {source} does not match the model"]
        if self.missing:
            lines.append(f"missing tensors ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(
                f"unexpected tensors ({len(self.unexpected)}): " + ", ".join(self.unexpected)
            )
        if self.misshapen:
            lines.append(
                f"misshapen tensors ({len(self.misshapen)}): "
                + ", ".join(f"{k} has shape {got}, expected {want}" for k, got, want in misshapen)
            )
        super().__init__("\n  ".join(lines))


# ---------------------------------------------------------------------------------------------
# Reading.

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in `file`
    nbytes: int


def _read_safetensors_header(path: Path) -> dict[str, _Entry]:
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, struct.error) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    data_start = 8 + header_len
    size = path.stat().st_size
    # A truncated download ends before the tensors the header lists: say so before reading any.
    data_end = max((info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"),
                   default=0)  # fmt: skip
    if data_start + data_end > size:
        raise ValueError(
            f"{path}: truncated: the header lists {data_start + data_end} bytes of tensors but the "
            f"file has {size} (an interrupted download or copy?)"
        )
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        entries[key] = _Entry(
            path,
            np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]),
            tuple(info["shape"]),
            data_start + begin,
            end - begin,
        )
    return entries


class TensorSource:
    """Lazy, tensor-by-tensor view of a checkpoint. Build it with `open_checkpoint`.

    Attributes:
      path: the file or folder it was opened from.
      config: the parsed `config.json` beside the weights, or None.
      files: the weight files.
    """

    def __init__(self, path: Path, files: list[Path], config: dict | None):
        self.path = path
        self.files = files
        self.config = config
        self._entries: dict[str, _Entry] = {}
        self._torch_state: Mapping[str, Any] | None = None
        if files[0].suffix == ".safetensors":
            for file in files:
                for key, entry in _read_safetensors_header(file).items():
                    if key in self._entries:
                        raise ValueError(
                            f"tensor {key} appears in both {file} and {self._entries[key].file}"
                        )
                    self._entries[key] = entry
        else:
            self._torch_state = _load_torch_state(files[0])

    def keys(self) -> list[str]:
        return list(self._torch_state if self._torch_state is not None else self._entries)

    def __contains__(self, key: str) -> bool:
        store = self._torch_state if self._torch_state is not None else self._entries
        return key in store

    def shape(self, key: str) -> tuple[int, ...]:
        if self._torch_state is not None:
            return tuple(self._torch_state[key].shape)
        return self._entries[key].shape

    def get(self, key: str) -> np.ndarray:
        """The tensor in its stored dtype (bf16 as `ml_dtypes.bfloat16`), freshly allocated."""
        if self._torch_state is not None:
            return _torch_to_numpy(self._torch_state[key])
        entry = self._entries[key]
        out = np.empty(entry.shape, entry.dtype)
        if entry.nbytes != out.nbytes:
            raise ValueError(
                f"{entry.file}: tensor {key} has {entry.nbytes} bytes for shape "
                f"{entry.shape} {entry.dtype}"
            )
        with open(entry.file, "rb", buffering=0) as f:
            f.seek(entry.start)
            view = memoryview(out.reshape(-1).view(np.uint8))
            while view.nbytes:
                n = f.readinto(view)
                if not n:
                    raise ValueError(f"{entry.file}: truncated while reading tensor {key}")
                view = view[n:]
        return out

    def __repr__(self) -> str:
        return f"TensorSource({self.path}, {len(self.keys())} tensors)"


def _load_torch_state(path: Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"reading {path} needs PyTorch (install the 'convert' extra: torch), "
            "or convert the checkpoint to safetensors"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:
        if "mmap can only be used with files saved with" not in str(e):
            raise ValueError(f"{path}: cannot read as a torch checkpoint ({e})") from None
        # torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped: read it whole.
        state = _load_torch_legacy(torch, path)
    except (pickle.UnpicklingError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read as a torch checkpoint ({e})") from None
    # Training checkpoints wrap the weights: {"state_dict": {...}} / {"model": {...}}.
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, Mapping) and set(state) == {wrapper}:
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors")
    return state


def _load_torch_legacy(torch: Any, path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read as a torch checkpoint ({e})") from None


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def open_checkpoint(src: str | os.PathLike) -> TensorSource:
    """Opens a checkpoint lazily; see `SUPPORTED_FORMATS`.

    Raises:
      FileNotFoundError if `src` does not exist; ValueError naming the supported formats if it is
      none of them.
    """
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    folder = path if path.is_dir() else path.parent
    config = None
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder / 'config.json'}: invalid JSON ({e})") from None
    if path.is_file():
        if path.name.endswith(".safetensors.index.json"):
            return TensorSource(path, _index_files(path), config)
        if path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
            return TensorSource(path, [path], config)
        raise ValueError(
            f"{path}: unsupported checkpoint file; supported: " + "; ".join(SUPPORTED_FORMATS)
        )
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ValueError(f"{path}: several safetensors index files: {[p.name for p in indexes]}")
    if indexes:
        return TensorSource(path, _index_files(indexes[0]), config)
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return TensorSource(path, safetensors, config)
    pickles = sorted(p for ext in (".pth", ".pt", ".bin") for p in path.glob(f"*{ext}"))
    if len(pickles) == 1:
        return TensorSource(path, pickles, config)
    if len(pickles) > 1:
        raise ValueError(
            f"{path}: several torch checkpoints, pass one: {[p.name for p in pickles]}"
        )
    raise ValueError(f"{path}: no checkpoint found; supported: " + "; ".join(SUPPORTED_FORMATS))


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a safetensors index (needs 'weight_map'): {e}") from None
    files = sorted({index.parent / name for name in weight_map.values()})
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"{index} lists shard files that do not exist: {absent}")
    return files


# ---------------------------------------------------------------------------------------------
# Mapping.


def identity(x: np.ndarray) -> np.ndarray:
    return x


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> flax kernel (in, out)."""
    return w.T


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch ConvNd weight (out, in, *k) -> flax kernel (*k, in, out)."""
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One torch tensor -> one target leaf (or one slot of a stacked leaf).

    Attributes:
      source: the torch key.
      target: '/'-joined path of the target leaf in `targets`.
      index: slot along the target's leading axis (stacked layers); None = the whole leaf.
      transform: numpy function from the source tensor to the target (slot) layout; the result
        must have the target (slot) shape and is cast to the target dtype.
      source_shape: the shape the source tensor must have; None = not checked up front.
    """

    source: str
    target: str
    index: int | None = None
    transform: Callable[[np.ndarray], np.ndarray] = identity
    source_shape: tuple[int, ...] | None = None


def validate_rules(
    source: TensorSource,
    rules: Sequence[TensorRule],
    targets: Mapping[str, jax.ShapeDtypeStruct],
    ignore: Callable[[str], bool] | Iterable[str] = (),
) -> None:
    """Checks the source against the rules without reading any tensor.

    Raises:
      ConversionError listing all missing / unexpected / misshapen source tensors.
      ValueError if the rules do not cover every target leaf exactly once (a converter bug).
    """
    ignored = ignore if callable(ignore) else set(ignore).__contains__
    available = set(source.keys())
    used = {rule.source for rule in rules}
    missing = sorted(rule.source for rule in rules if rule.source not in available)
    unexpected = sorted(k for k in available - used if not ignored(k))
    misshapen = [
        (rule.source, source.shape(rule.source), tuple(rule.source_shape))
        for rule in rules
        if rule.source in available
        and rule.source_shape is not None
        and tuple(source.shape(rule.source)) != tuple(rule.source_shape)
    ]
    if missing or unexpected or misshapen:
        raise ConversionError(
            missing=missing, unexpected=unexpected, misshapen=misshapen, source=source.path
        )
    _check_coverage(rules, targets)


def _check_coverage(rules: Sequence[TensorRule], targets: Mapping[str, jax.ShapeDtypeStruct]):
    slots: dict[str, list[int | None]] = {name: [] for name in targets}
    for rule in rules:
        if rule.target not in slots:
            raise ValueError(f"rule for {rule.source} targets unknown leaf {rule.target}")
        slots[rule.target].append(rule.index)
    for name, indices in slots.items():
        if indices == [None]:
            continue
        expected = list(range(targets[name].shape[0])) if targets[name].shape else []
        if sorted(i for i in indices if i is not None) != expected or None in indices:
            raise ValueError(f"target leaf {name} is not covered exactly once: slots {indices}")


# ---------------------------------------------------------------------------------------------
# Writing.


# Small leaves keep Orbax's default chunking (one chunk); big ones get one chunk per written piece.
_MIN_CHUNK_BYTES = 16 << 20


class _StreamedLeaf:
    """A target leaf that Orbax writes piece by piece, reading each torch tensor on demand."""

    def __init__(
        self,
        name: str,
        struct: jax.ShapeDtypeStruct,
        rules: list[TensorRule],
        source: TensorSource,
        progress: Progress,
    ):
        self.name = name
        self.progress = progress  # told the bytes of each written piece
        self.shape = tuple(struct.shape)
        self.dtype = np.dtype(struct.dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.nbytes = self.size * self.dtype.itemsize
        self._rules = sorted(rules, key=lambda r: -1 if r.index is None else r.index)
        self._source = source

    def pieces(self) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        for rule in self._rules:
            value = np.asarray(rule.transform(self._source.get(rule.source)))
            want = self.shape if rule.index is None else self.shape[1:]
            if value.shape != want:
                raise ValueError(
                    f"{rule.source} -> {self.name}: transformed shape {value.shape}, "
                    f"expected {want}"
                )
            yield (() if rule.index is None else (rule.index,)), value.astype(self.dtype)


def _streaming_handler():
    """An Orbax NumpyHandler that writes `_StreamedLeaf`s sequentially, one piece at a time."""
    import tensorstore as ts
    from orbax.checkpoint._src.futures import future
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils
    from orbax.checkpoint._src.serialization import type_handlers

    class StreamingHandler(type_handlers.NumpyHandler):
        async def _stream(self, values, infos, args):
            for leaf, info, arg in zip(values, infos, args):
                await info.await_path_creation()
                spec = ts_utils.build_array_write_spec(
                    info=info,
                    arg=arg,
                    global_shape=leaf.shape,
                    local_shape=leaf.shape,
                    dtype=leaf.dtype,
                    use_ocdbt=info.is_ocdbt_checkpoint,
                    process_index=None if not info.is_ocdbt_checkpoint else 0,
                ).json
                store = await ts.open(
                    ts.Spec(spec), create=True, open=True, context=info.ts_context
                )
                for index, piece in leaf.pieces():
                    await store[index].write(piece)
                    leaf.progress.update(piece.nbytes)

        async def serialize(self, values, infos, args=None):
            args = args or [None] * len(values)
            return [
                future.CommitFutureAwaitingContractedSignals(
                    self._stream(values, infos, args), name="streaming_numpy_handler"
                )
            ]

    return StreamingHandler()


def convert_checkpoint(
    source: TensorSource,
    rules: Sequence[TensorRule],
    targets: Mapping[str, jax.ShapeDtypeStruct],
    dst: str | os.PathLike,
    *,
    ignore: Callable[[str], bool] | Iterable[str] = (),
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Validates, then streams `source` into an Orbax checkpoint at `dst/params`.

    Args:
      source: from `open_checkpoint`.
      rules: see `TensorRule`; together they must cover every leaf of `targets` exactly once.
      targets: '/'-joined leaf path -> shape and dtype to store (the nested tree is split on '/').
      dst: output directory, written atomically (nothing appears there on failure).
      ignore: source keys (or a predicate) that may be present without a rule.
      extra_files: file name -> text, written beside `params/` (e.g. config.json).
      overwrite: replace an existing `dst`.
      progress: report the bytes written on stderr (`progress.Progress`).
    Returns:
      `dst` as an absolute Path.
    Raises:
      UserError naming `dst` if it cannot be written or its filesystem lacks the space.
    """
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.serialization import jax_array_handlers, type_handler_registry

    validate_rules(source, rules, targets, ignore)
    dst = Path(dst).absolute()  # Orbax refuses relative paths ("should be absolute")
    # Before streaming gigabytes: an unwritable or too-full destination fails now, named.
    total_bytes = sum(_nbytes(t) for t in targets.values())
    fileio.check_writable(dst, expected_bytes=total_bytes)
    _return_freed_tensors_to_the_os()
    by_target: dict[str, list[TensorRule]] = {name: [] for name in targets}
    for rule in rules:
        by_target[rule.target].append(rule)
    tree: dict[str, Any] = {}
    save_args: dict[str, Any] = {}
    written = Progress(
        total_bytes, f"converting {dst.name}", unit=BYTES, announce=True, enabled=progress
    )
    for name, target in targets.items():
        leaf = _StreamedLeaf(name, target, by_target[name], source, written)
        # One chunk per stacked slot (or per leaf), so each written piece fills whole chunks and
        # tensorstore never holds a partially written chunk of a big stacked array.
        stacked = len(by_target[name]) > 1 or by_target[name][0].index is not None
        slot_bytes = leaf.nbytes // leaf.shape[0] if stacked else leaf.nbytes
        arg = ocp.SaveArgs(
            chunk_byte_size=slot_bytes if slot_bytes >= _MIN_CHUNK_BYTES else None,
            shard_axes=(0,) if stacked else (),
        )
        tree[name], save_args[name] = leaf, arg
    registry = type_handler_registry.create_type_handler_registry(
        (_StreamedLeaf, _streaming_handler()), (jax.Array, jax_array_handlers.ArrayHandler())
    )
    tree, save_args = weights.unflatten_paths(tree), weights.unflatten_paths(save_args)
    with written, fileio.atomic_directory(dst, overwrite=overwrite) as tmp:
        handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
        with ocp.Checkpointer(handler) as checkpointer:
            checkpointer.save(tmp / "params", args=ocp.args.PyTreeSave(tree, save_args=save_args))
        for file_name, text in (extra_files or {}).items():
            (tmp / file_name).write_text(text)
    return dst


def _nbytes(target: jax.ShapeDtypeStruct) -> int:
    return int(np.prod(target.shape)) * np.dtype(target.dtype).itemsize


def _return_freed_tensors_to_the_os() -> None:
    """Pins glibc's mmap threshold at 1 MiB (process-wide).

    glibc raises the threshold to the size of each freed mmap'd block, after which tensor-sized
    buffers come from the heap and freed ones fragment it: peak RSS then creeps up with the number
    of tensors converted. With a fixed threshold every tensor buffer is its own mapping, returned
    on free. No-op where glibc is not the allocator.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
