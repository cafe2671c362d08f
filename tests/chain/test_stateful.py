"""Random call sequences against the contract and the Python model side by side.

Every step must either revert on both, with the same message, or succeed on
both with identical events (to the wei). After every step the PROTOCOL.md
invariants are checked: token conservation, no negative stake, the model's
balances equal the contract's, an ejected participant is never drawn, and a
round is finalized at most once.
"""

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from flock_jax.chain import WEI, RevertError
from flock_jax.chain.audit import audit_events
from flock_jax.chain.model import ModelRevert

from tests.chain.helpers import blob_hash, make_chain

N = 7
_DEPLOYED: dict = {}
AMOUNTS = st.sampled_from([0, 1, 5 * WEI, 10 * WEI, 37 * WEI + 3, 100 * WEI])


class ChainMachine(RuleBasedStateMachine):
  """Drives a fresh task with random stake/propose/vote/finalize/claim/withdraw calls."""

  @initialize(vote_mode=st.sampled_from([0, 1]), selection=st.sampled_from([0, 1]))
  def deploy(self, vote_mode, selection):
    slash = 2_500 if selection == 0 else 10_000  # ejects after a few slashes / at once
    key = (vote_mode, selection)
    if key not in _DEPLOYED:  # one deployment per configuration, reset by snapshot
      chain = make_chain(
          N,
          stakes=[20 * WEI] * 5 + [50 * WEI, 0],
          mint=10_000 * WEI,
          num_proposers=2,
          num_voters=2,
          total_rounds=6,
          vote_window=8,
          min_stake=10 * WEI,
          slash_bps=slash,
          vote_mode=vote_mode,
          selection_mode=selection,
          reward_pool=500 * WEI + 11,
      )
      _DEPLOYED[key] = (chain, chain.snapshot())
    self.chain, snap = _DEPLOYED[key]
    self.chain.revert(snap)
    _DEPLOYED[key] = (self.chain, self.chain.snapshot())
    self.task = self.chain.task.address
    _, self.model = audit_events(self.chain.events(), task=self.task)
    self.finalized = set()

  # ------------------------------------------------------------ the lock-step check
  def act(self, model_call, chain_call):
    block = self.chain.w3.eth.block_number + 1
    try:
      expected = model_call(block)
    except ModelRevert as e:
      with pytest.raises(RevertError) as info:
        chain_call()
      assert info.value.reason == str(e)
      return None
    chain_call()
    got = [
        {"event": e["event"], "args": e["args"]}
        for e in self.chain.last_events()
        if e["address"] == self.task
    ]
    assert got == expected
    return got

  def pick(self, who, drawn, pool):
    return (
        self.chain.index_of(pool[who % len(pool)])
        if drawn and pool and self.model.round_open
        else who
    )

  # ------------------------------------------------------------ rules
  @rule(i=st.integers(0, N - 1), amount=AMOUNTS)
  def stake(self, i, amount):
    self.act(
        lambda b: self.model.stake_tokens(self.chain.addresses[i], amount),
        lambda: self.chain.stake(i, amount),
    )

  @rule(i=st.integers(0, N - 1), amount=AMOUNTS, everything=st.booleans())
  def unstake(self, i, amount, everything):
    a = self.chain.addresses[i]
    if everything:
      amount = self.model.stake.get(a, 0)
    self.act(lambda b: self.model.unstake(a, amount), lambda: self.chain.unstake(i, amount))

  @rule(i=st.integers(0, N - 1))
  def withdraw(self, i):
    self.act(lambda b: self.model.withdraw(self.chain.addresses[i]), lambda: self.chain.withdraw(i))

  @rule(i=st.integers(0, N - 1))
  def claim(self, i):
    self.act(lambda b: self.model.claim(self.chain.addresses[i]), lambda: self.chain.claim(i))

  @rule()
  def start_round(self):
    ejected = set(self.model.ejected)
    if self.act(lambda b: self.model.start_round(b), self.chain.start_round) is not None:
      assert not ejected & set(
          self.model.proposers + self.model.voters
      ), "an ejected participant was drawn"

  @rule(who=st.integers(0, N - 1), drawn=st.booleans(), tag=st.integers(0, 2))
  def propose(self, who, drawn, tag):
    i = self.pick(who, drawn, self.model.proposers)
    h = blob_hash(f"proposal {tag}") if tag else b"\x00" * 32
    self.act(
        lambda b: self.model.propose(self.chain.addresses[i], h, b),
        lambda: self.chain.propose(i, h),
    )

  @rule(
      who=st.integers(0, N - 1),
      drawn=st.booleans(),
      approve=st.booleans(),
      cand=st.integers(0, 3),
      bits=st.integers(0, 7),
  )
  def vote(self, who, drawn, approve, cand, bits):
    i = self.pick(who, drawn, self.model.voters)
    a = self.chain.addresses[i]
    if self.model.vote_mode == 0:
      h = blob_hash(f"candidate {min(cand, 1)}") if cand else b"\x00" * 32
      self.act(lambda b: self.model.vote(a, h, approve, b), lambda: self.chain.vote(i, h, approve))
    else:
      self.act(lambda b: self.model.vote_bits(a, bits, b), lambda: self.chain.vote_bits(i, bits))

  @rule()
  def finalize(self):
    r = self.model.current_round
    if self.act(lambda b: self.model.finalize(b), self.chain.finalize) is not None:
      assert r not in self.finalized, "a round was finalized twice"
      self.finalized.add(r)

  @rule(n=st.integers(1, 10))
  def mine(self, n):
    self.chain.mine(n)

  # ------------------------------------------------------------ invariants
  @invariant()
  def balances_agree_and_are_conserved(self):
    if not hasattr(self, "chain"):
      return
    b = self.chain.balances()
    m = self.model
    assert b.token_balance == b.pool + b.total_staked + b.total_claimable  # token conservation
    assert b.total_staked == sum(b.stakes) and b.total_claimable == sum(b.claimable)
    assert b.pool == m.pool and b.total_staked == m.total_staked
    assert all(s >= 0 for s in b.stakes)
    for i, a in enumerate(self.chain.addresses):
      assert b.stakes[i] == m.stake.get(a, 0)
      assert b.claimable[i] == m.claimable.get(a, 0)
      assert b.ejected[i] == (a in m.ejected)
    t = self.chain.totals()
    assert t["round_open"] == m.round_open and t["global_hash"] == m.global_hash


TestChainMachine = ChainMachine.TestCase
TestChainMachine.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
