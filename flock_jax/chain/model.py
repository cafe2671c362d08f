"""A pure-Python model of one task contract: same state, rules, messages and events.

`TaskModel` mirrors contracts/FlockTask.vy action by action. Each action
either raises `ModelRevert` with the contract's revert message, or updates
the state and returns the events the contract would emit (as normalised
``{"event", "args"}`` records, see `flock_jax.chain.logs`). The stateful
test drives the contract and this model side by side; the audit replays a
log through it and compares every event.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_utils import to_checksum_address

from . import draw, settlement
from .settlement import Ballot
from .types import VOTE_PER_PROPOSAL, VOTE_WHOLE, ZERO_HASH

MAX_PARTICIPANTS = 1024


class ModelRevert(Exception):
  """The action would revert on chain; the message is the contract's."""


def _hex(b: bytes) -> str:
  return "0x" + b.hex()


def _ev(name: str, **args: Any) -> dict:
  return {"event": name, "args": args}


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ModelRevert(message)


@dataclasses.dataclass
class TaskModel:
  """State of one task, built from its `TaskCreated` arguments."""

  token: str
  owner: str
  total_rounds: int
  num_proposers: int
  num_voters: int
  min_stake: int
  slash_bps: int
  proposer_share_bps: int
  vote_window: int
  vote_mode: int
  selection_mode: int
  genesis_hash: bytes
  genesis_seed: bytes

  def __post_init__(self):
    self.pool = 0
    self.participants: list[str] = []
    self.stake: dict[str, int] = {}
    self.claimable: dict[str, int] = {}
    self.ejected: set[str] = set()
    self.next_round = 0
    self.round_open = False
    self.seed = self.genesis_seed
    self.global_hash = self.genesis_hash
    self.round_reward = 0
    self.deadline = 0
    self.proposers: list[str] = []
    self.voters: list[str] = []
    self.proposals: dict[str, bytes] = {}
    self.ballots: dict[str, Ballot] = {}
    self.vote_order: list[tuple[bytes, int]] = []

  @classmethod
  def from_created(cls, args: dict) -> "TaskModel":
    """Build from a `TaskCreated` event's (normalised) arguments."""
    kw = dict(args)
    kw["genesis_hash"] = bytes.fromhex(kw["genesis_hash"][2:])
    kw["genesis_seed"] = bytes.fromhex(kw["genesis_seed"][2:])
    return cls(**kw)

  # ------------------------------------------------------------ views
  @property
  def total_staked(self) -> int:
    return sum(self.stake.values())

  @property
  def total_claimable(self) -> int:
    return sum(self.claimable.values())

  @property
  def current_round(self) -> int:
    return self.next_round - 1

  def active(self) -> list[tuple[str, int]]:
    """(address, stake) of the participants that can be drawn, registration order."""
    return [
        (p, self.stake[p])
        for p in self.participants
        if self.stake[p] >= self.min_stake and p not in self.ejected
    ]

  def _drawn(self, who: str) -> bool:
    return self.round_open and (who in self.proposers or who in self.voters)

  # ------------------------------------------------------------ money
  def fund(self, sender: str, amount: int) -> list[dict]:
    _require(amount > 0, "fund: amount is zero")
    self.pool += amount
    return [_ev("Funded", sender=sender, amount=amount, pool=self.pool)]

  def stake_tokens(self, who: str, amount: int) -> list[dict]:
    who = to_checksum_address(who)
    _require(amount > 0, "stake: amount is zero")
    _require(who not in self.ejected, "stake: participant is ejected; withdraw the remainder")
    _require(
        not self._drawn(who),
        f"stake: drawn for the open round {self.current_round}; wait until it is finalized",
    )
    new = self.stake.get(who, 0) + amount
    _require(
        new >= self.min_stake, f"stake: stake {new} is below the minimum stake {self.min_stake}"
    )
    if who not in self.stake:
      _require(len(self.participants) < MAX_PARTICIPANTS, "stake: participant limit reached")
      self.participants.append(who)
      self.claimable.setdefault(who, 0)
    self.stake[who] = new
    return [
        _ev("Staked", participant=who, index=self.participants.index(who), amount=amount, stake=new)
    ]

  def unstake(self, who: str, amount: int) -> list[dict]:
    _require(who in self.stake, "unstake: not a participant")
    _require(who not in self.ejected, "unstake: participant is ejected; call withdraw")
    _require(amount > 0, "unstake: amount is zero")
    have = self.stake[who]
    _require(amount <= have, f"unstake: amount {amount} exceeds stake {have}")
    _require(
        not self._drawn(who),
        f"unstake: drawn for the open round {self.current_round}; wait until it is finalized",
    )
    left = have - amount
    _require(
        left == 0 or left >= self.min_stake,
        f"unstake: remaining stake {left} would be below the minimum {self.min_stake}; unstake all or less",
    )
    self.stake[who] = left
    return [_ev("Unstaked", participant=who, amount=amount, stake=left)]

  def withdraw(self, who: str) -> list[dict]:
    _require(who in self.ejected, "withdraw: participant is not ejected; use unstake")
    amount = self.stake.get(who, 0)
    _require(amount > 0, "withdraw: nothing left to withdraw")
    self.stake[who] = 0
    return [_ev("Withdrawn", participant=who, amount=amount)]

  def claim(self, who: str) -> list[dict]:
    amount = self.claimable.get(who, 0)
    _require(amount > 0, "claim: nothing to claim")
    self.claimable[who] = 0
    return [_ev("Claimed", participant=who, amount=amount)]

  def drain_pool(self, sender: str, receiver: str) -> list[dict]:
    _require(sender == self.owner, "drain_pool: only the owner may drain the pool")
    _require(
        self.next_round == self.total_rounds and not self.round_open, "drain_pool: rounds remain"
    )
    amount, self.pool = self.pool, 0
    return [_ev("PoolDrained", receiver=receiver, amount=amount)]

  # ------------------------------------------------------------ rounds
  def start_round(self, block: int) -> list[dict]:
    """Open round `next_round` in block number `block`."""
    r = self.next_round
    _require(not self.round_open, f"start_round: round {r - 1} is still open; finalize it first")
    _require(r < self.total_rounds, f"start_round: all {self.total_rounds} rounds are done")
    seed = draw.round_seed(self.seed, r, self.global_hash)
    try:
      props, vots = draw.draw_roles(
          seed,
          self.active(),
          self.num_proposers,
          self.num_voters,
          stake_weighted=self.selection_mode == 1,
      )
    except ValueError as e:
      raise ModelRevert(f"start_round: {e}") from None
    self.proposers, self.voters = props, vots
    self.seed = seed
    self.next_round = r + 1
    self.round_open = True
    self.round_reward = settlement.round_reward(self.pool, self.total_rounds, r)
    self.deadline = block + self.vote_window
    self.proposals, self.ballots, self.vote_order = {}, {}, []
    return [
        _ev(
            "RoundStarted",
            round=r,
            seed=_hex(seed),
            global_hash=_hex(self.global_hash),
            reward=self.round_reward,
            deadline=self.deadline,
        ),
        _ev("RolesDrawn", round=r, proposers=list(props), voters=list(vots)),
    ]

  def _open(self, what: str) -> int:
    _require(self.round_open, f"{what}: no round is open")
    return self.current_round

  def propose(self, who: str, proposal_hash: bytes, block: int) -> list[dict]:
    r = self._open("propose")
    _require(who in self.proposers, f"propose: not a drawn proposer for round {r}")
    _require(who not in self.proposals, f"propose: already proposed in round {r}")
    _require(
        block <= self.deadline, f"propose: the window of round {r} closed at block {self.deadline}"
    )
    _require(not self.ballots, f"propose: voting has started in round {r}")
    _require(proposal_hash != ZERO_HASH, "propose: proposal hash is zero")
    self.proposals[who] = proposal_hash
    return [_ev("Proposed", round=r, proposer=who, proposal_hash=_hex(proposal_hash))]

  def _check_voter(self, what: str, who: str, block: int) -> int:
    r = self._open(what)
    _require(who in self.voters, f"{what}: not a drawn voter for round {r}")
    _require(who not in self.ballots, f"{what}: already voted in round {r}")
    _require(
        block <= self.deadline, f"{what}: the window of round {r} closed at block {self.deadline}"
    )
    _require(bool(self.proposals), f"{what}: no proposals yet in round {r}")
    return r

  def vote(self, who: str, candidate: bytes, approve: bool, block: int) -> list[dict]:
    _require(
        self.vote_mode == VOTE_WHOLE, "vote: this task uses per-proposal voting; call vote_bits"
    )
    r = self._check_voter("vote", who, block)
    _require(candidate != ZERO_HASH, "vote: candidate hash is zero")
    w = self.stake[who]
    self.ballots[who] = Ballot(candidate=candidate, approve=bool(approve))
    self.vote_order.append((candidate, w))
    return [
        _ev(
            "Voted",
            round=r,
            voter=who,
            candidate=_hex(candidate),
            approve=bool(approve),
            bits=0,
            weight=w,
        )
    ]

  def vote_bits(self, who: str, bits: int, block: int) -> list[dict]:
    _require(
        self.vote_mode == VOTE_PER_PROPOSAL,
        "vote_bits: this task uses whole-candidate voting; call vote",
    )
    r = self._check_voter("vote_bits", who, block)
    _require(
        bits >> len(self.proposers) == 0,
        f"vote_bits: a bit is set beyond the {len(self.proposers)} proposers",
    )
    w = self.stake[who]
    self.ballots[who] = Ballot(bits=bits)
    return [
        _ev(
            "Voted",
            round=r,
            voter=who,
            candidate=_hex(ZERO_HASH),
            approve=False,
            bits=bits,
            weight=w,
        )
    ]

  def finalize(self, block: int) -> list[dict]:
    r = self._open("finalize")
    n_votes = len(self.ballots)
    _require(
        n_votes == len(self.voters) or block > self.deadline,
        f"finalize: round {r} has {n_votes} of {len(self.voters)} votes and its window closes at block {self.deadline}",
    )
    self.round_open = False
    st = settlement.settle(
        vote_mode=self.vote_mode,
        reward=self.round_reward,
        proposers=self.proposers,
        proposals=self.proposals,
        voters=self.voters,
        ballots=self.ballots,
        stakes=dict(self.stake),
        leader=settlement.leader_of(self.vote_order),
        global_hash=self.global_hash,
        proposer_share_bps=self.proposer_share_bps,
        slash_bps=self.slash_bps,
    )
    events = []
    for op in st.ops:
      if op.kind == "reward":
        self.claimable[op.participant] += op.amount
        self.pool -= op.amount
        events.append(
            _ev("Rewarded", round=r, participant=op.participant, amount=op.amount, role=op.code)
        )
      else:
        left = self.stake[op.participant] - op.amount
        self.stake[op.participant] = left
        self.pool += op.amount
        events.append(
            _ev(
                "Slashed",
                round=r,
                participant=op.participant,
                amount=op.amount,
                stake=left,
                reason=op.code,
            )
        )
        if left < self.min_stake and op.participant not in self.ejected:
          self.ejected.add(op.participant)
          events.append(_ev("Ejected", round=r, participant=op.participant, stake=left))
    self.global_hash = st.global_hash
    events.append(
        _ev(
            "Finalized",
            round=r,
            outcome=st.outcome,
            candidate=_hex(st.candidate),
            global_hash=_hex(self.global_hash),
            tally=st.tally,
            approve_stake=st.approve_stake,
            reject_stake=st.reject_stake,
            num_proposals=len(self.proposals),
            num_votes=n_votes,
            accepted_bits=st.accepted_bits,
            tallies=list(st.tallies),
        )
    )
    return events


__all__ = ["ModelRevert", "TaskModel"]
