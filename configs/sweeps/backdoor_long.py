"""Experiment 1b: the backdoor at 40% malicious proposers over twice the rounds (24): at 12
rounds the tiny model barely learns the trigger even under FedAvg (backdoor.py), so this is
where the defences can be told apart. FedAvg, FLock whole, FLock per-proposal, and per-proposal
with the voters' norm/cosine screen (defence.py), seeds 0 and 1, same data and attackers.

  python launch/sweep.py --config=configs/sweeps/backdoor_long.py --workdir=runs/backdoor_long
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import defence  # noqa: E402


def get_config(arg=None):
  base, shared = common.scale(arg)
  shared.update({"attack.proposer": "backdoor", "federation.rounds": 24, "eval.every": 4})
  runs = []
  for seed in (0, 1):
    for method in ("fedavg", "flock", "flock_pp_screen", "flock_pp"):
      runs.append(
          {
              "name": f"{method}_f0.4_s{seed}",
              "tags": {"method": method, "fraction": 0.4, "seed": seed},
              "overrides": {**defence.VARIANTS[method], "attack.fraction": 0.4, "seed": seed},
          }
      )
  return common.sweep(base, shared, runs)
