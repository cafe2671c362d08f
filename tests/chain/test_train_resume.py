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


def _train(workdir, url, *extra):
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
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
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
