"""The probe's memory across rounds (config.federation.probe_budget, flock_jax.federated.probe
.memory): each participant's probe scores in excess of an allowance add up over the run, and a
participant whose sum exceeds the budget is flagged whenever it proposes.

The attacker plays the adaptive backdoor (backdoor_evade), which shrinks every piece under the
per-round threshold, on the tiny model. The threshold here is 0.3 so that its pieces score far
above the honest proposals' 0.01-0.04 (measured) and the allowance (0.07) sits between the two
(at 0.05 an honest score of 0.041 was one rounding change of the training from it):
- an attacker that ignores the memory is flagged once its pieces' excess passes the budget,
  then slashed at every later proposal, and its unflagged pieces carry at most the budget;
- the attacker that knows the memory aims each piece under what is left of its budget: never
  flagged, and all its pieces together carry at most the budget (the gain the memory bounds);
- honest proposers carry no excess at all.
"""

import dataclasses

import jax
import numpy as np
import pytest

from test_probe import ATTACKER, _collapsing_update, _run, submit_instead

from flock_jax.federated import probe as P
from flock_jax.federated import rounds as R
from flock_jax.federated.attacks import EVADE_MARGIN
from flock_jax.federated.engine import build, make_ledger
from flock_jax.federated.ledger import WEI
from flock_jax.federated.rounds import run_rounds
from flock_jax.run_config import RunConfigError, from_config, load_config

THRESHOLD, ALLOWANCE, BUDGET, ROUNDS = 0.3, 0.07, 0.2, 8


def test_memory_sums_each_participants_excess_and_flags_past_the_budget():
  """memory() against its definition written as a loop over random rounds, and
  memory_threshold() as the boundary of what passes."""
  rng = np.random.default_rng(0)
  sums, want = {}, {}
  for _ in range(12):
    who = rng.choice(6, size=3, replace=False).tolist()
    scores = {i: float(rng.uniform(0, 0.12)) for i in who}
    before = dict(want)
    for i, s in scores.items():
      want[i] = want.get(i, 0.0) + max(0.0, s - 0.03)
    sums, flagged = P.memory(scores, sums, 0.03, 0.1)
    assert sums == pytest.approx(want, abs=1e-12)
    assert flagged == {i for i in scores if want[i] > 0.1}
    for i in range(6):  # a score passes both rules iff it is at most the memory's threshold
      limit = P.memory_threshold(0.1, 0.03, 0.1, before.get(i, 0.0))
      for s in (limit - 1e-3, limit + 1e-3):
        if 0 <= s <= 1:
          passes = s <= 0.1 and not P.memory({i: s}, before, 0.03, 0.1)[1]
          assert passes == (s < limit), (i, s, limit)
  # once over the budget, a zero score is still flagged: the sum never falls
  over = next(i for i in want if want[i] > 0.1)
  assert P.memory({over: 0.0}, sums, 0.03, 0.1)[1] == {over}
  assert P.memory_threshold(0.1, 0.03, 0.1, want[over]) == 0.0


@pytest.mark.parametrize("probe", ["none", "private"])
def test_a_budget_needs_a_public_probe(probe):
  c = load_config("tiny")
  c.federation.probe, c.federation.probe_budget = probe, 0.1
  with pytest.raises(RunConfigError, match=r"probe_budget=0\.1 needs a public probe"):
    from_config(c)
  c.federation.probe, c.federation.probe_budget = "anchored", -0.1
  with pytest.raises(RunConfigError, match=r"federation\.probe_budget"):
    from_config(c)


def _memory_run(rounds=ROUNDS, sybil_stake=0):
  """The tiny run of test_probe, attacker 0 playing backdoor_evade, with the memory on; with
  `sybil_stake`, the attacker stakes that (one of a holder's sybil accounts) and budgets go by
  stake."""
  run = _run("backdoor_evade", mode="anchored")
  fed = dataclasses.replace(
      run.federation,
      rounds=rounds,
      probe_threshold=THRESHOLD,
      probe_budget=BUDGET,
      probe_allowance=ALLOWANCE,
      probe_budget_by_stake=bool(sybil_stake),
  )
  attack = dataclasses.replace(run.attack, sybil_stake=sybil_stake)
  return dataclasses.replace(run, federation=fed, attack=attack)


@pytest.fixture(scope="module")
def poisoned():
  return _collapsing_update(_memory_run())


def _play(monkeypatch, poisoned, aware, **kw):
  """Rounds in which the attacker submits its collapsing update through backdoor_evade, which
  aims under the memory's threshold (`aware`) or under the per-round threshold only."""
  submit_instead(monkeypatch, poisoned)
  if not aware:
    monkeypatch.setattr(R, "memory_threshold", lambda threshold, *_: threshold)
  run = _memory_run(**kw)
  _, state = build(run)
  ledger = make_ledger(run, state.global_hash)
  return run, ledger, int(ledger.stakes()[ATTACKER]), run_rounds(run, ledger=ledger)


def _honest_carry_nothing(rows):
  for r in rows:
    for k, i in enumerate(r.proposers):
      if i != ATTACKER:
        assert r.extra["probe_scores"][str(i)] < ALLOWANCE - 0.01  # measured at most 0.033
        assert not [e for e in r.rejected_updates if e.startswith(f"participant {i}:")]
        assert r.proposal_accepted[k] == r.accepted
  assert all(x == 0.0 for i, x in rows[-1].extra["probe_suspicion"].items() if i != str(ATTACKER))


def test_pieces_under_the_threshold_are_flagged_once_their_excess_passes_the_budget(
    monkeypatch, poisoned
):
  """The attacker that ignores the memory: every piece passes the per-round threshold, but the
  piece that takes its sum past the budget is flagged, excluded and slashed, and so is every
  proposal it makes afterwards. What it got into G carries at most the budget."""
  _, ledger, stake0, rows = _play(monkeypatch, poisoned, aware=False)
  drawn = [r for r in rows if ATTACKER in r.proposers]
  assert len(drawn) >= 3, "the draw drew the attacker fewer than 3 times"
  carried, over = 0.0, False
  for r in drawn:
    k = r.proposers.index(ATTACKER)
    score = r.extra["probe_scores"][str(ATTACKER)]
    # every piece passes the per-round threshold (measured 0.08-0.20), so only the memory can
    # flag it; how far over the allowance a piece lands depends on the G it meets, which on the
    # machine's last bits (they steer the draw): `over` below checks that the sum got past.
    assert score < THRESHOLD - 0.05
    named = [e for e in r.rejected_updates if e.startswith(f"participant {ATTACKER}:")]
    over = over or r.extra["probe_suspicion"][str(ATTACKER)] > BUDGET
    if over:
      assert len(named) == 1 and "behaviour probe's memory" in named[0], named
      assert not r.proposal_accepted[k]
      assert ATTACKER in r.slashes and ATTACKER not in r.rewards
    else:
      assert not named and r.proposal_accepted[k] == r.accepted
      carried += max(0.0, score - ALLOWANCE) if r.accepted else 0.0
  assert over, "the attacker never passed its budget"
  assert carried <= BUDGET
  assert int(ledger.stakes()[ATTACKER]) < stake0
  _honest_carry_nothing(rows)


def test_the_attacker_that_knows_the_memory_carries_at_most_the_budget(monkeypatch, poisoned):
  """backdoor_evade aiming under what is left of its budget: never flagged, each piece under
  the memory's threshold at its round, and all its pieces together carry at most the budget,
  so the memory, not the per-round threshold, is what bounds it."""
  _, _, _, rows = _play(monkeypatch, poisoned, aware=True)
  drawn, before, bound = 0, 0.0, False
  for r in rows:
    if ATTACKER in r.proposers:
      drawn += 1
      k = r.proposers.index(ATTACKER)
      score = r.extra["probe_scores"][str(ATTACKER)]
      limit = P.memory_threshold(THRESHOLD, ALLOWANCE, BUDGET, before)
      bound |= limit < THRESHOLD
      assert score <= EVADE_MARGIN * limit + 1e-6
      assert not [e for e in r.rejected_updates if e.startswith(f"participant {ATTACKER}:")]
      assert r.proposal_accepted[k] == r.accepted
      assert (ATTACKER in r.slashes) == (not r.accepted)  # only with its rejected candidates
    before = r.extra["probe_suspicion"].get(str(ATTACKER), 0.0)
  assert drawn >= 3 and bound, "the memory never bound the attacker"
  assert 0.5 * BUDGET < before <= BUDGET  # measured 0.17: it spent most of its budget
  _honest_carry_nothing(rows)


@pytest.mark.parametrize("by_stake", [False, True])
def test_sybils_splitting_a_stake_split_its_budget(by_stake):
  """One holder's stake over k accounts, each proposing every round the largest piece its
  memory passes: with budgets by stake the k accounts together carry what one account holding
  the whole stake may, whatever k; with equal budgets, k times that (the attack the option
  closes)."""
  threshold, allowance, budget, carried = 0.1, 0.01, 0.05, {}
  for k in (1, 2, 4):
    weights = {i: 1.0 / k for i in range(k)} if by_stake else None  # stake 100/k of 100
    sums, carried[k] = {}, 0.0
    for _ in range(12):
      for i in range(k):
        own = budget * (weights or {}).get(i, 1.0)
        score = max(0.0, P.memory_threshold(threshold, allowance, own, sums.get(i, 0.0)) - 1e-4)
        sums, flagged = P.memory({i: score}, sums, allowance, budget, weights)
        assert not flagged
        carried[k] += max(0.0, score - allowance)
  for k in (2, 4):
    if by_stake:
      assert carried[k] <= budget and carried[k] == pytest.approx(carried[1], abs=1e-3)
    else:
      assert carried[k] == pytest.approx(k * carried[1], abs=1e-3) and carried[1] > 0.9 * budget


def test_a_sybil_accounts_budget_is_its_share_of_the_stake(monkeypatch, poisoned):
  """federation.probe_budget_by_stake in a run: the attacker staking 40% of the standard stake
  has 40% of the budget (0.08), read from the chain, so its first piece (excess measured 0.12:
  under the whole budget, 0.2) already passes it and is flagged and slashed."""
  run, ledger, stake0, rows = _play(monkeypatch, poisoned, aware=False, rounds=2, sybil_stake=40)
  assert 5 * stake0 == 2 * run.ledger.stake * WEI  # 40% of the standard stake, on chain
  r = next(r for r in rows if ATTACKER in r.proposers)
  excess = r.extra["probe_scores"][str(ATTACKER)] - ALLOWANCE
  assert 0.4 * BUDGET + 0.02 < excess < BUDGET - 0.02
  named = [e for e in r.rejected_updates if e.startswith(f"participant {ATTACKER}:")]
  assert len(named) == 1 and "over its budget 0.08" in named[0], named
  assert ATTACKER in r.slashes and not r.proposal_accepted[r.proposers.index(ATTACKER)]


def test_the_memory_survives_a_checkpoint(monkeypatch, poisoned, tmp_path):
  """Stopped after the first round that leaves the attacker a nonzero sum and resumed from its
  checkpoint, a run sums and flags exactly as the uninterrupted one. (Which rounds draw the
  attacker depends on G's hash, so on the machine's last bits: the stop round is chosen from
  the uninterrupted run.)"""
  from flock_jax.checkpoint import RunCheckpointer
  from flock_jax.federated.run_state import checkpoint_meta, checkpoint_tree

  run, _, _, full = _play(monkeypatch, poisoned, aware=False)
  owed = lambda m: m.extra["probe_suspicion"].get(str(ATTACKER), 0.0)
  drawn = [m.round for m in full if ATTACKER in m.proposers]
  stop = next((m.round for m in full if owed(m) > 0 and max(drawn) > m.round), None)
  assert stop is not None, f"the attacker was not drawn twice (rounds {drawn})"
  memory = lambda m: any("behaviour probe's memory" in e for e in m.rejected_updates)
  assert any(memory(m) for m in full[stop + 1 :]), "no flag by the memory after the stop"
  ck, seen = RunCheckpointer(tmp_path / "ck"), {}

  class Stop(Exception):
    pass

  def stop_after(state, m, ledger):
    seen["ledger"] = ledger
    if m.round == stop:
      ck.save(stop + 1, checkpoint_tree(state), checkpoint_meta(state, m))
      raise Stop

  _, state = build(run)
  with pytest.raises(Stop):
    run_rounds(run, ledger=make_ledger(run, state.global_hash), on_round=stop_after)
  _, fresh = build(run)
  tree, meta = ck.restore(stop + 1, checkpoint_tree(fresh))
  assert meta["probe_suspicion"][str(ATTACKER)] == owed(full[stop]) > 0
  rest = run_rounds(run, ledger=seen["ledger"], resume=lambda _: (tree, meta))
  assert [m.round for m in rest] == [m.round for m in full[stop + 1 :]]
  for a, b in zip(rest, full[stop + 1 :]):
    assert a.extra["probe_suspicion"] == b.extra["probe_suspicion"]
    assert a.rejected_updates == b.rejected_updates and a.global_hash == b.global_hash


def test_probe_memory_replays_a_finished_runs_scores(tmp_path):
  """launch/probe_memory.py on a workdir written here: its sums and first flagged rounds equal
  the definition worked by hand, and a run without probe scores is refused by name."""
  import json
  import subprocess
  import sys

  from flock_jax.workdir import config_dict

  c = load_config("tiny")
  c.federation.num_participants, c.federation.num_proposers, c.federation.num_voters = 4, 2, 2
  c.attack.fraction, c.attack.proposer = 0.25, "backdoor"
  attacker = from_config(c).attack.attackers(4)
  assert len(attacker) == 1
  a, h = attacker[0], next(i for i in range(4) if i not in attacker)
  (tmp_path / "config.json").write_text(json.dumps(config_dict(c)))
  scores = [{a: 0.04, h: 0.02}, {h: 0.045}, {a: 0.035, h: 0.0}, {a: 0.0}]
  rows = [{"round": -1, "extra": None}] + [
      {"round": r, "extra": {"probe_scores": {str(i): s for i, s in sc.items()}}}
      for r, sc in enumerate(scores)
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  cmd = [sys.executable, "launch/probe_memory.py", f"--workdir={tmp_path}"]
  out = subprocess.run(
      cmd + ["--allowance=0.01", "--budget=0.04,0.06"], capture_output=True, text=True, check=True
  )
  got = json.loads(out.stdout.strip().splitlines()[-1])
  # attacker: 0.03 + 0.025 = 0.055 by round 2; honest: 0.01 + 0.035 = 0.045 by round 1
  assert got[0]["attackers"] == {str(a): {"sum": 0.055, "first_flagged": 2}}
  assert got[0]["max_honest"] == 0.045 and got[0]["honest_flagged"] == {str(h): 1}
  assert got[1]["attackers"] == {str(a): {"sum": 0.055, "first_flagged": None}}
  assert got[1]["honest_flagged"] == {}
  (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
  out = subprocess.run(cmd, capture_output=True, text=True)
  assert out.returncode != 0 and "holds no probe scores" in out.stderr + out.stdout
