"""Plain data exchanged with the chain: task parameters, roles, outcomes, balances.

Hashes are 32-byte `bytes`. Participants are named by their index
``0..N-1`` (see `FlockChain.addresses` for the index -> account mapping) and
by address where both are useful.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

# Vote modes, selection modes, outcomes, roles and slash reasons: the
# contract's constants (contracts/FlockTask.vy).
VOTE_WHOLE = 0
VOTE_PER_PROPOSAL = 1
SELECT_UNIFORM = 0
SELECT_STAKE = 1

OUTCOME_ACCEPTED = 1
OUTCOME_REJECTED = 2
OUTCOME_VOID = 3
OUTCOME_NAMES = {OUTCOME_ACCEPTED: "accepted", OUTCOME_REJECTED: "rejected", OUTCOME_VOID: "void"}

ROLE_PROPOSER = 1
ROLE_VOTER = 2

SLASH_NO_PROPOSAL = 1
SLASH_REJECTED_PROPOSAL = 2
SLASH_NO_VOTE = 3
SLASH_WRONG_VOTE = 4
SLASH_WRONG_CANDIDATE = 5
SLASH_NO_REVEAL = 6
SLASH_DUPLICATE = 7
SLASH_INVALID = 8
SLASH_NAMES = {
    SLASH_NO_PROPOSAL: "no proposal",
    SLASH_REJECTED_PROPOSAL: "rejected proposal",
    SLASH_NO_VOTE: "no vote",
    SLASH_WRONG_VOTE: "wrong vote",
    SLASH_WRONG_CANDIDATE: "wrong candidate hash",
    SLASH_NO_REVEAL: "committed proposal not revealed",
    SLASH_DUPLICATE: "duplicate proposal hash",
    SLASH_INVALID: "proposal flagged invalid",
}

# Phases of an open round (FlockTask.current_phase).
PHASE_NONE, PHASE_DRAW, PHASE_COMMIT, PHASE_REVEAL, PHASE_VOTE, PHASE_VOTE_REVEAL, PHASE_DONE = (
    range(7)
)
PHASE_NAMES = ("none", "draw", "commit", "reveal", "vote commit", "vote reveal", "done")

# Bounds FlockTask enforces (FlockLogic.check_params, FlockTask.MAX_*).
MAX_PARTICIPANTS = 1024
MAX_PROPOSERS = 64
MAX_VOTERS = 64
MAX_ROUNDS = 100_000
MAX_WINDOW = 100_000
MAX_HOLDINGS = 2**128

BPS = 10_000
ZERO_HASH = b"\x00" * 32
WEI = 10**18


@dataclasses.dataclass(frozen=True)
class TaskParams:
  """Parameters of one task contract (PROTOCOL.md "Task").

  Token amounts are in the token's smallest unit (18 decimals).
  `slash_bps` is lambda and `proposer_share_bps` is rho, in basis points.
  `vote_window` is the length in blocks of each of the four phases
  (proposal commit, proposal reveal, vote commit, vote reveal); a phase in
  which everyone who could act has acted ends early.
  """

  total_rounds: int = 10
  num_proposers: int = 4
  num_voters: int = 4
  min_stake: int = 10 * WEI
  slash_bps: int = 1_000
  proposer_share_bps: int = 5_000
  reward_pool: int = 1_000 * WEI
  vote_window: int = 100
  vote_mode: int = VOTE_WHOLE
  selection_mode: int = SELECT_UNIFORM
  genesis_hash: bytes = ZERO_HASH
  genesis_seed: bytes = b"flock_jax genesis seed".ljust(32, b"\x00")

  @classmethod
  def from_mapping(cls, cfg: Mapping[str, Any]) -> "TaskParams":
    """Build from a dict or ConfigDict; unknown keys are ignored, hashes may be hex."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: cfg[k] for k in fields if k in cfg and cfg[k] is not None}
    for k in ("genesis_hash", "genesis_seed"):
      if isinstance(kw.get(k), str):
        kw[k] = bytes.fromhex(kw[k].removeprefix("0x"))
    if isinstance(kw.get("vote_mode"), str):
      kw["vote_mode"] = {"whole": VOTE_WHOLE, "per_proposal": VOTE_PER_PROPOSAL}[kw["vote_mode"]]
    if isinstance(kw.get("selection_mode"), str):
      kw["selection_mode"] = {"uniform": SELECT_UNIFORM, "stake": SELECT_STAKE}[
          kw["selection_mode"]
      ]
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Roles:
  """The roles drawn on chain for one round.

  `proposers` are listed in ascending address order (bit i of a
  per-proposal vote names proposers[i]; candidates aggregate in this
  order); `voters` in draw order.
  """

  round: int
  seed: bytes
  global_hash: bytes
  reward: int
  deadline: int
  proposers: tuple[int, ...]
  voters: tuple[int, ...]
  proposer_addresses: tuple[str, ...]
  voter_addresses: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What `finalize` decided for one round, and what it paid and slashed.

  `proposal_hashes[i]` is the hash proposers[i] revealed (None if it did
  not reveal one); `proposal_accepted[i]` whether it entered the new global
  model; `invalid[i]` / `duplicate[i]` whether it was excluded as flagged
  invalid by a strict majority of the committee's stake / as a hash another
  proposer also revealed. `rewards`/`slashes` map participant index -> amount.
  """

  round: int
  outcome: int
  candidate_hash: bytes
  global_hash: bytes
  tally: int
  approve_stake: int
  reject_stake: int
  num_proposals: int
  num_votes: int
  proposers: tuple[int, ...]
  proposal_hashes: tuple[bytes | None, ...]
  proposal_accepted: tuple[bool, ...]
  proposal_tallies: tuple[int, ...]
  rewards: dict[int, int]
  slashes: dict[int, int]
  ejected: tuple[int, ...]
  block_number: int
  block_hash: bytes
  invalid: tuple[bool, ...] = ()
  duplicate: tuple[bool, ...] = ()

  @property
  def accepted(self) -> bool:
    """True when the candidate (or, per proposal, any proposal) was accepted."""
    return self.outcome == OUTCOME_ACCEPTED

  @property
  def void(self) -> bool:
    """True when there was nothing to judge (no proposal or no vote)."""
    return self.outcome == OUTCOME_VOID


@dataclasses.dataclass(frozen=True)
class Balances:
  """Token accounting of a task: per participant (by index) and in total."""

  stakes: tuple[int, ...]
  claimable: tuple[int, ...]
  ejected: tuple[bool, ...]
  pool: int
  total_staked: int
  total_claimable: int
  token_balance: int

  @property
  def conserved(self) -> bool:
    """Token conservation: balance == pool + sum(stakes) + sum(claimable)."""
    return self.token_balance == self.pool + self.total_staked + self.total_claimable


def outcome_from_events(
    events: Sequence[dict],
    proposers: Sequence[str],
    proposal_hashes: Sequence[bytes | None],
    index_of: Callable[[str, int], int],
    vote_mode: int,
    block_number: int,
    block_hash: bytes,
) -> Outcome:
  """The `Outcome` of a round from its finalize events (normalised, see logs.py).

  Shared by the contract client and the in-process model, so both report a
  round identically. `proposers` in ascending address order; `proposal_hashes[i]`
  is None where proposers[i] did not propose.
  """

  def h(x):
    return x if isinstance(x, bytes) else bytes.fromhex(str(x).removeprefix("0x"))

  fin = next(e["args"] for e in events if e["event"] == "Finalized")
  out = fin.get("invalid_bits", 0) | fin.get("duplicate_bits", 0)
  if vote_mode == VOTE_PER_PROPOSAL:
    acc = tuple(bool((fin["accepted_bits"] >> k) & 1) for k in range(len(proposers)))
    tallies = tuple(fin["tallies"])
  else:
    ok = fin["outcome"] == OUTCOME_ACCEPTED
    acc = tuple(ok and ph is not None and not out >> k & 1 for k, ph in enumerate(proposal_hashes))
    tallies = tuple(
        fin["tally"] if ph is not None and not out >> k & 1 else 0
        for k, ph in enumerate(proposal_hashes)
    )
  rewards: dict[int, int] = {}
  slashes: dict[int, int] = {}
  for e in events:
    if e["event"] in ("Rewarded", "Slashed"):
      book = rewards if e["event"] == "Rewarded" else slashes
      i = index_of(e["args"]["participant"], -1)
      book[i] = book.get(i, 0) + e["args"]["amount"]
  return Outcome(
      round=fin["round"],
      outcome=fin["outcome"],
      candidate_hash=h(fin["candidate"]),
      global_hash=h(fin["global_hash"]),
      tally=fin["tally"],
      approve_stake=fin["approve_stake"],
      reject_stake=fin["reject_stake"],
      num_proposals=fin["num_proposals"],
      num_votes=fin["num_votes"],
      proposers=tuple(index_of(p, -1) for p in proposers),
      proposal_hashes=tuple(proposal_hashes),
      proposal_accepted=acc,
      proposal_tallies=tallies,
      rewards=rewards,
      slashes=slashes,
      ejected=tuple(
          index_of(e["args"]["participant"], -1) for e in events if e["event"] == "Ejected"
      ),
      block_number=block_number,
      block_hash=block_hash,
      invalid=tuple(bool(fin.get("invalid_bits", 0) >> k & 1) for k in range(len(proposers))),
      duplicate=tuple(bool(fin.get("duplicate_bits", 0) >> k & 1) for k in range(len(proposers))),
  )
