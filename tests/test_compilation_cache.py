"""common/compilation_cache.py: train and sample keep jax's persistent compilation cache in their
own folder unless the user named one (BENCHMARKS.md: a restart reaches its first step 10x
sooner)."""

import jax
import pytest

from viewpoint_jax.common import compilation_cache


@pytest.fixture
def no_cache_chosen(monkeypatch):
    """This process as a user's would be without JAX_COMPILATION_CACHE_DIR (the test suite sets
    one); jax's setting restored afterwards."""
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv(compilation_cache.ENV, raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_a_run_gets_its_own_cache_folder(no_cache_chosen, tmp_path):
    folder = tmp_path / "run" / "compilation_cache"
    assert compilation_cache.use_compilation_cache(folder) == folder
    assert folder.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(folder)


def test_the_users_cache_folder_wins(no_cache_chosen, tmp_path, monkeypatch):
    monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "mine"))
    folder = tmp_path / "run" / "compilation_cache"
    assert compilation_cache.use_compilation_cache(folder) == tmp_path / "mine"
    assert not folder.exists()
    assert jax.config.jax_compilation_cache_dir is None


def test_a_disabled_cache_stays_off(no_cache_chosen, tmp_path):
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)  # JAX_ENABLE_COMPILATION_CACHE=false
    try:
        assert compilation_cache.use_compilation_cache(tmp_path / "c") is None
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
    assert not (tmp_path / "c").exists()


def test_sampling_caches_under_the_users_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    expected = tmp_path / "viewpoint_jax" / "compilation_cache"
    assert compilation_cache.user_cache_dir() == expected
