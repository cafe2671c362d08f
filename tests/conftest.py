"""Test set-up: 8 fake CPU devices and no hub access, fixed before jax is imported."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test process (each xdist worker its own, so no two
# writers share it), inherited by the train.py subprocesses the run-lifecycle tests start: they
# compile the same tiny programs again and again (a 3-round tiny run: 39 s cold, 16 s warm).
# Set JAX_COMPILATION_CACHE_DIR yourself (empty: no cache) to override.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _xla_cache = tempfile.mkdtemp(prefix="flock_jax_xla_cache_")
  atexit.register(shutil.rmtree, _xla_cache, True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: real-model or long tests (run with -m slow)")
  config.addinivalue_line("markers", "hardhat: needs a Node.js hardhat dev node")
