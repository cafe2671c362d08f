"""Byzantine-robust rules: Krum, Multi-Krum, coordinate-wise Median, Trimmed
Mean and Bulyan. All ignore ``num_samples`` (the papers' rules are
unweighted) and are jittable: K and f are static (read from shapes and
hyperparameters at trace time).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from flock_jax.federated.aggregators.base import (
    Aggregator,
    num_clients,
    pairwise_sq_dists,
    ravel_stacked,
    stateless_init,
)


def krum_scores(
    sq_dists: jax.Array, f: int, removed: Optional[jax.Array] = None, n: Optional[int] = None
) -> jax.Array:
  """Krum scores (Blanchard et al., 2017): ``s(i) = sum_{j in N_i} ||V_i - V_j||^2``
  where ``N_i`` are the ``n - f - 2`` nearest other vectors to ``V_i``.

  Args:
    sq_dists: float32[K, K] squared distances (`pairwise_sq_dists`).
    f: assumed number of Byzantine vectors (static).
    removed: bool[K], vectors left out (they score +inf and are nobody's neighbour).
    n: the number of vectors not removed (static; default K). Required with ``removed``.
  Returns: float32[K].
  """
  k_total = sq_dists.shape[0]
  if removed is None:
    removed = jnp.zeros((k_total,), bool)
    n = k_total if n is None else n
  elif n is None:
    raise ValueError("krum_scores: pass the static count n of vectors not removed")
  num_nb = max(n - f - 2, 0)
  excluded = removed[:, None] | removed[None, :] | jnp.eye(k_total, dtype=bool)
  d = jnp.where(excluded, jnp.inf, sq_dists)
  nearest = jnp.sort(d, axis=1)[:, :num_nb]
  return jnp.where(removed, jnp.inf, jnp.sum(nearest, axis=1))


def _resolve_f(f: Optional[int], k: int, rule: str, need: str, max_f: int) -> int:
  if f is None:
    f = max_f
  if f < 0 or f > max_f:
    raise ValueError(
        f"{rule}: f={f} Byzantine clients needs {need}; with K={k} clients use f <= {max_f}"
    )
  return f


def multikrum(f: Optional[int] = None, m: Optional[int] = None) -> Aggregator:
  """Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", Sec. 4): average of the ``m`` vectors
  with the lowest Krum scores (see `krum_scores`). Needs ``2f + 2 < n``.

  Hyperparameters:
    f: assumed number of Byzantine clients; None = the largest allowed,
      ``floor((K - 3) / 2)``.
    m: how many to average; None = ``K - f`` (El Mhamdi et al., 2018). m = 1 is Krum.
  info: ``scores[K]``, ``selected[K]`` (bool), ``weights[K]`` (1/m on selected).
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, num_samples, key, client_ids, root_update
    k = num_clients(updates)
    ff = _resolve_f(f, k, "krum", "2f + 2 < K", (k - 3) // 2)
    mm = k - ff if m is None else m
    if not 1 <= mm <= k:
      raise ValueError(f"multikrum: m={mm} must be in [1, K={k}]")
    mat, unravel = ravel_stacked(updates)
    scores = krum_scores(pairwise_sq_dists(mat), ff)
    chosen = jnp.argsort(scores, stable=True)[:mm]
    selected = jnp.zeros((k,), bool).at[chosen].set(True)
    weights = selected.astype(jnp.float32) / mm
    agg = jnp.mean(mat[chosen], axis=0)
    return unravel(agg), state, {"scores": scores, "selected": selected, "weights": weights}

  name = "krum" if m == 1 else "multikrum"
  return Aggregator(name, stateless_init, apply, {"f": f, "m": m})


def krum(f: Optional[int] = None) -> Aggregator:
  """Krum (Blanchard et al., 2017, Sec. 4): the single update with the lowest
  score ``s(i) = sum over its n - f - 2 nearest neighbours of ||V_i - V_j||^2``.
  Needs ``2f + 2 < n``; f None = ``floor((K - 3) / 2)``. Ties pick the lowest index.
  """
  return multikrum(f=f, m=1)


def median() -> Aggregator:
  """Coordinate-wise median (Yin et al., 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", Def. 1): ``delta[j] =
  med_k Δ_k[j]`` (mean of the two middle values when K is even). No hyperparameters.
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, num_samples, key, client_ids, root_update
    out = jax.tree.map(lambda x: jnp.median(x.astype(jnp.float32), axis=0).astype(x.dtype), updates)
    return out, state, {}

  return Aggregator("median", stateless_init, apply, {})


def trimmed_mean(beta: float = 0.1, trim: Optional[int] = None) -> Aggregator:
  """Coordinate-wise β-trimmed mean (Yin et al., 2018, Def. 2): per coordinate,
  drop the ``b`` largest and ``b`` smallest values and average the other ``K - 2b``.

  Hyperparameters:
    beta: trimmed fraction per side, ``b = floor(beta * K)`` (default 0.1; the
      paper needs beta >= the Byzantine fraction).
    trim: the count ``b`` itself (e.g. f); overrides ``beta`` when given.
  Needs ``2b < K``.
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, num_samples, key, client_ids, root_update
    k = num_clients(updates)
    b = int(trim) if trim is not None else int(beta * k)
    if b < 0 or 2 * b >= k:
      raise ValueError(f"trimmed_mean: trimming b={b} per side needs 2b < K={k}")

    def one(x):
      s = jnp.sort(x.astype(jnp.float32), axis=0)
      return jnp.mean(s[b : k - b], axis=0).astype(x.dtype)

    return jax.tree.map(one, updates), state, {}

  return Aggregator("trimmed_mean", stateless_init, apply, {"beta": beta, "trim": trim})


def bulyan(f: Optional[int] = None) -> Aggregator:
  """Bulyan (El Mhamdi et al., 2018, "The Hidden Vulnerability of Distributed
  Learning in Byzantium", Sec. 4), with Krum as the base rule. Needs ``n >= 4f + 3``.

  1. Selection: ``θ = n - 2f`` times, pick the Krum winner among the remaining
     vectors (scores recomputed on the remaining set, ``n' - f - 2``
     neighbours) and move it to the selection set S.
  2. Aggregation: ``β = θ - 2f``; per coordinate j, average the β values of
     S closest to ``median_{X in S} X[j]``.

  Hyperparameters: f, the assumed Byzantine count; None = ``floor((K - 3) / 4)``.
  info: ``selected[K]`` (bool, the set S).
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, num_samples, key, client_ids, root_update
    k = num_clients(updates)
    ff = _resolve_f(f, k, "bulyan", "K >= 4f + 3", (k - 3) // 4)
    theta = k - 2 * ff
    beta = theta - 2 * ff
    mat, unravel = ravel_stacked(updates)
    d = pairwise_sq_dists(mat)
    removed = jnp.zeros((k,), bool)
    chosen = []
    for t in range(theta):  # theta is static and small: a Python loop keeps each n' static
      scores = krum_scores(d, ff, removed, n=k - t)
      i = jnp.argmin(scores)
      chosen.append(i)
      removed = removed.at[i].set(True)
    sel = mat[jnp.stack(chosen)]  # (theta, D)
    med = jnp.median(sel, axis=0)
    closest = jnp.argsort(jnp.abs(sel - med[None]), axis=0, stable=True)[:beta]
    agg = jnp.mean(jnp.take_along_axis(sel, closest, axis=0), axis=0)
    return unravel(agg), state, {"selected": removed}

  return Aggregator("bulyan", stateless_init, apply, {"f": f})
