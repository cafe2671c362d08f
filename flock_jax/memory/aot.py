"""XLA's own numbers: the engine's local step compiled ahead of time from abstract arguments.

The engine's own local step (flock_jax.federated.clients.make_local_train: K
vmapped clients, loss, grad w.r.t. the adapters only, Adam) is lowered and
compiled on a real (here: fake CPU) mesh from ShapeDtypeStructs and
`compiled.memory_analysis()` is read. Nothing is allocated, so a 70B step
compiles on a laptop. `tpu_topology_mesh` targets an unattached TPU topology.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from flock_jax import sharding as S
from flock_jax.memory.catalogue import Topology
from flock_jax.memory.estimate import _gib, _spec_for
from flock_jax.memory.mesh import full_mesh_shape
from flock_jax.model.config import LlamaConfig
from flock_jax.model.llama import abstract_params, param_axes
from flock_jax.model.lora import LoraConfig, lora_axes, lora_shapes


def base_abstract(cfg: LlamaConfig) -> tuple[dict, dict]:
  """(ShapeDtypeStructs, logical axes) of the frozen base as the engine holds it: with
  cfg.quantize == 'int8' each decoder projection is {'q': int8 [L, in, out], 'scale':
  float32 [L, out]} (flock_jax/model/quant.py), the scale on the weight's output axis."""
  base, axes = abstract_params(cfg), param_axes(cfg)
  if getattr(cfg, "quantize", "none") != "int8":
    return base, axes
  from flock_jax.model.quant import quantize_params

  qbase = jax.eval_shape(quantize_params, base)
  layers = dict(axes["layers"])
  for name, leaf in qbase["layers"].items():
    if isinstance(leaf, dict) and "q" in leaf:
      names = layers[name]
      layers[name] = {"q": names, "scale": (names[0], names[-1])}
  return qbase, {**axes, "layers": layers}


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

  base, axes = base_abstract(cfg)
  base_sh = S.tree_shardings(axes, mesh)
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
      # fsdp 8). GPUs and TPUs multiply bf16 directly and never hold that copy. Only the
      # 16-bit float leaves count: an int8 projection is converted per layer, inside the scan.
      leaves = jax.tree.leaves(args[0])
      small_b = sum(
          int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
          for a in leaves
          if jnp.issubdtype(a.dtype, jnp.floating) and a.dtype.itemsize < 4
      )
      out["cpu_f32_weight_copy_bytes"] = small_b * 4 // jnp.dtype(cfg.storage_dtype).itemsize
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
