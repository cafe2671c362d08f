"""Experiment 4: malicious voters. Every attacker poisons its data when drawn to propose and
votes maliciously when drawn to vote (attack.proposer=backdoor, attack.voter=<behaviour>), at
attacker fractions up to and past half of the (equal) voting stake; whole-candidate voting.

  colluding       approves exactly the candidates holding a fellow attacker's update
  always_approve  approves everything
  always_reject   rejects everything (stalls training; slashed whenever honest voters win)
  absent          never votes (a committee seat that counts for nobody)
  honest          votes on its own held-out loss like everyone else: the reference, the same
                  poisoning proposers with honest voters

Fractions 0.2, 0.4 and 0.6 of the (equal) stakes: a committee of V = 4 drawn from N = 10 holds an
attacker majority in some rounds long before attackers hold half the stake, so the point where
voting stops protecting is measured, not assumed to be 50%.

  python launch/sweep.py --config=configs/sweeps/voters.py --workdir=runs/voters_tiny
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def get_config(arg=None):
  base, shared = common.scale(arg)
  shared.update({"attack.proposer": "backdoor", **common.METHODS["flock"]})
  runs = []
  for seed in (0, 1):
    for behaviour in ("honest", "colluding", "always_approve", "always_reject", "absent"):
      for frac in (0.2, 0.4, 0.6):
        runs.append(
            {
                "name": f"{behaviour}_f{common.fmt(frac)}_s{seed}",
                "tags": {"method": behaviour, "fraction": frac, "seed": seed},
                "overrides": {"attack.voter": behaviour, "attack.fraction": frac, "seed": seed},
            }
        )
  return common.sweep(base, shared, runs)
