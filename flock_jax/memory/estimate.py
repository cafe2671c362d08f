"""Per-device bytes of a K-client LoRA step: exact rows for every tree, an estimate for
activations, and the verdict against the device's memory (`plan_memory`, `format_plan`).

Everything that is a tree (frozen base, K clients' adapters, Adam state,
gradients) is counted *exactly* from abstract shapes and the shardings that
flock_jax/sharding.py's rules give on an `AbstractMesh` (no devices, no
allocation). The frozen base may be stored with fewer bytes per weight
(`weight_bytes`, e.g. 1 for flock_jax/model/quant.py's int8 base with float32
per-output-channel scales). Activations are an *estimate* from the formulas in
`activation_bytes` (documented there and in docs/sharding.md).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from flock_jax import sharding as S
from flock_jax.memory.catalogue import GiB, Topology
from flock_jax.memory.mesh import abstract_mesh, check_heads, default_mesh_shape, full_mesh_shape
from flock_jax.model.config import LlamaConfig
from flock_jax.model.llama import abstract_params, param_axes
from flock_jax.model.lora import LoraConfig, lora_axes, lora_shapes


def client_lora_shapes(cfg: LlamaConfig, lcfg: LoraConfig, clients: int) -> dict:
  """ShapeDtypeStructs of K stacked adapters: {name: {'a': [K, L, in, r], 'b': [K, L, r, out]}}."""
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct((clients,) + s.shape, s.dtype), lora_shapes(cfg, lcfg)
  )


def _batch_split(mesh_shape: Mapping[str, int], clients: int, batch: int):
  """(client shards, batch shards, notes): an axis the dimension does not divide replicates."""
  notes = []
  c = int(mesh_shape.get("clients", 1))
  if clients % c:
    raise S.ShardingError(f"{clients} clients cannot be split over mesh axis clients={c}")
  b = int(mesh_shape.get("data", 1)) * int(mesh_shape.get("fsdp", 1))
  if batch % b:
    notes.append(
        f"per-client batch {batch} is not divisible by data*fsdp={b}: the batch is "
        "replicated over those axes (every device of a client group computes all of it); "
        f"use a batch that is a multiple of {b} or more tensor parallelism"
    )
    b = 1
  return c, b, notes


def _spec_for(mesh_shape, names, dims):
  """Logical names -> spec on `mesh_shape`, replicating any dimension an axis does not divide."""
  spec = S.logical_to_spec(names, mesh=abstract_mesh(mesh_shape))
  out = []
  for axes, d in zip(spec, dims):
    ax = (axes,) if isinstance(axes, str) else tuple(axes or ())
    n = int(np.prod([mesh_shape.get(a, 1) for a in ax])) if ax else 1
    out.append(axes if d % n == 0 else None)
  return P(*out)


# ------------------------------------------------------------------ activations
def activation_bytes(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    mesh_shape: Mapping[str, int],
    *,
    clients: int,
    batch: int,
    seq_len: int,
    remat: str | None = None,
    logits_chunk: int = 0,
    weight_bytes: float | None = None,
) -> tuple[dict[str, int], list[str]]:
  """Estimated per-device activation bytes of one LoRA training step, by part.

  n = tokens per device = (K / clients) * (B / (data*fsdp)) * T (an axis that
  does not divide its dimension replicates); e = compute-dtype bytes;
  tensor t divides heads, mlp and vocab (ceil for heads).
    saved:    'full' -> L * n * D * e (the residual stream at each layer boundary);
              'dots' -> L * n * e * (3D + q + 2 kv + 2F + 7r) (matmul outputs + residual);
              'none' -> L * forward working set (everything).
    working:  one layer recomputed and back-propagated: 2 * [n * e * (4D + 2q + 2kv + 3F + 7r)
              + (n / T) * H * T^2 * (4 + e)]  (x2: values and their cotangents; the T^2 term
              is the materialised float32 scores plus probabilities of plain attention).
    logits:   2 * n' * V/t * 4 (float32 logits and their cotangent), n' = min(n, chunk).
    gathered: with fsdp > 1, 2 layers' weights all-gathered (current + prefetch), at
              `weight_bytes` per weight (default: the storage dtype; int8: 1, plus the
              float32 scales), and the lm-head [D, V/t] in the storage dtype.
  """
  remat = remat or cfg.remat
  c, b, notes = _batch_split(mesh_shape, clients, batch)
  t = int(mesh_shape.get("tensor", 1))
  fsdp = int(mesh_shape.get("fsdp", 1))
  e = jnp.dtype(cfg.compute_dtype).itemsize
  ep = jnp.dtype(cfg.storage_dtype).itemsize
  seqs = (clients // c) * (batch // b)
  n = seqs * seq_len
  d, f, L = cfg.hidden_size, -(-cfg.intermediate_size // t), cfg.num_layers
  h = -(-cfg.num_heads // t)
  q, kv = h * cfg.dim_head, -(-cfg.num_kv_heads // t) * cfg.dim_head
  r7 = len(lcfg.targets) * lcfg.rank
  fwd = n * e * (4 * d + 2 * q + 2 * kv + 3 * f + r7) + seqs * h * seq_len**2 * (4 + e)
  saved = {
      "full": L * n * d * e,
      "dots": L * n * e * (3 * d + q + 2 * kv + 2 * f + r7),
      "none": L * fwd,
  }[remat]
  chunk = min(n, logits_chunk) if logits_chunk else n
  parts = {
      f"saved residuals (remat={remat})": saved,
      "one layer's working set (x2 for cotangents)": 2 * fwd,
      "logits f32 + cotangent"
      + (f" (chunk {chunk})" if logits_chunk else ""): 2 * chunk * (-(-cfg.vocab_size // t)) * 4,
  }
  if fsdp > 1:
    layer = d * (cfg.q_dim + 2 * cfg.kv_dim) + cfg.q_dim * d + 3 * d * cfg.intermediate_size
    wb = ep if weight_bytes is None else weight_bytes
    scales = (
        0
        if weight_bytes is None
        else 4 * (cfg.q_dim + 2 * cfg.kv_dim + 2 * d + 2 * cfg.intermediate_size)
    )
    parts["fsdp all-gathered weights (2 layers + lm-head)"] = int(
        2 * (layer // t * wb + scales // t) + d * (-(-cfg.vocab_size // t)) * ep
    )
  return parts, notes


def kv_cache_bytes(cfg: LlamaConfig, mesh_shape, *, batch: int, length: int) -> int:
  """Per-device KV cache k+v [L, B, S, K, Dh] in the compute dtype (batch over data*fsdp)."""
  b = (
      int(mesh_shape.get("data", 1))
      * int(mesh_shape.get("fsdp", 1))
      * int(mesh_shape.get("clients", 1))
  )
  b = b if batch % b == 0 else 1
  kv = -(-cfg.num_kv_heads // int(mesh_shape.get("tensor", 1)))
  return (
      2
      * cfg.num_layers
      * (batch // b)
      * length
      * kv
      * cfg.dim_head
      * jnp.dtype(cfg.compute_dtype).itemsize
  )


# ------------------------------------------------------------------ the frozen base
def _projection_paths(cfg: LlamaConfig) -> set[tuple[str, ...]]:
  from flock_jax.model.llama import PROJECTIONS

  return {("layers", n) for n in PROJECTIONS}


def base_bytes(
    cfg: LlamaConfig, mesh_shape: Mapping[str, int], weight_bytes: float | None = None
) -> tuple[int, str]:
  """(exact per-device bytes of the frozen base, how it was counted).

  weight_bytes: bytes per weight of the seven decoder projections (None: the
  storage dtype). Below the storage dtype the base is a quantized one
  (flock_jax/model/quant.py: int8 [L, in, out] and a float32 scale per output
  channel [L, out], the scale sharded like the weight's output dimension);
  embeddings, norms and the lm-head stay in the storage dtype.
  """
  mesh = abstract_mesh(mesh_shape)
  base, axes = abstract_params(cfg), param_axes(cfg)
  shardings = S.tree_shardings(axes, mesh)
  S.check_divisible(base, shardings)
  if weight_bytes is None or weight_bytes >= jnp.dtype(cfg.storage_dtype).itemsize:
    how = f"exact: {cfg.num_params():,} params in {cfg.param_dtype}"
    return S.per_device_bytes(base, shardings), how
  flat = jax.tree_util.tree_flatten_with_path(base)[0]
  flat_sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  flat_ax = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  quantized = _projection_paths(cfg)
  total, qparams = 0.0, 0
  for (path, leaf), sh, names in zip(flat, flat_sh, flat_ax):
    shard = sh.shard_shape(leaf.shape)
    key = tuple(getattr(k, "key", str(k)) for k in path)
    if key in quantized:
      qparams += int(np.prod(leaf.shape))
      total += int(np.prod(shard)) * weight_bytes
      scale = jax.ShapeDtypeStruct((leaf.shape[0], leaf.shape[-1]), jnp.float32)
      scale_sh = NamedSharding(mesh, S.logical_to_spec((names[0], names[-1]), mesh=mesh))
      total += S.per_device_bytes(scale, scale_sh)
    else:
      total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
  how = (
      f"exact: {qparams:,} projection weights at {weight_bytes:g} B + float32 scale per "
      f"output channel, {cfg.num_params() - qparams:,} others in {cfg.param_dtype}"
  )
  return int(round(total)), how


# ------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Per-device bytes by row (name, bytes, how it was counted)."""

  title: str
  mesh: dict
  topology: Topology
  rows: tuple[tuple[str, int, str], ...]
  notes: tuple[str, ...]
  usable_fraction: float

  @property
  def total(self) -> int:
    return sum(r[1] for r in self.rows)

  def row(self, prefix: str) -> int:
    return sum(b for name, b, _ in self.rows if name.startswith(prefix))

  @property
  def capacity(self) -> int:
    return self.topology.accelerator.hbm_bytes

  @property
  def usable(self) -> int:
    return int(self.capacity * self.usable_fraction)

  @property
  def fits(self) -> bool:
    return self.total <= self.usable

  @property
  def verdict(self) -> str:
    return "FITS" if self.fits else "DOES NOT FIT"


def plan_memory(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    topology: Topology,
    mesh_shape: Mapping[str, int] | None = None,
    *,
    clients: int = 1,
    batch: int = 1,
    seq_len: int = 2048,
    remat: str | None = None,
    logits_chunk: int = 0,
    kv_len: int = 0,
    kv_batch: int | None = None,
    usable_fraction: float = 0.9,
    weight_bytes: float | None = None,
    title: str = "",
) -> MemoryPlan:
  """Per-device memory of a K-client vmapped LoRA step on `topology` (see module docstring).

  weight_bytes: bytes per frozen projection weight (None: 1 when cfg.quantize is 'int8',
  else the storage dtype)."""
  if weight_bytes is None and getattr(cfg, "quantize", "none") == "int8":
    weight_bytes = 1
  mesh_shape = full_mesh_shape(mesh_shape or default_mesh_shape(topology, cfg), topology.chips)
  mesh = abstract_mesh(mesh_shape)
  base_b, base_how = base_bytes(cfg, mesh_shape, weight_bytes)
  lora = client_lora_shapes(cfg, lcfg, clients)
  lora_sh = S.tree_shardings(lora_axes(cfg, lcfg, clients=True), mesh)
  S.check_divisible(lora, lora_sh)
  lora_b = S.per_device_bytes(lora, lora_sh)
  count_b = clients * 4
  grad_b = S.per_device_bytes(
      jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32), lora), lora_sh
  )
  rows = [
      ("frozen base", base_b, base_how),
      (
          "adapters",
          lora_b,
          f"exact: K={clients}, rank {lcfg.rank}, {len(lcfg.targets)} targets, " f"{lcfg.dtype}",
      ),
      ("optimizer (Adam mu, nu, count)", 2 * grad_b + count_b, "exact: 2 x adapters in float32"),
      ("gradients", grad_b, "exact: adapters' shape in float32"),
  ]
  parts, notes = activation_bytes(
      cfg,
      lcfg,
      mesh_shape,
      clients=clients,
      batch=batch,
      seq_len=seq_len,
      remat=remat,
      logits_chunk=logits_chunk,
      weight_bytes=weight_bytes,
  )
  rows += [(f"activations: {k}", v, "estimate") for k, v in parts.items()]
  if kv_len:
    kb = clients * batch if kv_batch is None else kv_batch
    rows.append(
        (
            f"kv cache (batch {kb}, length {kv_len})",
            kv_cache_bytes(cfg, mesh_shape, batch=kb, length=kv_len),
            "exact shape",
        )
    )
  notes = tuple(notes + check_heads(cfg, mesh_shape))
  return MemoryPlan(title or "LoRA step", mesh_shape, topology, tuple(rows), notes, usable_fraction)


def _gib(b: int) -> str:
  return f"{b / GiB:9.2f} GiB"


def format_plan(plan: MemoryPlan) -> str:
  mesh = ",".join(f"{a}:{s}" for a, s in plan.mesh.items() if s > 1) or "single device"
  topo = plan.topology
  lines = [
      f"{plan.title}",
      f"topology {topo.name}: {topo.chips} x {topo.accelerator.name} "
      f"({topo.hosts} host(s)), mesh {mesh}",
      "per device:",
  ]
  w = max(len(r[0]) for r in plan.rows) + 2
  lines += [f"  {name:<{w}}{_gib(b)}   {how}" for name, b, how in plan.rows]
  lines += [
      f"  {'TOTAL':<{w}}{_gib(plan.total)}",
      f"  {'capacity':<{w}}{_gib(plan.capacity)}   usable at {plan.usable_fraction:.0%}: "
      f"{plan.usable / GiB:.2f} GiB",
      f"  => {plan.verdict} ({(plan.usable - plan.total) / GiB:+.2f} GiB headroom)",
  ]
  lines += [f"  note: {n}" for n in plan.notes]
  return "\n".join(lines)
