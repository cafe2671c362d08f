"""Experiment 1: backdoor defence. FLock (whole and per-proposal voting) against FedAvg, Krum,
Multi-Krum, Median, Trimmed Mean, FLTrust and FLAME, at malicious proposer fractions 0, 20 and
40% (arg 'tiny:full' adds 10 and 30%), seeds 0 and 1; every method sees the same data, seeds
and attackers (drawn with the seed). 'smollm2': the headline on SmolLM2-135M-Instruct sized
for ~2 hours on 2 CPU cores (FedAvg and both FLock votes at 30%, 2 seeds); 'smollm2:full': every
method and fraction (about 90 runs: a pod's job); 'smollm2:fractions': FedAvg and the whole
vote with the voters' behaviour probe at 40, 20 and 10% (seed 0, ~3 hours on 2 cores), then the
plain whole vote, then the 30% and attack-free runs (measured before in other sweeps), then
seed 1 of FedAvg and the probe at 40, 20 and 10%, then the robust aggregators and per-proposal
voting at 40, 20 and 10% (seed 0, ~20 minutes a run two side by side), their 30% runs (those of
'smollm2:aggregators') and their attack-free runs (Trimmed Mean at 30% only: at 4 clients a
round it is the median); 'smollm2:aggregators': the six robust
aggregators (Multi-Krum also with m = 3) and per-proposal voting against the headline's attack,
seed 0 (~105 minutes), then seed 1 (~110 minutes more).

  python launch/sweep.py --config=configs/sweeps/backdoor.py --workdir=runs/backdoor_tiny
  python launch/sweep.py --config=configs/sweeps/backdoor.py:smollm2 --workdir=runs/backdoor_smollm2
  python launch/sweep.py --config=configs/sweeps/backdoor.py:smollm2:aggregators --workdir=runs/agg
  python launch/sweep.py --config=configs/sweeps/backdoor.py:smollm2:fractions --workdir=runs/frac
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def _aggregator_run(method: str, seed: int, fraction: float = 0.3) -> dict:
  """One run of 'smollm2:aggregators' (at 30% attackers) or of the aggregators appended to
  'smollm2:fractions': a method of common.METHODS, or 'multikrum_m3' (Multi-Krum keeping m = 3
  updates). Both subsets share their overrides, so a 30% run is the same run in either."""
  over = dict(common.METHODS["multikrum" if method == "multikrum_m3" else method])
  if method == "multikrum_m3":
    over["federation.aggregator_hparams"] = "m=3"
  return {
      "name": f"{method}_f{common.fmt(fraction)}_s{seed}",
      "tags": {"method": method, "fraction": fraction, "seed": seed},
      "overrides": {**over, "attack.fraction": fraction, "seed": seed},
  }


def get_config(arg=None):
  scale, _, full = (arg or "tiny").partition(":")
  base, shared = common.scale(scale)
  shared["attack.proposer"] = "backdoor"
  if scale == "smollm2" and full == "aggregators":
    # The robust aggregators and per-proposal voting against the headline's attack (30%,
    # seed 0), sized as the defence sweeps (~12 minutes an aggregator run on 2 cores, ~20 a
    # vote): held-out loss, ASR on 12 new tokens.
    shared.update({"eval.accuracy": False, "eval.asr_max_new_tokens": 12})
    # At K = 4 Multi-Krum's default is FedAvg (f <= (K - 3) / 2 = 0, m = K - f = 4); m = 3
    # drops the update farthest from its 2 nearest neighbours each round. Second seeds: first
    # the two ends of the table, Median (lets the backdoor in at no clean cost) and Krum (keeps
    # it out at a large one), then the rest (~110 minutes more), Multi-Krum's default last.
    order = [(m, 0) for m in ("krum", "median", "flame", "trimmed_mean", "flock_pp", "fltrust")]
    order += [("multikrum", 0), ("multikrum_m3", 0)]
    order += [(m, 1) for m in ("median", "krum", "flame", "trimmed_mean", "fltrust")]
    order += [("multikrum_m3", 1), ("flock_pp", 1), ("multikrum", 1)]
    runs = [_aggregator_run(m, seed) for m, seed in order]
    return common.sweep(base, shared, runs)
  if scale == "smollm2" and full == "fractions":
    # Final ASR against the malicious fraction on the real model, sized as the aggregator runs
    # (~11-14 minutes a FedAvg run, ~20-30 with the probe on 2 cores): FedAvg and the vote with
    # the probe at the fractions not yet measured first, the plain vote (which matched FedAvg at
    # 30%) after them, then the 30% and attack-free runs, which the headline and the defence
    # sweeps measured with the same training (their workdirs can be copied in).
    shared.update({"eval.accuracy": False, "eval.asr_max_new_tokens": 12})
    methods = {
        "fedavg": common.METHODS["fedavg"],
        "flock_probe": {**common.METHODS["flock"], **common.PROBE},
        "flock": common.METHODS["flock"],
    }
    order = [(m, f, 0) for f in (0.4, 0.2, 0.1) for m in ("fedavg", "flock_probe")]
    order += [("flock", f, 0) for f in (0.4, 0.2, 0.1)]
    order += [(m, f, 0) for f in (0.3, 0.0) for m in methods]
    # The second seed of FedAvg and the probe (the headline's spread), appended so that a
    # sweep started before it keeps its order.
    order += [(m, f, 1) for f in (0.4, 0.2, 0.1) for m in ("fedavg", "flock_probe")]
    runs = [
        {
            "name": f"{m}_f{common.fmt(f)}_s{seed}",
            "tags": {"method": m, "fraction": f, "seed": seed},
            "overrides": {**methods[m], "attack.fraction": f, "seed": seed},
        }
        for m, f, seed in order
    ]
    # The robust aggregators and per-proposal voting at the other fractions (seed 0): 40 and
    # 20% first (where FedAvg's backdoor takes hold), then 10%, then the 30% runs of
    # 'smollm2:aggregators', Multi-Krum's default (m = K - f = 4 at K = 4: FedAvg) included
    # (the same runs, so `report.py --keep` can take them from that report), then the
    # attack-free runs. Trimmed Mean runs at 30% only: at K = 4 it trims one update from each
    # end and is the median (test_trimmed_mean_of_four_is_the_median; its 30% runs matched
    # Median's to the last printed digit at both seeds), so its other fractions are Median's.
    aggs = ("krum", "median", "flame", "fltrust", "multikrum_m3")
    more = [(m, f, 0) for f in (0.4, 0.2) for m in aggs] + [("flock_pp", 0.4, 0)]
    more += [("flock_pp", 0.2, 0)] + [(m, 0.1, 0) for m in aggs + ("flock_pp",)]
    at_30 = aggs + ("trimmed_mean", "flock_pp", "multikrum")
    more += [(m, 0.3, s) for s in (0, 1) for m in at_30]
    more += [(m, 0.0, 0) for m in aggs + ("flock_pp",)]
    runs += [_aggregator_run(m, seed, f) for m, f, seed in more]
    return common.sweep(base, shared, runs)
  if scale == "smollm2" and full not in ("", "full"):
    raise ValueError(
        f"unknown subset {full!r} of the backdoor sweep; use 'full', 'aggregators' or 'fractions'"
    )
  if scale == "smollm2" and full != "full":
    # The headline at SmolLM2 scale, sized for ~2 hours on a 2-core CPU (about 20 minutes a
    # run): the reference's setting (3 of 10 attackers), FedAvg against both FLock votes.
    runs = [
        {
            "name": f"{m}_f0.3_s{seed}",
            "tags": {"method": m, "fraction": 0.3, "seed": seed},
            "overrides": {**common.METHODS[m], "attack.fraction": 0.3, "seed": seed},
        }
        # FedAvg and the whole vote over both seeds first: a sweep cut short keeps the headline.
        for m, seed in [("fedavg", 0), ("flock", 0), ("fedavg", 1), ("flock", 1)]
        + [("flock_pp", 0), ("flock_pp", 1)]
    ]
    return common.sweep(base, shared, runs)
  fractions = (0.0, 0.1, 0.2, 0.3, 0.4) if full == "full" else (0.0, 0.2, 0.4)
  # In order of priority (a sweep cut short leaves a coherent subset): FLock and FedAvg first,
  # the robust aggregators under attack next, their attack-free runs last.
  first = ("flock", "flock_pp", "fedavg")
  tiers = [
      [(m, f) for f in sorted(fractions, reverse=True) for m in first],
      [
          (m, f)
          for f in sorted(fractions, reverse=True)
          if f > 0
          for m in common.METHODS
          if m not in first
      ],
      [(m, 0.0) for m in common.METHODS if m not in first],
  ]
  runs = []
  for tier in tiers:
    for seed in (0, 1):
      for method, frac in tier:
        runs.append(
            {
                "name": f"{method}_f{common.fmt(frac)}_s{seed}",
                "tags": {"method": method, "fraction": frac, "seed": seed},
                "overrides": {**common.METHODS[method], "attack.fraction": frac, "seed": seed},
            }
        )
  return common.sweep(base, shared, runs)
