"""Reject malformed client updates before they reach an aggregator.

An update must have exactly the leaves of the reference tree ``like`` (by
path, see `hashing.path_str`), the same shape and dtype per leaf, and only
finite values. Host-side checks raise `InvalidUpdateError` naming the client
and the leaf; `finite_mask` is the jit-friendly check for compiled code.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax.federated.hashing import leaves_by_path
from flock_jax.pytree import PyTree


class InvalidUpdateError(ValueError):
  """An update that cannot be aggregated. ``client`` and ``path`` say which and where."""

  def __init__(self, message: str, client: Any = None, path: Optional[str] = None):
    super().__init__(message)
    self.client = client
    self.path = path


def _who(client: Any) -> str:
  return "update" if client is None else f"client {client}"


def _dtype(x) -> np.dtype:
  """x's dtype as jnp.asarray(x) would make it, without copying a host array to the device."""
  return jax.dtypes.canonicalize_dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)


def check_update(update: PyTree, like: PyTree, client: Any = None) -> Optional[InvalidUpdateError]:
  """The first problem with ``update`` against the reference ``like``, or None.

  Checked in order: missing leaves, unexpected leaves, then per leaf (in path
  order) shape, dtype, NaN/Inf.
  """
  who = _who(client)
  try:
    got = leaves_by_path(update)
  except (ValueError, TypeError) as e:
    return InvalidUpdateError(f"{who}: malformed tree ({e})", client)
  want = leaves_by_path(like)
  missing = [p for p in want if p not in got]
  if missing:
    return InvalidUpdateError(
        f"{who}: missing leaf {missing[0]!r} (missing: {missing})", client, missing[0]
    )
  extra = [p for p in got if p not in want]
  if extra:
    return InvalidUpdateError(
        f"{who}: unexpected leaf {extra[0]!r} (not in the adapter: {extra})", client, extra[0]
    )
  for p, ref in want.items():
    leaf = got[p]
    shape, ref_shape = tuple(np.shape(leaf)), tuple(np.shape(ref))
    if shape != ref_shape:
      return InvalidUpdateError(
          f"{who}: leaf {p!r} has shape {shape}, expected {ref_shape}", client, p
      )
    dtype, ref_dtype = _dtype(leaf), _dtype(ref)
    if dtype != ref_dtype:
      return InvalidUpdateError(
          f"{who}: leaf {p!r} has dtype {dtype}, expected {ref_dtype}", client, p
      )
    bad = int(
        np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(jax.device_get(leaf), np.float32)))
    )
    if bad:
      return InvalidUpdateError(f"{who}: leaf {p!r} contains {bad} NaN/Inf values", client, p)
  return None


def validate_update(update: PyTree, like: PyTree, client: Any = None) -> None:
  """Raise `InvalidUpdateError` if ``update`` does not match ``like`` or is not finite."""
  err = check_update(update, like, client)
  if err is not None:
    raise err


def partition_valid(
    updates: Sequence[PyTree], like: PyTree, client_ids: Optional[Sequence[Any]] = None
) -> tuple[list[int], list[InvalidUpdateError]]:
  """Check a list of per-client updates: (indices of the valid ones, errors of the others).

  Errors name ``client_ids[k]`` (default: the position k).
  """
  ids = list(range(len(updates))) if client_ids is None else list(client_ids)
  if len(ids) != len(updates):
    raise ValueError(f"{len(updates)} updates but {len(ids)} client ids")
  valid, errors = [], []
  for k, (u, cid) in enumerate(zip(updates, ids)):
    err = check_update(u, like, cid)
    (errors.append(err) if err is not None else valid.append(k))
  return valid, errors


def validate_stacked(
    stacked: PyTree, like: PyTree, client_ids: Optional[Sequence[Any]] = None
) -> None:
  """Validate stacked updates (leading K axis on every leaf) against ``like``.

  Raises `InvalidUpdateError` for a structure, shape or dtype mismatch (naming
  client "stack" when the problem is common to all) or for the first client
  (in stack order) whose leaves hold NaN/Inf.
  """
  got = leaves_by_path(stacked)
  want = leaves_by_path(like)
  if set(got) != set(want):
    err = check_update(stacked, like, "stack")
    raise err if err is not None else InvalidUpdateError(
        "stack: structure differs from the adapter", "stack"
    )
  ks = {p: (np.shape(x)[0] if np.ndim(x) else None) for p, x in got.items()}
  k = next(iter(ks.values()), 0)
  for p, kp in ks.items():
    if kp is None or kp != k:
      raise InvalidUpdateError(
          f"stack: leaf {p!r} has shape {np.shape(got[p])}; every leaf needs the same "
          f"leading clients axis K={k}",
          "stack",
          p,
      )
  ids = list(range(k)) if client_ids is None else list(client_ids)
  if len(ids) != k:
    raise ValueError(f"{k} stacked updates but {len(ids)} client ids")
  for p, ref in want.items():
    shape, ref_shape = tuple(np.shape(got[p])[1:]), tuple(np.shape(ref))
    if shape != ref_shape:
      raise InvalidUpdateError(
          f"stack: leaf {p!r} has per-client shape {shape}, expected {ref_shape}", "stack", p
      )
    if jnp.asarray(got[p]).dtype != jnp.asarray(ref).dtype:
      raise InvalidUpdateError(
          f"stack: leaf {p!r} has dtype {jnp.asarray(got[p]).dtype}, expected "
          f"{jnp.asarray(ref).dtype}",
          "stack",
          p,
      )
  bad = {
      p: np.sum(~np.isfinite(np.asarray(jax.device_get(got[p]), np.float32).reshape(k, -1)), axis=1)
      for p in want
  }
  for i in range(k):
    for p in want:
      if bad[p][i]:
        raise InvalidUpdateError(
            f"client {ids[i]}: leaf {p!r} contains {int(bad[p][i])} NaN/Inf values", ids[i], p
        )


def finite_mask(stacked: PyTree) -> jax.Array:
  """bool[K]: True where every value of client k's update is finite. Jittable."""
  per_leaf = [
      jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(stacked)
  ]
  return jnp.stack(per_leaf).all(axis=0)
