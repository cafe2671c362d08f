"""Timing: the benchmarks' shared helpers and the per-phase timer of a round (no jax import)."""

import os
import time
from typing import Callable


def use_one_cpu_device(n: int = 1) -> None:
  """Benchmarks run on ONE CPU device unless asked for n: fake CPU devices share the same cores
  (n = the core count lets each device run its share of the clients on its own thread).

  Call before jax is imported (it rewrites XLA_FLAGS).
  """
  flags = [
      f
      for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
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


class PhaseTimer:
  """Seconds spent per phase of one round, and in all, for RoundMetrics' time_*_s fields.

  timer = PhaseTimer()
  with timer("train"):
    ...
  RoundMetrics(..., **timer.metrics())
  """

  PHASES = ("train", "hash", "eval", "chain", "report")

  def __init__(self):
    self.start = time.perf_counter()
    self.seconds = dict.fromkeys(self.PHASES, 0.0)

  def __call__(self, phase: str):
    return _Phase(self, phase)

  def metrics(self) -> dict[str, float]:
    out = {f"time_{k}_s": v for k, v in self.seconds.items()}
    out["time_round_s"] = time.perf_counter() - self.start
    return out


class _Phase:

  def __init__(self, timer: PhaseTimer, phase: str):
    if phase not in timer.seconds:
      raise ValueError(f"unknown phase {phase!r}; phases: {list(timer.seconds)}")
    self.timer, self.phase = timer, phase

  def __enter__(self):
    self.t = time.perf_counter()

  def __exit__(self, *exc):
    self.timer.seconds[self.phase] += time.perf_counter() - self.t
    return False
