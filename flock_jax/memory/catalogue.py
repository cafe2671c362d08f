"""The accelerators the plan knows and the topologies named after them ('8xh100', 'v5p-64').

Capacities are nominal HBM per device in GiB (2**30 bytes). Cloud TPU names
v4-N and v5p-N count TensorCores (2 per chip, one JAX device per chip thanks
to megacore); v5e-N / v5litepod-N and v6e-N count chips. GPUs: 8 per host.
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """One device kind: nominal HBM in GiB, and devices per host (for tensor-parallel defaults)."""

  name: str
  hbm_gib: float
  platform: str  # 'gpu' | 'tpu'
  per_host: int

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * GiB)


ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator("NVIDIA H100 80GB", 80, "gpu", 8),
    "h200": Accelerator("NVIDIA H200 141GB", 141, "gpu", 8),
    "a100-80": Accelerator("NVIDIA A100 80GB", 80, "gpu", 8),
    "a100-40": Accelerator("NVIDIA A100 40GB", 40, "gpu", 8),
    "v4": Accelerator("TPU v4", 32, "tpu", 4),
    "v5p": Accelerator("TPU v5p", 95, "tpu", 4),
    "v5e": Accelerator("TPU v5e", 16, "tpu", 4),
    "v6e": Accelerator("TPU v6e (Trillium)", 32, "tpu", 4),
}
_ALIASES = {"v5litepod": "v5e", "a100": "a100-80", "trillium": "v6e"}
# Cloud TPU names v4-N and v5p-N count TensorCores (2 per chip, one JAX device
# per chip thanks to megacore); v5e-N / v5litepod-N and v6e-N count chips.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}


@dataclasses.dataclass(frozen=True)
class Topology:
  """`chips` devices of one accelerator kind (one JAX device per chip)."""

  name: str
  accelerator: Accelerator
  chips: int

  @property
  def per_host(self) -> int:
    return min(self.accelerator.per_host, self.chips)

  @property
  def hosts(self) -> int:
    return math.ceil(self.chips / self.per_host)


def accelerator(name: str) -> Accelerator:
  key = _ALIASES.get(name.lower(), name.lower())
  if key not in ACCELERATORS:
    raise ValueError(f"unknown device {name!r}; known: {sorted(ACCELERATORS)}")
  return ACCELERATORS[key]


def parse_topology(spec: str) -> Topology:
  """'8xh100' | 'h100' | 'v5p-64' (64 TensorCores = 32 chips) | 'v5e-256' (256 chips) | 'v4-32'."""
  s = spec.strip().lower()
  m = re.fullmatch(r"(?:(\d+)x)?([a-z0-9-]+?)", s)
  tpu = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e|trillium)-(\d+)", s)
  if tpu:
    kind = _ALIASES.get(tpu.group(1), tpu.group(1))
    n, per_chip = int(tpu.group(2)), _CORES_PER_CHIP[_ALIASES.get(tpu.group(1), tpu.group(1))]
    if n <= 0 or n % per_chip:
      raise ValueError(
          f"topology {spec!r}: {kind}-N counts TensorCores ({per_chip} per chip), "
          f"so N must be a positive multiple of {per_chip}"
      )
    return Topology(spec, ACCELERATORS[kind], n // per_chip)
  if m:
    n = int(m.group(1) or 1)
    if n <= 0:
      raise ValueError(f"topology {spec!r}: device count must be positive")
    return Topology(spec, accelerator(m.group(2)), n)
  raise ValueError(
      f"cannot parse topology {spec!r}; use e.g. '8xh100', 'h100', 'v5p-64', 'v5e-256'"
  )
