"""launch/screen_history.py: the FoolsGold history screen replayed on a run's revealed proposals."""

import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from flock_jax.chain.store import AdapterStore
from flock_jax.federated import hashing
from flock_jax.federated.aggregators.reputation import foolsgold_weights
from flock_jax.run_config import from_config, load_config
from flock_jax.workdir import config_dict

ROOT = pathlib.Path(__file__).parents[2]


def _write_run(wd, updates_by_round):
  """A FLock workdir holding only what the script reads: config, metrics with each round's
  proposers and proposal hashes, and the store with the proposals' canonical bytes."""
  c = load_config("tiny")
  c.federation.num_participants, c.federation.num_proposers, c.federation.num_voters = 4, 2, 2
  c.attack.fraction, c.attack.proposer = 0.5, "backdoor"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps(config_dict(c)))
  store = AdapterStore(wd / "store")
  rows = [{"round": -1, "extra": None}]
  for r, ups in enumerate(updates_by_round):
    hashes = {}
    for i, u in ups.items():
      tree = {"layer": {"a": u[:3].reshape(1, 3), "b": u[3:]}}
      hashes[str(i)] = "0x" + store.put(hashing.canonical_bytes(tree)).hex()
    rows.append({"round": r, "proposers": list(ups), "extra": {"proposal_hashes": hashes}})
  (wd / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
  return from_config(c).attack.attackers(4)


def test_screen_history_replays_the_definition(tmp_path):
  """Two colluders pushing one direction (scaled down, as the adaptive attacker does) against
  two honest participants apart: the script's weights are `foolsgold_weights` of the summed
  histories, its cosines the histories' own, and the colluders are the ones down-weighted."""
  rng = np.random.default_rng(0)
  bad = _write_run(tmp_path / "probe", [{0: np.ones(5, np.float32)}])
  assert len(bad) == 2
  good = [i for i in range(4) if i not in bad]
  shared = rng.normal(size=5).astype(np.float32)
  rounds = []
  for r in range(3):
    ups = {i: (0.1 * (r + 1)) * (shared + 0.05 * rng.normal(size=5)) for i in bad}
    ups.update({i: rng.normal(size=5) for i in good})
    rounds.append({i: np.asarray(u, np.float32) for i, u in sorted(ups.items())})
  wd = tmp_path / "run"
  assert _write_run(wd, rounds) == bad
  out = subprocess.run(
      [sys.executable, "launch/screen_history.py", f"--workdir={wd}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.splitlines()
  got = json.loads(out[-1])
  assert got["proposals"] == 12
  history, want_w, want_cos = {}, {True: [], False: []}, {True: [], False: []}
  for ups in rounds:
    for i, u in ups.items():
      history[i] = history.get(i, 0) + u.astype(np.float64)
    w = np.asarray(foolsgold_weights(np.stack([history[i] for i in ups]).astype(np.float32)))
    for i, wi in zip(ups, w):
      unit = lambda v: v / np.linalg.norm(v)
      want_w[i in bad].append(wi)
      want_cos[i in bad].append(max(unit(history[i]) @ unit(history[j]) for j in history if j != i))
  np.testing.assert_allclose(got["attacker_weights"], want_w[True], atol=2e-4)
  np.testing.assert_allclose(got["honest_weights"], want_w[False], atol=2e-4)
  np.testing.assert_allclose(got["attacker_max_cos"], want_cos[True], atol=2e-4)
  np.testing.assert_allclose(got["honest_max_cos"], want_cos[False], atol=2e-4)
  # the colluders' histories point together: each one's nearest is the other, near cosine 1
  assert min(got["attacker_max_cos"]) > 0.95 > max(got["honest_max_cos"])
  assert got["attackers_down"] == 6 and max(got["attacker_weights"]) < 0.5
  lines = [x for x in out if x.startswith("round")]
  assert len(lines) == 3 and all(f"{bad[0]}* a=" in x and f"(to {bad[1]}*)" in x for x in lines)


def test_screen_history_refuses_a_baseline_run(tmp_path):
  c = load_config("tiny")
  c.federation.mode = "baseline"
  (tmp_path / "config.json").write_text(json.dumps(config_dict(c)))
  out = subprocess.run(
      [sys.executable, "launch/screen_history.py", f"--workdir={tmp_path}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
  )
  assert out.returncode != 0 and "baseline run" in out.stderr + out.stdout


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
