"""Round rules of protocol v2: the draw after a frozen block, four phases with their own
windows, commit-reveal bound to the sender, each action once, finalize once and not early."""

import pytest

from flock_jax.chain import OUTCOME_ACCEPTED, OUTCOME_REJECTED, OUTCOME_VOID, RevertError
from flock_jax.chain.types import (
    PHASE_COMMIT,
    PHASE_DONE,
    PHASE_DRAW,
    PHASE_REVEAL,
    PHASE_VOTE,
    PHASE_VOTE_REVEAL,
)

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
  assert chain.phase() == (PHASE_COMMIT, roles.deadline)


def test_draw_waits_a_block_and_freezes_the_set(chain):
  chain.open_round()
  assert chain.phase()[0] == PHASE_DRAW
  with pytest.raises(
      RevertError, match="stake: the roles of round 0 are being drawn; wait for draw_roles"
  ):
    chain.stake(0, 1)
  with pytest.raises(
      RevertError, match="unstake: the roles of round 0 are being drawn; wait for draw_roles"
  ):
    chain.unstake(0, 100 * 10**18)
  with pytest.raises(RevertError, match="commit_proposal: not a drawn proposer for round 0"):
    chain.commit_proposal(0, blob_hash("x"))
  chain.draw_roles()
  with pytest.raises(RevertError, match="draw_roles: no draw is pending; call start_round"):
    chain.draw_roles()


def test_stale_draw_is_rearmed(chain):
  first = chain.open_round()
  with pytest.raises(RevertError, match="start_round: round 0 is still open; finalize it first"):
    chain.open_round()
  chain.mine(257)
  with pytest.raises(
      RevertError,
      match="draw_roles: the seed block is over 256 blocks old; call start_round to re-arm",
  ):
    chain.draw_roles()
  again = chain.open_round()
  assert again["round"] == 0 and again["seed_block"] > first["seed_block"]
  assert chain.draw_roles().round == 0


def test_only_drawn_proposers_commit_once_and_reveal_their_own(chain):
  roles = chain.start_round()
  p0, p1 = roles.proposers
  with pytest.raises(RevertError, match="commit_proposal: not a drawn proposer for round 0"):
    chain.commit_proposal(roles.voters[0], blob_hash("x"))
  with pytest.raises(RevertError, match="commit_proposal: not a drawn proposer for round 0"):
    chain.commit_proposal(_outsider(chain, roles), blob_hash("x"))
  chain.commit_proposal(p0, blob_hash("x"))
  with pytest.raises(RevertError, match="commit_proposal: already committed in round 0"):
    chain.commit_proposal(p0, blob_hash("y"))
  with pytest.raises(RevertError, match="commit_proposal: commitment is zero"):
    chain.commit_proposal(p1, blob_hash("z"), commitment=b"\x00" * 32)
  with pytest.raises(
      RevertError,
      match=r"reveal_proposal: round 0 is in phase 2, this call needs phase 3",
  ):
    chain.reveal_proposal(p0)
  chain.commit_proposal(p1, blob_hash("z"))  # every proposer committed: the phase ends here
  with pytest.raises(RevertError, match="reveal_proposal: hash and salt do not match"):
    chain.reveal_proposal(p0, blob_hash("z"))
  with pytest.raises(RevertError, match="reveal_proposal: hash and salt do not match"):
    chain.reveal_proposal(p1, blob_hash("x"), chain._proposals[(0, p0)][1])  # p0's salt
  chain.reveal_proposal(p0)
  with pytest.raises(RevertError, match="reveal_proposal: already revealed in round 0"):
    chain.reveal_proposal(p0)
  assert chain.phase()[0] == PHASE_REVEAL
  chain.reveal_proposal(p1)
  assert chain.phase()[0] == PHASE_VOTE and chain.revealed() == {
      p0: blob_hash("x"),
      p1: blob_hash("z"),
  }


def test_only_drawn_voters_vote_once_and_reveal(chain):
  roles = chain.start_round()
  with pytest.raises(RevertError, match="commit_vote: round 0 is in phase 2"):
    chain.vote(roles.voters[0], blob_hash("c"), True)
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  chain.reveal_proposals(roles.proposers)
  with pytest.raises(RevertError, match="commit_vote: not a drawn voter for round 0"):
    chain.vote(roles.proposers[0], blob_hash("c"), True)
  with pytest.raises(RevertError, match="commit_vote: not a drawn voter for round 0"):
    chain.vote(_outsider(chain, roles), blob_hash("c"), True)
  v0, v1, v2 = roles.voters
  chain.vote(v0, blob_hash("c"), True)
  with pytest.raises(RevertError, match="commit_vote: already committed in round 0"):
    chain.vote(v0, blob_hash("c"), False)
  chain.vote(v1, b"\x00" * 32, True)  # a zero candidate is hidden until the reveal ...
  chain.vote_bits(v2, 1)  # ... as are bits in whole mode
  assert chain.phase()[0] == PHASE_VOTE_REVEAL
  with pytest.raises(
      RevertError, match="reveal_vote: whole mode takes a nonzero candidate and no bits"
  ):
    chain.reveal_vote(v1)
  with pytest.raises(
      RevertError, match="reveal_vote: whole mode takes a nonzero candidate and no bits"
  ):
    chain.reveal_vote(v2)
  with pytest.raises(RevertError, match="reveal_vote: ballot and salt do not match"):
    chain.reveal_vote(v0, blob_hash("c"), False, 0, 0, chain._ballots[(0, v0)][4])
  chain.reveal_vote(v0)
  with pytest.raises(RevertError, match="reveal_vote: already revealed in round 0"):
    chain.reveal_vote(v0)


def test_finalize_once_and_not_early(chain):
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  with pytest.raises(RevertError, match=r"finalize: round 0 is in phase 3 until block \d+"):
    chain.finalize_now()
  chain.reveal_proposals(roles.proposers)
  for j in roles.voters:
    chain.vote(j, blob_hash("c"), True)
  with pytest.raises(RevertError, match=r"finalize: round 0 is in phase 5 until block \d+"):
    chain.finalize_now()
  out = chain.finalize()
  assert out.outcome == OUTCOME_ACCEPTED and out.global_hash == blob_hash("c") == chain.global_hash
  with pytest.raises(RevertError, match="finalize: no round is open"):
    chain.finalize_now()
  with pytest.raises(RevertError, match="commit_vote: no round is open"):
    chain.vote(roles.voters[0], blob_hash("c"), True)
  with pytest.raises(RevertError, match="commit_proposal: no round is open"):
    chain.propose(roles.proposers[0], blob_hash("c"))


def test_windows_pass_and_absentees_are_slashed(chain):
  roles = chain.start_round()
  chain.propose(roles.proposers[0], blob_hash("p"))
  chain.mine(chain.params.vote_window)  # the commit window closes; p1 never committed
  with pytest.raises(RevertError, match="commit_proposal: round 0 is in phase 3"):
    chain.propose(roles.proposers[1], blob_hash("late"))
  chain.reveal_proposals([roles.proposers[0]])
  chain.mine(chain.params.vote_window)  # nobody votes
  assert chain.phase()[0] == PHASE_DONE
  out = chain.finalize()
  assert out.outcome == OUTCOME_VOID and chain.global_hash == b"\x00" * 32
  # absent voters and the absent proposer are slashed, the present proposer is not
  assert set(out.slashes) == {roles.proposers[1], *roles.voters}


def test_nothing_revealed_ends_the_round_without_vote_phases(chain):
  roles = chain.start_round()
  chain.propose(roles.proposers[0], blob_hash("p"))
  chain.reveal_proposals([])  # committed, never revealed
  assert chain.phase()[0] == PHASE_DONE
  out = chain.finalize()
  assert out.void and set(out.slashes) == set(roles.proposers)  # voters had nothing to judge


def test_start_round_while_open_and_after_last(chain):
  chain.start_round()
  with pytest.raises(RevertError, match="start_round: round 0 is still open; finalize it first"):
    chain.start_round()
  chain.finalize()
  for _ in range(chain.params.total_rounds - 1):
    play_round(chain)
  with pytest.raises(RevertError, match="start_round: all 4 rounds are done"):
    chain.start_round()


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
    seed_block = chain.task.functions.seed_block().call()
    bh = bytes(chain.w3.eth.get_block(seed_block)["hash"])
    assert roles.reward == pool // (chain.params.total_rounds - r)
    assert roles.seed == round_seed(prev, r, bh) and roles.global_hash == g
    prev = roles.seed
