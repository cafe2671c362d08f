"""The `Aggregator` interface and the helpers every aggregation rule shares.

Conventions (K = clients in this round, D = adapter parameters):

- An *update* (delta) of client k is ``Δ_k = W_k - G``, a pytree shaped like the
  global adapter ``G``. ``updates`` stacks them: every leaf has a leading axis K.
- ``Aggregator.apply`` returns the **server delta**: the new global adapter is
  ``G + delta`` (see `apply_delta`), for every rule, server optimizers included.
- Rules are pure functions; hyperparameters are closed over as Python constants,
  so ``jax.jit(agg.apply)`` works for every rule with ``agg.jittable``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
from flock_jax.pytree import PyTree

Info = dict[str, jax.Array]

NEED_KEY = "this aggregator adds Gaussian noise: pass a PRNG key (jax.random.key(seed)) to apply()"


class ApplyFn(Protocol):

  def __call__(
      self,
      state: PyTree,
      global_params: PyTree,
      updates: PyTree,
      num_samples: jax.Array,
      key: Optional[jax.Array],
      *,
      client_ids: Optional[jax.Array] = None,
      root_update: Optional[PyTree] = None,
  ) -> tuple[PyTree, PyTree, Info]:
    ...


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: usable as a static jit argument
class Aggregator:
  """One aggregation rule, selected by name through `get_aggregator`.

  Attributes:
    name: registry name, e.g. ``'krum'``.
    init: ``init(global_params) -> state`` (``()`` for stateless rules).
    apply: ``apply(state, global_params, updates[K,...], num_samples[K], key, *,
      client_ids=None, root_update=None) -> (delta, new_state, info)``.
      ``key`` is a PRNG key (only rules that add noise use it; pass ``None``
      otherwise). ``client_ids[K]`` (int) is needed by FoolsGold,
      ``root_update`` (a tree like ``global_params``) by FLTrust; other rules
      ignore them. ``info`` holds arrays only (jit-friendly diagnostics).
    hparams: the resolved hyperparameters (for logging).
    jittable: ``jax.jit(apply)`` works (all built-in rules: True).
    isolated: no aggregation at all ('local'): the engine keeps each client's
      own adapter and leaves the global unchanged.
    needs: extra ``apply`` keywords this rule requires.
  """

  name: str
  init: Callable[[PyTree], PyTree]
  apply: ApplyFn
  hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
  jittable: bool = True
  isolated: bool = False
  needs: tuple[str, ...] = ()


def stateless_init(global_params: PyTree) -> tuple:
  """``init`` of rules that keep no state across rounds."""
  del global_params
  return ()


def apply_delta(global_params: PyTree, delta: PyTree) -> PyTree:
  """``G + delta``, leaf by leaf, in the dtype of ``G``."""
  return jax.tree.map(lambda g, d: (g + d).astype(g.dtype), global_params, delta)


def num_clients(updates: PyTree) -> int:
  """K, the leading axis shared by every leaf of ``updates`` (static)."""
  leaves = jax.tree.leaves(updates)
  if not leaves:
    raise ValueError("updates has no leaves")
  k = leaves[0].shape[0]
  for leaf in leaves:
    if leaf.ndim == 0 or leaf.shape[0] != k:
      raise ValueError(
          f"every leaf of updates needs the same leading clients axis K={k}; got shape {leaf.shape}"
      )
  return k


def ravel_stacked(updates: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
  """Stacked updates -> float32 matrix ``(K, D)``, and its inverse.

  Leaves are concatenated in ``jax.tree.leaves`` order, each flattened in C
  order. ``unravel(x)`` accepts ``(D,)`` (one tree, leaves without K) or
  ``(..., D)`` (leading axes kept), and restores each leaf's dtype.
  """
  leaves, treedef = jax.tree.flatten(updates)
  k = num_clients(updates)
  shapes = [leaf.shape[1:] for leaf in leaves]
  dtypes = [leaf.dtype for leaf in leaves]
  sizes = [int(jnp.size(leaf)) // k for leaf in leaves]
  mat = jnp.concatenate([leaf.reshape(k, -1).astype(jnp.float32) for leaf in leaves], axis=1)

  def unravel(x: jax.Array) -> PyTree:
    lead = x.shape[:-1]
    out, start = [], 0
    for shape, dtype, size in zip(shapes, dtypes, sizes):
      out.append(x[..., start : start + size].reshape(lead + shape).astype(dtype))
      start += size
    return jax.tree.unflatten(treedef, out)

  return mat, unravel


def ravel_tree(tree: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
  """One tree -> float32 vector ``(D,)`` and its inverse (same layout as `ravel_stacked`)."""
  mat, unravel = ravel_stacked(jax.tree.map(lambda x: jnp.asarray(x)[None], tree))
  return mat[0], unravel


def sample_weights(num_samples: jax.Array, weighted: bool = True) -> jax.Array:
  """Normalised weights ``n_k / sum n`` (``1/K`` each when not ``weighted``); float32[K]."""
  n = jnp.asarray(num_samples, jnp.float32)
  if not weighted:
    n = jnp.ones_like(n)
  total = jnp.sum(n)
  return jnp.where(total > 0, n / jnp.where(total > 0, total, 1.0), 0.0)


def weighted_sum(updates: PyTree, weights: jax.Array) -> PyTree:
  """``sum_k weights[k] * Δ_k`` leaf by leaf (the weights already normalised).

  Clients with weight 0 contribute exactly 0 even if their update is NaN/Inf.
  """
  w = jnp.asarray(weights, jnp.float32)

  def one(x):
    keep = (w != 0).reshape((-1,) + (1,) * (x.ndim - 1))
    x32 = jnp.where(keep, x.astype(jnp.float32), 0.0)
    return jnp.tensordot(w, x32, axes=1).astype(x.dtype)

  return jax.tree.map(one, updates)


def pairwise_sq_dists(mat: jax.Array) -> jax.Array:
  """Squared Euclidean distances ``||x_i - x_j||^2`` of the rows of ``mat[K, D]``; ``(K, K)``.

  Rows are centred first (distances are shift invariant) so the Gram form
  loses little precision; the diagonal is exactly 0, negatives clipped to 0.
  """
  x = mat - jnp.mean(mat, axis=0, keepdims=True)
  sq = jnp.sum(x * x, axis=1)
  gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  d = sq[:, None] + sq[None, :] - 2.0 * gram
  d = jnp.maximum(d, 0.0)
  return d * (1.0 - jnp.eye(mat.shape[0], dtype=d.dtype))


def cosine_similarity_matrix(mat: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``cos(x_i, x_j)`` of the rows of ``mat[K, D]``; a zero row has similarity 0 to all."""
  norms = jnp.linalg.norm(mat, axis=1)
  unit = mat / jnp.maximum(norms, eps)[:, None]
  return jnp.matmul(unit, unit.T, precision=jax.lax.Precision.HIGHEST)


def clip_rows(mat: jax.Array, max_norm: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Scale each row to norm ``min(||x_k||, max_norm)``; returns (clipped, norms[K])."""
  norms = jnp.linalg.norm(mat, axis=1)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12))
  return mat * scale[:, None], norms


def gaussian_noise_like(key: Optional[jax.Array], tree: PyTree, std: jax.Array | float) -> PyTree:
  """``N(0, std^2)`` per coordinate, shaped like ``tree`` (one key split per leaf)."""
  if key is None:
    raise ValueError(NEED_KEY)
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noise = [
      (std * jax.random.normal(k, leaf.shape, jnp.float32)).astype(leaf.dtype)
      for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, noise)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(lambda x, y: x + y, a, b)


def require(value: Any, what: str, rule: str) -> Any:
  if value is None:
    raise ValueError(f"aggregator {rule!r} needs `{what}=` in apply(); see docs/aggregators.md")
  return value
