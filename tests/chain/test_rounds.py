"""Round rules: who may propose and vote, once each; the window; finalize once."""

import pytest

from flock_jax.chain import OUTCOME_ACCEPTED, OUTCOME_REJECTED, OUTCOME_VOID, RevertError

from tests.chain.helpers import blob_hash, play_round


def _outsider(chain, roles):
  drawn = set(roles.proposers) | set(roles.voters)
  return next(i for i in range(chain.num_participants) if i not in drawn)


def test_roles_disjoint_sorted_and_in_range(chain):
  roles = chain.start_round()
  assert len(roles.proposers) == 2 and len(roles.voters) == 3
  assert not set(roles.proposers) & set(roles.voters)
  assert len(set(roles.proposers + roles.voters)) == 5
  assert list(roles.proposer_addresses) == sorted(
      roles.proposer_addresses, key=lambda a: int(a, 16)
  )
  assert all(chain.addresses[i] == a for i, a in zip(roles.proposers, roles.proposer_addresses))
  assert roles.round == 0 and chain.current_round == 0 and chain.round_open


def test_only_drawn_proposers_propose_once(chain):
  roles = chain.start_round()
  with pytest.raises(RevertError, match="propose: not a drawn proposer for round 0"):
    chain.propose(roles.voters[0], blob_hash("x"))
  with pytest.raises(RevertError, match="propose: not a drawn proposer for round 0"):
    chain.propose(_outsider(chain, roles), blob_hash("x"))
  chain.propose(roles.proposers[0], blob_hash("x"))
  with pytest.raises(RevertError, match="propose: already proposed in round 0"):
    chain.propose(roles.proposers[0], blob_hash("y"))
  with pytest.raises(RevertError, match="propose: proposal hash is zero"):
    chain.propose(roles.proposers[1], b"\x00" * 32)


def test_only_drawn_voters_vote_once(chain):
  roles = chain.start_round()
  with pytest.raises(RevertError, match="vote: no proposals yet in round 0"):
    chain.vote(roles.voters[0], blob_hash("c"), True)
  chain.propose(roles.proposers[0], blob_hash("p"))
  with pytest.raises(RevertError, match="vote: not a drawn voter for round 0"):
    chain.vote(roles.proposers[0], blob_hash("c"), True)
  with pytest.raises(RevertError, match="vote: not a drawn voter for round 0"):
    chain.vote(_outsider(chain, roles), blob_hash("c"), True)
  chain.vote(roles.voters[0], blob_hash("c"), True)
  with pytest.raises(RevertError, match="vote: already voted in round 0"):
    chain.vote(roles.voters[0], blob_hash("c"), False)
  with pytest.raises(RevertError, match="propose: voting has started in round 0"):
    chain.propose(roles.proposers[1], blob_hash("late"))
  with pytest.raises(RevertError, match="vote: candidate hash is zero"):
    chain.vote(roles.voters[1], b"\x00" * 32, True)
  with pytest.raises(
      RevertError, match="vote_bits: this task uses whole-candidate voting; call vote"
  ):
    chain.vote_bits(roles.voters[1], 1)


def test_finalize_once_and_not_early(chain):
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  chain.vote(roles.voters[0], blob_hash("c"), True)
  with pytest.raises(
      RevertError, match=r"finalize: round 0 has 1 of 3 votes and its window closes at block \d+"
  ):
    chain.finalize()
  for j in roles.voters[1:]:
    chain.vote(j, blob_hash("c"), True)
  out = chain.finalize()
  assert out.outcome == OUTCOME_ACCEPTED and out.global_hash == blob_hash("c") == chain.global_hash
  with pytest.raises(RevertError, match="finalize: no round is open"):
    chain.finalize()
  with pytest.raises(RevertError, match="vote: no round is open"):
    chain.vote(roles.voters[0], blob_hash("c"), True)
  with pytest.raises(RevertError, match="propose: no round is open"):
    chain.propose(roles.proposers[0], blob_hash("c"))


def test_window_closes_votes_and_allows_finalize(chain):
  roles = chain.start_round()
  chain.propose(roles.proposers[0], blob_hash("p"))
  chain.mine(chain.params.vote_window)
  with pytest.raises(RevertError, match=r"vote: the window of round 0 closed at block \d+"):
    chain.vote(roles.voters[0], blob_hash("c"), True)
  out = chain.finalize()
  assert out.outcome == OUTCOME_VOID and chain.global_hash == b"\x00" * 32
  # absent voters and the absent proposer are slashed, the present proposer is not
  assert set(out.slashes) == {roles.proposers[1], *roles.voters}


def test_start_round_while_open_and_after_last(chain):
  chain.start_round()
  with pytest.raises(RevertError, match="start_round: round 0 is still open; finalize it first"):
    chain.start_round()
  chain.mine(chain.params.vote_window + 1)
  chain.finalize()
  for _ in range(chain.params.total_rounds - 1):
    play_round(chain)
  with pytest.raises(RevertError, match="start_round: all 4 rounds are done"):
    chain.start_round()


def test_tie_accepts(chain):
  # Two equal-stake voters split on the candidate; the third names another
  # hash, which does not count in the tally: S == 0, and ties accept.
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  v0, v1, v2 = roles.voters
  chain.vote(v0, blob_hash("c"), True)
  chain.vote(v1, blob_hash("c"), False)
  chain.vote(v2, blob_hash("other"), True)
  out = chain.finalize()
  assert out.tally == 0 and out.outcome == OUTCOME_ACCEPTED and out.candidate_hash == blob_hash("c")


def test_rejection_keeps_global(chain):
  _, out = play_round(chain, approve=lambda j: False)
  assert out.outcome == OUTCOME_REJECTED and chain.global_hash == b"\x00" * 32
  assert all(not a for a in out.proposal_accepted)


def test_round_reward_and_seed_chain(chain):
  from flock_jax.chain.draw import round_seed

  prev = chain.params.genesis_seed
  for r in range(2):
    pool = chain.pool
    g = chain.global_hash
    roles, out = play_round(chain)
    assert roles.reward == pool // (chain.params.total_rounds - r)
    assert roles.seed == round_seed(prev, r, g) and roles.global_hash == g
    prev = roles.seed
