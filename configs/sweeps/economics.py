"""Experiment 3: economics. With the default stake (100), minimum stake (10) and slash (10%) a
participant needs 22 slashes to be ejected, more than a tiny run has rounds; here the minimum
stake is 60 (ejected after 5 net slashes), so the runs show who is ejected, when, and how stake
flows between honest and malicious participants. FLock whole and per-proposal, 40% backdoor
proposers, and the attack-free run (what honest participants lose to rejected rounds).

  python launch/sweep.py --config=configs/sweeps/economics.py --workdir=runs/economics_tiny
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def get_config(arg=None):
  base, shared = common.scale(arg)
  shared.update({"attack.proposer": "backdoor", "ledger.min_stake": 60, "eval.every": 4})
  runs = []
  for seed in (0, 1):
    for method, frac in (("flock", 0.4), ("flock_pp", 0.4), ("flock", 0.0), ("flock_pp", 0.0)):
      runs.append(
          {
              "name": f"{method}_f{common.fmt(frac)}_s{seed}",
              "tags": {"method": method, "fraction": frac, "seed": seed},
              "overrides": {**common.METHODS[method], "attack.fraction": frac, "seed": seed},
          }
      )
  return common.sweep(base, shared, runs)
