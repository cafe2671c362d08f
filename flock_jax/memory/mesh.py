"""Mesh shapes for a topology: parsing 'fsdp:8,tensor:4', filling -1, the default layout,
abstract meshes for counting, and the head-splitting check."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from jax.sharding import AbstractMesh, AxisType

from flock_jax import sharding as S
from flock_jax.memory.catalogue import Topology
from flock_jax.model.config import LlamaConfig


def parse_mesh(spec: str) -> dict[str, int]:
  """'fsdp:4,tensor:2' -> {'fsdp': 4, 'tensor': 2}; unknown axes raise ShardingError."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, size = part.partition(":")
    if not sep or not size.strip().lstrip("-").isdigit():
      raise S.ShardingError(f"mesh entry {part!r} is not AXIS:SIZE (e.g. 'fsdp:8,tensor:2')")
    if name not in S.MESH_AXES:
      raise S.ShardingError(f"unknown mesh axis {name!r} in {spec!r}; axes are {S.MESH_AXES}")
    out[name] = int(size)
  return out


def full_mesh_shape(shape: Mapping[str, int], devices: int | None = None) -> dict[str, int]:
  """All four axes, -1 resolved against `devices`; ShardingError on unknown axes or a bad count."""
  unknown = set(shape) - set(S.MESH_AXES)
  if unknown:
    raise S.ShardingError(f"unknown mesh axes {sorted(unknown)}; axes are {S.MESH_AXES}")
  sizes = {a: int(shape.get(a, 1)) for a in S.MESH_AXES}
  if list(sizes.values()).count(-1) > 1:
    raise S.ShardingError(f"at most one mesh axis may be -1, got {sizes}")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if -1 in sizes.values():
    if devices is None or devices % known:
      raise S.ShardingError(f"{devices} devices cannot fill mesh {sizes}")
    sizes[[a for a, s in sizes.items() if s == -1][0]] = devices // known
  if devices is not None and int(np.prod(list(sizes.values()))) != devices:
    raise S.ShardingError(
        f"mesh {sizes} needs {int(np.prod(list(sizes.values())))} devices, "
        f"the topology has {devices}"
    )
  return sizes


def default_mesh_shape(topo: Topology, cfg: LlamaConfig) -> dict[str, int]:
  """Tensor parallelism inside a host, FSDP across hosts.

  tensor = the largest divisor of the devices per host that also divides the
  query and kv head counts (a head is never split); fsdp = the rest. Tensor
  parallelism shards activations whatever the batch, while FSDP shards them
  only when the batch divides it: with LoRA's small per-client batches the
  host-local tensor axis is what keeps activations down. Override with --mesh.
  """
  t = topo.per_host
  while t > 1 and (topo.chips % t or cfg.num_kv_heads % t or cfg.num_heads % t):
    t -= 1
  return full_mesh_shape({"fsdp": topo.chips // t, "tensor": t}, topo.chips)


def abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
  sizes = full_mesh_shape(shape)
  return AbstractMesh(
      tuple(sizes[a] for a in S.MESH_AXES),
      S.MESH_AXES,
      axis_types=(AxisType.Auto,) * len(S.MESH_AXES),
  )


def check_heads(cfg: LlamaConfig, mesh_shape: Mapping[str, int]) -> list[str]:
  """Warnings for a tensor axis that splits a head (dims may still divide: 9 heads * 64 / 2)."""
  t = int(mesh_shape.get("tensor", 1))
  out = []
  for what, n in (("num_heads", cfg.num_heads), ("num_kv_heads", cfg.num_kv_heads)):
    if n % t:
      out.append(
          f"{what}={n} is not divisible by tensor={t}: heads are split across devices "
          "(correct under GSPMD, but attention then needs extra collectives)"
      )
  return out
