"""Replay a FoolsGold-style history screen on a finished FLock run's revealed proposals.

  python launch/screen_history.py --workdir=runs/memory/flock_memory_tol_vs_evade_f0.3_s0

Every proposal a FLock round reveals is public (the adapter store keeps it), so every voter can
keep each participant's history H_i = the sum of its revealed updates so far, and screen a
round's proposals by it as FoolsGold does (Fung et al. 2020): colluding attackers pushing one
backdoor have histories more alike than honest participants'. A scale-invariant signal, so the
adaptive attacker's shrinking (backdoor_evade) does not hide it. For each round's proposals
(histories including this round's) it prints:
  a     the FoolsGold weight among the round's proposers (`foolsgold_weights`, as the
        aggregator applies it: < 1 means down-weighted, 0 excluded);
  cos   the largest cosine of its history to any other participant's history, and whose.
Last, a JSON line: {"proposals", "attacker_weights", "honest_weights", "attacker_max_cos",
"honest_max_cos", "attackers_down", "honest_down"} (down: weight < 1).
"""

import json
import os
import pathlib
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished FLock run's workdir.", required=True)
_KAPPA = flags.DEFINE_float("kappa", 1.0, "FoolsGold's confidence parameter.")


def flat(tree) -> "np.ndarray":
  """One float32 vector of a tree's leaves, in the canonical (path) order."""
  import numpy as np

  from flock_jax.federated.hashing import leaves_by_path

  return np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves_by_path(tree).values()])


def max_cosines(history: dict[int, "np.ndarray"]) -> dict[int, tuple[float, int]]:
  """{participant: (largest cosine of its history to another's, that participant)}."""
  import numpy as np

  ids = sorted(history)
  unit = {i: history[i] / max(float(np.linalg.norm(history[i])), 1e-12) for i in ids}
  out = {}
  for i in ids:
    cs = [(float(unit[i] @ unit[j]), j) for j in ids if j != i]
    out[i] = max(cs) if cs else (0.0, -1)
  return out


def main(argv):
  del argv
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from flock_jax import cli
  from flock_jax.chain.store import AdapterStore
  from flock_jax.federated import hashing
  from flock_jax.federated.aggregators.reputation import foolsgold_weights
  from flock_jax.run_config import from_config
  from flock_jax.workdir import flock_run_config, proposal_hashes

  wd = pathlib.Path(_WORKDIR.value)
  try:
    config = flock_run_config(wd)
  except ValueError as e:
    cli.fail(str(e))
  run = from_config(ml_collections.ConfigDict(config))
  bad = set(run.attack.attackers(run.federation.num_participants))
  store = AdapterStore(wd / "store")
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in rows if r["round"] >= 0]
  history: dict[int, np.ndarray] = {}
  side = {True: {"w": [], "cos": []}, False: {"w": [], "cos": []}}
  for r, hashes in zip(rows, proposal_hashes(rows, wd / "store")):
    who = [i for i in r["proposers"] if i in hashes]
    for i in who:
      up = flat(hashing.tree_from_canonical_bytes(store.get(bytes.fromhex(hashes[i][2:]))))
      history[i] = history[i] + up if i in history else up
    if not who:
      continue
    weights = np.asarray(
        foolsgold_weights(jnp.asarray(np.stack([history[i] for i in who])), _KAPPA.value)
    )
    near = max_cosines(history)
    cells = []
    for i, w in zip(who, weights.tolist()):
      c, j = near[i]
      side[i in bad]["w"].append(round(w, 4))
      side[i in bad]["cos"].append(round(c, 4))
      mark = lambda k: f"{k}{'*' if k in bad else ''}"
      cells.append(f"{mark(i)} a={w:.2f} cos={c:.3f} (to {mark(j)})")
    print(f"round {r['round']:3d}: " + ", ".join(cells), flush=True)
  print("* attacker (the run's attack config)")
  print(
      json.dumps(
          {
              "proposals": sum(len(s["w"]) for s in side.values()),
              "attacker_weights": side[True]["w"],
              "honest_weights": side[False]["w"],
              "attacker_max_cos": side[True]["cos"],
              "honest_max_cos": side[False]["cos"],
              "attackers_down": sum(w < 1 for w in side[True]["w"]),
              "honest_down": sum(w < 1 for w in side[False]["w"]),
          }
      )
  )


if __name__ == "__main__":
  from flock_jax import cli

  cli.run_main(main)
