"""What malicious participants do in a round (PROTOCOL.md "Threat model").

Data attacks (backdoor poisoning, distributed triggers) change what a proposer trains on and
live beside the data, in flock_jax/data/poison.py. This module holds the rest: what a
proposer does to the update it trained, and what a voter sends instead of its honest ballot.
Behaviour names are the ones config.attack accepts (flock_jax/run_config.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax.pytree import PyTree

# Proposer behaviours whose update is the one it trained (the data may be poisoned).
TRAINED = ("honest", "backdoor")


def attack_update(behaviour: str, delta: PyTree, gamma: float) -> PyTree:
  """A proposer's update after its behaviour.

  honest / backdoor: what it trained; scale: model replacement, gamma * Δ; free_rider: zeros;
  nan: a NaN in the first leaf; wrong_shape: the first leaf one column short.
  """
  if behaviour in TRAINED:
    return delta
  if behaviour == "scale":
    return jax.tree.map(lambda x: x * gamma, delta)
  if behaviour == "free_rider":
    return jax.tree.map(jnp.zeros_like, delta)
  leaves, treedef = jax.tree.flatten(delta)
  if behaviour == "nan":
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
  elif behaviour == "wrong_shape":
    leaves[0] = leaves[0][..., :-1]
  else:
    raise ValueError(f"unknown proposer behaviour {behaviour!r}")
  return jax.tree.unflatten(treedef, leaves)


def voter_ballot(behaviour: str, honest: np.ndarray | bool) -> np.ndarray | bool | None:
  """What a voter sends: its honest approve bit(s), all True, all False, or None (absent)."""
  if behaviour == "honest":
    return honest
  if behaviour == "always_approve":
    return np.ones_like(honest, bool)
  if behaviour == "always_reject":
    return np.zeros_like(honest, bool)
  if behaviour == "absent":
    return None
  raise ValueError(f"unknown voter behaviour {behaviour!r}")
