"""Builds sharded params tensor by tensor from any source of Hugging Face-named tensors.

Each param leaf is created with `jax.make_array_from_callback`: the callback
gets the index (a tuple of slices) of one device's shard and reads only that
slice from the source, so the host never holds more than one shard of one
leaf at a time. A stacked leaf [L, in, out] reads, for each layer in the
shard's layer range, the slice [out, in] of `model.layers.{l}.<proj>.weight`
and stacks only those rows.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from flock_jax.checkpoint.hf_names import TensorSlot, hf_tensor_map
from flock_jax.model.config import LlamaConfig
from flock_jax.model.llama import abstract_params, param_axes
from flock_jax.sharding import LOGICAL_AXIS_RULES, check_divisible, tree_shardings


class TensorSource(Protocol):
  """Reads a slice of one HF-named tensor (HF orientation, e.g. [out, in] for a Linear)."""

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    ...


class DictSource:
  """A source over tensors already in host memory (small models, GGUF after dequantizing)."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self.tensors = tensors

  def read(self, name, index):
    return np.asarray(self.tensors[name][index])


def _full(index: Sequence[slice], shape: Sequence[int]) -> tuple[slice, ...]:
  """Index with every `slice(None)` replaced by explicit bounds (safetensors wants steps of 1)."""
  out = []
  for s, n in zip(index, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"strided shard index {s} is not supported")
    out.append(slice(start, stop))
  return tuple(out)


def _leaf_callback(
    source: TensorSource,
    slots: dict[int | None, tuple[str, TensorSlot]],
    shape: tuple[int, ...],
    dtype,
):
  """Callback for make_array_from_callback: index -> this shard's data, cast to dtype."""

  def read_one(name, slot, index):
    if slot.transpose:
      return source.read(name, tuple(reversed(index))).T
    return source.read(name, index)

  def cb(index):
    index = _full(index, shape)
    if None in slots:  # unstacked leaf: one HF tensor
      name, slot = slots[None]
      return np.ascontiguousarray(read_one(name, slot, index), dtype=dtype)
    rows = range(*index[0].indices(shape[0]))
    out = np.empty(tuple(len(range(*s.indices(n))) for s, n in zip(index, shape)), dtype)
    for j, layer in enumerate(rows):
      name, slot = slots[layer]
      out[j] = read_one(name, slot, index[1:])
    return out

  return cb


def leaf_slots(cfg: LlamaConfig) -> dict[tuple[str, ...], dict[int | None, tuple[str, TensorSlot]]]:
  """params path -> {layer (None if unstacked): (HF name, slot)}."""
  out: dict = {}
  for name, slot in hf_tensor_map(cfg).items():
    out.setdefault(slot.path, {})[slot.layer] = (name, slot)
  return out


def param_shardings(cfg: LlamaConfig, mesh: Mesh | None, rules=LOGICAL_AXIS_RULES):
  """NamedShardings of every param on `mesh` (one local device when mesh is None: in a
  multi-host run each process then holds its own copy)."""
  if mesh is None:
    one = SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda _: one, abstract_params(cfg))
  shardings = tree_shardings(param_axes(cfg), mesh, rules)
  check_divisible(abstract_params(cfg), shardings)
  return shardings


def params_from_source(
    cfg: LlamaConfig,
    source: TensorSource,
    mesh: Mesh | None = None,
    dtype=None,
    rules=LOGICAL_AXIS_RULES,
) -> dict:
  """All params of `cfg`, each built directly in its sharding from `source`.

  dtype: storage dtype of the result (default cfg.param_dtype). The source
  must already be validated (every tensor present with the right shape).
  """
  dtype = jnp.dtype(dtype or cfg.storage_dtype)
  abstract = abstract_params(cfg)
  shardings = param_shardings(cfg, mesh, rules)
  slots = leaf_slots(cfg)

  def build(path, leaf, sharding):
    key = tuple(p.key for p in path)
    shape = tuple(leaf.shape)
    return jax.make_array_from_callback(
        shape, sharding, _leaf_callback(source, slots[key], shape, dtype)
    )

  return jax.tree_util.tree_map_with_path(build, abstract, shardings)
