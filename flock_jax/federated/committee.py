"""What each committee member decides about a round's proposals, honest or not (PROTOCOL.md
steps 4-5): the proposals it counts as valid, its `invalid` flags, the candidate it names.

Every honest voter runs the same checks on the same revealed bytes and reaches the same view
(`honest`: the proposals every check passes, and one flag per proposer). A malicious voter
reads the same bytes and decides otherwise:

  colluding       does not flag a fellow attacker's proposal that the behaviour probe flagged
                  (its candidate keeps it)
  always_approve  runs no optional probe: flags only what the structural checks reject, and
                  its candidate keeps every proposal the probe flagged
  always_reject, absent
                  the honest view (their ballot does not depend on it)

The chain excludes a proposal flagged by more than half the committee stake, and accepts the
candidate named by more than half of it. So a malicious minority only names a losing
candidate (and is slashed for it); a malicious majority lets a flagged proposal in, and the
run must then apply the candidate the chain accepted, not the honest one (`accepted_view`).
"""

from __future__ import annotations

import dataclasses
from math import comb
from typing import Callable, Sequence

from flock_jax.pytree import PyTree


@dataclasses.dataclass(frozen=True)
class View:
  """One voter's decision about the round's revealed proposals.

  ids: the proposals it counts valid, in the order of the round's proposers.
  updates: their updates, aligned with ids.
  flags: bool[P], one per roles.proposers: the proposers it flags invalid.
  """

  ids: tuple[int, ...]
  updates: tuple[PyTree, ...]
  flags: tuple[bool, ...]


def voter_view(
    behaviour: str,
    honest: View,
    probed_out: Sequence[tuple[int, PyTree]],
    proposers: Sequence[int],
    is_attacker: Callable[[int], bool],
) -> View:
  """The view of a voter with `behaviour`; `probed_out` are the (id, update) pairs that passed
  the structural checks but the honest voters' behaviour probe flagged."""
  if behaviour == "colluding":
    kept = [(i, d) for i, d in probed_out if is_attacker(i)]
  elif behaviour == "always_approve":
    kept = list(probed_out)
  else:
    return honest
  if not kept:
    return honest
  back = {i: d for i, d in zip(honest.ids, honest.updates)} | dict(kept)
  ids = tuple(i for i in proposers if i in back)
  flags = tuple(f and i not in back for i, f in zip(proposers, honest.flags))
  return View(ids, tuple(back[i] for i in ids), flags)


def accepted_view(views: Sequence[View], accepted: Sequence[bool], proposers: Sequence[int]):
  """Per-proposal mode: (ids, updates) of every proposal some voter counted valid, in the order
  of the proposers, and the chain's accept bit of each (`accepted`: Outcome.proposal_accepted,
  one per proposer)."""
  pool: dict[int, PyTree] = {}
  for v in views:
    pool.update(zip(v.ids, v.updates))
  ids = [i for i in proposers if i in pool]
  return ids, [pool[i] for i in ids], [bool(accepted[proposers.index(i)]) for i in ids]


def capture_odds(n: int, attackers: int, proposers: int, voters: int) -> float:
  """Per round, under the uniform draw of n equal-stake participants: the probability that
  attackers hold more than half of the V committee seats while at least one attacker is drawn
  to propose, which is what colluding voters need to let a fellow's flagged update in.

  The draw (flock_jax.chain.draw) picks a uniformly random set of P + V participants from a
  uniformly shuffled list, its first P proposers and the rest voters, so the committee is a
  uniform V-subset and the proposers a uniform P-subset of the rest (a hypergeometric count).
  """
  if not 0 <= attackers <= n or proposers + voters > n:
    raise ValueError(f"need 0 <= attackers <= n and P + V <= n, got {attackers=}, {n=}")
  total = comb(n, voters) * comb(n - voters, proposers)
  hit = 0
  for a in range(voters // 2 + 1, min(attackers, voters) + 1):
    committees = comb(attackers, a) * comb(n - attackers, voters - a)
    if not committees:  # too few honest participants for the other seats
      continue
    rest, rest_attackers = n - voters, attackers - a
    some_attacker_proposes = comb(rest, proposers) - comb(rest - rest_attackers, proposers)
    hit += committees * some_attacker_proposes
  return hit / total
