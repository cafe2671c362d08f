"""The proposer attacks besides the backdoor, each at 30% of the participants: model
replacement (`scale`: the update times attack.scale_gamma), label flipping (`label_flip`:
trains on wrong answers), free riders (`free_rider`: a zero update), proposal copying
(`copy`: another proposer's update, revealed after it, plus attack.copy_noise), and committed
invalid updates (`nan`, `wrong_shape`). FLock's whole-candidate vote against FedAvg on the
same data, seeds and attackers. The minimum stake is 60, as in the economics sweep, so that
an attacker slashed 5 times more than it earns is ejected within a run.

  python launch/sweep.py --config=configs/sweeps/attacks.py --workdir=runs/attacks_tiny
  python launch/report.py --sweep=runs/attacks_tiny --out=docs/results/attacks_tiny
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

ATTACKS = ("scale", "label_flip", "free_rider", "copy", "nan", "wrong_shape")


def get_config(arg=None):
  base, shared = common.scale(arg)
  shared.update({"ledger.min_stake": 60, "eval.every": 4, "attack.fraction": 0.3})
  runs = []
  for seed in (0, 1):
    for attack in ATTACKS:
      for method in ("flock", "fedavg"):
        runs.append(
            {
                "name": f"{method}_{attack}_s{seed}",
                "tags": {"attack": attack, "method": method, "seed": seed},
                "overrides": {**common.METHODS[method], "attack.proposer": attack, "seed": seed},
            }
        )
  return common.sweep(base, shared, runs)
