"""Malicious voters against the behaviour probe (flock_jax.federated.committee).

The probe runs on the voters' side, so an attacker on the committee can decline to flag a
fellow attacker's backdoor. The chain excludes a proposal flagged by more than half the
committee stake and accepts the candidate named by more than half of it. The attacker plays
a colluding (or always-approving) voter beside a proposer whose update the probe flags: as a
minority it gains nothing (its fellow's update stays out and is slashed, its own vote names a
losing candidate); as a majority it gets the update into G, and the run must apply exactly
what the chain accepted, which an audit rebuilds from the stored blobs.

The draw depends on G's hash (so on the machine), so each test reads round 0's roles first
and hands the attacker's parts to the participants drawn.
"""

import jax
import numpy as np
import pytest
from test_probe import THRESHOLD, _collapsing_update, _run, submit_instead

from flock_jax.federated import committee, hashing, voting
from flock_jax.federated.engine import build, make_ledger
from flock_jax.federated.rounds import run_rounds


def test_voter_views_follow_each_behaviour():
  proposers = [5, 2, 7, 1]
  honest = committee.View((5, 1), ("d5", "d1"), (False, True, True, False))  # 2 NaN, 7 probed
  probed_out = [(7, "d7")]
  attacker = {7, 3}.__contains__
  for b in ("honest", "always_reject", "absent"):
    assert committee.voter_view(b, honest, probed_out, proposers, attacker) is honest
  for b in ("colluding", "always_approve"):
    v = committee.voter_view(b, honest, probed_out, proposers, attacker)
    # 7 kept in proposer order and unflagged; 2's structural flag stays
    assert v == committee.View((5, 7, 1), ("d5", "d7", "d1"), (False, True, False, False))
  # a colluder keeps only a fellow's probed-out update; an always-approver keeps any
  honest_probed = [(7, "d7")]
  assert (
      committee.voter_view("colluding", honest, honest_probed, proposers, {3}.__contains__)
      is honest
  )
  ids, deltas, acc = committee.accepted_view([honest, v], (True, False, False, True), proposers)
  assert ids == [5, 7, 1] and deltas == ["d5", "d7", "d1"] and acc == [True, False, True]


def _roles_of_round_0(run):
  _, state = build(run)
  return make_ledger(run, state.global_hash).start_round(), state


def _attacked_run(roles, behaviour, colluders, vote_mode):
  """One round in which round 0's first proposer is a backdoor attacker and `colluders` of its
  voters vote with `behaviour`."""
  p = roles.proposers[0]
  parts = [f"{p}:backdoor"] + [f"{j}:{behaviour}" for j in roles.voters[:colluders]]
  return _run(behaviours=",".join(parts), rounds=1, vote_mode=vote_mode), p


@pytest.mark.parametrize("behaviour", ["colluding", "always_approve"])
@pytest.mark.parametrize("vote_mode", ["whole", "per_proposal"])
def test_a_malicious_minority_of_voters_cannot_unflag_a_backdoor(
    monkeypatch, tmp_path, behaviour, vote_mode
):
  from flock_jax.chain.store import AdapterStore

  poisoned = _collapsing_update(_run())
  roles, state = _roles_of_round_0(_run())
  run, p = _attacked_run(roles, behaviour, 1, vote_mode)
  submit_instead(monkeypatch, poisoned, p)
  ledger = make_ledger(run, state.global_hash)
  store = AdapterStore(tmp_path)
  (r,) = run_rounds(run, ledger=ledger, store=store)
  assert list(r.proposers) == list(roles.proposers) and list(r.voters) == list(roles.voters)
  k, bad = r.proposers.index(p), r.voters[0]
  assert r.extra["probe_scores"][str(p)] > THRESHOLD  # flagged by the honest voters
  assert not r.proposal_accepted[k] and p in r.slashes and p not in r.rewards
  assert r.attacker_proposals == r.attacker_accepted == 0  # excluded by the committee
  # the malicious voter approved what kept its fellow in; it did not carry the committee
  row = r.voters.index(bad)
  assert r.approvals[row] is True or (isinstance(r.approvals[row], list) and any(r.approvals[row]))
  if vote_mode == "whole" and not r.void:  # it named a candidate the committee did not
    assert bad in r.slashes and bad not in r.rewards
  # G is G_0 + the mean of the honest proposals the chain accepted (or G_0)
  _check_new_global(r, store, ledger, state.global_hash, vote_mode)


@pytest.mark.parametrize("behaviour", ["colluding", "always_approve"])
@pytest.mark.parametrize("vote_mode", ["whole", "per_proposal"])
def test_a_malicious_majority_of_voters_lets_the_flagged_backdoor_in(
    monkeypatch, tmp_path, behaviour, vote_mode
):
  """The probe's limit, measured rather than assumed: two of three equal-stake voters hold
  more than half the committee stake. The run then follows the chain: G becomes the candidate
  the attackers named, rebuilt here from the stored blobs of G_0 and the chain-valid
  proposals."""
  from flock_jax.chain.store import AdapterStore

  poisoned = _collapsing_update(_run())
  roles, state0 = _roles_of_round_0(_run())
  run, p = _attacked_run(roles, behaviour, 2, vote_mode)
  submit_instead(monkeypatch, poisoned, p)
  ledger = make_ledger(run, state0.global_hash)
  store = AdapterStore(tmp_path)
  (r,) = run_rounds(run, ledger=ledger, store=store)
  assert list(r.proposers) == list(roles.proposers) and list(r.voters) == list(roles.voters)
  k = r.proposers.index(p)
  assert r.extra["probe_scores"][str(p)] > THRESHOLD
  assert any(e.startswith(f"participant {p}: behaviour probe") for e in r.rejected_updates)
  assert r.proposal_accepted[k] and p not in r.slashes and p in r.rewards
  # the chain's valid set: the attacker's flagged update counts as proposed and accepted
  assert r.attacker_proposals == r.attacker_accepted == 1
  honest_voter = r.voters[2]
  assert honest_voter in r.slashes  # it named (whole) or rejected (per proposal) the winners
  accepted = [i for i, a in zip(r.proposers, r.proposal_accepted) if a]
  if vote_mode == "per_proposal" and behaviour == "colluding":
    assert accepted == [p]  # the colluders also reject every honest proposal
  _check_new_global(r, store, ledger, state0.global_hash, vote_mode)


def _check_new_global(r, store, ledger, g0_hash, vote_mode):
  """The run's new G is G_0 + the mean of the proposals the chain accepted, rebuilt from the
  stored blobs alone (voting.candidate_bytes, the audit's rule); G_0 if none was."""
  accepted = [i for i, a in zip(r.proposers, r.proposal_accepted) if a]
  g0 = store.get(g0_hash) if g0_hash in store else b""
  if vote_mode == "whole":
    assert r.global_hash == r.chain_global_hash  # per proposal the chain keeps a hash chain
    assert bool(accepted) == r.accepted
  if not accepted:
    assert r.global_hash == "0x" + g0_hash.hex()
    return
  order = voting.candidate_order([ledger.addresses()[i] for i in accepted])
  named = [bytes.fromhex(r.extra["proposal_hashes"][str(accepted[o])][2:]) for o in order]
  rebuilt = hashing.tree_from_canonical_bytes(
      voting.candidate_bytes(g0, [store.get(h) for h in named])
  )
  assert "0x" + hashing.tree_hash(rebuilt).hex() == r.global_hash
  got = hashing.tree_from_canonical_bytes(store.get(bytes.fromhex(r.global_hash[2:])))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(rebuilt)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_capture_odds_match_every_draw_enumerated_and_the_chain_draw_sampled():
  """committee.capture_odds against two references: every (committee, proposers) split
  enumerated for a small task, and the chain's own draw (its Python replica) over 4000 seeds,
  within 4 binomial standard deviations (keccak seeds: the same on every machine)."""
  from itertools import combinations

  from flock_jax.chain.draw import draw_roles

  n, P, V = 7, 2, 3
  for A in range(n + 1):
    hits = total = 0
    for voters in combinations(range(n), V):
      rest = [i for i in range(n) if i not in voters]
      for proposers in combinations(rest, P):
        total += 1
        hits += 2 * sum(v < A for v in voters) > V and any(i < A for i in proposers)
    assert committee.capture_odds(n, A, P, V) == pytest.approx(hits / total, abs=1e-12)
  n, P, V, A, k = 10, 4, 3, 4, 4000
  candidates = [(f"0x{i + 1:040x}", 1) for i in range(n)]
  bad = {a for a, _ in candidates[:A]}
  hits = 0
  for s in range(k):
    proposers, voters = draw_roles(s.to_bytes(32, "big"), candidates, P, V, False)
    hits += 2 * sum(v in bad for v in voters) > V and any(i in bad for i in proposers)
  p = committee.capture_odds(n, A, P, V)
  assert p == pytest.approx(58 / 210)  # 0.276: (36 * 30 + 4 * 20) / (120 * 35)
  assert abs(hits / k - p) < 4 * (p * (1 - p) / k) ** 0.5
  with pytest.raises(ValueError, match="P \\+ V <= n"):
    committee.capture_odds(5, 1, 3, 3)
