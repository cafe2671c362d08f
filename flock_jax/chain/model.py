"""A pure-Python model of one task contract (protocol v2): same state, rules, messages, events.

`TaskModel` mirrors contracts/FlockTask.vy (with FlockLogic's draw and
settlement) action by action. Each action either raises `ModelRevert` with
the contract's revert message, or updates the state and returns the events
the contract would emit (as normalised ``{"event", "args"}`` records, see
`flock_jax.chain.logs`). Every action takes the number of the block it runs
in (last); `draw_roles` also takes the hash of the round's seed block. The stateful
test and the fuzzer drive the contract and this model side by side; the
audit replays a log through it and compares every event.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_utils import keccak, to_checksum_address

from . import draw, settlement
from .settlement import COMMITTED, NONE, REVEALED, Ballot
from .types import (
    MAX_HOLDINGS,
    MAX_PARTICIPANTS,
    PHASE_COMMIT,
    PHASE_DONE,
    PHASE_DRAW,
    PHASE_REVEAL,
    PHASE_VOTE,
    PHASE_VOTE_REVEAL,
    VOTE_PER_PROPOSAL,
    ZERO_HASH,
)


class ModelRevert(Exception):
  """The action would revert on chain; the message is the contract's."""


def _hex(b: bytes) -> str:
  return "0x" + b.hex()


def _ev(name: str, **args: Any) -> dict:
  return {"event": name, "args": args}


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ModelRevert(message)


def _addr(a: str) -> bytes:
  return bytes.fromhex(a[2:])


def proposal_commitment(sender: str, round_index: int, proposal_hash: bytes, salt: bytes) -> bytes:
  """keccak256(sender ‖ uint256(round) ‖ proposal_hash ‖ salt): what `commit_proposal` takes."""
  return keccak(_addr(sender) + round_index.to_bytes(32, "big") + proposal_hash + salt)


def vote_commitment(
    sender: str,
    round_index: int,
    candidate: bytes,
    approve: bool,
    bits: int,
    invalid: int,
    salt: bytes,
) -> bytes:
  """keccak256(sender ‖ round ‖ candidate ‖ approve ‖ bits ‖ invalid ‖ salt), each a 32-byte word
  (the address 20 bytes): what `commit_vote` takes."""
  words = [round_index, int(bool(approve)), bits, invalid]
  return keccak(
      _addr(sender)
      + words[0].to_bytes(32, "big")
      + candidate
      + b"".join(w.to_bytes(32, "big") for w in words[1:])
      + salt
  )


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
  logic: str = "0x" + "00" * 20

  def __post_init__(self):
    self.pool = 0
    self.participants: list[str] = []  # active accounts, contract list order
    self.stake: dict[str, int] = {}
    self.claimable: dict[str, int] = {}
    self.ejected: set[str] = set()
    self.closed = False
    self.next_round = 0
    self.round_open = False
    self.phase = 0
    self.phase_end = 0
    self.seed_block = 0
    self.seed = self.genesis_seed
    self.global_hash = self.genesis_hash
    self.round_reward = 0
    self.proposers: list[str] = []
    self.voters: list[str] = []
    self.commitments: dict[str, bytes] = {}  # this round's commitments (proposers and voters)
    self.proposals: dict[str, bytes] = {}  # revealed proposal hashes
    self.ballots: dict[str, Ballot] = {}  # revealed votes

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
    """(address, stake) of the participants that can be drawn, in list order."""
    return [(p, self.stake[p]) for p in self.participants]

  def phase_at(self, block: int) -> tuple[int, int]:
    """(phase, last block of it) at `block` (FlockTask._phase); (0, 0) with no round open."""
    if not self.round_open:
      return 0, 0
    ph, end, w = self.phase, self.phase_end, self.vote_window
    n_commit = sum(1 for p in self.proposers if p in self.commitments)
    n_vote_commit = sum(1 for v in self.voters if v in self.commitments)
    for _ in range(4):
      if ph < PHASE_COMMIT or ph == PHASE_DONE or block <= end:
        break
      if (
          (ph == PHASE_COMMIT and n_commit == 0)
          or (ph == PHASE_REVEAL and not self.proposals)
          or (ph == PHASE_VOTE and n_vote_commit == 0)
      ):
        ph = PHASE_DONE
      else:
        ph += 1
      end += w
    return ph, end

  def _check_free(self, who: str, what: str) -> None:
    if self.round_open:
      r = self.current_round
      _require(
          self.phase != PHASE_DRAW,
          f"{what}: the roles of round {r} are being drawn; wait for draw_roles",
      )
      _require(
          who not in self.proposers and who not in self.voters,
          f"{what}: drawn for the open round {r}; wait until it is finalized",
      )

  def _check_room(self, amount: int) -> None:
    _require(
        self.pool + self.total_staked + self.total_claimable + amount <= MAX_HOLDINGS,
        "the task would hold over 2**128 token units",
    )

  def _unlist(self, who: str) -> None:
    if who in self.participants:
      k = self.participants.index(who)
      last = self.participants.pop()
      if k < len(self.participants):
        self.participants[k] = last

  # ------------------------------------------------------------ money
  def fund(self, sender: str, amount: int, block: int = 0) -> list[dict]:
    _require(amount > 0, "fund: amount is zero")
    _require(not self.closed, "fund: the task is closed")
    self._check_room(amount)
    self.pool += amount
    return [_ev("Funded", sender=sender, amount=amount, pool=self.pool)]

  def stake_tokens(self, who: str, amount: int, block: int = 0) -> list[dict]:
    who = to_checksum_address(who)
    _require(amount > 0, "stake: amount is zero")
    _require(not self.closed, "stake: the task is closed")
    _require(who not in self.ejected, "stake: participant is ejected; withdraw the remainder")
    self._check_free(who, "stake")
    self._check_room(amount)
    new = self.stake.get(who, 0) + amount
    _require(
        new >= self.min_stake, f"stake: stake {new} is below the minimum stake {self.min_stake}"
    )
    if who not in self.participants:
      _require(
          len(self.participants) < MAX_PARTICIPANTS, "stake: participant limit of 1024 reached"
      )
      self.participants.append(who)
    self.claimable.setdefault(who, 0)
    self.stake[who] = new
    return [
        _ev("Staked", participant=who, index=self.participants.index(who), amount=amount, stake=new)
    ]

  def unstake(self, who: str, amount: int, block: int = 0) -> list[dict]:
    _require(who not in self.ejected, "unstake: participant is ejected; call withdraw")
    have = self.stake.get(who, 0)
    _require(have > 0, "unstake: not a participant")
    _require(amount > 0, "unstake: amount is zero")
    _require(amount <= have, f"unstake: amount {amount} exceeds stake {have}")
    self._check_free(who, "unstake")
    left = have - amount
    _require(
        left == 0 or left >= self.min_stake,
        f"unstake: remaining stake {left} would be below the minimum {self.min_stake}; unstake all or less",
    )
    self.stake[who] = left
    if left == 0:
      self._unlist(who)
    return [_ev("Unstaked", participant=who, amount=amount, stake=left)]

  def withdraw(self, who: str, block: int = 0) -> list[dict]:
    _require(who in self.ejected, "withdraw: participant is not ejected; use unstake")
    amount = self.stake.get(who, 0)
    _require(amount > 0, "withdraw: nothing left to withdraw")
    self.stake[who] = 0
    return [_ev("Withdrawn", participant=who, amount=amount)]

  def claim(self, who: str, block: int = 0) -> list[dict]:
    amount = self.claimable.get(who, 0)
    _require(amount > 0, "claim: nothing to claim")
    self.claimable[who] = 0
    return [_ev("Claimed", participant=who, amount=amount)]

  def _close(self, what: str) -> list[dict]:
    if self.closed:
      return []
    _require(not self.round_open, f"{what}: round {self.current_round} is open; finalize it first")
    need = self.num_proposers + self.num_voters
    _require(
        self.next_round == self.total_rounds or len(self.participants) < need,
        f"{what}: rounds remain and enough participants are active",
    )
    self.closed = True
    return [_ev("TaskClosed", pool=self.pool, active=len(self.participants))]

  def close(self, sender: str = "", block: int = 0) -> list[dict]:
    _require(not self.closed, "close: the task is already closed")
    return self._close("close")

  def drain_pool(self, sender: str, receiver: str, block: int = 0) -> list[dict]:
    _require(sender == self.owner, "drain_pool: only the owner may drain the pool")
    events = self._close("drain_pool")
    amount, self.pool = self.pool, 0
    return events + [_ev("PoolDrained", receiver=receiver, amount=amount)]

  # ------------------------------------------------------------ rounds
  def start_round(self, block: int) -> list[dict]:
    """Open round `next_round` (or re-arm a stale draw) in block number `block`."""
    r = self.next_round
    _require(not self.closed, "start_round: the task is closed")
    if self.round_open:
      _require(
          self.phase == PHASE_DRAW and block > self.seed_block + 256,
          f"start_round: round {r - 1} is still open; finalize it first",
      )
      self.seed_block, self.phase_end = block, block + 256
      return [
          _ev(
              "RoundStarted",
              round=r - 1,
              global_hash=_hex(self.global_hash),
              reward=self.round_reward,
              seed_block=block,
          )
      ]
    _require(r < self.total_rounds, f"start_round: all {self.total_rounds} rounds are done")
    need = self.num_proposers + self.num_voters
    _require(
        len(self.participants) >= need,
        f"start_round: {len(self.participants)} active participants, need P + V = {need}; call close",
    )
    self.next_round = r + 1
    self.round_open = True
    self.phase = PHASE_DRAW
    self.seed_block, self.phase_end = block, block + 256
    self.round_reward = settlement.round_reward(self.pool, self.total_rounds, r)
    self.proposers, self.voters = [], []
    self.commitments, self.proposals, self.ballots = {}, {}, {}
    return [
        _ev(
            "RoundStarted",
            round=r,
            global_hash=_hex(self.global_hash),
            reward=self.round_reward,
            seed_block=block,
        )
    ]

  def draw_roles(self, seed_block_hash: bytes, block: int) -> list[dict]:
    """Draw the open round's roles in block `block`; `seed_block_hash` is the hash of
    block `seed_block` (the chain's `blockhash`)."""
    _require(
        self.round_open and self.phase == PHASE_DRAW,
        "draw_roles: no draw is pending; call start_round",
    )
    r = self.current_round
    _require(block > self.seed_block, "draw_roles: wait one block after start_round")
    _require(
        block <= self.seed_block + 256,
        "draw_roles: the seed block is over 256 blocks old; call start_round to re-arm",
    )
    seed = draw.round_seed(self.seed, r, seed_block_hash)
    props, vots = draw.draw_roles(
        seed,
        self.active(),
        self.num_proposers,
        self.num_voters,
        stake_weighted=self.selection_mode == 1,
    )
    self.proposers, self.voters = props, vots
    self.seed = seed
    self.phase, self.phase_end = PHASE_COMMIT, block + self.vote_window
    return [
        _ev(
            "RolesDrawn",
            round=r,
            seed=_hex(seed),
            seed_block_hash=_hex(seed_block_hash),
            proposers=list(props),
            voters=list(vots),
            commit_end=self.phase_end,
        )
    ]

  def _enter(self, what: str, want: int, who: str, block: int, role: str) -> int:
    _require(self.round_open, f"{what}: no round is open")
    r = self.current_round
    ph, end = self.phase_at(block)  # stored only if the call succeeds (a revert stores nothing)
    drawn = self.proposers if role == "proposer" else self.voters
    _require(who in drawn, f"{what}: not a drawn {role} for round {r}")
    _require(ph == want, f"{what}: round {r} is in phase {ph}, this call needs phase {want}")
    self.phase, self.phase_end = ph, end
    return r

  def commit_proposal(self, who: str, commitment: bytes, block: int) -> list[dict]:
    r = self._enter("commit_proposal", PHASE_COMMIT, who, block, "proposer")
    _require(who not in self.commitments, f"commit_proposal: already committed in round {r}")
    _require(commitment != ZERO_HASH, "commit_proposal: commitment is zero")
    self.commitments[who] = commitment
    if sum(p in self.commitments for p in self.proposers) == self.num_proposers:
      self.phase_end = block
    return [_ev("ProposalCommitted", round=r, proposer=who, commitment=_hex(commitment))]

  def reveal_proposal(self, who: str, proposal_hash: bytes, salt: bytes, block: int) -> list[dict]:
    r = self._enter("reveal_proposal", PHASE_REVEAL, who, block, "proposer")
    _require(who in self.commitments, f"reveal_proposal: nothing committed in round {r}")
    _require(who not in self.proposals, f"reveal_proposal: already revealed in round {r}")
    _require(proposal_hash != ZERO_HASH, "reveal_proposal: proposal hash is zero")
    _require(
        proposal_commitment(who, r, proposal_hash, salt) == self.commitments[who],
        "reveal_proposal: hash and salt do not match the commitment",
    )
    self.proposals[who] = proposal_hash
    if len(self.proposals) == sum(p in self.commitments for p in self.proposers):
      self.phase_end = block
    return [
        _ev("Proposed", round=r, proposer=who, proposal_hash=_hex(proposal_hash), salt=_hex(salt))
    ]

  def commit_vote(self, who: str, commitment: bytes, block: int) -> list[dict]:
    r = self._enter("commit_vote", PHASE_VOTE, who, block, "voter")
    _require(who not in self.commitments, f"commit_vote: already committed in round {r}")
    _require(commitment != ZERO_HASH, "commit_vote: commitment is zero")
    self.commitments[who] = commitment
    if sum(v in self.commitments for v in self.voters) == len(self.voters):
      self.phase_end = block
    return [_ev("VoteCommitted", round=r, voter=who, commitment=_hex(commitment))]

  def reveal_vote(
      self,
      who: str,
      candidate: bytes,
      approve: bool,
      bits: int,
      invalid: int,
      salt: bytes,
      block: int,
  ) -> list[dict]:
    r = self._enter("reveal_vote", PHASE_VOTE_REVEAL, who, block, "voter")
    _require(who in self.commitments, f"reveal_vote: nothing committed in round {r}")
    _require(who not in self.ballots, f"reveal_vote: already revealed in round {r}")
    n = len(self.proposers)
    _require(
        bits >> n == 0 and invalid >> n == 0,
        f"reveal_vote: a bit is set beyond the {n} proposers",
    )
    if self.vote_mode == VOTE_PER_PROPOSAL:
      _require(
          candidate == ZERO_HASH and not approve,
          "reveal_vote: per-proposal mode takes bits, not a candidate",
      )
    else:
      _require(
          candidate != ZERO_HASH and bits == 0,
          "reveal_vote: whole mode takes a nonzero candidate and no bits",
      )
    _require(
        vote_commitment(who, r, candidate, approve, bits, invalid, salt) == self.commitments[who],
        "reveal_vote: ballot and salt do not match the commitment",
    )
    self.ballots[who] = Ballot(candidate, bool(approve), bits, invalid)
    if len(self.ballots) == sum(v in self.commitments for v in self.voters):
      self.phase_end = block
    return [
        _ev(
            "Voted",
            round=r,
            voter=who,
            candidate=_hex(candidate),
            approve=bool(approve),
            bits=bits,
            invalid=invalid,
            salt=_hex(salt),
            weight=self.stake[who],
        )
    ]

  def _state(self, who: str) -> int:
    if who in self.proposals or who in self.ballots:
      return REVEALED
    return COMMITTED if who in self.commitments else NONE

  def finalize(self, block: int) -> list[dict]:
    _require(self.round_open, "finalize: no round is open")
    r = self.current_round
    ph, end = self.phase_at(block)
    _require(ph == PHASE_DONE, f"finalize: round {r} is in phase {ph} until block {end}")
    self.round_open = False
    self.phase = 0
    st = settlement.settle(
        vote_mode=self.vote_mode,
        reward=self.round_reward,
        proposer_share_bps=self.proposer_share_bps,
        slash_bps=self.slash_bps,
        global_hash=self.global_hash,
        p_state=[self._state(p) for p in self.proposers],
        p_hash=[self.proposals.get(p, ZERO_HASH) for p in self.proposers],
        p_stake=[self.stake[p] for p in self.proposers],
        v_state=[self._state(v) for v in self.voters],
        v_stake=[self.stake[v] for v in self.voters],
        ballots=[self.ballots.get(v, Ballot()) for v in self.voters],
    )
    drawn = self.proposers + self.voters
    events = []
    for op in st.ops:
      who = drawn[op.who]
      if op.kind == "reward":
        self.claimable[who] += op.amount
        self.pool -= op.amount
        events.append(_ev("Rewarded", round=r, participant=who, amount=op.amount, role=op.code))
      else:
        left = self.stake[who] - op.amount
        self.stake[who] = left
        self.pool += op.amount
        events.append(
            _ev("Slashed", round=r, participant=who, amount=op.amount, stake=left, reason=op.code)
        )
        if left < self.min_stake and who not in self.ejected:
          self.ejected.add(who)
          self._unlist(who)
          events.append(_ev("Ejected", round=r, participant=who, stake=left))
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
            num_votes=len(self.ballots),
            accepted_bits=st.accepted_bits,
            invalid_bits=st.invalid_bits,
            duplicate_bits=st.duplicate_bits,
            tallies=list(st.tallies),
        )
    )
    return events


__all__ = ["ModelRevert", "TaskModel", "proposal_commitment", "vote_commitment"]
