"""Settlement of one round (PROTOCOL.md step 6), in exact integer arithmetic.

This is the Python model of ``_settle_whole`` / ``_settle_per_proposal`` in
contracts/FlockTask.vy; the tests compare it with the contract to the wei and
the audit replays it. All divisions floor; what a floor leaves over (dust),
and any pot with nobody to share it, stays in the pool.

Whole-candidate mode (the paper's): the candidate is the hash named by the
most voting stake (the earliest named wins a tie); votes naming another hash
are wrong votes (not counted in the tally, slashed). ``S = yes - no`` over the
matching votes; accept when ``S >= 0``. Accepted: proposers share
``rho * R_r`` by stake, approvers share the rest by stake, rejecters are
slashed. Rejected: proposers are slashed, rejecters share ``R_r``, approvers
are slashed. Void (no proposal, or no vote): nothing is paid and the global
model stays; only absent parties are slashed (voters only when there was a
proposal to vote on).

Per-proposal mode (our extension): each proposal i gets ``R_r // n`` and its
own tally over the bits; the proposer alone takes the proposer share when
accepted and is slashed when rejected; a voter wrong on w of the n proposals
is slashed ``lambda * s * w / n``. The new global hash chains the accepted
proposal hashes: ``g = keccak256(g ‖ h_i)`` in proposer order.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from eth_utils import keccak

from .types import (
    BPS,
    OUTCOME_ACCEPTED,
    OUTCOME_REJECTED,
    OUTCOME_VOID,
    ROLE_PROPOSER,
    ROLE_VOTER,
    SLASH_NO_PROPOSAL,
    SLASH_NO_VOTE,
    SLASH_REJECTED_PROPOSAL,
    SLASH_WRONG_CANDIDATE,
    SLASH_WRONG_VOTE,
    VOTE_WHOLE,
)


@dataclasses.dataclass(frozen=True)
class Ballot:
  """One cast vote: `candidate` and `approve` (whole mode) or `bits` (per proposal)."""

  candidate: bytes = b"\x00" * 32
  approve: bool = False
  bits: int = 0


@dataclasses.dataclass(frozen=True)
class Op:
  """One settlement step, applied in order: ``kind`` is "reward" or "slash";
  ``code`` is the role (reward) or the slash reason."""

  kind: str
  participant: str
  amount: int
  code: int


@dataclasses.dataclass(frozen=True)
class Settlement:
  """The decision of one round and the ordered rewards and slashes it implies."""

  outcome: int
  candidate: bytes
  global_hash: bytes
  tally: int
  approve_stake: int
  reject_stake: int
  accepted_bits: int
  tallies: tuple[int, ...]
  ops: tuple[Op, ...]


def round_reward(pool: int, total_rounds: int, round_index: int) -> int:
  """R_r = pool // (T - r), fixed when round r starts."""
  return pool // (total_rounds - round_index)


def slash_amount(stake: int, slash_bps: int, wrong: int = 1, of: int = 1) -> int:
  """lambda * s * wrong / of, floored (wrong/of = 1 except per-proposal voters)."""
  return stake * slash_bps * wrong // (BPS * of)


def settle(
    *,
    vote_mode: int,
    reward: int,
    proposers: Sequence[str],
    proposals: Mapping[str, bytes],
    voters: Sequence[str],
    ballots: Mapping[str, Ballot],
    stakes: Mapping[str, int],
    leader: bytes,
    global_hash: bytes,
    proposer_share_bps: int,
    slash_bps: int,
) -> Settlement:
  """Settle a round. `proposals`/`ballots` hold only those actually cast;
  `stakes` are the stakes before settlement; `leader` is the whole-mode
  candidate (see `leader_of`)."""
  fn = _settle_whole if vote_mode == VOTE_WHOLE else _settle_per_proposal
  return fn(
      reward,
      proposers,
      proposals,
      voters,
      ballots,
      stakes,
      leader,
      global_hash,
      proposer_share_bps,
      slash_bps,
  )


def leader_of(votes: Sequence[tuple[bytes, int]]) -> bytes:
  """Whole-mode candidate: the hash with the most stake, earliest on ties.

  `votes` are ``(candidate, weight)`` in the order they were cast.
  """
  weight: dict[bytes, int] = {}
  leader, best = b"\x00" * 32, 0
  for cand, w in votes:
    weight[cand] = weight.get(cand, 0) + w
    if weight[cand] > best:
      leader, best = cand, weight[cand]
  return leader


def _settle_whole(
    reward, proposers, proposals, voters, ballots, stakes, leader, global_hash, rho_bps, lam
) -> Settlement:
  void = not proposals or not ballots
  yes = no = 0
  kinds = []  # 0 no vote, 1 approve, 2 reject, 3 other candidate
  for v in voters:
    b = ballots.get(v)
    if b is None:
      kinds.append(0)
    elif b.candidate != leader:
      kinds.append(3)
    elif b.approve:
      kinds.append(1)
      yes += stakes[v]
    else:
      kinds.append(2)
      no += stakes[v]
  tally = yes - no
  accepted = not void and tally >= 0

  ops: list[Op] = []
  p_total = sum(stakes[p] for p in proposers if p in proposals)
  p_pot = reward * rho_bps // BPS
  for p in proposers:
    if p not in proposals:
      ops.append(Op("slash", p, slash_amount(stakes[p], lam), SLASH_NO_PROPOSAL))
    elif accepted:
      ops.append(Op("reward", p, p_pot * stakes[p] // p_total, ROLE_PROPOSER))
    elif not void:
      ops.append(Op("slash", p, slash_amount(stakes[p], lam), SLASH_REJECTED_PROPOSAL))

  v_pot, win_total, win_kind = (reward - p_pot, yes, 1) if accepted else (reward, no, 2)
  for v, k in zip(voters, kinds):
    s = stakes[v]
    if k == 0:
      if proposals:
        ops.append(Op("slash", v, slash_amount(s, lam), SLASH_NO_VOTE))
    elif k == 3:
      ops.append(Op("slash", v, slash_amount(s, lam), SLASH_WRONG_CANDIDATE))
    elif void:
      pass
    elif k == win_kind:
      ops.append(Op("reward", v, v_pot * s // win_total, ROLE_VOTER))
    else:
      ops.append(Op("slash", v, slash_amount(s, lam), SLASH_WRONG_VOTE))

  outcome = OUTCOME_ACCEPTED if accepted else (OUTCOME_VOID if void else OUTCOME_REJECTED)
  return Settlement(
      outcome,
      leader,
      leader if accepted else global_hash,
      tally,
      yes,
      no,
      int(accepted),
      (),
      tuple(o for o in ops if o.kind == "slash" or o.amount > 0),
  )


def _settle_per_proposal(
    reward, proposers, proposals, voters, ballots, stakes, leader, global_hash, rho_bps, lam
) -> Settlement:
  n = len(proposals)
  void = n == 0 or not ballots
  share = reward // n if n else 0
  p_pot = share * rho_bps // BPS
  earn = {v: 0 for v in voters}
  wrong = {v: 0 for v in voters}
  ops: list[Op] = []
  tallies = []
  accepted_bits = 0
  g = global_hash
  for i, p in enumerate(proposers):
    if p not in proposals:
      tallies.append(0)
      ops.append(Op("slash", p, slash_amount(stakes[p], lam), SLASH_NO_PROPOSAL))
      continue
    yes = sum(stakes[v] for v in voters if v in ballots and (ballots[v].bits >> i) & 1)
    no = sum(stakes[v] for v in voters if v in ballots and not (ballots[v].bits >> i) & 1)
    tallies.append(yes - no)
    if void:
      continue
    ok = yes >= no
    if ok:
      accepted_bits |= 1 << i
      g = keccak(g + proposals[p])
      pot, win_total = share - p_pot, yes
      if p_pot:
        ops.append(Op("reward", p, p_pot, ROLE_PROPOSER))
    else:
      pot, win_total = share, no
      ops.append(Op("slash", p, slash_amount(stakes[p], lam), SLASH_REJECTED_PROPOSAL))
    for v in voters:
      if v in ballots:
        if bool((ballots[v].bits >> i) & 1) == ok:
          earn[v] += pot * stakes[v] // win_total
        else:
          wrong[v] += 1
  for v in voters:
    if v not in ballots:
      if n:
        ops.append(Op("slash", v, slash_amount(stakes[v], lam), SLASH_NO_VOTE))
      continue
    if earn[v]:
      ops.append(Op("reward", v, earn[v], ROLE_VOTER))
    if wrong[v]:
      ops.append(Op("slash", v, slash_amount(stakes[v], lam, wrong[v], n), SLASH_WRONG_VOTE))
  if void:
    outcome = OUTCOME_VOID
  else:
    outcome = OUTCOME_ACCEPTED if accepted_bits else OUTCOME_REJECTED
  new_global = g if outcome == OUTCOME_ACCEPTED else global_hash
  return Settlement(outcome, g, new_global, 0, 0, 0, accepted_bits, tuple(tallies), tuple(ops))
