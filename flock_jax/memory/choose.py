"""The plan's choice of mesh for a topology, and why (`choose_mesh`).

Candidates: every (clients c, tensor t, fsdp f) with c * t * f = chips, c
dividing K, t dividing the devices of one host and both head counts (a head is
never split, tensor traffic stays inside a host), and every tree dimension
divisible by its axes. Each candidate gets a full `plan_memory`. Among those
that fit, the plan takes the one that splits the step's work the most ways,
i.e. computes the fewest tokens per device:

    split = c * b * t,  b = data * fsdp if it divides the per-client batch, else 1

(clients groups train different clients; a batch axis that divides the batch
splits rows; tensor splits every matmul. An fsdp axis that cannot split a
batch of 1 replicates the computation: every device of a group computes all
of it). Ties go to the smaller tensor axis (fewer per-layer collectives), then
to more headroom.
"""

from __future__ import annotations

import dataclasses

from flock_jax import sharding as S
from flock_jax.memory.catalogue import GiB, Topology
from flock_jax.memory.estimate import MemoryPlan, plan_memory
from flock_jax.model.config import LlamaConfig
from flock_jax.model.lora import LoraConfig


@dataclasses.dataclass(frozen=True)
class MeshChoice:
  """The chosen mesh, its plan, every candidate considered and the reasons."""

  mesh: dict
  plan: MemoryPlan | None
  candidates: tuple[tuple[dict, MemoryPlan | None, str], ...]  # (mesh, plan, why not / ok)
  reasons: tuple[str, ...]

  @property
  def fits(self) -> bool:
    return self.plan is not None and self.plan.fits


def mesh_str(mesh: dict) -> str:
  return ",".join(f"{a}:{s}" for a, s in mesh.items() if s > 1) or "single device"


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def work_split(mesh: dict, clients: int, batch: int) -> int:
  """Ways the step's tokens and matmuls are split: clients * batch split * tensor."""
  c, t = mesh.get("clients", 1), mesh.get("tensor", 1)
  b = mesh.get("data", 1) * mesh.get("fsdp", 1)
  return c * (b if batch % b == 0 else 1) * t


def choose_mesh(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    topology: Topology,
    *,
    clients: int = 1,
    batch: int = 1,
    **plan_kw,
) -> MeshChoice:
  """The mesh the plan recommends for K=`clients` on `topology`; `plan_kw` go to plan_memory
  (seq_len, remat, logits_chunk, weight_bytes, usable_fraction, ...)."""
  chips, host = topology.chips, topology.per_host
  tried = []
  for c in _divisors(chips):
    if clients % c:
      continue
    for t in _divisors(host):
      if (chips // c) % t or cfg.num_heads % t or cfg.num_kv_heads % t:
        continue
      mesh = {"clients": c, "data": 1, "fsdp": chips // (c * t), "tensor": t}
      try:
        plan = plan_memory(cfg, lcfg, topology, mesh, clients=clients, batch=batch, **plan_kw)
      except S.ShardingError as e:
        tried.append((mesh, None, f"cannot shard: {e}"))
        continue
      why = "fits" if plan.fits else f"does not fit ({plan.total / GiB:.2f} GiB)"
      tried.append((mesh, plan, why))
  fitting = [(m, p) for m, p, _ in tried if p is not None and p.fits]
  if not fitting:
    best = min((x for x in tried if x[1] is not None), key=lambda x: x[1].total, default=None)
    reasons = (
        f"no mesh of {chips} x {topology.accelerator.name} fits K={clients}, batch {batch}",
        "smallest: "
        + (f"{mesh_str(best[0])} at {best[1].total / GiB:.2f} GiB" if best else "none shards")
        + f" of {topology.accelerator.hbm_gib * plan_kw.get('usable_fraction', 0.9):.1f} usable",
        "try remat 'full', --logits_chunk, a smaller batch or K, an int8 base, or more chips",
    )
    return MeshChoice(best[0] if best else {}, best[1] if best else None, tuple(tried), reasons)
  key = lambda mp: (
      -work_split(mp[0], clients, batch),
      mp[0]["tensor"],
      mp[1].total,
  )
  mesh, plan = min(fitting, key=key)
  split = work_split(mesh, clients, batch)
  b = mesh["data"] * mesh["fsdp"]
  reasons = [
      f"{len(fitting)} of {len(tried)} candidate meshes fit in "
      f"{plan.usable / GiB:.1f} GiB usable per device",
      f"{mesh_str(mesh)} splits the step {split} ways (clients {mesh['clients']} x batch "
      f"{b if batch % b == 0 else 1} x tensor {mesh['tensor']}): the most of those that fit",
      f"{plan.total / GiB:.2f} GiB per device, {(plan.usable - plan.total) / GiB:+.2f} GiB headroom",
  ]
  if batch % b:
    reasons.append(
        f"the per-client batch {batch} does not divide fsdp {mesh['fsdp']}: FSDP shards the "
        "weights but every device of a client group computes the whole batch"
    )
  return MeshChoice(mesh, plan, tuple(tried), tuple(reasons))


def format_choice(choice: MeshChoice) -> str:
  lines = ["mesh choice:"] + [f"  why: {r}" for r in choice.reasons]
  for mesh, plan, why in choice.candidates:
    mark = "*" if mesh == choice.mesh else " "
    total = f"{plan.total / GiB:8.2f} GiB" if plan is not None else " " * 12
    lines.append(f"  {mark} {mesh_str(mesh):<32}{total}  {why}")
  return "\n".join(lines)
