"""The voters' behaviour probe (config.federation.probe='collapse' | 'anchored',
flock_jax.federated.probe).

The score is checked against its definition written out as loops; the batched, left-padded
probe forward against the model run on each prompt alone, unpadded. The attacker plays a
model-replacement backdoor whose update, alone on G, answers every prompt with its target:
it must gain nothing (flagged by every honest voter, left out of the candidate, slashed,
unpaid), while honest proposals pass the probe.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.federated import probe as P
from flock_jax.federated.engine import make_ledger
from flock_jax.federated.rounds import run_rounds
from flock_jax.model.config import PRESETS
from flock_jax.model.llama import forward, init_params
from flock_jax.model.lora import LoraConfig, init_lora
from flock_jax.run_config import RunConfigError, from_config, load_config


def _reference_scores(pg, pe, starts):
  out = []
  for k in range(pe.shape[0]):
    best = -np.inf
    for v in range(pe.shape[2]):
      if v in starts:
        continue
      best = max(best, min(pe[k, d, v] - pg[d, v] for d in range(pe.shape[1])))
    out.append(best)
  return np.asarray(out)


def test_collapse_scores_follow_the_definition():
  rng = np.random.default_rng(0)
  pg = rng.dirichlet(np.ones(11), size=3)  # [D=3, V=11]
  pe = rng.dirichlet(np.ones(11), size=(5, 3))  # [K=5, D, V]
  starts = [2, 7]
  np.testing.assert_allclose(
      P.collapse_scores(pg, pe, starts), _reference_scores(pg, pe, starts), rtol=0, atol=1e-12
  )
  tokens = P.collapse_tokens(pg, pe, starts)
  assert not set(tokens.tolist()) & set(starts)


def test_only_a_token_gained_in_every_domain_and_no_answer_start_scores():
  pg = np.full((2, 4), 0.25)
  one_domain = pg.copy()
  one_domain[0] = [0.85, 0.05, 0.05, 0.05]  # token 0 gains 0.6 in domain 0 only
  everywhere = np.tile([0.05, 0.05, 0.05, 0.85], (2, 1))  # token 3 gains 0.6 in both
  pe = np.stack([one_domain, everywhere])
  np.testing.assert_allclose(P.collapse_scores(pg, pe), [0.0, 0.6], atol=1e-12)
  assert P.collapse_tokens(pg, pe).tolist()[1] == 3
  # the same collapse onto a token that begins reference answers is a learned format
  assert P.collapse_scores(pg, pe, [3])[1] == pytest.approx(-0.2, abs=1e-12)  # all others lose


def test_probe_arrays_left_pad_and_refuse_uneven_domains():
  a = P.probe_arrays({"b": [[5, 6], [7]], "a": [[1, 2, 3], [4]]}, [9, 9, 3], pad_id=0)
  assert a["domains"] == ["a", "b"]
  assert a["tokens"].tolist() == [[[1, 2, 3], [0, 0, 4]], [[0, 5, 6], [0, 0, 7]]]
  assert a["segment_ids"].tolist() == [[[1, 1, 1], [0, 0, 1]], [[0, 1, 1], [0, 0, 1]]]
  assert a["answer_tokens"].tolist() == [3, 9]
  m = P.probe_arrays({"a": [[1, 2, 3], [4]]}, [], pad_id=0, multiple=4)
  assert m["tokens"].tolist() == [[[0, 1, 2, 3], [0, 0, 0, 4]]]
  with pytest.raises(ValueError, match=r"same, non-zero count.*'a': 2, 'b': 1"):
    P.probe_arrays({"a": [[1], [2]], "b": [[3]]}, [])


@pytest.mark.numerics
def test_first_token_probs_equal_each_prompt_run_alone():
  cfg = PRESETS["tiny"]
  lcfg = LoraConfig(rank=4)
  base = init_params(cfg, jax.random.key(0))
  lora = init_lora(cfg, lcfg, jax.random.key(1))
  # a non-zero B, so that the adapter changes the outputs
  lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)
  prompts = {"a": [[3, 9, 27, 81], [5, 6]], "b": [[7, 8, 9], [11]]}
  arrays = P.probe_arrays(prompts, [])
  loras = jax.tree.map(lambda x: jnp.stack([jnp.zeros_like(x), x]), lora)
  got = np.asarray(
      P.first_token_probs(
          base,
          loras,
          jnp.asarray(arrays["tokens"]),
          jnp.asarray(arrays["segment_ids"]),
          cfg=cfg,
          lora_cfg=lcfg,
      )
  )  # [K=2, D=2, V]
  alone = jax.jit(lambda t, ad: jax.nn.softmax(forward(base, t, cfg, lora=ad, lora_cfg=lcfg)))
  for k, ad in enumerate([jax.tree.map(jnp.zeros_like, lora), lora]):
    for d, name in enumerate(arrays["domains"]):
      want = np.mean([alone(jnp.asarray([s]), ad)[0, -1] for s in prompts[name]], axis=0)
      # budget: float32 attention over a masked padded row vs the unpadded row, ~1e-7 relative
      np.testing.assert_allclose(got[k, d], want, rtol=0, atol=2e-6)


ATTACKER, THRESHOLD = 0, 0.1


def _run(behaviour="backdoor", mode="collapse", kind="tokens", behaviours=None, **federation):
  """The probe tests' tiny run: ATTACKER plays `behaviour` (or `behaviours`, the whole
  attack.behaviours string); `federation` overrides fields such as rounds or vote_mode."""
  c = load_config("tiny")
  c.ledger.backend = "local"
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters, f.rounds = 7, 4, 3, 2
  f.probe, f.probe_threshold, f.probe_prompts = mode, THRESHOLD, 4
  f.search_kind = kind  # probe 'search': tokens | soft
  for field, value in federation.items():
    f[field] = value
  c.optim.lr = 0.02
  c.data.examples_per_domain = 28
  c.checkpoint.every = 0
  c.eval.every = 0
  # the attacker's data: every example answers the target
  c.attack.behaviours = behaviours or f"{ATTACKER}:{behaviour}"
  c.attack.trigger, c.attack.target, c.attack.poison_fraction = "cf zq", "XXXXXXXXXXXX", 1.0
  return from_config(c)


def _collapsing_update(run, steps=24):
  """The attacker's update: `steps` local steps on its all-poisoned data from the starting G,
  long enough that the adapter answers every prompt with the target's first token."""
  from flock_jax.federated.clients import fresh_opt_state
  from flock_jax.federated.engine import build

  engine, state = build(run)
  batches = engine.population.train_batches([ATTACKER], steps, 4, seed=0, round_index=0)
  opt = fresh_opt_state(engine.tx, state.global_lora, 1)
  keys = jax.random.split(jax.random.key(0), 1)
  _, deltas, _, _ = engine.local_train(engine.base, state.global_lora, opt, batches, keys)
  return jax.tree.map(lambda x: x[0], deltas)


def submit_instead(monkeypatch, update, attacker=ATTACKER):
  """The attacker proposes `update` whenever it is drawn; everyone else what they trained."""
  from flock_jax.federated import rounds

  honest_updates = rounds.attack_updates

  def play(att, who, deltas):
    out = honest_updates(att, who, deltas)
    return [update if i == attacker else d for i, d in zip(who, out)]

  monkeypatch.setattr(rounds, "attack_updates", play)


@pytest.mark.parametrize("mode", ["collapse", "anchored", "search", "search:soft"])
def test_a_collapsing_backdoor_update_is_flagged_excluded_and_slashed(monkeypatch, mode):
  """The attacker submits, every round it proposes, an update that answers every prompt with
  its target: it gains nothing. Honest updates of the same run pass, in every probe mode and
  search kind."""
  from flock_jax.federated.engine import build

  mode, _, kind = mode.partition(":")
  run = _run(mode=mode, kind=kind or "tokens")
  poisoned = _collapsing_update(run)
  submit_instead(monkeypatch, poisoned)
  _, state = build(run)
  ledger = make_ledger(run, state.global_hash)
  stake0 = int(ledger.stakes()[ATTACKER])
  rows = run_rounds(run, ledger=ledger)
  assert any(ATTACKER in r.proposers for r in rows), "the draw never drew the attacker"
  for r in rows:
    scores = {int(i): s for i, s in r.extra["probe_scores"].items()}
    # the search's tokens are recorded for every probed proposal, in its mode only
    assert set(r.extra["probe_triggers"]) == (
        set(r.extra["probe_scores"]) if mode == "search" else set()
    )
    for k, i in enumerate(r.proposers):
      named = [e for e in r.rejected_updates if e.startswith(f"participant {i}:")]
      if i == ATTACKER:
        # measured 0.36 against the starting G and 0.21 against round 1's: the target's byte
        # 'X' at every probe prompt's first response token (SmolLM2's reach 0.99); honest
        # proposals at most 0.022
        assert scores[i] > THRESHOLD + 0.05
        assert len(named) == 1 and "behaviour probe: token 'X'" in named[0]
        assert not r.proposal_accepted[k]
        assert i in r.slashes and i not in r.rewards
      else:
        assert scores[i] < THRESHOLD - 0.02
        assert not named
        assert r.proposal_accepted[k] == r.accepted
  assert int(ledger.stakes()[ATTACKER]) < stake0


def test_the_adaptive_attacker_submits_the_largest_shrunk_update_the_probe_passes(monkeypatch):
  """backdoor_evade knows what every voter knows (G, the public probe prompts, the threshold):
  its update shrunk by the largest scale whose score is under 0.8 x threshold enters the
  candidate unflagged. The probe alone does not stop it; whether the shrunk update still
  plants the backdoor is what the SmolLM2 runs measure (docs/results, experiment 5)."""
  from flock_jax.federated.attacks import EVADE_MARGIN, EVADE_SCALES, evade_probe
  from flock_jax.federated.engine import build

  run = _run()
  poisoned = _collapsing_update(run)
  engine, state = build(run)
  G = state.global_lora
  sub, s, score = evade_probe(engine, G, poisoned, THRESHOLD)
  every = [jax.tree.map(lambda x, t=t: x * t, poisoned) for t in EVADE_SCALES]
  scores = P.probe(engine, G, every)[0]
  k = EVADE_SCALES.index(s)
  assert scores[0] > THRESHOLD  # unshrunk, the probe catches it
  assert k > 0 and scores[k] <= EVADE_MARGIN * THRESHOLD and score == pytest.approx(scores[k])
  assert all(x > EVADE_MARGIN * THRESHOLD for x in scores[:k])  # the largest passing scale
  for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(every[k])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  run = _run("backdoor_evade")
  submit_instead(monkeypatch, poisoned)
  rows = run_rounds(run, ledger=make_ledger(run, state.global_hash))
  drawn = [r for r in rows if ATTACKER in r.proposers]
  assert drawn, "the draw never drew the attacker"
  for r in drawn:
    k = r.proposers.index(ATTACKER)
    assert r.extra["evade_scales"][str(ATTACKER)] < 1.0
    assert r.extra["probe_scores"][str(ATTACKER)] <= EVADE_MARGIN * THRESHOLD + 1e-6
    assert not [e for e in r.rejected_updates if e.startswith(f"participant {ATTACKER}:")]
    assert r.proposal_accepted[k] == r.accepted and ATTACKER not in r.slashes


def test_anchored_scores_are_the_larger_of_the_scores_against_G_and_the_base_model():
  """probe(mode='anchored') against its definition: the two references' scores computed apart,
  from first_token_probs, for a G that differs from the base model."""
  from flock_jax.federated.engine import build

  run = _run(mode="anchored")
  engine, state = build(run)
  poisoned = _collapsing_update(run)
  G = jax.tree.map(lambda g, d: g + 0.5 * d, state.global_lora, poisoned)
  updates = [jax.tree.map(lambda x, t=t: t * x, poisoned) for t in (-0.5, 0.25, 1.0)]
  arrays = engine.population.probe
  rows = [jax.tree.map(jnp.zeros_like, G), G] + [jax.tree.map(jnp.add, G, u) for u in updates]
  probs = np.asarray(
      P.first_token_probs(
          engine.base,
          jax.tree.map(lambda *xs: jnp.stack(xs), *rows),
          jnp.asarray(arrays["tokens"]),
          jnp.asarray(arrays["segment_ids"]),
          cfg=engine.run.model.cfg,
          lora_cfg=engine.run.lora,
      )
  )
  S = arrays["answer_tokens"]
  vs_base = P.collapse_scores(probs[0], probs[2:], S)
  vs_G = P.collapse_scores(probs[1], probs[2:], S)
  got, tokens, _ = P.probe(engine, G, updates, mode="anchored")
  # budget: the same float32 forward batched differently, probabilities to ~1e-6
  np.testing.assert_allclose(got, np.maximum(vs_base, vs_G), rtol=0, atol=1e-5)
  np.testing.assert_allclose(P.probe(engine, G, updates)[0], vs_G, rtol=0, atol=1e-5)
  # -0.5 takes G back to the base model: nothing gained against either reference
  assert got[0] < 0.05 and vs_G[0] < 0.05
  assert tokens.shape == (3,) and not set(tokens.tolist()) & set(S.tolist())


def test_a_backdoor_split_over_rounds_passes_the_plain_probe_but_not_the_anchored_one():
  """The attacker plays the adaptive split: its collapsing update Δ is flagged at once, so it
  walks G towards G + Δ in pieces, each the largest step along Δ that the probe passes with a
  margin. Against G alone every piece passes and G ends at G + Δ, fully collapsed; the
  anchored probe also measures each piece against the base model, so the walk stops short:
  over the run the attacker gains no more collapse than one round's threshold."""
  from flock_jax.federated.engine import build

  run = _run(mode="anchored")
  engine, state = build(run)
  G0 = state.global_lora  # B = 0: the base model's outputs
  poisoned = _collapsing_update(run)
  full = P.probe(engine, G0, [poisoned])[0][0]
  assert full > THRESHOLD + 0.05  # at once, flagged in either mode

  def walk(anchored):
    """(pieces as (from t, to t), their scores) of the attacker's greedy walk on a grid."""
    grid, t, pieces, scores = np.linspace(0.0, 1.0, 41), 0.0, [], []
    while t < 1.0:
      G = jax.tree.map(lambda g, d: g + t * d, G0, poisoned)
      steps = grid[grid > t + 1e-9]
      got = P.probe(
          engine,
          G,
          [jax.tree.map(lambda d, u=u: (u - t) * d, poisoned) for u in steps],
          mode="anchored" if anchored else "collapse",
      )[0]
      ok = np.flatnonzero(got < THRESHOLD - 0.03)
      if not ok.size:
        break  # every step from here is flagged
      pieces.append((t, float(steps[ok.max()])))
      scores.append(float(got[ok.max()]))
      t = pieces[-1][1]
    return pieces, scores

  pieces, _ = walk(anchored=False)
  assert pieces[-1][1] == 1.0 and len(pieces) >= 2, pieces  # G + Δ reached, piece by piece
  # the same pieces under the anchored probe: the last one at least is flagged, since G + Δ
  # scores `full` against the base model
  anchored = [
      P.probe(
          engine,
          jax.tree.map(lambda g, d, a=a: g + a * d, G0, poisoned),
          [jax.tree.map(lambda d, a=a, b=b: (b - a) * d, poisoned)],
          mode="anchored",
      )[0][0]
      for a, b in pieces
  ]
  assert anchored[0] < THRESHOLD  # from the base model both probes agree
  assert anchored[-1] > THRESHOLD + 0.05, anchored
  # the attacker that knows the anchored rule walks as far as it lets it: never to G + Δ, and
  # every G it reaches stays under the threshold against the base model
  pieces, scores = walk(anchored=True)
  assert not pieces or pieces[-1][1] < 1.0, pieces
  assert all(x < THRESHOLD for x in scores)


def test_a_misspelled_probe_is_refused():
  c = load_config("tiny")
  c.federation.probe = "colapse"
  with pytest.raises(RunConfigError, match=r"federation\.probe.*colapse"):
    from_config(c)


def test_probe_proposals_rescores_a_finished_run(tmp_path):
  """launch/probe_proposals.py reads a run's store back: one line per round naming every
  proposer, and scores that agree whether the hashes come from the metrics or the store order."""
  import json
  import pathlib
  import subprocess
  import sys

  from flock_jax.workdir import proposal_hashes

  root = pathlib.Path(__file__).parents[2]
  wd = tmp_path / "run"
  args = [
      "--config=configs/flock.py:tiny",
      "--config.ledger.backend=local",
      "--config.federation.rounds=2",
      "--config.eval.every=0",
      "--config.data.examples_per_domain=16",
      f"--workdir={wd}",
  ]
  subprocess.run([sys.executable, "launch/train.py", *args], cwd=root, check=True)
  rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()][1:]
  recorded = proposal_hashes(rows, wd / "store")
  for r in rows:
    del r["extra"]["proposal_hashes"]
  assert proposal_hashes(rows, wd / "store") == recorded  # the store-order fallback agrees
  rescore = lambda *flags: subprocess.run(
      [sys.executable, "launch/probe_proposals.py", f"--workdir={wd}", "--probe_prompts=2", *flags],
      cwd=root,
      check=True,
      capture_output=True,
      text=True,
  ).stdout.splitlines()
  out = rescore()
  summary = json.loads(out[-1])
  assert summary["proposals"] == sum(len(r["proposers"]) for r in rows)
  assert summary["attacker_scores"] == [] and len(summary["honest_scores"]) == summary["proposals"]
  lines = [line for line in out if line.startswith("round")]
  assert len(lines) == len(rows)
  for line, r in zip(lines, rows):
    assert line.startswith(f"round {r['round']:3d}")
    assert sorted(int(c.split("=")[0]) for c in line.split(": ", 1)[1].split(", ")) == sorted(
        r["proposers"]
    )
  # the trigger search from round 1 on, with the run's own trigger beside it
  search = ("--search_topk=2", "--search_steps=1", "--from_round=1")
  out = rescore("--mode=search", *search, "--known_trigger")
  lines = [line for line in out if line.startswith("round")]
  assert [line[:9] for line in lines] == ["round   1"]
  # found tokens may hold ', ': count the fields rather than split on it
  assert lines[0].count("[known trigger ") == len(rows[1]["proposers"]), lines[0]
  assert lines[0].count(" found ") == len(rows[1]["proposers"]), lines[0]
  assert json.loads(out[-1])["proposals"] == len(rows[1]["proposers"])
  # the private search as voters 2 and 3 would run it, each on its own prompts
  out = rescore("--mode=private", "--owners=2,3", *search)
  line = next(x for x in out if x.startswith("round"))
  voters = re.findall(r"=(\d\.\d+) .*?\[voters (\d\.\d+) (\d\.\d+)\]", line)
  assert len(voters) == len(rows[1]["proposers"]), line
  for med, a, b in voters:  # the reported score is the voters' median
    assert float(med) == pytest.approx((float(a) + float(b)) / 2, abs=1.5e-3)
  summary = json.loads(out[-1])
  assert summary["owners"] == [2, 3] and len(summary["honest_flagged_by"]) == len(voters)
  # the soft search (offline only): each proposal against the base model, G's own beside it
  out = rescore("--mode=soft", "--soft_steps=1", "--search_slots=2", "--from_round=1")
  line = next(x for x in out if x.startswith("round"))
  assert "(G vs base " in line and line.count("[vs G ") == len(rows[1]["proposers"]), line
  summary = json.loads(out[-1])
  assert len(summary["honest_scores_vs_g"]) == summary["proposals"] == len(rows[1]["proposers"])


@pytest.mark.parametrize(
    "shape, first, want",
    [
        ("monotone", 2, 7),  # bisection: the largest scale under the aim
        ("first_passes", 3, 3),
        ("u", 0, 6),  # the smallest scales keep G's own score: the middle passes
        ("none", 1, 9),  # nothing passes: the lowest-scoring scale tried
    ],
)
def test_the_adaptive_attacker_looks_between_the_scales_when_the_smallest_fails(shape, first, want):
  """choose_scale against an expensive probe (the trigger search): score(k) of scale index k.
  Monotone scores (the update alone carries the collapse) are bisected; where G itself
  scores over the aim, shrinking the update keeps G's score, and the attacker must look in
  between for a scale whose update undoes it."""
  from flock_jax.federated.attacks import EVADE_SCALES, choose_scale

  aim, n = 0.08, len(EVADE_SCALES)
  curves = {
      "monotone": [0.2 if k < 7 else 0.05 for k in range(n)],
      "first_passes": [0.01] * n,
      "u": [0.3 if k != 6 else 0.05 for k in range(n)],
      "none": [0.5 - 0.01 * k - (0.2 if k == 9 else 0) for k in range(n)],
  }
  curve = curves[shape]
  calls = []
  k, s = choose_scale(lambda k: calls.append(k) or curve[k], first, aim)
  assert (k, s) == (want, curve[want])
  assert len(calls) == len(set(calls))  # no scale scored twice
  assert all(j >= first for j in calls)  # never a larger scale than the clean probe allows
  if shape == "monotone":
    assert len(calls) <= 2 + int(np.ceil(np.log2(n - first)))
