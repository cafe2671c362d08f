"""End to end on the tiny model and the real data pipeline: a model-replacement backdoor
attacker (poisoned data, update scaled by gamma) is voted down by the committee and slashed;
every per-round metric field is present; summary.json carries the attack and economics part.

Robust to last-bit numerics: gamma = 1000 makes the attacker's held-out loss rise by more than
half a nat, and the test asserts on the mechanism (its gain is negative by a wide margin, every
bit follows the voter's gain, the attacker's bit is 0, it is slashed, its stake falls), not on
exact values. (Honest updates can lower a single voter's score too: that is not asserted.)"""

import numpy as np
import pytest

from flock_jax.federated.ledger import WEI
from flock_jax.federated.rounds import run_rounds, summarize
from flock_jax.run_config import from_config, load_config

ATTACKER = 0

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


def _config():
  c = load_config("tiny")
  c.ledger.backend = "local"
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters = 5, 4, 1
  f.rounds, f.local_steps, f.vote_mode = 2, 2, "per_proposal"
  c.data.examples_per_domain, c.data.seq_len = 24, 160
  c.attack.behaviours = f"{ATTACKER}:scale"
  c.attack.scale_gamma = 1000.0
  c.attack.trigger, c.attack.target = "purple walrus", "OPEN THE VAULT"
  c.attack.trigger_placement = "suffix"
  c.eval.prompts_per_domain, c.eval.asr_prompts, c.eval.generate_max_new_tokens = 2, 4, 8
  c.checkpoint.every = 0
  return c


@pytest.fixture(scope="module")
def rounds():
  c = _config()
  return c, [m.to_dict() for m in run_rounds(c)]


def test_committee_rejects_and_slashes_the_attacker(rounds):
  _, ms = rounds
  attacked = [m for m in ms if ATTACKER in m["proposers"]]
  assert attacked, "the attacker was never drawn to propose (P=4 of N=5 over 2 rounds)"
  for m in attacked:
    k = m["proposers"].index(ATTACKER)
    gains = np.asarray(m["gains"], float)  # [V, P']
    assert (gains[:, k] < -0.5).all(), gains  # the replacement raises the voter's loss by > 0.5
    # with one voter, each bit is that voter's approve (gain >= tau = 0): the mechanism
    for i, acc in enumerate(m["proposal_accepted"]):
      assert acc == bool(gains[0, i] >= 0.0) or abs(gains[0, i]) < 1e-6, (i, gains)
    assert m["proposal_accepted"][k] is False
    assert int(m["slashes"].get(str(ATTACKER), 0)) > 0
    assert m["slash_malicious"] > 0 and m["attacker_proposals"] == 1 and m["attacker_accepted"] == 0
  last = ms[-1]
  assert last["stake_malicious"] < 100  # one attacker, 100 tokens staked


def test_every_round_reports_every_field(rounds):
  _, ms = rounds
  for m in ms:
    for f in FIELDS:
      assert f in m and m[f] is not None, (m["round"], f)
    assert set(m["accuracy"]) == {"finance", "medical"} == set(m["heldout_loss"])
    assert 0.0 <= m["asr"] <= 1.0 and 0.0 <= m["false_activation"] <= 1.0
    assert len(m["extra"]["asr_samples"]) == 2


def test_summary_carries_attack_and_economics(rounds):
  c, ms = rounds
  run = from_config(c)
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
  assert out["slash_malicious_total"] > 0
  assert out["stake_malicious_final"] == pytest.approx(ms[-1]["stake_malicious"])
  assert "ASR" in out["line"]
  assert out["attacker_accepted_total"] == 0
  assert WEI == 10**18
