"""The main job on a real JSON-RPC node: stopped at a round boundary, resumed in a new
process against the same deployed task, then audited whole from the chain's logs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.chain.test_jsonrpc import node_url  # noqa: F401 (module-scoped node fixture)

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.hardhat


def _train(workdir, url, *extra, kill_at=None):
  cmd = [
      sys.executable,
      str(ROOT / "launch" / "train.py"),
      f"--config={ROOT / 'configs' / 'flock.py'}:tiny",
      f"--workdir={workdir}",
      "--config.ledger.backend=jsonrpc",
      f"--config.ledger.rpc_url={url}",
      "--config.federation.rounds=3",
      "--config.federation.local_steps=2",
      *extra,
  ]
  env = {k: v for k, v in os.environ.items() if k != "FLOCK_JAX_KILL_AT"}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  if kill_at:
    env["FLOCK_JAX_KILL_AT"] = kill_at
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == (-9 if kill_at else 0), out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def test_train_stops_resumes_on_the_same_task_and_audits_clean(node_url, tmp_path):  # noqa: F811
  first = _train(tmp_path, node_url, "--stop_after=2")
  assert "stopped after 2 rounds" in first
  task = json.loads((tmp_path / "chain.json").read_text())["task"]
  second = _train(tmp_path, node_url, "--resume")
  assert "resuming at round 2 (checkpoint of chain round 1" in second
  assert "audit: audit OK: 3 rounds" in second, second
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [-1, 0, 1, 2]  # -1: the starting model
  assert json.loads((tmp_path / "chain.json").read_text())["task"] == task
  # The run is finished: the same command again finds nothing left to run and sends nothing.
  logs = (tmp_path / "chain_logs.json").read_text()
  third = _train(tmp_path, node_url, "--resume")
  assert "nothing left to run" in third
  assert (tmp_path / "chain_logs.json").read_text() == logs


# Slow (2.5 min): the default run covers the same kill points on the in-process chain
# (tests/test_run_lifecycle.py, eth_tester after finalize) and stop/resume on this node (above).
@pytest.mark.slow
def test_sigkill_mid_round_and_after_finalize_then_the_run_continues_on_the_node(
    node_url, tmp_path  # noqa: F811
):
  """Killed after its votes (round 1 open on the node), then right after round 1 was
  finalized (the checkpoint is a round behind the node): each time the same command rejoins
  or replays what the node already holds, its recomputed commitments match the ones on
  chain, and the finished run audits clean from the node's logs alone."""
  _train(tmp_path, node_url, kill_at="1:voted")
  _train(tmp_path, node_url, kill_at="1:finalized")
  out = _train(tmp_path, node_url)
  assert "resuming at round 1" in out
  assert "audit: audit OK: 3 rounds" in out, out
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [-1, 0, 1, 2]
  for r in rows[1:]:  # the run's global model is the chain's, round by round
    if r["accepted"]:
      assert r["global_hash"] == r["chain_global_hash"] == r["candidate_hash"]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["rounds"] == 3
