"""Per-device memory of LoRA fine-tuning on a sharded frozen base, before renting the chips.

Two views of the same question, "does this configuration fit?":

1. `plan_memory`: bytes per device, row by row. Everything that is a tree
   (frozen base, K clients' adapters, Adam state, gradients) is counted
   *exactly* from abstract shapes and the shardings that
   flock_jax/sharding.py's rules give on an `AbstractMesh` (no devices, no
   allocation). Activations are an *estimate* from the formulas in
   `activation_bytes` (documented there and in docs/sharding.md).
2. `aot_memory_analysis`: XLA's own numbers. The engine's own local step
   (flock_jax.federated.clients.make_local_train: K vmapped clients, loss,
   grad w.r.t. the adapters only, Adam) is lowered and compiled ahead of
   time on a real (here: fake CPU) mesh
   from ShapeDtypeStructs and `compiled.memory_analysis()` is read. Nothing
   is allocated, so a 70B step compiles on a laptop.

Capacities are nominal HBM per device in GiB (2**30 bytes); the verdict
compares the total with `usable_fraction` of it (default 0.9: CUDA/TPU
runtime, XLA workspace and collective buffers, fragmentation).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from flock_jax import sharding as S
from flock_jax.model.config import LlamaConfig
from flock_jax.model.llama import abstract_params, param_axes
from flock_jax.model.lora import LoraConfig, lora_axes, lora_shapes

GiB = 2**30


# ------------------------------------------------------------------ devices & topologies
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


# ------------------------------------------------------------------ abstract trees
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
    gathered: with fsdp > 1, 2 layers' weights all-gathered (current + prefetch) and the
              lm-head [D, V/t], in the storage dtype.
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
    parts["fsdp all-gathered weights (2 layers + lm-head)"] = (
        2 * layer // t + d * (-(-cfg.vocab_size // t))
    ) * ep
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
    title: str = "",
) -> MemoryPlan:
  """Per-device memory of a K-client vmapped LoRA step on `topology` (see module docstring)."""
  mesh_shape = full_mesh_shape(mesh_shape or default_mesh_shape(topology, cfg), topology.chips)
  mesh = abstract_mesh(mesh_shape)
  base = abstract_params(cfg)
  base_sh = S.tree_shardings(param_axes(cfg), mesh)
  S.check_divisible(base, base_sh)
  lora = client_lora_shapes(cfg, lcfg, clients)
  lora_sh = S.tree_shardings(lora_axes(cfg, lcfg, clients=True), mesh)
  S.check_divisible(lora, lora_sh)
  lora_b = S.per_device_bytes(lora, lora_sh)
  count_b = clients * 4
  grad_b = S.per_device_bytes(
      jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32), lora), lora_sh
  )
  rows = [
      (
          "frozen base",
          S.per_device_bytes(base, base_sh),
          f"exact: {cfg.num_params():,} params in {cfg.param_dtype}",
      ),
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


# ------------------------------------------------------------------ AOT: XLA's own numbers
def train_step_args(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    mesh,
    tx: optax.GradientTransformation,
    *,
    clients: int,
    batch: int,
    seq_len: int,
):
  """Abstract, sharded arguments of the engine's `local_train` for one local step (E = 1):

  (base, start = G_r, opt_states [K], batches {key: [K, 1, B, T]}, keys [K])
  """
  from flock_jax.federated.clients import client_state_shardings, init_client_state
  from flock_jax.federated.loss import BATCH_KEYS

  mesh_shape = dict(mesh.shape)

  def attach(tree, sh):  # sh may be a prefix (one sharding for an empty optax state)
    return jax.tree.map(
        lambda h, a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=h)
        if isinstance(a, jax.ShapeDtypeStruct)
        else a,
        sh,
        tree,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )

  base, base_sh = abstract_params(cfg), S.tree_shardings(param_axes(cfg), mesh)
  S.check_divisible(base, base_sh)
  start_sh = S.tree_shardings(lora_axes(cfg, lcfg), mesh)
  state = jax.eval_shape(lambda: init_client_state(cfg, lcfg, tx, jax.random.key(0), clients))
  state_sh = client_state_shardings(cfg, lcfg, tx, clients, mesh)
  S.check_divisible(state.adapters, state_sh.adapters)
  dims = (clients, 1, batch, seq_len)
  tok_sh = NamedSharding(mesh, _spec_for(mesh_shape, ("clients", None, "batch", "length"), dims))
  batches = {
      k: jax.ShapeDtypeStruct(dims, jnp.float32 if k == "loss_mask" else jnp.int32, sharding=tok_sh)
      for k in BATCH_KEYS
  }
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), clients))
  keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=NamedSharding(mesh, P()))
  return (
      attach(base, base_sh),
      attach(lora_shapes(cfg, lcfg), start_sh),
      attach(state.opt_state, state_sh.opt_state),
      batches,
      keys,
  )


def aot_memory_analysis(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    mesh,
    *,
    clients: int,
    batch: int,
    seq_len: int,
    learning_rate: float = 1e-4,
    chunk_size: int | None = None,
) -> dict[str, Any]:
  """Compiles the engine's K-client local step (flock_jax.federated.clients.make_local_train,
  E = 1) for `mesh` from abstract args, and returns XLA's per-device sizes.

  `mesh` is a jax.sharding.Mesh of real devices (fake CPU devices work, as
  does a TPU topology from jax.experimental.topologies). The Adam state is
  donated, so its output aliases its input.
  """
  from flock_jax.federated.clients import make_local_train

  tx = optax.adam(learning_rate)
  args = train_step_args(cfg, lcfg, mesh, tx, clients=clients, batch=batch, seq_len=seq_len)
  step = make_local_train(cfg, lcfg, tx, chunk_size=chunk_size)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):  # the step's activation constraints and clients vmap read it
    compiled = step.lower(*args).compile()
  seconds = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  out = {"compile_seconds": seconds, "platform": mesh.devices.flat[0].platform}
  for k in (
      "argument_size_in_bytes",
      "output_size_in_bytes",
      "alias_size_in_bytes",
      "temp_size_in_bytes",
      "generated_code_size_in_bytes",
  ):
    out[k] = int(getattr(ma, k, 0) or 0) if ma is not None else None
  if ma is not None:
    # Donated outputs alias their arguments: live peak ~ arguments + outputs - aliased + temps.
    out["peak_estimate_bytes"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        - out["alias_size_in_bytes"]
        + out["temp_size_in_bytes"]
    )
    out["cpu_f32_weight_copy_bytes"] = 0
    if out["platform"] == "cpu" and jnp.dtype(cfg.storage_dtype).itemsize < 4:
      # XLA:CPU has no bf16 dots: it converts the stacked bf16 weight shards to f32 once,
      # outside the layer scan (seen in the optimized HLO: f32[80, 1024, 28672] for 70B on
      # fsdp 8). GPUs and TPUs multiply bf16 directly and never hold that copy.
      base_b = S.per_device_bytes(abstract_params(cfg), jax.tree.map(lambda a: a.sharding, args[0]))
      out["cpu_f32_weight_copy_bytes"] = base_b * 4 // jnp.dtype(cfg.storage_dtype).itemsize
    out["peak_without_cpu_copy_bytes"] = (
        out["peak_estimate_bytes"] - out["cpu_f32_weight_copy_bytes"]
    )
  return out


def format_aot(res: Mapping[str, Any]) -> str:
  if res.get("argument_size_in_bytes") is None:
    return "XLA memory_analysis: not available on this backend"
  lines = [
      f"XLA memory_analysis per device ({res['platform']} compile, "
      f"{res['compile_seconds']:.1f} s):"
  ]
  for k in (
      "argument_size_in_bytes",
      "output_size_in_bytes",
      "alias_size_in_bytes",
      "temp_size_in_bytes",
      "peak_estimate_bytes",
      "cpu_f32_weight_copy_bytes",
      "peak_without_cpu_copy_bytes",
  ):
    lines.append(f"  {k:<30}{_gib(res[k])}")
  if res["cpu_f32_weight_copy_bytes"]:
    lines.append(
        "  (XLA:CPU holds an f32 copy of the bf16 weight shards because it has no bf16 "
        "dots; GPU/TPU do not: read peak_without_cpu_copy_bytes)"
    )
  return "\n".join(lines)


def tpu_topology_mesh(topo: Topology, mesh_shape: Mapping[str, int]):
  """A Mesh over an *unattached* TPU topology (needs libtpu); RuntimeError saying why if not."""
  if topo.accelerator.platform != "tpu":
    raise RuntimeError(f"{topo.name} is not a TPU topology")
  import importlib.util

  if importlib.util.find_spec("libtpu") is None:
    raise RuntimeError(
        f"cannot compile for TPU topology {topo.name}: libtpu is not installed (CPU-only "
        "machine). The plan's exact rows and the CPU memory_analysis still apply; install "
        "libtpu to compile for an unattached TPU topology"
    )
  from jax.experimental import topologies

  try:  # untested here (no libtpu): libtpu resolves the Cloud TPU name, e.g. 'v5p-64'
    desc = topologies.get_topology_desc(topology_name=topo.name, platform="tpu")
  except Exception as e:  # noqa: BLE001 - libtpu's own message says what it needs
    raise RuntimeError(f"libtpu could not describe TPU topology {topo.name}: {e}") from e
  sizes = full_mesh_shape(mesh_shape, topo.chips)
  return topologies.make_mesh(desc, tuple(sizes[a] for a in S.MESH_AXES), S.MESH_AXES)
