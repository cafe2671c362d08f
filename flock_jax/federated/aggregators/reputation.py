"""Trust- and similarity-weighted rules: FLTrust and FoolsGold."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flock_jax.federated.aggregators.base import (
    Aggregator,
    cosine_similarity_matrix,
    ravel_stacked,
    ravel_tree,
    require,
    stateless_init,
)


def fltrust(eps: float = 1e-12) -> Aggregator:
  """FLTrust (Cao et al., 2021, "FLTrust: Byzantine-robust Federated Learning
  via Trust Bootstrapping", Alg. 1). The server trains on a small clean root
  set and passes its update ``g0`` as ``apply(..., root_update=g0)``.

  ``TS_i = ReLU(cos(g_i, g0))``; ``ḡ_i = (||g0|| / ||g_i||) g_i``;
  ``delta = sum_i TS_i ḡ_i / sum_j TS_j`` (0 when every TS_i = 0). The
  paper's global learning rate α is the engine's business (delta is applied as is).

  Hyperparameters: eps guards zero norms. info: ``trust[K]``, ``weights[K]``
  (``TS_i / sum TS``), ``norms[K]``.
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, num_samples, key, client_ids
    g0_tree = require(root_update, "root_update", "fltrust")
    mat, unravel = ravel_stacked(updates)
    g0, _ = ravel_tree(g0_tree)
    norms = jnp.linalg.norm(mat, axis=1)
    g0_norm = jnp.linalg.norm(g0)
    cos = jnp.matmul(mat, g0, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(
        norms * g0_norm, eps
    )
    trust = jax.nn.relu(cos)
    scaled = mat * (g0_norm / jnp.maximum(norms, eps))[:, None]
    total = jnp.sum(trust)
    weights = jnp.where(total > 0, trust / jnp.where(total > 0, total, 1.0), 0.0)
    agg = jnp.matmul(weights, scaled, precision=jax.lax.Precision.HIGHEST)
    return unravel(agg), state, {"trust": trust, "weights": weights, "norms": norms}

  return Aggregator("fltrust", stateless_init, apply, {"eps": eps}, needs=("root_update",))


def foolsgold_weights(history: jax.Array, kappa: float = 1.0) -> jax.Array:
  """FoolsGold client weights α[K] from aggregate update histories ``history[K, D]``
  (Fung et al., 2020, "The Limitations of Federated Learning in Sybil
  Settings", Alg. 1, as in the authors' reference code):

  1. ``cs_ij = cos(H_i, H_j)`` for i != j (diagonal 0); ``v_i = max_j cs_ij``.
  2. Pardoning: ``cs_ij <- cs_ij * v_i / v_j`` where ``v_j > v_i``.
  3. ``α_i = 1 - max_j cs_ij``, clipped to [0, 1]; ``α <- α / max α``; ``α = 1 -> 0.99``.
  4. Logit: ``α_i <- κ (ln(α_i / (1 - α_i)) + 0.5)``, clipped to [0, 1].
  """
  k = history.shape[0]
  cs = cosine_similarity_matrix(history) * (1.0 - jnp.eye(k, dtype=jnp.float32))
  v = jnp.max(cs, axis=1)
  pardon = jnp.where(
      v[None, :] > v[:, None], v[:, None] / jnp.where(v[None, :] > 0, v[None, :], 1.0), 1.0
  )
  cs = cs * pardon
  alpha = jnp.clip(1.0 - jnp.max(cs, axis=1), 0.0, 1.0)
  top = jnp.max(alpha)
  alpha = jnp.where(top > 0, alpha / jnp.where(top > 0, top, 1.0), 0.0)
  alpha = jnp.where(alpha >= 1.0, 0.99, alpha)
  logit = kappa * (jnp.log(alpha / (1.0 - alpha)) + 0.5)  # alpha = 0 gives -inf -> 0 below
  return jnp.clip(jnp.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def foolsgold(num_clients: int, kappa: float = 1.0, normalize: bool = True) -> Aggregator:
  """FoolsGold (Fung et al., 2020, Alg. 1): sybils that push the same direction
  round after round have similar *histories* ``H_i = sum_t Δ_{i,t}`` and are
  down-weighted (see `foolsgold_weights`).

  State: ``history`` float32[num_clients, D], rows indexed by client id.
  ``apply(..., client_ids=ids[K])`` adds this round's updates to rows ``ids``,
  then weighs the K participants by their histories.

  Hyperparameters:
    num_clients: total number of client ids (N, the history rows).
    kappa: confidence κ of the logit (paper default 1).
    normalize: True returns ``sum α_i Δ_i / sum α_i`` (0 when all α are 0),
      so honest-only rounds reduce to the plain mean; False returns the
      unnormalised ``sum α_i Δ_i`` of Alg. 1.
  The paper's optional importance weighting of features is not implemented.
  info: ``weights[K]`` (α, before normalisation).
  """

  def init(global_params):
    d = sum(int(jnp.size(x)) for x in jax.tree.leaves(global_params))
    return {"history": jnp.zeros((num_clients, d), jnp.float32)}

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, num_samples, key, root_update
    ids = jnp.asarray(require(client_ids, "client_ids", "foolsgold"), jnp.int32)
    mat, unravel = ravel_stacked(updates)
    history = state["history"].at[ids].add(mat)
    alpha = foolsgold_weights(history[ids], kappa)
    if normalize:
      total = jnp.sum(alpha)
      w = jnp.where(total > 0, alpha / jnp.where(total > 0, total, 1.0), 0.0)
    else:
      w = alpha
    agg = jnp.matmul(w, mat, precision=jax.lax.Precision.HIGHEST)
    return unravel(agg), {"history": history}, {"weights": alpha}

  return Aggregator(
      "foolsgold",
      init,
      apply,
      {"num_clients": num_clients, "kappa": kappa, "normalize": normalize},
      needs=("client_ids",),
  )
