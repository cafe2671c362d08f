"""Device mesh and the logical-axis rules table: the only place that knows mesh axes.

Parameters and activations carry *logical* axis names ('embed', 'mlp', ...).
`LOGICAL_AXIS_RULES` maps each to mesh axes of the mesh
('clients', 'data', 'fsdp', 'tensor'):

- clients: independent FL clients (stacked adapters, vmapped with spmd_axis_name).
- data:    data parallelism inside one client (batch).
- fsdp:    batch *and* parameter sharding (ZeRO-3 style) for the frozen base.
- tensor:  Megatron-style tensor parallelism (heads, mlp, vocab).

The frozen base is never sharded over 'clients' or 'data': every client reads
the same copy, which is what lets a 70B base serve many clients at once.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("clients", "data", "fsdp", "tensor")

# (logical name, mesh axis | tuple of mesh axes | None). First match wins.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),
    # stacked per-client trees (adapters, optimizer states, updates)
    ("clients", "clients"),
    # activations and data
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("head_dim", None),
)


class ShardingError(ValueError):
  """A mesh or rule set that cannot be applied."""


def make_mesh(shape: Mapping[str, int] | Sequence[int], devices=None) -> Mesh:
  """Builds the 4-axis mesh. `shape` maps axis -> size; -1 (one axis at most) takes the rest.

  Axis types are Auto so that GSPMD propagates shardings from the annotated
  inputs (jax.make_mesh defaults to Explicit in jax 0.10).
  """
  if not isinstance(shape, Mapping):
    shape = dict(zip(MESH_AXES, shape))
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ShardingError(f"unknown mesh axes {sorted(unknown)}; axes are {MESH_AXES}")
  devices = np.asarray(jax.devices() if devices is None else devices)
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ShardingError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if devices.size % known:
      raise ShardingError(f"{devices.size} devices cannot fill mesh {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = devices.size // known
  if int(np.prod(sizes)) != devices.size:
    raise ShardingError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
        f"have {devices.size}"
    )
  return Mesh(devices.reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: Iterable[tuple[str, Any]] = LOGICAL_AXIS_RULES,
    mesh: Mesh | None = None,
) -> P:
  """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once.

  With a mesh, axes of size 1 are dropped (the spec stays valid on any mesh).
  """
  if names is None:
    return P()
  table = dict()
  for k, v in rules:
    table.setdefault(k, v)
  used: set[str] = set()
  out = []
  for name in names:
    target = table.get(name) if name is not None else None
    if name is not None and name not in table:
      raise ShardingError(f"logical axis {name!r} has no rule; add it to LOGICAL_AXIS_RULES")
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape[a] > 1))
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _is_names(x) -> bool:
  return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)


def tree_specs(axes_tree, rules=LOGICAL_AXIS_RULES, mesh: Mesh | None = None):
  """Pytree of logical-name tuples -> pytree of PartitionSpecs."""
  return jax.tree.map(lambda n: logical_to_spec(n, rules, mesh), axes_tree, is_leaf=_is_names)


def tree_shardings(axes_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Pytree of logical-name tuples -> pytree of NamedShardings on `mesh`."""
  return jax.tree.map(
      lambda s: NamedSharding(mesh, s),
      tree_specs(axes_tree, rules, mesh),
      is_leaf=lambda x: isinstance(x, P),
  )


def check_divisible(abstract_tree, shardings) -> None:
  """Raises ShardingError naming the leaf whose dimension a mesh axis does not divide."""
  flat_a = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(flat_a, flat_s):
    for dim, axes in zip(leaf.shape, sh.spec):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      n = int(np.prod([sh.mesh.shape[a] for a in axes])) if axes else 1
      if dim % n:
        raise ShardingError(
            f"{jax.tree_util.keystr(path)}: dimension {dim} is not divisible by mesh axes "
            f"{axes} of total size {n}"
        )


def per_device_bytes(abstract_tree, shardings) -> int:
  """Bytes one device holds of `abstract_tree` under `shardings` (no allocation)."""
  total = 0
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for leaf, sh in zip(jax.tree.leaves(abstract_tree), flat_s):
    shard = sh.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
  return total


def clients_axis_for(n: int) -> str | None:
  """'clients' when tracing under a mesh whose clients axis is split and divides n (the
  size of the axis being vmapped), else None: the spmd_axis_name of a vmap over clients.

  Without it a vmap under jit is not split over the clients' devices: every device runs
  every client (the program is replicated)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or "clients" not in mesh.axis_names:
    return None
  size = mesh.shape["clients"]
  return "clients" if size > 1 and n % size == 0 else None


def with_logical_constraint(x, names: Sequence[str | None], rules=LOGICAL_AXIS_RULES):
  """Sharding constraint by logical names; a no-op outside a mesh context (`jax.set_mesh`).

  Mesh axes that do not divide a dimension are dropped (e.g. batch 1 per client
  on an fsdp axis of 8 stays replicated rather than failing).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  spec = []
  for dim, axes in zip(x.shape, logical_to_spec(names, rules, mesh)):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept, size = [], 1
    for a in axes:
      if dim % (size * mesh.shape[a]) == 0:
        kept.append(a)
        size *= mesh.shape[a]
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return jax.lax.with_sharding_constraint(x, P(*spec))
