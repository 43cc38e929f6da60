"""Test setup: 8 simulated CPU devices for sharding tests (must be set before jax is imported)."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never reach a network; make any accidental hub access fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Many tests compile the same tiny programs (also in subprocesses, which inherit the variable):
# a persistent cache shared by the whole run, and by later runs on the same machine.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "viewpoint_jax_test_compile_cache"),
)
