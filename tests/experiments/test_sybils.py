"""Sybils: one holder's stake split over many minimum-stake accounts (config.attack.sybil_stake).

The attacker plays: a holder of 100 tokens registers 10 accounts of 10 beside 10 honest
participants of 100. With the stake-weighted draw it must gain nothing: its accounts together
hold the seats one account of 100 would (P+V) * 100 / 1100 per round, by the draw's rule that an
account of weight w <= W / (P+V) is drawn with probability exactly (P+V) * w / W. The uniform
draw counts accounts, so there the split buys half the seats (PROTOCOL.md says so; the sweep
configs/sweeps/sybils.py measures what that does to a run).
"""

import numpy as np
import pytest
from eth_utils import keccak

from flock_jax.chain.draw import draw_indices
from flock_jax.federated.engine import make_ledger
from flock_jax.federated.ledger import WEI
from flock_jax.run_config import RunConfigError, from_config, load_config

N, P, V, ROUNDS = 20, 4, 4, 400


def _run(weighted: bool, sybil_stake: int = 10):
  c = load_config("tiny")
  c.ledger.backend, c.ledger.stake_weighted_draw = "local", weighted
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters, f.rounds = N, P, V, ROUNDS
  c.attack.fraction, c.attack.proposer, c.attack.sybil_stake = 0.5, "backdoor", sybil_stake
  return from_config(c)


def _seats(run) -> float:
  """Mean seats per round the attacker's accounts get from the chain's draw (FlockLogic.draw,
  replicated in flock_jax.chain.draw) over the stakes the run's ledger holds, ROUNDS seeds."""
  stakes = [int(s) for s in make_ledger(run, b"\x01" * 32).stakes()]
  weights = stakes if run.ledger.stake_weighted_draw else [1] * N
  bad = set(run.attack.attackers(N))
  seats = [
      sum(i in bad for i in draw_indices(keccak(r.to_bytes(32, "big")), weights, P + V))
      for r in range(ROUNDS)
  ]
  return float(np.mean(seats))


def test_attacker_accounts_stake_the_sybil_amount():
  run = _run(weighted=True)
  bad = run.attack.attackers(N)
  assert len(bad) == N // 2
  stakes = make_ledger(run, b"\x01" * 32).stakes()
  assert [int(s) // WEI for s in stakes] == [10 if i in bad else 100 for i in range(N)]


def test_splitting_stake_buys_nothing_with_the_stake_weighted_draw():
  mean = _seats(_run(weighted=True))
  one_account = (P + V) * 100 / 1100  # the same 100 tokens in one account
  # budget: seats per round have variance <= their mean (0.73); 400 rounds -> sd 0.043
  assert mean == pytest.approx(one_account, abs=0.2)


def test_the_uniform_draw_sells_seats_per_account():
  mean = _seats(_run(weighted=False))
  assert mean == pytest.approx((P + V) * (N // 2) / N, abs=0.35)  # 4 of 8 seats, sd 0.06


def test_a_sybil_stake_below_the_minimum_is_refused():
  with pytest.raises(RunConfigError, match=r"config\.attack\.sybil_stake=5 < ledger\.min_stake"):
    _run(weighted=True, sybil_stake=5)


def test_the_contract_registers_the_sybil_stakes():
  c = load_config("tiny")
  c.ledger.backend = "eth_tester"
  c.attack.fraction, c.attack.proposer, c.attack.sybil_stake = 0.5, "backdoor", 10
  run = from_config(c)
  n = run.federation.num_participants
  ledger = make_ledger(run, b"\x01" * 32)
  assert [int(s) // WEI for s in ledger.stakes()] == run.attack.stakes(n, 100)
  assert sorted(set(run.attack.stakes(n, 100))) == [10, 100]
