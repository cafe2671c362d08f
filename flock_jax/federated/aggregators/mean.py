"""Mean-based rules: FedAvg, FedProx, norm clipping with weak DP, and 'local'."""

from __future__ import annotations


import jax
import jax.numpy as jnp

from flock_jax.federated.aggregators.base import (
    Aggregator,
    PyTree,
    clip_rows,
    NEED_KEY,
    gaussian_noise_like,
    ravel_stacked,
    sample_weights,
    stateless_init,
    tree_add,
    weighted_sum,
)


def fedavg(weighted: bool = True) -> Aggregator:
  """FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep
  Networks from Decentralized Data", Alg. 1).

  ``delta = sum_k n_k Δ_k / sum_k n_k`` with ``n_k = num_samples[k]``.

  Hyperparameters:
    weighted: weight by ``num_samples`` (paper); False gives the plain mean
      ``(1/K) sum_k Δ_k`` (the FLock protocol's candidate uses the plain mean).
  info: ``weights[K]`` (normalised).
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, key, client_ids, root_update
    w = sample_weights(num_samples, weighted)
    return weighted_sum(updates, w), state, {"weights": w}

  return Aggregator("fedavg", stateless_init, apply, {"weighted": weighted})


def fedprox(weighted: bool = True, mu: float = 0.01) -> Aggregator:
  """FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous
  Networks"). The server step is FedAvg's; the method lives in local training,
  which minimises ``F_k(w) + (mu/2) ||w - w_g||^2`` (add `fedprox_penalty`).

  Hyperparameters: ``weighted`` as in `fedavg`; ``mu`` (proximal weight; the
  paper searches {0.001, 0.01, 0.1, 1}; default 0.01) is recorded in
  ``hparams`` for the local trainer to read.
  """
  base = fedavg(weighted)
  return Aggregator("fedprox", base.init, base.apply, {"weighted": weighted, "mu": mu})


def fedprox_penalty(params: PyTree, global_params: PyTree, mu: float) -> jax.Array:
  """FedProx proximal term ``(mu/2) * ||w - w_g||^2`` summed over all leaves.

  ``global_params`` is treated as a constant (``stop_gradient``), so the
  gradient w.r.t. ``params`` is ``mu (w - w_g)``. Returns a float32 scalar.
  """
  sq = jax.tree.map(
      lambda w, g: jnp.sum(
          jnp.square(w.astype(jnp.float32) - jax.lax.stop_gradient(g).astype(jnp.float32))
      ),
      params,
      global_params,
  )
  return 0.5 * mu * sum(jax.tree.leaves(sq), jnp.float32(0.0))


def norm_clip(
    clip_norm: float = 3.0, noise_std: float = 0.025, weighted: bool = True
) -> Aggregator:
  """Norm thresholding + weak differential privacy (Sun et al., 2019, "Can You
  Really Backdoor Federated Learning?", Sec. 4).

  ``Δ_k <- Δ_k / max(1, ||Δ_k||_2 / M)``, ``delta = sum_k w_k Δ_k + N(0, σ^2 I)``,
  with ``w_k`` the FedAvg weights.

  Hyperparameters (defaults are the paper's EMNIST setting; LoRA deltas are
  far smaller, so tune ``M`` to the honest update norms, e.g. their median):
    clip_norm: M = 3.0.
    noise_std: σ = 0.025 (0 disables the noise; then ``key`` may be None).
    weighted: FedAvg weights (True) or the plain mean.
  info: ``norms[K]`` (before clipping), ``weights[K]``.
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del global_params, client_ids, root_update
    if noise_std > 0 and key is None:
      raise ValueError(NEED_KEY)
    mat, unravel = ravel_stacked(updates)
    clipped, norms = clip_rows(mat, jnp.float32(clip_norm))
    w = sample_weights(num_samples, weighted)
    delta = weighted_sum(unravel(clipped), w)
    if noise_std > 0:
      delta = tree_add(delta, gaussian_noise_like(key, delta, noise_std))
    return delta, state, {"norms": norms, "weights": w}

  return Aggregator(
      "norm_clip",
      stateless_init,
      apply,
      {"clip_norm": clip_norm, "noise_std": noise_std, "weighted": weighted},
  )


def local() -> Aggregator:
  """Isolated local training (the no-federation baseline): no aggregation.

  ``apply`` returns a zero delta (the global adapter is unchanged) and the
  state untouched. ``Aggregator.isolated`` is True: the engine keeps each
  client's own adapter ``G + Δ_k`` as that client's model for the next round
  and evaluates clients on their own adapters, instead of broadcasting a
  global one. info: ``weights[K]`` (all 0: nobody enters a global model).
  """

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del updates, key, client_ids, root_update
    zero = jax.tree.map(jnp.zeros_like, global_params)
    return zero, state, {"weights": jnp.zeros(jnp.shape(num_samples), jnp.float32)}

  return Aggregator("local", stateless_init, apply, {}, isolated=True)
