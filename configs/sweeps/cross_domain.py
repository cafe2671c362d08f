"""Experiment 2: cross-domain generalization. FLock on both domains against federations
trained on one domain alone, every model reported on the same fresh examples of every domain
(config.eval.domains), no attackers.

  python launch/sweep.py --config=configs/sweeps/cross_domain.py --workdir=runs/cross_domain_tiny
  python launch/sweep.py --config=configs/sweeps/cross_domain.py:smollm2 --workdir=runs/xd_smollm2

'smollm2': SmolLM2-135M-Instruct at the headline's scale, held-out loss only (its exact-match
accuracy stays near 0 on these domains, so no generation); ~15 minutes a run on 2 cores,
seed 0 first.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def get_config(arg=None):
  base, shared = common.scale(arg)
  domains = shared.get("data.domains", "finance,medical")
  shared.update(
      {"eval.domains": domains, "data.eval_examples_per_domain": 24, **common.METHODS["flock"]}
  )
  if arg == "smollm2":
    shared["eval.accuracy"] = False
  trained = [domains] + domains.split(",")
  runs = []
  for seed in (0, 1):
    for t in trained:
      label = "all (FLock)" if t == domains else f"{t} only"
      runs.append(
          {
              "name": f"{t.replace(',', '+')}_s{seed}",
              "tags": {"trained_on": label, "seed": seed},
              "overrides": {"data.domains": t, "seed": seed},
          }
      )
  return common.sweep(base, shared, runs)
