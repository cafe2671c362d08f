"""Experiment 5: defences the FLock round allows, at 30% malicious backdoor proposers (the
issue's goal: ASR <= 5% with the clean metric within 1% of the attack-free run), against the
plain votes and FedAvg on the same data, seeds and attackers; and the attack-free run of each
defence (what it costs when nobody attacks).

  flock_pp         per-proposal voting (one poisoned update may move a voter's clean loss
                   where the average does not)
  flock_screen     whole-candidate vote; every voter first screens the proposals (norm > 2x
                   the median, or median cosine to the others < 0) and rejects a candidate
                   holding a flagged one
  flock_pp_screen  per-proposal vote with the same screen (flagged proposals get a 0 bit)
  flock_probe      whole-candidate vote; every voter first runs each proposal alone on public
                   probe prompts and flags one that makes a token no reference answer uses
                   gain > 0.1 probability at the first response token in every domain
                   (flock_jax.federated.probe): flagged proposals are excluded and slashed
  flock_anchored   flock_probe whose voters score each proposal against G and against the base
                   model and keep the larger score: the adaptive attacker (backdoor_evade)
                   shrinks each update under the plain probe, but their sum collapses G; the
                   anchored probe bounds the collapse of the whole run
  flock_anchored_tol  flock_anchored with the vote's noise tolerance below (tau = -0.02)
  flock_anchored_pp_tol  the same with per-proposal voting
  flock_anchored_pp_valid_tol  the same, G moving by the accepted updates' sum over the number
                   of valid proposals (per_proposal_mean='valid'), not over the number accepted
  flock_search_tol  flock_anchored_tol whose voters also search, for each proposal, the trigger
                   tokens that make it collapse most when inserted in the probe prompts
                   (flock_jax.federated.trigger_search): the adaptive attacker's later updates
                   collapse only triggered prompts, which the anchored probe does not see
  flock_private_tol flock_search_tol whose voters search on probe prompts each drew itself,
                   3 times from random tokens of their own seed (federation.probe='private',
                   search_restarts=3), which the attacker cannot run; _pp_: per proposal
  flock_private_round_pp_tol  flock_private_pp_tol with one search set a round on G + the
                   sum of the proposals (search_scope='round') and the base-model score
                   counted only where it exceeds G's own (probe_exempt_g)
  flock_soft_tol   flock_search_tol whose search moves free embeddings by gradient steps instead
                   of swapping vocabulary tokens (search_kind='soft', 12 steps of 0.1 x the
                   largest embedding norm, 4 probe prompts a domain): offline it scored the
                   adaptive attacker's shrunk pieces 1.0 that the token search scored 0.04;
                   in a run it flagged all three honest proposals of round 0 (docs/results)
  flock_memory_tol flock_anchored_tol with the probe's memory across rounds: each participant's
                   scores in excess of 0.01 add up over the run, and once its sum exceeds 0.05
                   every proposal it makes is flagged (federation.probe_budget): the adaptive
                   attacker's pieces each pass the threshold, their sum does not
  flock_search_memory_tol  flock_search_tol with the memory (budget 0.1: the search's honest
                   scores reach 0.078)
  fedavg_oracle    FedAvg that drops every drawn attacker's update (federation.oracle): not a
                   defence, the clean target of one (it knows who attacks)
  flock_probe_tol  flock_probe whose voters approve unless the candidate raises their held-out
                   loss by more than 0.02 nats (tau = -0.02): with 8 held-out examples a
                   voter, the plain rule (tau = 0) rejected SmolLM2 candidates on gains of
                   -0.047..-0.001 once the loss flattened

  python launch/sweep.py --config=configs/sweeps/defence.py --workdir=runs/defence_tiny
  # SmolLM2-135M: the probe under attack (2 seeds), and the attack-free FedAvg and probe runs
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:probe --workdir=runs/defence_smollm2
  # SmolLM2-135M: probe + tolerance under the plain backdoor and without it, seeds 1-3
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:clean --workdir=runs/clean
  # SmolLM2-135M: the probe when the attackers also sit on the committee and collude (they do
  # not flag a fellow's backdoor): 30 and 40% (seeds 0, 1), 60% (seed 0), ~25 minutes a run;
  # then 40% seed 1 with committees of 6 and 4 voters
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:voters --workdir=runs/voters
  # SmolLM2-135M: the anchored probe against the adaptive attacker, and attack-free
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:anchored --workdir=runs/anchored
  # SmolLM2-135M: does the clean gap of anchored + tolerance close with 20 rounds? (seed 1 first;
  # then the probe + tolerance against the plain backdoor, 20 rounds)
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:long --workdir=runs/long
  # SmolLM2-135M: the trigger search against the adaptive attacker, 20 rounds (seed 1 first;
  # ~3-4 hours a run on 2 cores: the attacker searches several scales of its update a round)
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:search --workdir=runs/search
  # SmolLM2-135M: the same with each voter's search on its own prompts (a pod's job)
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:private --workdir=runs/private
  # SmolLM2-135M: the soft search in the round against the adaptive attacker (who runs it too)
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:soft --workdir=runs/soft
  # SmolLM2-135M: the probe's memory against the adaptive attacker that knows it, 20 rounds
  python launch/sweep.py --config=configs/sweeps/defence.py:smollm2:memory --workdir=runs/memory
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

SCREEN = {
    "federation.screen": "both",
    "federation.screen_norm_factor": 2.0,
    "federation.screen_min_cosine": 0.0,
}
PROBE = common.PROBE
ANCHORED = {"federation.probe": "anchored", "federation.probe_threshold": 0.1}
SEARCH = {"federation.probe": "search", "federation.probe_threshold": 0.1}
# Offline on the search run's round 15, 3 restarts found the target where one search did not.
PRIVATE = {
    "federation.probe": "private",
    "federation.probe_threshold": 0.1,
    "federation.search_restarts": 3,
}
# One search set a round per voter on G + the sum of the proposals (P times cheaper), and the
# base-model score counted only where it exceeds G's own (G's backdoor not blamed on honest
# proposers): offline on the search run, see docs/results.
PRIVATE_ROUND = {
    **PRIVATE,
    "federation.search_scope": "round",
    "federation.probe_exempt_g": True,
}
# The soft search as offline on the search run (docs/results, defence_search_smollm2/offline).
SOFT = {
    **SEARCH,
    "federation.search_kind": "soft",
    "federation.search_steps": 12,
    "federation.search_lr": 0.1,
    "federation.probe_prompts": 4,
}
# The probe's memory: offline, the anchored runs' honest proposers summed at most 0.02 of excess
# over 0.01 in 20 rounds, the adaptive attackers 0.06-0.22 (docs/results).
MEMORY = {**ANCHORED, "federation.probe_budget": 0.05, "federation.probe_allowance": 0.01}
VARIANTS = {
    "flock_probe": {**common.METHODS["flock"], **PROBE},
    "flock_anchored": {**common.METHODS["flock"], **ANCHORED},
    "flock_anchored_tol": {**common.METHODS["flock"], **ANCHORED, "federation.tau": -0.02},
    "flock_search_tol": {**common.METHODS["flock"], **SEARCH, "federation.tau": -0.02},
    "flock_private_tol": {**common.METHODS["flock"], **PRIVATE, "federation.tau": -0.02},
    "flock_private_pp_tol": {**common.METHODS["flock_pp"], **PRIVATE, "federation.tau": -0.02},
    "flock_private_round_pp_tol": {
        **common.METHODS["flock_pp"],
        **PRIVATE_ROUND,
        "federation.tau": -0.02,
    },
    "flock_anchored_pp_tol": {**common.METHODS["flock_pp"], **ANCHORED, "federation.tau": -0.02},
    "flock_anchored_pp_valid_tol": {
        **common.METHODS["flock_pp"],
        **ANCHORED,
        "federation.tau": -0.02,
        "federation.per_proposal_mean": "valid",
    },
    "flock_soft_tol": {**common.METHODS["flock"], **SOFT, "federation.tau": -0.02},
    "flock_memory_tol": {**common.METHODS["flock"], **MEMORY, "federation.tau": -0.02},
    "flock_search_memory_tol": {
        **common.METHODS["flock"],
        **SEARCH,
        "federation.probe_budget": 0.1,
        "federation.probe_allowance": 0.01,
        "federation.tau": -0.02,
    },
    "flock_probe_tol": {**common.METHODS["flock"], **PROBE, "federation.tau": -0.02},
    "flock_pp_screen": {**common.METHODS["flock_pp"], **SCREEN},
    "flock_screen": {**common.METHODS["flock"], **SCREEN},
    "flock_pp": common.METHODS["flock_pp"],
    "fedavg": common.METHODS["fedavg"],
    "fedavg_oracle": {**common.METHODS["fedavg"], "federation.oracle": True},
    "flock": common.METHODS["flock"],
}


def _run(method, fraction, seed):
  return {
      "name": f"{method}_f{fraction:g}_s{seed}",
      "tags": {"method": method, "fraction": fraction, "seed": seed},
      "overrides": {**VARIANTS[method], "attack.fraction": fraction, "seed": seed},
  }


def _evade(seed, method="flock_probe"):
  run = _run(method, 0.3, seed)
  run["overrides"]["attack.proposer"] = "backdoor_evade"
  return {
      **run,
      "name": f"{method}_vs_evade_f0.3_s{seed}",
      "tags": {**run["tags"], "method": f"{method}_vs_evade"},
  }


def _voting(seed, fraction, behaviour, method="flock_probe"):
  """`method` at `fraction` backdoor proposers who vote with `behaviour` when drawn to vote."""
  run = _run(method, fraction, seed)
  run["overrides"]["attack.voter"] = behaviour
  return {
      **run,
      "name": f"{method}_{behaviour}_f{fraction:g}_s{seed}",
      "tags": {**run["tags"], "method": f"{method}_{behaviour}"},
  }


def _committee(run, voters):
  """`run` with a committee of `voters` (the base is 3)."""
  method = f"{run['tags']['method']}_v{voters}"
  return {
      "name": run["name"].replace(run["tags"]["method"], method, 1),
      "tags": {**run["tags"], "method": method},
      "overrides": {**run["overrides"], "federation.num_voters": voters},
  }


def get_config(arg=None):
  scale, _, subset = (arg or "tiny").partition(":")
  base, shared = common.scale(scale)
  shared["attack.proposer"] = "backdoor"  # a run's own override comes after (_evade)
  if subset in ("probe", "clean", "anchored", "long", "search", "memory", "soft", "voters"):
    # Sized for a 2-core CPU (~20 minutes a run): the ASR needs a few tokens only (the target
    # opens the answer) and exact-match accuracy is 0-0.12 at this scale (the headline), so
    # the clean metric is held-out loss and accuracy is not generated.
    shared.update({"eval.accuracy": False, "eval.asr_max_new_tokens": 12})
  if subset == "anchored":
    # The anchored probe against the adaptive attacker that evades the plain one (2 seeds),
    # its cost when nobody attacks, with the vote's noise tolerance, and against the plain
    # backdoor (which it flags wherever the plain probe does: its score is never lower).
    runs = [_evade(0, "flock_anchored"), _run("flock_anchored", 0.0, 0)]
    runs += [_evade(1, "flock_anchored"), _evade(0, "flock_anchored_tol")]
    runs += [_run("flock_anchored", 0.3, 0)]
    # The tolerance's second seed against the adaptive attacker, and its attack-free cost.
    runs += [_evade(1, "flock_anchored_tol"), _run("flock_anchored_tol", 0.0, 0)]
    # Seed 1's attack-free reference (held-out loss differs by seed: the data are drawn with it).
    runs += [_run("fedavg", 0.0, 1)]
    # Per-proposal voting with both: the honest updates of a round that holds an attacker's
    # are no longer rejected with it (the clean cost of the whole vote's rejections).
    runs += [_evade(s, "flock_anchored_pp_tol") for s in (1, 0)]
    # The tolerance's attack-free run on seed 1: its cost under attack, measured against the
    # same method without attackers as well as against attack-free FedAvg.
    runs += [_run("flock_anchored_tol", 0.0, 1)]
    # Per-proposal voting let an attacker's update accepted alone into G at full weight (seed 1,
    # round 5: ASR 0.69); with the accepted sum over the valid proposals' number it enters at 1/P'.
    runs += [_evade(1, "flock_anchored_pp_valid_tol")]
    return common.sweep(base, shared, runs)
  if subset == "voters":
    # The probe runs on the voters' side: an attacker drawn to vote does not flag its fellow's
    # update, and a committee whose stake is more than half attackers' lets it in (V = 3: two
    # attacker voters). The same attackers and seeds as the probe's runs without it
    # (backdoor_smollm2 at 30%, fractions_smollm2 at 40%).
    runs = [_voting(0, 0.3, "colluding"), _voting(0, 0.4, "colluding")]
    runs += [_voting(1, 0.3, "colluding"), _voting(1, 0.4, "colluding")]
    # Past half the stake, where a committee majority is the common case (2 of 3 seats in
    # two rounds of three): what a captured committee lets in.
    runs += [_voting(0, 0.6, "colluding")]
    # Larger committees, the lever `committee.capture_odds` names: at 40% (seed 1, where V = 3
    # was captured in 2 rounds) a strict attacker majority while one proposes has odds 0.28 a
    # round at V = 3, 0.076 at V = 4 and 0 at V = 6 (every non-proposer votes; a 3-3 split
    # voids the round instead of letting the flagged update in).
    runs += [_committee(_voting(1, 0.4, "colluding"), v) for v in (6, 4)]
    # At V = 6 the colluders could not capture but stalled the plain rule (5 of 10 rounds
    # accepted): the same committee with the vote's noise tolerance.
    runs += [_committee(_voting(1, 0.4, "colluding", "flock_probe_tol"), 6)]
    return common.sweep(base, shared, runs)
  if subset == "long":
    # The clean half at 10 rounds moved by several percent with the client draw alone; 20
    # rounds of the defence against the adaptive attacker and of its attack-free FedAvg
    # reference show whether the gap of the rejected rounds closes (~50 and ~25 minutes).
    shared["federation.rounds"] = 20
    runs = [_evade(s, "flock_anchored_tol") for s in (1, 0)]
    runs = [runs[0], _run("fedavg", 0.0, 1), runs[1], _run("fedavg", 0.0, 0)]
    # The probe + tolerance against the plain backdoor over the same 20 rounds: its 10-round
    # clean gap (+1.8% over rounds 5-9, 4 seeds) was under the seeds' spread (~65 minutes each).
    runs += [_run("flock_probe_tol", 0.3, s) for s in (1, 0)]
    return common.sweep(base, shared, runs)
  if subset == "search":
    # The anchored probe + tolerance let the adaptive backdoor in from round 13 (seed 1, 20
    # rounds): the same with the voters' trigger search, the same seeds and rounds.
    shared["federation.rounds"] = 20
    return common.sweep(base, shared, [_evade(s, "flock_search_tol") for s in (1, 0)])
  if subset == "soft":
    # The soft search against the adaptive attacker, the search run's seeds and rounds: the
    # attacker runs the same public soft search on its shrunk copies (seed 1 first).
    shared["federation.rounds"] = 20
    return common.sweep(base, shared, [_evade(s, "flock_soft_tol") for s in (1, 0)])
  if subset == "memory":
    # The anchored probe + tolerance let the adaptive backdoor in from round 13 (seed 0: ASR 0.56,
    # then 1.0 from round 15): the same with the probe's memory, against the attacker that
    # aims every piece under what is left of its budget; then the other seed, and its cost
    # when nobody attacks.
    shared["federation.rounds"] = 20
    runs = [_evade(s, "flock_memory_tol") for s in (0, 1)] + [_run("flock_memory_tol", 0.0, 0)]
    # Seed 0 showed the anchored score never sees the conditional backdoor, so its sum does not
    # either (docs/results). The trigger search's score does, piece by piece: the search with a
    # memory, on the search run's seed (~4 h on 2 cores: a pod's job).
    runs += [_evade(1, "flock_search_memory_tol")]
    return common.sweep(base, shared, runs)
  if subset == "private":
    # The trigger search on each voter's own prompts, which the attacker cannot run (it shrinks
    # against prompts it drew itself): the search run's seeds and rounds. A pod's job: each
    # honest voter searches every proposal (~40 s each on 2 cores with SmolLM2).
    shared["federation.rounds"] = 20
    # Per-proposal voting first: a voter's minority flag (G's own backdoor found in an honest
    # proposal) then rejects only that bit, where the whole vote rejects the candidate.
    # The round-scope search with G exempt first: 4x fewer voter searches at P = 4.
    methods = ("flock_private_round_pp_tol", "flock_private_pp_tol", "flock_private_tol")
    runs = [_evade(s, m) for s in (1, 0) for m in methods]
    return common.sweep(base, shared, runs)
  if subset == "clean":
    # The clean half against the plain backdoor, on more seeds: probe + tolerance under attack
    # and without (the same defence's own attack-free run), attack-free FedAvg where seed 0's
    # and 1's exist already, and FedAvg under attack (does the backdoor take on that seed?).
    # Ordered for `--shard=0/2` and `1/2` side by side (~2 hours each on 2 cores).
    runs = [_run("flock_probe_tol", f, 1) for f in (0.3, 0.0)]
    runs += [_run("flock_probe_tol", 0.3, 2), _run("fedavg", 0.0, 2)]
    runs += [_run("fedavg", 0.3, 2), _run("flock_probe_tol", 0.0, 2)]
    runs += [_run("flock_probe_tol", f, 3) for f in (0.3, 0.0)]
    runs += [_run("fedavg", f, 3) for f in (0.0, 0.3)]
    # The fair clean target under attack: FedAvg that drops exactly the attackers' updates
    # (federation.oracle). A defence that excludes them cannot recover their data either.
    runs += [_run("fedavg_oracle", 0.3, s) for s in (1, 2, 3)]
    return common.sweep(base, shared, runs)
  if subset == "probe":
    runs = [_run("flock_probe", 0.3, s) for s in (0, 1)]
    runs += [_run("fedavg", 0.0, 0), _run("flock_probe", 0.0, 0)]
    # The vote's noise tolerance: the clean-loss cost of the plain vote's rejected rounds; and
    # the adaptive attacker, which shrinks its update under the probe (attack 'backdoor_evade').
    runs += [_run("flock_probe_tol", f, 0) for f in (0.3, 0.0)] + [_evade(0)]
    runs += [_run("flock_probe_tol", 0.3, 1), _evade(1)]
    return common.sweep(base, shared, runs)
  if subset:
    raise ValueError(
        f"unknown subset {subset!r} of the defence sweep; use 'probe', 'clean', 'anchored', 'long', "
        "'search', 'private', 'memory', 'soft', 'voters' or nothing"
    )
  runs = []
  for seed in (0, 1):
    for method in VARIANTS:
      runs.append(
          {
              "name": f"{method}_f0.3_s{seed}",
              "tags": {"method": method, "fraction": 0.3, "seed": seed},
              "overrides": {**VARIANTS[method], "attack.fraction": 0.3, "seed": seed},
          }
      )
  for seed in (0, 1):
    for method in ("flock_pp_screen", "flock_screen"):
      runs.append(
          {
              "name": f"{method}_f0_s{seed}",
              "tags": {"method": method, "fraction": 0.0, "seed": seed},
              "overrides": {**VARIANTS[method], "attack.fraction": 0.0, "seed": seed},
          }
      )
  return common.sweep(base, shared, runs)
