"""Helpers shared by the launch/bench_*.py benchmarks (no jax import here)."""

import os
import time
from typing import Callable


def use_one_cpu_device() -> None:
  """Benchmarks run on ONE CPU device: fake CPU devices share the same cores.

  Call before jax is imported (it rewrites XLA_FLAGS).
  """
  flags = [
      f
      for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  os.environ["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=1"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def best_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
  """Best wall time of `repeats` calls of fn (after one untimed warm-up call that compiles)."""
  if warmup:
    fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best
