"""Replay the probe's memory (federation.probe_budget) on a finished FLock run's probe scores.

  python launch/probe_memory.py --workdir=runs/long/flock_anchored_tol_vs_evade_f0.3_s0
  python launch/probe_memory.py --workdir=RUN --allowance=0,0.01,0.02 --budget=0.05,0.1

Reads the probe scores the run's voters computed in every round (metrics.jsonl,
extra.probe_scores: runs made with a probe) and sums each participant's excess over the
allowance round by round, as `flock_jax.federated.probe.memory` does inside a run with
`federation.probe_budget`. For every (allowance, budget) pair it prints each attacker's sum
and the round its proposal would first have been flagged, and the honest proposers' largest
sum and any honest participant that would have been flagged. Last, a JSON line: a list of
{"allowance", "budget", "attackers": {i: {"sum", "first_flagged"}}, "max_honest",
"honest_flagged"}. Costs no model work: this is how the sweep's budget was chosen
(docs/results/README.md, experiment 5).

The replay scores the run as it happened: with the memory on, flagged proposals would have
left G, and later scores (all measured against G) would differ. It answers "where would the
memory have drawn the line", not "what would the run have done".
"""

import json
import os
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished FLock run's workdir.", required=True)
_ALLOWANCE = flags.DEFINE_list("allowance", ["0.01"], "federation.probe_allowance values.")
_BUDGET = flags.DEFINE_list("budget", ["0.05"], "federation.probe_budget values.")


def replay(rows: list[dict], attackers: set[int], allowance: float, budget: float) -> dict:
  """The memory over a run's metrics rows (dicts of metrics.jsonl), as flock_round sums it."""
  from flock_jax.federated.probe import memory

  sums: dict[int, float] = {}
  first: dict[int, int] = {}
  for r in rows:
    scores = {int(i): s for i, s in ((r.get("extra") or {}).get("probe_scores") or {}).items()}
    sums, flagged = memory(scores, sums, allowance, budget)
    for i in flagged:
      first.setdefault(i, r["round"])
  honest = [x for i, x in sums.items() if i not in attackers]
  return {
      "allowance": allowance,
      "budget": budget,
      "attackers": {
          i: {"sum": round(sums.get(i, 0.0), 4), "first_flagged": first.get(i)}
          for i in sorted(attackers)
      },
      "max_honest": round(max(honest, default=0.0), 4),
      "honest_flagged": {i: first[i] for i in sorted(first) if i not in attackers},
  }


def main(argv):
  del argv
  import ml_collections

  from flock_jax import cli
  from flock_jax.run_config import from_config
  from flock_jax.workdir import flock_run_config

  cli.info_logging()
  wd = pathlib.Path(_WORKDIR.value)
  try:
    config = flock_run_config(wd)
  except ValueError as e:
    cli.fail(str(e))
  run = from_config(ml_collections.ConfigDict(config))
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  if not any((r.get("extra") or {}).get("probe_scores") for r in rows):
    cli.fail(f"{wd}/metrics.jsonl holds no probe scores: the run had federation.probe='none'")
  attackers = set(run.attack.attackers(run.federation.num_participants))
  out = []
  for a in (float(x) for x in _ALLOWANCE.value):
    for b in (float(x) for x in _BUDGET.value):
      res = replay(rows, attackers, a, b)
      att = ", ".join(
          f"{i}: {v['sum']:.3f} (flagged from round {v['first_flagged']})"
          if v["first_flagged"] is not None
          else f"{i}: {v['sum']:.3f} (never flagged)"
          for i, v in res["attackers"].items()
      )
      print(
          f"allowance {a:g} budget {b:g} | attackers {att} | honest at most "
          f"{res['max_honest']:.3f}, flagged {res['honest_flagged'] or 'none'}"
      )
      out.append(res)
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
