"""The local optimizer every client runs: its settings and the optax transformation.

Its own module so that run_config (which types the settings) and federated/clients (which
runs them) do not import each other. Defaults live in configs/ only.
"""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Local optimizer of every client.

  name: 'adamw' | 'sgd'. schedule: 'constant' | 'cosine' | 'warmup_cosine',
  over `total_steps` local steps of one client (warmup_steps for the last).
  grad_clip: global-norm clip (0 = off). momentum: SGD only (0 = plain SGD).
  prox_mu: FedProx proximal weight mu (0 = off); the centre is G_r.
  """

  name: str
  lr: float
  schedule: str
  warmup_steps: int
  total_steps: int
  weight_decay: float
  b1: float
  b2: float
  eps: float
  momentum: float
  grad_clip: float
  prox_mu: float


def make_schedule(ocfg: OptimConfig) -> optax.Schedule:
  if ocfg.schedule == "constant":
    return optax.constant_schedule(ocfg.lr)
  if ocfg.schedule == "cosine":
    return optax.cosine_decay_schedule(ocfg.lr, max(ocfg.total_steps, 1))
  if ocfg.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, ocfg.lr, ocfg.warmup_steps, max(ocfg.total_steps, ocfg.warmup_steps + 1)
    )
  raise ValueError(f"optim.schedule={ocfg.schedule!r}; expected constant, cosine or warmup_cosine")


def make_optimizer(ocfg: OptimConfig) -> optax.GradientTransformation:
  """The per-client optimizer: optional global-norm clip, then AdamW or SGD."""
  sched = make_schedule(ocfg)
  if ocfg.name == "adamw":
    opt = optax.adamw(sched, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps, weight_decay=ocfg.weight_decay)
  elif ocfg.name == "sgd":
    opt = optax.sgd(sched, momentum=ocfg.momentum or None)
  else:
    raise ValueError(f"optim.name={ocfg.name!r}; expected 'adamw' or 'sgd'")
  return optax.chain(optax.clip_by_global_norm(ocfg.grad_clip), opt) if ocfg.grad_clip > 0 else opt
