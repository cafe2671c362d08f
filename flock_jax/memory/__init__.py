"""Per-device memory of LoRA fine-tuning on a sharded frozen base, before renting the chips.

- `catalogue`: accelerators (nominal HBM) and topologies ('8xh100', 'v5p-64').
- `mesh`: mesh shapes ('fsdp:8,tensor:4'), the default layout, the head check.
- `estimate`: `plan_memory`, exact rows for every tree (an int8 base through
  `weight_bytes`) and an activation estimate; the verdict; `format_plan`.
- `choose`: `choose_mesh`, the mesh the plan recommends, and why.
- `aot`: XLA's own numbers, the engine's step compiled ahead of time.

The command line is launch/memory_plan.py; the formulas are in docs/sharding.md.
"""

from flock_jax.memory.aot import (
    aot_memory_analysis,
    format_aot,
    tpu_topology_mesh,
    train_step_args,
)
from flock_jax.memory.catalogue import (
    ACCELERATORS,
    GiB,
    Accelerator,
    Topology,
    accelerator,
    parse_topology,
)
from flock_jax.memory.choose import MeshChoice, choose_mesh, format_choice, mesh_str, work_split
from flock_jax.memory.estimate import (
    MemoryPlan,
    activation_bytes,
    base_bytes,
    client_lora_shapes,
    format_plan,
    kv_cache_bytes,
    plan_memory,
)
from flock_jax.memory.mesh import (
    abstract_mesh,
    check_heads,
    default_mesh_shape,
    full_mesh_shape,
    parse_mesh,
)

__all__ = [
    "ACCELERATORS",
    "Accelerator",
    "GiB",
    "MemoryPlan",
    "MeshChoice",
    "Topology",
    "abstract_mesh",
    "accelerator",
    "activation_bytes",
    "aot_memory_analysis",
    "base_bytes",
    "check_heads",
    "choose_mesh",
    "client_lora_shapes",
    "default_mesh_shape",
    "format_aot",
    "format_choice",
    "format_plan",
    "full_mesh_shape",
    "kv_cache_bytes",
    "mesh_str",
    "parse_mesh",
    "parse_topology",
    "plan_memory",
    "tpu_topology_mesh",
    "train_step_args",
    "work_split",
]
