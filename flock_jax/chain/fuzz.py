"""A randomized invariant run: random transactions against FlockTask and `TaskModel` in lock step.

Each step picks a transaction, mostly the one the round's phase calls for (a drawn
proposer commits or reveals, a drawn voter commits or reveals, anyone draws or
finalizes), sometimes a wrong one (an outsider, the wrong phase, a bad reveal, a
duplicate hash, a stake move while the set is frozen) and between rounds stake moves,
claims, withdrawals and funding. Every step must revert on both with the same message
or succeed on both with identical events (to the wei). After every step the
invariants are checked: token conservation, contract == model for every account and
task-wide value, no stake below zero, and (at each draw) no ejected participant drawn;
each round is finalized at most once. A task that closes (too few active, or all
rounds done) is replaced by a fresh deployment. `launch/fuzz_chain.py` runs it;
tests/chain/test_stateful.py runs a short one.
"""

from __future__ import annotations

import dataclasses
import random

from eth_utils import keccak

from .audit import audit_events
from .backend import EthTesterBackend
from .client import FlockChain
from .errors import RevertError
from .model import ModelRevert, TaskModel, proposal_commitment, vote_commitment
from .types import (
    PHASE_COMMIT,
    PHASE_DONE,
    PHASE_DRAW,
    PHASE_REVEAL,
    PHASE_VOTE,
    PHASE_VOTE_REVEAL,
    WEI,
    ZERO_HASH,
    TaskParams,
)


@dataclasses.dataclass
class FuzzStats:
  transactions: int = 0
  succeeded: int = 0
  reverted: int = 0
  finalized_rounds: int = 0
  invariant_checks: int = 0
  violations: int = 0
  deployments: int = 0
  first_violation: str = ""

  def line(self) -> dict:
    return {
        "transactions": self.transactions,
        "succeeded": self.succeeded,
        "reverted": self.reverted,
        "finalized_rounds": self.finalized_rounds,
        "invariant_checks": self.invariant_checks,
        "violations": self.violations,
    }


class Violation(AssertionError):
  """The contract and the model disagree, or an invariant broke."""


class Fuzzer:
  """Drives one task (redeployed when it closes) with `seed`-determined transactions."""

  def __init__(self, seed: int, num_participants: int = 10, wrong_rate: float = 0.12):
    self.rng = random.Random(seed)
    self.n = num_participants
    self.wrong_rate = wrong_rate
    self.stats = FuzzStats()
    self._deploy()

  # ------------------------------------------------------------ set-up
  def _deploy(self) -> None:
    rng = self.rng
    params = TaskParams(
        total_rounds=rng.choice([30, 200]),
        num_proposers=rng.choice([1, 2, 3]),
        num_voters=rng.choice([1, 2, 3]),
        min_stake=10 * WEI,
        slash_bps=rng.choice([500, 1_000, 2_500]),
        proposer_share_bps=rng.choice([3_333, 5_000]),
        reward_pool=500 * WEI + rng.randrange(1000),
        vote_window=rng.choice([1, 2, 3]),
        vote_mode=rng.choice([0, 1]),
        selection_mode=rng.choice([0, 1]),
    )
    chain = FlockChain(EthTesterBackend(self.n + 2), self.n)
    stakes = [rng.choice([10, 20, 50, 100]) * WEI + rng.randrange(100) for _ in range(self.n)]
    chain.deploy(params, stakes=stakes, mint=[10_000 * WEI] * self.n)
    self.chain = chain
    self.task = chain.task.address
    _, self.model = audit_events(chain.events(), task=self.task)
    assert isinstance(self.model, TaskModel)
    self.finalized: set[int] = set()
    self.stats.deployments += 1

  # ------------------------------------------------------------ lock step
  def _violate(self, msg: str) -> None:
    self.stats.violations += 1
    if not self.stats.first_violation:
      self.stats.first_violation = msg
    raise Violation(msg)

  def act(self, model_call, chain_call) -> list[dict] | None:
    """Run one transaction on both; returns the events, or None when both reverted."""
    block = self.chain.w3.eth.block_number + 1
    self.stats.transactions += 1
    try:
      expected = model_call(block)
    except ModelRevert as e:
      try:
        chain_call()
      except RevertError as got:
        if got.reason != str(e):
          self._violate(f"revert reasons differ: chain {got.reason!r}, model {str(e)!r}")
        self.stats.reverted += 1
        return None
      self._violate(f"the model reverts ({e}) but the chain accepted the transaction")
    try:
      chain_call()
    except RevertError as got:
      self._violate(f"the chain reverts ({got.reason}) but the model accepted")
    got = [
        {"event": e["event"], "args": e["args"]}
        for e in self.chain.last_events()
        if e["address"] == self.task
    ]
    if got != expected:
      self._violate(f"events differ:\n chain {got}\n model {expected}")
    self.stats.succeeded += 1
    return got

  def check(self) -> None:
    """Every invariant, after every step."""
    self.stats.invariant_checks += 1
    c, m = self.chain, self.model
    b = c.balances()
    if b.token_balance != b.pool + b.total_staked + b.total_claimable:
      self._violate(f"token conservation broken: {b}")
    if b.total_staked != sum(b.stakes) or b.total_claimable != sum(b.claimable):
      self._violate("totals do not add up")
    if b.pool != m.pool or b.total_staked != m.total_staked:
      self._violate(
          f"pool/staked differ: chain {b.pool}/{b.total_staked}, model {m.pool}/{m.total_staked}"
      )
    for i, a in enumerate(c.addresses):
      want = (m.stake.get(a, 0), m.claimable.get(a, 0), a in m.ejected)
      if (b.stakes[i], b.claimable[i], b.ejected[i]) != want or b.stakes[i] < 0:
        self._violate(
            f"account {i} differs: chain {(b.stakes[i], b.claimable[i], b.ejected[i])}, model {want}"
        )
    t = c.totals()
    if t["round_open"] != m.round_open or t["global_hash"] != m.global_hash:
      self._violate("round_open/global hash differ")

  # ------------------------------------------------------------ steps
  def _who(self, pool: list[str]) -> int:
    """A participant from `pool` (the right one) or, sometimes, anyone."""
    if pool and self.rng.random() > self.wrong_rate:
      return self.chain.index_of(self.rng.choice(pool))
    return self.rng.randrange(self.n)

  def step(self) -> None:
    m, c, rng = self.model, self.chain, self.rng
    block = c.w3.eth.block_number + 1
    ph = m.phase_at(block)[0] if m.round_open else 0
    if m.closed:
      self._deploy()
      return
    if rng.random() < self.wrong_rate:
      return self._misc()
    if ph == 0:
      if rng.random() < 0.25:
        return self._misc()
      if m.next_round >= m.total_rounds or len(m.participants) < m.num_proposers + m.num_voters:
        self.act(lambda b: m.close("", b), c.close)
        return
      self.act(m.start_round, c.open_round)
    elif ph == PHASE_DRAW:
      bh = bytes(c.w3.eth.get_block(m.seed_block)["hash"]) if block > m.seed_block else ZERO_HASH
      ejected = set(m.ejected)
      if self.act(lambda b: m.draw_roles(bh, b), c.draw_roles) is not None:
        if ejected & set(m.proposers + m.voters):
          self._violate("an ejected participant was drawn")
    elif ph == PHASE_COMMIT:
      todo = [p for p in m.proposers if p not in m.commitments]
      if not todo or rng.random() < 0.1:
        return self._mine()
      i = self._who(todo)
      a = c.addresses[i]
      h = keccak(text=f"p{rng.randrange(4 if rng.random() < 0.2 else 10**6)}")
      salt = keccak(text=f"salt{rng.randrange(10**6)}")
      com = proposal_commitment(a, m.current_round, h, salt)
      self._pending = getattr(self, "_pending", {})
      if self.act(lambda b: m.commit_proposal(a, com, b), lambda: c.commit_proposal(i, h, salt)):
        self._pending[a] = (h, salt)
    elif ph == PHASE_REVEAL:
      todo = [p for p in m.proposers if p in m.commitments and p not in m.proposals]
      if not todo or rng.random() < 0.1:
        return self._mine()
      i = self._who(todo)
      a = c.addresses[i]
      h, salt = getattr(self, "_pending", {}).get(a, (keccak(text="x"), ZERO_HASH))
      if rng.random() < 0.05:
        salt = keccak(salt)  # a wrong salt
      self.act(lambda b: m.reveal_proposal(a, h, salt, b), lambda: c.reveal_proposal(i, h, salt))
    elif ph == PHASE_VOTE:
      todo = [v for v in m.voters if v not in m.commitments]
      if not todo or rng.random() < 0.1:
        return self._mine()
      i = self._who(todo)
      a = c.addresses[i]
      n = len(m.proposers)
      if m.vote_mode == 0:
        ballot = (keccak(text=f"c{rng.choice([0, 0, 0, 1])}"), rng.random() < 0.7, 0)
      else:
        ballot = (ZERO_HASH, False, rng.randrange(1 << n))
      inv = rng.randrange(1 << n) if rng.random() < 0.15 else 0
      salt = keccak(text=f"vsalt{rng.randrange(10**6)}")
      com = vote_commitment(a, m.current_round, *ballot, inv, salt)
      self._votes = getattr(self, "_votes", {})
      if self.act(lambda b: m.commit_vote(a, com, b), lambda: c.commit_vote(i, *ballot, inv, salt)):
        self._votes[a] = (*ballot, inv, salt)
    elif ph == PHASE_VOTE_REVEAL:
      todo = [v for v in m.voters if v in m.commitments and v not in m.ballots]
      if not todo or rng.random() < 0.1:
        return self._mine()
      i = self._who(todo)
      a = c.addresses[i]
      args = getattr(self, "_votes", {}).get(a, (keccak(text="c0"), True, 0, 0, ZERO_HASH))
      self.act(lambda b: m.reveal_vote(a, *args, b), lambda: c.reveal_vote(i, *args))
    elif ph == PHASE_DONE:
      r = m.current_round
      if self.act(m.finalize, c.finalize_now) is not None:
        if r in self.finalized:
          self._violate(f"round {r} was finalized twice")
        self.finalized.add(r)
        self.stats.finalized_rounds += 1

  def _mine(self) -> None:
    self.chain.mine(self.rng.randint(1, 3))

  def _misc(self) -> None:
    m, c, rng = self.model, self.chain, self.rng
    i = rng.randrange(self.n)
    a = c.addresses[i]
    k = rng.random()
    if k < 0.35:
      amount = rng.choice([0, 1, 5 * WEI, 10 * WEI, 37 * WEI + 3])
      self.act(lambda b: m.stake_tokens(a, amount, b), lambda: c.stake(i, amount))
    elif k < 0.55:
      have = m.stake.get(a, 0)
      amount = rng.choice([have, 1, 5 * WEI, max(have - 10 * WEI, 1)])
      self.act(lambda b: m.unstake(a, amount, b), lambda: c.unstake(i, amount))
    elif k < 0.7:
      self.act(lambda b: m.claim(a, b), lambda: c.claim(i))
    elif k < 0.8:
      self.act(lambda b: m.withdraw(a, b), lambda: c.withdraw(i))
    elif k < 0.85:
      self.act(lambda b: m.fund(c.deployer, 3 * WEI, b), lambda: c.fund(3 * WEI))
    elif k < 0.9:
      self.act(lambda b: m.finalize(b), c.finalize_now)
    elif k < 0.95:
      self.act(m.start_round, c.open_round)
    else:
      self.act(lambda b: m.close("", b), c.close)

  def run(self, transactions: int) -> FuzzStats:
    """Steps until `transactions` transactions were sent; checks after every step."""
    while self.stats.transactions < transactions:
      self.step()
      self.check()
    return self.stats


__all__ = ["FuzzStats", "Fuzzer", "Violation"]
