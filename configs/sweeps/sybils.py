"""Experiment 3b: sybils. One holder's 100 tokens split over 10 accounts of the minimum stake
(10 each) beside 10 honest participants of 100 (N = 20 accounts, P = V = 4, whole-candidate
vote). Every sybil account poisons its data when drawn to propose and colludes when drawn to
vote (approves exactly the candidates holding a fellow sybil's update). The uniform draw counts
accounts, the stake-weighted draw counts stake: how many seats, updates in G and tokens does
the split buy in each?

  python launch/sweep.py --config=configs/sweeps/sybils.py --workdir=runs/sybils_tiny
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def get_config(arg=None):
  base, shared = common.scale(arg)
  shared.update(
      {
          "federation.num_participants": 20,
          "data.examples_per_domain": 120,
          "attack.proposer": "backdoor",
          "attack.voter": "colluding",
          "attack.fraction": 0.5,
          "attack.sybil_stake": 10,
          "ledger.min_stake": 10,
          "eval.every": 4,
      }
  )
  runs = []
  for seed in (0, 1):
    for draw, weighted in (("uniform", False), ("stake_weighted", True)):
      runs.append(
          {
              "name": f"flock_{draw}_s{seed}",
              "tags": {"method": f"flock_{draw}", "fraction": 0.5, "seed": seed},
              "overrides": {
                  **common.METHODS["flock"],
                  "ledger.stake_weighted_draw": weighted,
                  "seed": seed,
              },
          }
      )
  return common.sweep(base, shared, runs)
