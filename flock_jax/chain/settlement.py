"""Settlement of one round (PROTOCOL.md v2 step 6), in exact integer arithmetic.

This is the Python model of ``FlockLogic.settle`` (contracts/FlockLogic.vy);
the tests compare it with the contract to the wei and the audit replays it.
All divisions floor; what a floor leaves over (dust), and any pot with nobody
to share it, stays in the pool. ``committee`` is the stake of all V drawn
voters, revealed or not.

- A proposer that did not commit, committed but did not reveal, revealed a
  hash another proposer also revealed (duplicate: both), or whose proposal a
  strict majority of the committee's stake flagged invalid, is slashed and
  its proposal is excluded. The rest are the valid proposals.
- Whole mode: the candidate is the hash named by a strict majority of the
  revealed voting stake (none: void). Accepted iff its approvers hold a
  strict majority of the committee's stake; rejected iff its rejecters do;
  otherwise void. Decided: the winning side shares its pot by stake, the
  losing side and voters naming another hash are slashed. Void: no voter who
  revealed is judged.
- Per-proposal mode: each valid proposal gets ``R_r // n_valid`` and is
  accepted / rejected by a strict committee majority of its bits (else
  undecided: nobody judged on it). A voter wrong on w decided proposals is
  slashed ``lambda * s * w / n_valid``. The global hash chains the accepted
  proposal hashes: ``g = keccak256(g ‖ h_i)`` in proposer order.
- Drawn voters that did not reveal a vote are slashed when any proposal was
  revealed (there was something to vote on).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from eth_utils import keccak

from .types import (
    BPS,
    OUTCOME_ACCEPTED,
    OUTCOME_REJECTED,
    OUTCOME_VOID,
    ROLE_PROPOSER,
    ROLE_VOTER,
    SLASH_DUPLICATE,
    SLASH_INVALID,
    SLASH_NO_PROPOSAL,
    SLASH_NO_REVEAL,
    SLASH_NO_VOTE,
    SLASH_REJECTED_PROPOSAL,
    SLASH_WRONG_CANDIDATE,
    SLASH_WRONG_VOTE,
    VOTE_WHOLE,
    ZERO_HASH,
)

NONE, COMMITTED, REVEALED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Ballot:
  """One revealed vote: `candidate`/`approve` (whole mode) or `bits` (per proposal), and
  `invalid` (bit i flags proposers[i]'s proposal as invalid)."""

  candidate: bytes = ZERO_HASH
  approve: bool = False
  bits: int = 0
  invalid: int = 0


@dataclasses.dataclass(frozen=True)
class Op:
  """One settlement step, applied in order: ``kind`` is "reward" or "slash";
  ``code`` is the role (reward) or the slash reason; ``who`` indexes proposers
  then voters (who < P: proposers[who], else voters[who - P])."""

  kind: str
  who: int
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
  invalid_bits: int
  duplicate_bits: int
  num_valid: int
  tallies: tuple[int, ...]
  ops: tuple[Op, ...]


def round_reward(pool: int, total_rounds: int, round_index: int) -> int:
  """R_r = pool // (T - r), fixed when round r starts."""
  return pool // (total_rounds - round_index)


def slash_amount(stake: int, slash_bps: int, wrong: int = 1, of: int = 1) -> int:
  """lambda * s * wrong / of, floored (wrong/of = 1 except per-proposal voters)."""
  return stake * slash_bps * wrong // (BPS * of)


def excluded(
    p_state: Sequence[int],
    p_hash: Sequence[bytes],
    v_state: Sequence[int],
    v_stake: Sequence[int],
    v_invalid: Sequence[int],
) -> tuple[int, int]:
  """(invalid bits, duplicate bits) over the proposers: the exclusion rule every
  honest voter and the contract apply alike."""
  committee = sum(v_stake)
  dup = inv = 0
  for i, st in enumerate(p_state):
    if st != REVEALED:
      continue
    if any(
        k != i and p_state[k] == REVEALED and p_hash[k] == p_hash[i] for k in range(len(p_state))
    ):
      dup |= 1 << i
      continue
    flagged = sum(
        s for s, vs, f in zip(v_stake, v_state, v_invalid) if vs == REVEALED and f >> i & 1
    )
    if flagged * 2 > committee:
      inv |= 1 << i
  return inv, dup


def settle(
    *,
    vote_mode: int,
    reward: int,
    proposer_share_bps: int,
    slash_bps: int,
    global_hash: bytes,
    p_state: Sequence[int],
    p_hash: Sequence[bytes],
    p_stake: Sequence[int],
    v_state: Sequence[int],
    v_stake: Sequence[int],
    ballots: Sequence[Ballot],
) -> Settlement:
  """Settle a round (FlockLogic.settle). Stakes are those before settlement."""
  lam, rho = slash_bps, proposer_share_bps
  n_p = len(p_state)
  committee = sum(v_stake)
  revealed_stake = sum(s for s, st in zip(v_stake, v_state) if st == REVEALED)
  n_votes = sum(st == REVEALED for st in v_state)
  inv, dup = excluded(p_state, p_hash, v_state, v_stake, [b.invalid for b in ballots])
  valid = [st == REVEALED and not (inv | dup) >> i & 1 for i, st in enumerate(p_state)]
  n_valid = sum(valid)
  valid_total = sum(s for s, ok in zip(p_stake, valid) if ok)
  any_revealed = any(st == REVEALED for st in p_state)
  ops: list[Op] = []

  def slash(who, stake, code, wrong=1, of=1):
    ops.append(Op("slash", who, slash_amount(stake, lam, wrong, of), code))

  def excluded_slash(i) -> bool:
    st = p_state[i]
    code = (
        SLASH_NO_PROPOSAL
        if st == NONE
        else SLASH_NO_REVEAL
        if st == COMMITTED
        else SLASH_DUPLICATE
        if dup >> i & 1
        else SLASH_INVALID
        if inv >> i & 1
        else 0
    )
    if code:
      slash(i, p_stake[i], code)
    return bool(code)

  if vote_mode == VOTE_WHOLE:
    cand = ZERO_HASH
    if n_valid and n_votes:
      for j, st in enumerate(v_state):
        if st != REVEALED:
          continue
        named = sum(
            v_stake[k]
            for k in range(len(v_state))
            if v_state[k] == REVEALED and ballots[k].candidate == ballots[j].candidate
        )
        if named * 2 > revealed_stake:
          cand = ballots[j].candidate
          break
    yes = no = 0
    outcome, g, acc = OUTCOME_VOID, global_hash, 0
    if cand != ZERO_HASH:
      for j, st in enumerate(v_state):
        if st == REVEALED and ballots[j].candidate == cand:
          if ballots[j].approve:
            yes += v_stake[j]
          else:
            no += v_stake[j]
      if yes * 2 > committee:
        outcome, g, acc = OUTCOME_ACCEPTED, cand, 1
      elif no * 2 > committee:
        outcome = OUTCOME_REJECTED
    p_pot = reward * rho // BPS
    for i in range(n_p):
      if excluded_slash(i):
        continue
      if outcome == OUTCOME_ACCEPTED:
        amt = p_pot * p_stake[i] // valid_total
        if amt:
          ops.append(Op("reward", i, amt, ROLE_PROPOSER))
      elif outcome == OUTCOME_REJECTED:
        slash(i, p_stake[i], SLASH_REJECTED_PROPOSAL)
    v_pot, win = (reward, no) if outcome == OUTCOME_REJECTED else (reward - p_pot, yes)
    if any_revealed:
      for j, st in enumerate(v_state):
        s, who = v_stake[j], n_p + j
        if st != REVEALED:
          slash(who, s, SLASH_NO_VOTE)
        elif outcome == OUTCOME_VOID:
          pass
        elif ballots[j].candidate != cand:
          slash(who, s, SLASH_WRONG_CANDIDATE)
        elif ballots[j].approve == (outcome == OUTCOME_ACCEPTED):
          amt = v_pot * s // win
          if amt:
            ops.append(Op("reward", who, amt, ROLE_VOTER))
        else:
          slash(who, s, SLASH_WRONG_VOTE)
    return Settlement(outcome, cand, g, yes - no, yes, no, acc, inv, dup, n_valid, (), tuple(ops))

  share = reward // n_valid if n_valid else 0
  pp_pot = share * rho // BPS
  earn = [0] * len(v_state)
  wrong = [0] * len(v_state)
  tallies = []
  acc = rej = 0
  g = global_hash
  for i in range(n_p):
    if excluded_slash(i):
      tallies.append(0)
      continue
    y = sum(s for s, st, b in zip(v_stake, v_state, ballots) if st == REVEALED and b.bits >> i & 1)
    n = sum(
        s for s, st, b in zip(v_stake, v_state, ballots) if st == REVEALED and not b.bits >> i & 1
    )
    tallies.append(y - n)
    ok, bad = y * 2 > committee, n * 2 > committee
    if not ok and not bad:
      continue
    if ok:
      acc |= 1 << i
      g = keccak(g + p_hash[i])
      pot, win = share - pp_pot, y
      if pp_pot:
        ops.append(Op("reward", i, pp_pot, ROLE_PROPOSER))
    else:
      rej |= 1 << i
      pot, win = share, n
      slash(i, p_stake[i], SLASH_REJECTED_PROPOSAL)
    for j, st in enumerate(v_state):
      if st == REVEALED:
        if bool(ballots[j].bits >> i & 1) == ok:
          earn[j] += pot * v_stake[j] // win
        else:
          wrong[j] += 1
  if any_revealed:
    for j, st in enumerate(v_state):
      who = n_p + j
      if st != REVEALED:
        slash(who, v_stake[j], SLASH_NO_VOTE)
        continue
      if earn[j]:
        ops.append(Op("reward", who, earn[j], ROLE_VOTER))
      if wrong[j]:
        slash(who, v_stake[j], SLASH_WRONG_VOTE, wrong[j], n_valid)
  outcome = OUTCOME_ACCEPTED if acc else OUTCOME_REJECTED if rej else OUTCOME_VOID
  if not acc and not rej:
    g = global_hash
  new_g = g if outcome == OUTCOME_ACCEPTED else global_hash
  return Settlement(outcome, g, new_g, 0, 0, 0, acc, inv, dup, n_valid, tuple(tallies), tuple(ops))
