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

from flock_jax.federated.probe import probe
from flock_jax.federated.trigger_search import configured_search_scores
from flock_jax.pytree import PyTree

# Proposer behaviours whose update is the one it trained (the data may be poisoned);
# backdoor_evade's is then shrunk against the behaviour probe (`evade_probe`, in the round).
TRAINED = ("honest", "backdoor", "backdoor_evade", "label_flip")
# The adaptive attacker's search: scales 1, 2^-1/2, ..., 2^-6, and the score it aims under,
# a fraction of the public threshold (the voters' probe in float32 equals its own to ~1e-6).
EVADE_SCALES = tuple(2.0 ** (-k / 2) for k in range(13))
EVADE_MARGIN = 0.8


def attack_update(
    behaviour: str,
    delta: PyTree,
    gamma: float,
    *,
    source: PyTree | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> PyTree:
  """A proposer's update after its behaviour.

  honest / backdoor / backdoor_evade / label_flip: what it trained (on poisoned data for the
  attacks; backdoor_evade's is shrunk by `evade_probe` where voters probe); scale:
  model replacement, gamma * Δ of an update trained on backdoor data;
  free_rider: zeros; copy: `source` (another proposer's update this round) times
  (1 + noise * N(0, 1)) per coordinate, drawn with `seed`, so that its hash differs (zeros
  when there is nothing to copy); nan: a NaN in the first leaf; wrong_shape: the first leaf
  one column short.
  """
  if behaviour in TRAINED:
    return delta
  if behaviour == "scale":
    return jax.tree.map(lambda x: x * gamma, delta)
  if behaviour == "free_rider" or (behaviour == "copy" and source is None):
    return jax.tree.map(jnp.zeros_like, delta)
  if behaviour == "copy":
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: x * (1.0 + noise * jnp.asarray(rng.standard_normal(x.shape), x.dtype)), source
    )
  leaves, treedef = jax.tree.flatten(delta)
  if behaviour == "nan":
    leaves[0] = jnp.asarray(leaves[0]).at[(0,) * np.ndim(leaves[0])].set(jnp.nan)
  elif behaviour == "wrong_shape":
    leaves[0] = leaves[0][..., :-1]
  else:
    raise ValueError(f"unknown proposer behaviour {behaviour!r}")
  return jax.tree.unflatten(treedef, leaves)


def evade_probe(
    engine,
    G: PyTree,
    update: PyTree,
    threshold: float,
    *,
    mode: str = "collapse",
    owner: int | None = None,
    seed=0,
) -> tuple[PyTree, float, float]:
  """The adaptive backdoor against the behaviour probe (behaviour 'backdoor_evade'): it knows
  what every voter knows (G, the public probe prompts, the probe's mode and threshold) and
  submits ``s * Δ`` with the largest s in EVADE_SCALES whose score is at most
  ``EVADE_MARGIN * threshold`` (the lowest-scoring s it tried when none is). Returns
  (s * Δ, s, its score).

  Against the trigger search (mode 'search', a gradient search per scale) it first takes the
  largest scale that passes the clean anchored probe (the search's score is never lower), then
  searches the scales below it (`choose_scale`).

  Against the private search (mode 'private': every voter searches on prompts it drew itself)
  it cannot run the voters' probe: it runs the same search on prompts it drew itself
  (participant `owner`'s, Population.private_probe), with random restarts drawn from its own
  `seed`, and shrinks against those."""
  arrays = None
  if mode == "private":
    if owner is None:
      raise ValueError("evade_probe against the private probe needs the attacker's index")
    arrays, mode = engine.population.private_probe(owner), "search"
  scaled = [jax.tree.map(lambda x, s=s: x * jnp.asarray(s, x.dtype), update) for s in EVADE_SCALES]
  aim = EVADE_MARGIN * threshold
  clean, _, _ = probe(
      engine, G, scaled, mode="anchored" if mode == "search" else mode, arrays=arrays
  )
  passing = [k for k, sc in enumerate(clean.tolist()) if sc <= aim]
  k = passing[0] if passing else int(np.argmin(clean))
  if mode != "search":
    return scaled[k], EVADE_SCALES[k], float(clean[k])
  search = lambda k: configured_search_scores(engine, G, [scaled[k]], arrays=arrays, seed=seed)
  k, score = choose_scale(lambda k: max(float(clean[k]), float(search(k)[0][0])), k, aim)
  return scaled[k], EVADE_SCALES[k], score


def choose_scale(score, first: int, aim: float) -> tuple[int, float]:
  """(index into EVADE_SCALES, its score) the adaptive attacker submits against an expensive
  probe, `score(k)` for scale index k, trying few scales: from `first` (the largest the cheap
  clean probe passes), bisection on the scales below it for the largest one at or under `aim`,
  taking the score to fall as the scale does. That fails where the update must undo what G
  already carries (G itself scores over `aim`, so the smallest scales inherit G's score): then
  it tries every other scale in between and submits the largest passing one, or the
  lowest-scoring one it tried when none passes."""
  last = len(EVADE_SCALES) - 1
  seen = {first: score(first)}
  if seen[first] <= aim or first == last:
    return first, seen[first]
  lo, hi = first, last  # the first index that passes lies in (lo, hi]
  seen[hi] = score(hi)
  while hi - lo > 1 and seen[hi] <= aim:
    mid = (lo + hi) // 2
    seen[mid] = score(mid)
    lo, hi = (mid, hi) if seen[mid] > aim else (lo, mid)
  if seen[hi] > aim:  # not even the smallest scale passes
    for k in range(first + 2, last, 2):
      if k not in seen:
        seen[k] = score(k)
  passing = [k for k, sc in seen.items() if sc <= aim]
  k = min(passing) if passing else min(seen, key=seen.get)
  return k, seen[k]


def attack_updates(attack, who: list[int], deltas: list[PyTree]) -> list[PyTree]:
  """Every proposer's update after its behaviour (attack: the run's AttackSpec); a copier
  copies the first update of this round made by a proposer that is not itself a copier."""
  source = next((d for i, d in zip(who, deltas) if attack.proposer(i) != "copy"), None)
  return [
      attack_update(
          attack.proposer(i),
          d,
          attack.scale_gamma,
          source=source,
          noise=attack.copy_noise,
          seed=i,
      )
      for i, d in zip(who, deltas)
  ]


def voter_ballot(
    behaviour: str, honest: np.ndarray | bool, fellow: np.ndarray | bool | None = None
) -> np.ndarray | bool | None:
  """What a voter sends: its honest approve bit(s), all True, all False, or None (absent).

  colluding: approve exactly what fellow attackers proposed: `fellow` is, per valid proposal
  (per-proposal mode, [P']) or for the candidate (whole mode, one bit: some attacker's update
  is in it), whether an attacker proposed it.
  """
  if behaviour == "honest":
    return honest
  if behaviour == "colluding":
    if fellow is None:
      raise ValueError("a colluding voter needs `fellow` (which proposals attackers made)")
    return np.asarray(fellow, bool) if np.ndim(honest) else bool(np.any(fellow))
  if behaviour == "always_approve":
    return np.ones_like(honest, bool)
  if behaviour == "always_reject":
    return np.zeros_like(honest, bool)
  if behaviour == "absent":
    return None
  raise ValueError(f"unknown voter behaviour {behaviour!r}")
