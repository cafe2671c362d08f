"""Server optimizers: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Reddi et al., 2021, "Adaptive Federated Optimization" (Alg. 2, FedOpt): the
mean client update ``Δ_t`` is a pseudo-gradient ``g_t = -Δ_t`` for a server
optimizer with learning rate η; the returned delta is that optimizer's step,
so ``G_{t+1} = G_t + delta``. The state is the optax state (on ``G``'s tree).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from flock_jax.federated.aggregators.base import Aggregator, sample_weights, weighted_sum


class FedOptState(NamedTuple):
  m: optax.Updates  # first moment of the pseudo-gradient
  v: optax.Updates  # second moment, initialised to tau^2


def scale_by_fedopt(variant: str, b1: float, b2: float, tau: float) -> optax.GradientTransformation:
  """Reddi et al. (2021), Alg. 2, server update direction (no bias correction):

  ``m_t = b1 m_{t-1} + (1 - b1) g_t``;
  ``v_t = v_{t-1} + g_t^2`` (adagrad) |
  ``v_t = b2 v_{t-1} + (1 - b2) g_t^2`` (adam) |
  ``v_t = v_{t-1} - (1 - b2) g_t^2 sign(v_{t-1} - g_t^2)`` (yogi);
  output ``m_t / (sqrt(v_t) + tau)``; ``m_{-1} = 0``, ``v_{-1} = tau^2``.
  """
  if variant not in ("adam", "yogi", "adagrad"):
    raise ValueError(f"variant must be 'adam', 'yogi' or 'adagrad', got {variant!r}")

  def init(params):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return FedOptState(m=zeros, v=jax.tree.map(lambda z: jnp.full_like(z, tau * tau), zeros))

  def update(updates, state, params=None):
    del params
    g = jax.tree.map(lambda x: x.astype(jnp.float32), updates)
    m = jax.tree.map(lambda m_, g_: b1 * m_ + (1.0 - b1) * g_, state.m, g)
    if variant == "adam":
      v = jax.tree.map(lambda v_, g_: b2 * v_ + (1.0 - b2) * g_ * g_, state.v, g)
    elif variant == "adagrad":
      v = jax.tree.map(lambda v_, g_: v_ + g_ * g_, state.v, g)
    else:
      v = jax.tree.map(
          lambda v_, g_: v_ - (1.0 - b2) * g_ * g_ * jnp.sign(v_ - g_ * g_), state.v, g
      )
    out = jax.tree.map(lambda m_, v_: m_ / (jnp.sqrt(v_) + tau), m, v)
    return out, FedOptState(m=m, v=v)

  return optax.GradientTransformation(init, update)


def server_optimizer(
    name: str, tx: optax.GradientTransformation, hparams: dict, weighted: bool
) -> Aggregator:
  """Wrap any optax transformation as a FedOpt server step on the pseudo-gradient ``-mean Δ``."""

  def init(global_params):
    return tx.init(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), global_params))

  def apply(
      state, global_params, updates, num_samples, key=None, *, client_ids=None, root_update=None
  ):
    del key, client_ids, root_update
    w = sample_weights(num_samples, weighted)
    mean = weighted_sum(updates, w)
    pseudo_grad = jax.tree.map(lambda d: -d.astype(jnp.float32), mean)
    params32 = jax.tree.map(lambda p: p.astype(jnp.float32), global_params)
    step, new_state = tx.update(pseudo_grad, state, params32)
    delta = jax.tree.map(lambda s, g: s.astype(g.dtype), step, global_params)
    return delta, new_state, {"weights": w}

  return Aggregator(name, init, apply, dict(hparams, weighted=weighted))


def fedavgm(server_lr: float = 1.0, momentum: float = 0.9, weighted: bool = True) -> Aggregator:
  """FedAvgM (Hsu et al., 2019; FedOpt with SGD-momentum in Reddi et al., 2021):
  ``v_t = beta v_{t-1} + g_t``, ``G_{t+1} = G_t - η v_t`` with ``g_t = -Δ_t``
  (``optax.sgd(η, momentum=beta)``). Defaults: η = 1.0, beta = 0.9.
  """
  tx = optax.sgd(server_lr, momentum=momentum if momentum else None)
  return server_optimizer("fedavgm", tx, {"server_lr": server_lr, "momentum": momentum}, weighted)


def _fedopt(
    name: str,
    variant: str,
    server_lr: float,
    b1: float,
    b2: float,
    tau: float,
    weighted: bool,
    bias_correction: bool,
) -> Aggregator:
  if bias_correction:
    if variant != "adam":
      raise ValueError("bias_correction=True is only offered for fedadam (optax.adam)")
    tx = optax.adam(server_lr, b1=b1, b2=b2, eps=tau)
  else:
    tx = optax.chain(scale_by_fedopt(variant, b1, b2, tau), optax.scale(-server_lr))
  hp = {"server_lr": server_lr, "b1": b1, "b2": b2, "tau": tau, "bias_correction": bias_correction}
  return server_optimizer(name, tx, hp, weighted)


def fedadam(
    server_lr: float = 1e-2,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    weighted: bool = True,
    bias_correction: bool = False,
) -> Aggregator:
  """FedAdam (Reddi et al., 2021, Alg. 2): ``G_{t+1} = G_t + η m_t / (sqrt(v_t) + τ)``
  with ``m, v`` of `scale_by_fedopt` ('adam') on ``Δ_t`` (no bias correction, as
  in the paper). Defaults: β1 = 0.9, β2 = 0.99, τ = 1e-3 (paper's values;
  η is tuned per task there, 1e-2 here). ``bias_correction=True`` uses
  ``optax.adam(η, β1, β2, eps=τ)`` instead (standard Adam).
  """
  return _fedopt("fedadam", "adam", server_lr, b1, b2, tau, weighted, bias_correction)


def fedyogi(
    server_lr: float = 1e-2,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    weighted: bool = True,
) -> Aggregator:
  """FedYogi (Reddi et al., 2021, Alg. 2), ``v`` by the Yogi rule; defaults as `fedadam`."""
  return _fedopt("fedyogi", "yogi", server_lr, b1, b2, tau, weighted, False)


def fedadagrad(
    server_lr: float = 1e-2, b1: float = 0.0, tau: float = 1e-3, weighted: bool = True
) -> Aggregator:
  """FedAdagrad (Reddi et al., 2021, Alg. 2): ``v_t = v_{t-1} + Δ_t^2``; β1 = 0 by default."""
  return _fedopt("fedadagrad", "adagrad", server_lr, b1, 0.0, tau, weighted, False)
