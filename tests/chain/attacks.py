"""The issue-8 attacks on FlockTask v1, replayed against v2 (shared by the eth-tester tests in
test_attacks.py and the hardhat node tests in test_jsonrpc.py). Each scenario performs the
attack on a fresh task and asserts that the attacker gains nothing and nobody honest is
slashed. `chain` is a deployed FlockChain with SMALL-like parameters and 100-token stakes."""

from __future__ import annotations

from flock_jax.chain import OUTCOME_ACCEPTED, OUTCOME_VOID, WEI, RevertError
from flock_jax.chain.types import (
    PHASE_VOTE,
    SLASH_DUPLICATE,
    SLASH_NO_PROPOSAL,
    SLASH_NO_REVEAL,
    SLASH_NO_VOTE,
)

from tests.chain.helpers import blob_hash


def _slash_reasons(chain) -> dict[int, int]:
  return {
      chain.index_of(e["args"]["participant"]): e["args"]["reason"]
      for e in chain.last_events()
      if e["event"] == "Slashed"
  }


def first_vote_cannot_close_proposing(chain) -> None:
  """Weakness 1: a drawn voter votes right after the first proposal; in v1 that shut the
  other proposer out (slashed) and the lone proposal took the whole pot."""
  roles = chain.start_round()
  p0, p1 = roles.proposers
  attacker = roles.voters[0]
  chain.propose(p0, blob_hash("p0"))
  try:
    chain.vote(attacker, blob_hash("cand"), True)
    raise AssertionError("a vote was accepted during the proposal commit phase")
  except RevertError as e:
    assert "commit_vote: round 0 is in phase 2, this call needs phase 4" in str(e)
  chain.propose(p1, blob_hash("p1"))  # the other proposer still has its window
  assert chain.reveal_proposals([p0, p1]) == {p0: blob_hash("p0"), p1: blob_hash("p1")}
  for j in roles.voters:
    chain.vote(j, blob_hash("cand"), True)
  out = chain.finalize()
  assert out.outcome == OUTCOME_ACCEPTED and out.slashes == {}
  assert out.rewards[p0] == out.rewards[p1]  # the pot is shared, not taken by the first


def late_proposal_leaves_voters_a_window(chain) -> None:
  """Weakness 2: a proposal in the last block of its window left voters no block (all
  slashed). In v2 the vote phases have their own windows."""
  roles = chain.start_round()
  p0, p1 = roles.proposers
  chain.propose(p0, blob_hash("p0"))
  chain.mine(roles.deadline - chain.latest_block()[0] - 1)
  chain.propose(p1, blob_hash("late"))  # mined in the commit window's last block
  assert chain.last_receipt["blockNumber"] == roles.deadline
  chain.reveal_proposals([p0, p1])
  assert chain.phase()[0] == PHASE_VOTE
  for j in roles.voters:
    chain.vote(j, blob_hash("cand"), True)
  out = chain.finalize()
  assert out.outcome == OUTCOME_ACCEPTED and out.slashes == {}
  assert set(out.rewards) == set(roles.proposers) | set(roles.voters)


def copied_commitment_is_worthless(chain) -> None:
  """Weakness 4: a drawn proposer copies the honest proposer's commitment (all it can see);
  it cannot reveal it (the commitment binds the sender), is slashed, and the honest
  proposer takes the whole proposer pot."""
  roles = chain.start_round()
  honest, copier = roles.proposers
  chain.propose(honest, blob_hash("honest work"))
  seen = next(e for e in chain.last_events() if e["event"] == "ProposalCommitted")
  chain.commit_proposal(copier, blob_hash("unused"), commitment=seen["args"]["commitment"])
  h, salt = chain._proposals[(roles.round, honest)]
  chain.advance_to(3)
  try:
    chain.reveal_proposal(copier, h, salt)
    raise AssertionError("a copied commitment was revealed")
  except RevertError as e:
    assert "reveal_proposal: hash and salt do not match the commitment" in str(e)
  chain.reveal_proposals([honest])
  for j in roles.voters:
    chain.vote(j, blob_hash("cand"), True)
  out = chain.finalize()
  assert out.accepted and copier not in out.rewards
  assert _slash_reasons(chain) == {copier: SLASH_NO_REVEAL}
  assert out.rewards[honest] == roles.reward * chain.params.proposer_share_bps // 10_000


def duplicate_reveals_are_both_caught(chain) -> None:
  """Weakness 4: two proposers that reveal the same hash (the only way to get a copy past
  the commitments is to know it before committing) are both slashed and excluded."""
  roles = chain.start_round()
  a, b = roles.proposers
  for i in (a, b):
    chain.propose(i, blob_hash("one update"))
  chain.reveal_proposals([a, b])
  for j in roles.voters:
    chain.vote(j, blob_hash("cand"), True)
  out = chain.finalize()
  assert out.duplicate == (True, True) and out.void and out.rewards == {}
  assert _slash_reasons(chain) == {a: SLASH_DUPLICATE, b: SLASH_DUPLICATE}


def split_committee_is_void(chain) -> None:
  """Weakness 5 (V = 4, equal stakes): the two attackers vote first for a made-up hash,
  the two honest voters name the real candidate. No hash has a strict majority: the
  round is void, the global model stays and nobody who voted is slashed."""
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  chain.reveal_proposals(roles.proposers)
  attackers, honest = roles.voters[:2], roles.voters[2:]
  for j in attackers:
    chain.vote(j, blob_hash("made up"), True)
  for j in honest:
    chain.vote(j, blob_hash("cand"), True)
  g = chain.global_hash
  out = chain.finalize()
  assert out.outcome == OUTCOME_VOID and chain.global_hash == g != blob_hash("made up")
  assert out.slashes == {} and out.rewards == {}


def copied_vote_is_worthless(chain) -> None:
  """Weakness 6: a lazy voter copies an honest voter's vote commitment (votes are hidden
  until the reveal); it cannot reveal it and is slashed, the honest voters are paid."""
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  chain.reveal_proposals(roles.proposers)
  v0, v1, lazy = roles.voters
  chain.vote(v0, blob_hash("cand"), True)
  seen = next(e for e in chain.last_events() if e["event"] == "VoteCommitted")
  chain._send(
      "commit_vote",
      chain.task.functions.commit_vote(seen["args"]["commitment"]),
      chain.addresses[lazy],
      200_000,
  )
  chain.vote(v1, blob_hash("cand"), True)
  chain.reveal_votes([v0, v1])
  try:
    chain.reveal_vote(lazy, *chain._ballots[(roles.round, v0)])
    raise AssertionError("a copied vote was revealed")
  except RevertError as e:
    assert "reveal_vote: ballot and salt do not match the commitment" in str(e)
  out = chain.finalize(reveal=False)
  assert out.accepted and lazy not in out.rewards
  assert _slash_reasons(chain) == {lazy: SLASH_NO_VOTE}
  assert {v0, v1} <= set(out.rewards)


def too_few_active_can_close(chain) -> None:
  """Weakness 8: after unstakes leave fewer than P + V active, v1's pool was locked for
  good. In v2 anyone closes the task, the owner drains the pool, everyone else unstakes
  and claims: the task ends holding nothing."""
  play_round_ok(chain)
  active = [i for i in range(chain.num_participants) if chain.stake_of(i) > 0]
  need = chain.params.num_proposers + chain.params.num_voters
  for i in active[: len(active) - need + 1]:
    chain.unstake(i, chain.stake_of(i))
  try:
    chain.start_round()
    raise AssertionError("a round started without P + V active participants")
  except RevertError as e:
    assert "call close" in str(e)
  outsider = chain.backend.accounts[-1]
  chain.close(sender=outsider)  # anyone may
  chain._send("drain_pool", chain.task.functions.drain_pool(chain.deployer), chain.deployer)
  for i in range(chain.num_participants):
    if chain.stake_of(i):
      chain.unstake(i, chain.stake_of(i))
    if chain.claimable(i):
      chain.claim(i)
  b = chain.balances()
  assert b.token_balance == 0 and b.pool == 0 and b.conserved


def play_round_ok(chain):
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{roles.round} {i}"))
  chain.reveal_proposals(roles.proposers)
  for j in roles.voters:
    chain.vote(j, blob_hash(f"cand {roles.round}"), True)
  return roles, chain.finalize()


MAIN = {
    "first_vote": (first_vote_cannot_close_proposing, {}),
    "late_proposal": (late_proposal_leaves_voters_a_window, {}),
    "copy_commitment": (copied_commitment_is_worthless, {}),
    "duplicate": (duplicate_reveals_are_both_caught, {}),
    "split_committee": (split_committee_is_void, {"num_voters": 4}),
    "copy_vote": (copied_vote_is_worthless, {}),
    "close": (too_few_active_can_close, {}),
}
