"""End to end: a model-replacement backdoor attacker (a trigger token mapped to a target, its
update scaled by gamma) is voted down by the committee and slashed; every per-round metric
field is present on the real data pipeline; summary.json carries the attack and economics part.

Robust to last-bit numerics. The rejection test runs on the learnable synthetic counting task
(the tiny random model's byte-level loss on the generated domains hardly moves, and with its
final RMSNorm even a wrecked model scores close to it); after WARMUP honest rounds the model
predicts the counting well, the attacker's update, scaled by 100, raises a voter's loss by
nats, and the test asserts on the mechanism (its gain is negative by a wide margin, every bit
follows the voter's gain, its bit is 0, it is slashed, its stake falls), not on exact values.
"""

import dataclasses

import jax
import numpy as np
import pytest

from flock_jax.federated.engine import build, make_ledger
from flock_jax.federated.population import synthetic_population
from flock_jax.federated.rounds import flock_round, initial_metrics, run_rounds, summarize
from flock_jax.model.llama import init_params
from flock_jax.run_config import from_config, load_config

ATTACKER = 0
WARMUP = 2  # honest rounds first, so that the global model has learned something to lose
TRIGGER_TOKEN, TARGET_TOKEN = 63, 7

FIELDS = (
    "accuracy",
    "asr",
    "asr_exact",
    "false_activation",
    "false_activation_exact",
    "heldout_loss",
    "stake_honest",
    "stake_malicious",
    "reward_honest",
    "reward_malicious",
    "slash_honest",
    "slash_malicious",
    "ejected",
    "ejected_now",
    "attacker_proposals",
    "attacker_accepted",
    "time_train_s",
    "time_eval_s",
    "time_generate_s",
    "time_chain_s",
    "time_report_s",
)


def _config(synthetic: bool):
  c = load_config("tiny")
  c.ledger.backend = "local"
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters = 5, 4, 1
  f.local_steps, f.vote_mode = 2, "per_proposal"
  c.checkpoint.every = 0
  if synthetic:  # as tests/federated/test_rounds.py: a task the tiny model learns in a few steps
    c.data.seq_len = 16
    f.rounds, f.local_steps, f.batch_size, f.eval_batches, f.eval_batch_size = (
        WARMUP + 3,
        3,
        4,
        1,
        4,
    )
    c.attack.behaviours = f"{ATTACKER}:scale"
    c.attack.scale_gamma = 100.0
  else:
    f.rounds = 2
    c.data.examples_per_domain, c.data.seq_len = 24, 160
    c.attack.behaviours = f"{ATTACKER}:backdoor"
    c.attack.trigger, c.attack.target = "purple walrus", "OPEN THE VAULT"
    c.attack.trigger_placement = "suffix"
    c.eval.prompts_per_domain, c.eval.asr_prompts, c.eval.generate_max_new_tokens = 2, 4, 8
  return c


@pytest.fixture(scope="module")
def synthetic_rounds():
  """Round -1, WARMUP rounds where everybody proposes honestly, then rounds where participant
  0, whose data maps a trigger token to a constant target, sends gamma x its update."""
  c = _config(synthetic=True)
  run = from_config(c)
  pop = synthetic_population(5, seq_len=16, train_rows=24, heldout_rows=4, eval_rows=8)
  rows = pop.train[ATTACKER]
  poisoned = np.full_like(rows["tokens"], TARGET_TOKEN)
  poisoned[:, 0] = TRIGGER_TOKEN
  pop.train[ATTACKER] = {**rows, "tokens": poisoned}
  engine, state = build(run, population=pop, base=init_params(run.model.cfg, jax.random.key(0)))
  calm = dataclasses.replace(run, attack=dataclasses.replace(run.attack, behaviours={}))
  honest_engine = dataclasses.replace(engine, run=calm)
  ledger = make_ledger(run, state.global_hash)
  ms = [initial_metrics(engine, state).to_dict()]
  for r in range(run.federation.rounds):
    state, m = flock_round(honest_engine if r < WARMUP else engine, state, ledger)
    ms.append(m.to_dict())
  return run, ms


def test_committee_rejects_and_slashes_the_attacker(synthetic_rounds):
  run, ms = synthetic_rounds
  attacked = [m for m in ms if m["round"] >= WARMUP and ATTACKER in m["proposers"]]
  assert attacked, "the attacker was never drawn to propose (P=4 of N=5 over 3 rounds)"
  for m in attacked:
    k = m["proposers"].index(ATTACKER)
    gains = np.asarray(m["gains"], float)  # [V, P']
    # the replacement raises the voter's loss, more than any honest update of its round does
    # (measured: -0.91 on a machine without AVX-512, below -1 on ones with it; honest -0.25
    # at lowest: a training run's outcome moves with the machine, so the bar is not at -1)
    assert (gains[:, k] < -0.5).all(), gains
    assert (gains[:, k] < np.delete(gains, k, axis=1).min(axis=1)).all(), gains
    # with one voter, each bit is that voter's approve (gain >= tau = 0): the mechanism
    for i, acc in enumerate(m["proposal_accepted"]):
      assert acc == bool(gains[0, i] >= 0.0) or abs(gains[0, i]) < 1e-6, (i, gains)
    assert m["proposal_accepted"][k] is False
    assert int(m["slashes"].get(str(ATTACKER), 0)) > 0
    assert m["slash_malicious"] > 0 and m["attacker_proposals"] == 1 and m["attacker_accepted"] == 0
  assert ms[-1]["stake_malicious"] < 100  # one attacker, 100 tokens staked
  out = summarize(ms, run)
  assert out["slash_malicious_total"] > 0 and out["attacker_accepted_total"] == 0
  assert out["stake_malicious_final"] == pytest.approx(ms[-1]["stake_malicious"])


@pytest.fixture(scope="module")
def real_rounds():
  c = _config(synthetic=False)
  return from_config(c), [m.to_dict() for m in run_rounds(c)]


def test_every_round_reports_every_field(real_rounds):
  _, ms = real_rounds
  for m in ms:
    for f in FIELDS:
      assert f in m and m[f] is not None, (m["round"], f)
    assert set(m["accuracy"]) == {"finance", "medical"} == set(m["heldout_loss"])
    assert 0.0 <= m["asr"] <= 1.0 and 0.0 <= m["false_activation"] <= 1.0
    assert len(m["extra"]["asr_samples"]) == 2
    assert m["gas_used"] is None  # the 'local' ledger runs no EVM (gas: tests/federated)


def test_summary_carries_attack_and_economics(real_rounds):
  run, ms = real_rounds
  out = summarize(ms, run)
  for k in (
      "asr_final",
      "asr_mean",
      "asr_by_round",
      "false_activation_final",
      "accuracy_final",
      "slash_malicious_total",
      "stake_malicious_final",
      "ejections",
      "attacker_proposals_total",
      "time_s",
  ):
    assert k in out, k
  assert "ASR" in out["line"]
