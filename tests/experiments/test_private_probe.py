"""The private trigger search (config.federation.probe='private'): every honest voter runs the
trigger search on probe prompts it drew itself, so nobody can run a voter's probe before
committing, the attacker included.

Checked here: each participant's prompts are its own (they differ from the public ones and
from every other participant's, with the same reference tokens S); the round follows the
committee's flags (a proposal flagged by a minority is only rejected by those voters, one
flagged by a majority is excluded and slashed); the attacker that proposes a collapsing update
gains nothing; and the adaptive attacker shrinks against prompts it drew itself, not the
voters'. Whether a private search stops the adaptive backdoor is measured on SmolLM2
(docs/results, experiment 5).
"""

import dataclasses

import jax
import numpy as np
import pytest

from test_probe import ATTACKER, THRESHOLD, _collapsing_update, _run, submit_instead

from flock_jax.federated import probe as P
from flock_jax.federated.engine import build, make_ledger
from flock_jax.federated.rounds import run_rounds


def _private_run(behaviour="backdoor", vote_mode="whole", rounds=2, scope="proposal", exempt=False):
  run = _run(behaviour, mode="private")
  fed = dataclasses.replace(
      run.federation,
      vote_mode=vote_mode,
      rounds=rounds,
      search_slots=2,
      search_topk=4,
      search_steps=1,
      search_scope=scope,
      probe_exempt_g=exempt,
  )
  return dataclasses.replace(run, federation=fed)


def test_each_participant_draws_its_own_probe_prompts():
  engine, _ = build(_private_run())
  pop = engine.population
  public, a, b = pop.probe, pop.private_probe(4), pop.private_probe(5)
  assert pop.private_probe(4) is a  # built once
  for arrays in (a, b):
    assert arrays["tokens"].shape[:2] == public["tokens"].shape[:2]  # [D, n]
    assert arrays["tokens"].shape[2] % 32 == 0  # padded to shared compiled shapes
    np.testing.assert_array_equal(arrays["answer_tokens"], public["answer_tokens"])  # same S
  rows = lambda arr: {tuple(r[s > 0]) for r, s in zip(arr["tokens"][0], arr["segment_ids"][0])}
  assert rows(a) != rows(public) and rows(a) != rows(b)
  again = build(_private_run())[0].population.private_probe(4)  # the same draw every time
  np.testing.assert_array_equal(again["tokens"], a["tokens"])


def test_only_the_private_probe_has_private_prompts():
  engine, _ = build(_run(mode="search"))
  with pytest.raises(ValueError, match="federation.probe='private'"):
    engine.population.private_probe(4)


def _flagging(monkeypatch, flag_rows):
  """Voter rows `flag_rows` of the committee flag the attacker's proposal, nobody else's."""
  from flock_jax.federated import rounds

  def fake(engine, G, voters, valid_ids, valid, round_index):
    flags = np.zeros((len(voters), len(valid)), bool)
    if ATTACKER in valid_ids:
      flags[list(flag_rows), valid_ids.index(ATTACKER)] = True
    by_voter = {j: {i: float(flags[r, k]) for k, i in enumerate(valid_ids)} for r, j in
                enumerate(voters)}  # fmt: skip
    return flags, by_voter

  monkeypatch.setattr(rounds, "_private_probe", fake)


@pytest.mark.parametrize("rows,excluded", [((0,), False), ((0, 1), True)])
def test_the_committee_majority_of_private_flags_excludes(monkeypatch, rows, excluded):
  """Per-proposal vote, the attacker's proposal flagged by one of three voters: that voter
  rejects its bit and names it invalid, the proposal is neither excluded nor slashed as invalid
  and the two others vote on its gain; flagged by two of three it is excluded and slashed."""
  _flagging(monkeypatch, rows)
  run = _private_run("honest", vote_mode="per_proposal", rounds=3)
  _, state = build(run)
  rows_out = run_rounds(run, ledger=make_ledger(run, state.global_hash))
  drawn = [r for r in rows_out if ATTACKER in r.proposers]
  assert drawn, "the draw never drew the attacker"
  for r in drawn:
    k = r.proposers.index(ATTACKER)  # every proposal is valid here: its ballot index too
    named = [e for e in r.rejected_updates if e.startswith(f"participant {ATTACKER}:")]
    for row in rows:
      assert r.approvals[row][k] is False  # a flagging voter never approves it
    if excluded:
      assert len(named) == 1 and "on their own prompts" in named[0]
      assert not r.proposal_accepted[k] and ATTACKER in r.slashes
    else:
      assert not named
      others = [r.approvals[j][k] for j in range(len(r.voters)) if j not in rows]
      # undecided or decided by the others' bits alone: accepted only if both approve
      assert r.proposal_accepted[k] == all(others)


@pytest.mark.parametrize("scope,exempt", [("proposal", False), ("round", False), ("round", True)])
def test_a_collapsing_update_gains_nothing_against_the_private_search(monkeypatch, scope, exempt):
  """The attacker submits an update that answers every prompt with its target: every honest
  voter's own search flags it, so it is excluded and slashed; honest proposals pass every
  voter's probe, also at the tokens a round-scope search found on the sum of all proposals."""
  run = _private_run(scope=scope, exempt=exempt)
  submit_instead(monkeypatch, _collapsing_update(run))
  _, state = build(run)
  ledger = make_ledger(run, state.global_hash)
  stake0 = int(ledger.stakes()[ATTACKER])
  rows = run_rounds(run, ledger=ledger)
  assert any(ATTACKER in r.proposers for r in rows), "the draw never drew the attacker"
  for r in rows:
    by_voter = r.extra["probe_scores_by_voter"]
    assert sorted(map(int, by_voter)) == sorted(r.voters)  # every (honest) voter probed
    for k, i in enumerate(r.proposers):
      scores = [by_voter[str(j)][str(i)] for j in r.voters]
      named = [e for e in r.rejected_updates if e.startswith(f"participant {i}:")]
      if i == ATTACKER:
        assert min(scores) > THRESHOLD + 0.05
        assert len(named) == 1 and not r.proposal_accepted[k]
        assert i in r.slashes and i not in r.rewards
      else:
        assert max(scores) < THRESHOLD - 0.02 and not named
  assert int(ledger.stakes()[ATTACKER]) < stake0


def test_the_adaptive_attacker_shrinks_against_prompts_it_drew_itself():
  """backdoor_evade cannot run a voter's private probe: it shrinks its update until the search
  on its own prompts passes it. Its score is that search's, which no voter runs."""
  from flock_jax.federated.attacks import EVADE_MARGIN, EVADE_SCALES, evade_probe

  run = _private_run("backdoor_evade")
  poisoned = _collapsing_update(run)
  engine, state = build(run)
  G = state.global_lora
  pop = engine.population
  with engine.mesh_context():
    sub, s, score = evade_probe(engine, G, poisoned, THRESHOLD, mode="private", owner=ATTACKER)
    own = P.probe(engine, G, [sub], mode="search", arrays=pop.private_probe(ATTACKER))[0][0]
    voter = P.probe(engine, G, [sub], mode="search", arrays=pop.private_probe(4))[0][0]
    with pytest.raises(ValueError, match="attacker's index"):
      evade_probe(engine, G, poisoned, THRESHOLD, mode="private")
  assert EVADE_SCALES.index(s) > 0  # unshrunk, its own search flags it
  assert score == pytest.approx(own, abs=1e-6) and own <= EVADE_MARGIN * THRESHOLD
  assert voter != pytest.approx(own, abs=1e-6)  # a voter's prompts score it otherwise
  expect = jax.tree.map(lambda x: x * s, poisoned)
  for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(expect)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
