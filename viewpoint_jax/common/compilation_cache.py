"""jax's persistent compilation cache for the commands that compile big programs (train,
sample): a restart loads the compiled train step and sampler from disk instead of compiling
them again (minutes at real size; BENCHMARKS.md, "Compilation cache").

A user's own choice wins: `JAX_COMPILATION_CACHE_DIR` (or jax's config, set before) keeps its
directory, and `JAX_ENABLE_COMPILATION_CACHE=false` turns the cache off. Programs that compile
in under `jax_persistent_cache_min_compile_time_secs` (1 s) are not written.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "JAX_COMPILATION_CACHE_DIR"


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/viewpoint_jax/compilation_cache` (default `~/.cache/...`): sampling's
    cache, shared by every checkpoint (a program's key is its HLO and compile options)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "viewpoint_jax" / "compilation_cache"


def use_compilation_cache(directory: str | os.PathLike) -> Path | None:
    """Compiled programs of this process are saved to and loaded from `directory` (created),
    unless the user chose a cache directory already; returns the directory in use (None: the
    cache is off). Call before the first big compile: jax opens its cache once."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    chosen = jax.config.jax_compilation_cache_dir or os.environ.get(ENV)
    if chosen:
        return Path(chosen)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return directory
