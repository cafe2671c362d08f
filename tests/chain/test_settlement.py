"""Settlement to the wei: hand-computed cases, the Python model, ejection, claim, withdraw."""

import pytest

from flock_jax.chain import (
    OUTCOME_ACCEPTED,
    OUTCOME_REJECTED,
    OUTCOME_VOID,
    VOTE_PER_PROPOSAL,
    WEI,
    RevertError,
)
from flock_jax.chain import settlement
from flock_jax.chain.audit import audit_chain
from flock_jax.chain.types import SLASH_NO_PROPOSAL, SLASH_NO_VOTE, SLASH_WRONG_CANDIDATE

from tests.chain.helpers import blob_hash, make_chain, play_round


def _conserved(chain):
  b = chain.balances()
  assert b.conserved, b
  assert b.total_staked == sum(b.stakes) and b.total_claimable == sum(b.claimable)
  return b


def test_accepted_hand_computed(chain):
  # pool 1000, T=4: R_0 = 250; rho = 50%: proposers share 125 (equal stakes: 62.5
  # each); the two approving voters share 125; the rejecting voter loses 10% of 100.
  roles, out = play_round(chain, approve=lambda j: j != chain.roles().voters[2])
  p0, p1 = roles.proposers
  v0, v1, v2 = roles.voters
  half = 125 * WEI // 2
  assert out.outcome == OUTCOME_ACCEPTED and out.tally == 100 * WEI
  assert out.rewards == {p0: half, p1: half, v0: half, v1: half}
  assert out.slashes == {v2: 10 * WEI}
  b = _conserved(chain)
  assert b.pool == 1000 * WEI - 250 * WEI + 10 * WEI
  assert b.stakes[v2] == 90 * WEI and b.claimable[v0] == half


def test_rejected_hand_computed(chain):
  # two of three reject: proposers slashed 10 each, the two rejecters share all 250,
  # the approver is slashed 10.
  roles, out = play_round(chain, approve=lambda j: j == chain.roles().voters[0])
  v0, v1, v2 = roles.voters
  assert out.outcome == OUTCOME_REJECTED and out.tally == -100 * WEI
  assert out.rewards == {v1: 125 * WEI, v2: 125 * WEI}
  assert out.slashes == {roles.proposers[0]: 10 * WEI, roles.proposers[1]: 10 * WEI, v0: 10 * WEI}
  assert _conserved(chain).pool == 1000 * WEI - 250 * WEI + 30 * WEI


def test_absent_and_split_candidates_void(chain):
  """No hash holds a strict majority of the revealed voting stake: void, and only the
  absent are slashed (no first-named tie-break)."""
  roles = chain.start_round()
  p0, p1 = roles.proposers
  v0, v1, v2 = roles.voters
  chain.propose(p0, blob_hash("p0"))
  chain.reveal_proposals([p0])
  chain.vote(v0, blob_hash("c"), True)
  chain.vote(v1, blob_hash("forged"), True)
  out = chain.finalize()
  assert out.outcome == OUTCOME_VOID and out.candidate_hash == b"\x00" * 32
  ev = {
      (e["args"]["participant"], e["args"]["reason"])
      for e in chain.last_events()
      if e["event"] == "Slashed"
  }
  a = chain.addresses
  assert ev == {(a[p1], SLASH_NO_PROPOSAL), (a[v2], SLASH_NO_VOTE)}
  assert out.rewards == {}
  _conserved(chain)


def test_wrong_candidate_slashed_when_decided(chain):
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  chain.reveal_proposals(roles.proposers)
  v0, v1, v2 = roles.voters
  chain.vote(v0, blob_hash("c"), True)
  chain.vote(v1, blob_hash("c"), True)
  chain.vote(v2, blob_hash("forged"), True)
  out = chain.finalize()
  assert out.outcome == OUTCOME_ACCEPTED and out.candidate_hash == blob_hash("c")
  assert out.slashes == {v2: 10 * WEI}
  assert out.rewards == {
      **{p: 125 * WEI // 2 for p in roles.proposers},
      v0: 125 * WEI // 2,
      v1: 125 * WEI // 2,
  }
  _conserved(chain)


def test_void_round_pays_nothing(chain):
  roles = chain.start_round()
  pool = chain.pool
  out = chain.finalize()  # nobody committed: the round ends after the commit window
  assert out.outcome == OUTCOME_VOID and out.rewards == {}
  assert set(out.slashes) == set(roles.proposers)  # voters had nothing to vote on
  assert chain.pool == pool + 20 * WEI


def test_uneven_stakes_match_model_to_the_wei():
  stakes = [
      13 * WEI + 7,
      29 * WEI + 1,
      11 * WEI + 3,
      97 * WEI,
      10 * WEI,
      41 * WEI + 5,
      23 * WEI,
      17 * WEI + 9,
  ]
  chain = make_chain(
      stakes=stakes, reward_pool=1_000 * WEI + 17, slash_bps=1_234, proposer_share_bps=3_333
  )
  for r in range(4):
    play_round(chain, approve=lambda j, r=r: (j + r) % 3 != 0)
    _conserved(chain)
  report = audit_chain(chain)  # replays every settlement with the Python model, event by event
  assert report.ok, report.summary()


def test_settle_function_directly(chain):
  R = settlement.REVEALED
  kw = dict(
      vote_mode=0,
      reward=1001,
      proposer_share_bps=5_000,
      slash_bps=1_000,
      global_hash=b"\0" * 32,
      p_state=[R, R],
      p_hash=[b"h" * 32, b"i" * 32],
      p_stake=[10, 20],
      v_state=[R, R, R],
      v_stake=[30, 60, 7],
      ballots=[
          settlement.Ballot(b"x" * 32, True),
          settlement.Ballot(b"x" * 32, True),
          settlement.Ballot(b"x" * 32, False),
      ],
  )
  st = settlement.settle(**kw)
  paid = {o.who: o.amount for o in st.ops if o.kind == "reward"}
  assert paid == {0: 500 * 10 // 30, 1: 500 * 20 // 30, 2: 501 * 30 // 90, 3: 501 * 60 // 90}
  assert [o for o in st.ops if o.kind == "slash"] == [settlement.Op("slash", 4, 0, 4)]
  assert st.tally == 83 and st.outcome == OUTCOME_ACCEPTED
  # the contract's FlockLogic.settle gives the same, op for op
  b = kw["ballots"]
  got = chain.logic.functions.settle(
      0,
      1001,
      5_000,
      1_000,
      kw["global_hash"],
      kw["p_state"],
      kw["p_hash"],
      kw["p_stake"],
      kw["v_state"],
      kw["v_stake"],
      [x.candidate for x in b],
      [x.approve for x in b],
      [x.bits for x in b],
      [x.invalid for x in b],
  ).call()
  ops = [(o >> 16, o >> 8 & 255, o & 255, a) for o, a in zip(got[3], got[4])]
  want = [(o.who, 1 if o.kind == "reward" else 2, o.code, o.amount) for o in st.ops]
  assert ops == want and got[1][0] == st.outcome and got[2] == st.tally


def test_ejection_withdraw_and_never_drawn_again():
  # min stake 95 of 100 and a 10% slash: one slash ejects.
  chain = make_chain(min_stake=95 * WEI, total_rounds=6)
  roles, out = play_round(chain, approve=lambda j: False)
  ejected = set(out.ejected)
  assert out.outcome == OUTCOME_REJECTED and ejected == set(roles.proposers)
  for i in ejected:
    assert chain.is_ejected(i) and chain.stake_of(i) == 90 * WEI
    with pytest.raises(RevertError, match="stake: participant is ejected; withdraw the remainder"):
      chain.stake(i, WEI)
    with pytest.raises(RevertError, match="unstake: participant is ejected; call withdraw"):
      chain.unstake(i, WEI)
  with pytest.raises(RevertError, match="withdraw: participant is not ejected; use unstake"):
    chain.withdraw(next(i for i in range(8) if i not in ejected))
  # remaining active: 8 - len(ejected) >= 5 = P + V, so rounds go on without them
  roles2 = chain.start_round()
  assert not ejected & (set(roles2.proposers) | set(roles2.voters))
  i = min(ejected)
  bal = chain.token_balance(chain.addresses[i])
  assert chain.withdraw(i) == 90 * WEI
  assert chain.token_balance(chain.addresses[i]) == bal + 90 * WEI and chain.stake_of(i) == 0
  with pytest.raises(RevertError, match="withdraw: nothing left to withdraw"):
    chain.withdraw(i)
  _conserved(chain)


def test_claim_pays_out(chain):
  roles, out = play_round(chain)
  i = roles.voters[0]
  before = chain.token_balance(chain.addresses[i])
  assert chain.claim(i) == out.rewards[i]
  assert (
      chain.token_balance(chain.addresses[i]) == before + out.rewards[i] and chain.claimable(i) == 0
  )
  with pytest.raises(RevertError, match="claim: nothing to claim"):
    chain.claim(i)
  _conserved(chain)


def test_per_proposal_mode_hand_computed():
  chain = make_chain(vote_mode=VOTE_PER_PROPOSAL)
  roles = chain.start_round()
  p0, p1 = roles.proposers
  v0, v1, v2 = roles.voters
  chain.propose(p0, blob_hash("p0"))
  chain.propose(p1, blob_hash("p1"))
  chain.reveal_proposals(roles.proposers)
  chain.vote_bits(v0, [True, False])
  chain.vote_bits(v1, [True, False])
  chain.vote_bits(v2, [False, True])
  chain.advance_to(5)
  with pytest.raises(RevertError, match="reveal_vote: a bit is set beyond the 2 proposers"):
    chain.reveal_vote(v0, b"\x00" * 32, False, 0b100, 0, chain._ballots[(0, v0)][4])
  out = chain.finalize()
  # R_0 = 250, 125 per proposal. Proposal 0 accepted (200 vs 100): p0 gets 62.5,
  # v0 and v1 share 62.5; v2 wrong on it. Proposal 1 rejected (100 vs 200): p1
  # slashed 10, v0 and v1 share 125; v2 wrong on it. v2 is slashed 10% * 2/2.
  half = 125 * WEI // 2
  assert out.outcome == OUTCOME_ACCEPTED and out.proposal_accepted == (True, False)
  assert out.proposal_tallies == (100 * WEI, -100 * WEI)
  assert out.rewards == {p0: half, v0: half // 2 + half, v1: half // 2 + half}
  assert out.slashes == {p1: 10 * WEI, v2: 10 * WEI}
  from eth_utils import keccak

  assert out.global_hash == keccak(b"\x00" * 32 + blob_hash("p0")) == chain.global_hash
  _conserved(chain)
  assert audit_chain(chain).ok


def test_per_proposal_partial_wrong_and_model():
  stakes = [
      13 * WEI + 7,
      29 * WEI + 1,
      11 * WEI + 3,
      97 * WEI,
      10 * WEI,
      41 * WEI + 5,
      23 * WEI,
      17 * WEI + 9,
  ]
  chain = make_chain(
      stakes=stakes, vote_mode=VOTE_PER_PROPOSAL, num_proposers=3, reward_pool=999 * WEI + 1
  )
  for r in range(4):
    roles = chain.start_round()
    for k, i in enumerate(roles.proposers):
      if (k + r) % 4 != 3:
        chain.propose(i, blob_hash(f"{r} {i}"))
    chain.reveal_proposals([i for k, i in enumerate(roles.proposers) if (k + r) % 4 != 3])
    if chain.phase()[0] == 4:
      for k, j in enumerate(roles.voters):
        chain.vote_bits(j, (5 * k + r) % 8)
    chain.finalize()
    _conserved(chain)
  report = audit_chain(chain)
  assert report.ok, report.summary()


def test_conservation_after_every_kind_of_call(chain):
  play_round(chain, approve=lambda j: j % 2 == 0)
  _conserved(chain)
  chain.unstake(0, 10 * WEI)
  _conserved(chain)
  chain.stake(0, 10 * WEI)
  chain.mint_tokens(chain.deployer, 5 * WEI)
  chain.fund(5 * WEI)
  _conserved(chain)
  t = chain.totals()
  assert t["pool"] + t["total_staked"] + t["total_claimable"] == t["token_balance"]
