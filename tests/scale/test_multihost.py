"""Two processes on 127.0.0.1 with jax.distributed (fake CPU devices, gloo collectives) run
FLock rounds of the tiny model on the in-process chain, and end where one process ends: the
same global hash every round, the same stakes, rewards and metrics.

The driver (tests/scale/multihost_run.py) and the main job run 1 device per process on a
clients:2 mesh (one client group per host). The pod layout with several devices per host
(clients:2 x fsdp:2, FSDP inside a host) runs as a slow test: XLA:CPU's cross-process
collectives with 2 devices per process hang now and then (docs/scale_out.md, "Known limits"),
which a default run on a shared CI machine cannot afford. The proposers' updates are gathered
to every host for hashing; only process 0 drives the chain.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

DRIVER = pathlib.Path(__file__).with_name("multihost_run.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _spawn(out, *args):
  """A driver process logging to a file (a pipe nobody reads would block it mid-collective)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  log = out / f"log_{len(list(out.glob('log_*')))}.txt"
  with open(log, "w") as f:
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), f"--out={out}", *args], env=env, stdout=f, stderr=f
    )
  return proc, log


def _wait(procs, timeout=900):
  """Waits for all `procs` within `timeout` seconds in all; kills them all past it."""
  import time

  deadline = time.monotonic() + timeout
  for p, _ in procs:
    try:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      logs = "\n".join(f"--- {log}:\n{log.read_text()[-1500:]}" for _, log in procs)
      pytest.fail(f"a process of the multi-host run timed out after {timeout} s\n{logs}")
  for p, log in procs:
    assert p.returncode == 0, log.read_text()[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  multi, single = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one")
  port = _free_port()
  hosts = [
      _spawn(multi, "--devices=1", "--mesh=clients:2", "--num_processes=2",
             f"--process_id={i}", f"--coordinator=127.0.0.1:{port}")
      for i in (0, 1)
  ]  # fmt: skip
  ref = _spawn(single, "--devices=2", "--mesh=clients:2")
  _wait(hosts + [ref])
  read = lambda d, i: json.loads((d / f"process_{i}.json").read_text())
  return read(multi, 0), read(multi, 1), read(single, 0), multi


def _no_times(metrics):
  return [{k: v for k, v in m.items() if not k.startswith("time_")} for m in metrics]


def test_two_processes_form_one_job(runs):
  leader, follower, _, _ = runs
  for i, r in enumerate((leader, follower)):
    assert (r["process_index"], r["process_count"]) == (i, 2)
    assert (r["devices"], r["local_devices"]) == (2, 1)


def test_same_rounds_as_one_process(runs):
  leader, follower, single, _ = runs
  assert len(single["metrics"]) == 2 and all(m["accepted"] for m in single["metrics"])
  for r in (leader, follower):
    assert [m["global_hash"] for m in r["metrics"]] == [m["global_hash"] for m in single["metrics"]]
    assert r["stakes"] == single["stakes"] and r["block_hash"] == single["block_hash"]
    assert _no_times(r["metrics"]) == _no_times(single["metrics"])  # rewards, gains, losses
  assert len({m["global_hash"] for m in single["metrics"]}) == 2  # the model moved each round


def test_each_host_builds_only_its_clients_rows(runs):
  leader, follower, single, _ = runs
  assert single["train_blocks"] == []  # one process builds whole batches
  for i, r in enumerate((leader, follower)):
    assert len(r["train_blocks"]) == 2  # one local-training batch a round
    for shape, block in r["train_blocks"]:
      k, e, b, t = shape
      assert k == 2  # P = 2 clients over clients:2, one per host: host i builds client i only
      assert block == [[i, i + 1], [0, e], [0, b], [0, t]]


def test_generation_reports_gather_across_hosts(runs):
  leader, follower, single, _ = runs
  pick = lambda r: [(m["accuracy"], m["asr"], m["false_activation"]) for m in r["metrics"]]
  for acc, asr, clean in pick(single):
    assert set(acc) and 0.0 <= asr <= 1.0 and 0.0 <= clean <= 1.0
  for r in (leader, follower):  # every host gets the answers one process gets
    assert pick(r) == pick(single)


def test_only_the_leader_writes(runs):
  leader, follower, single, multi = runs
  assert follower["store_blobs"] is None
  assert leader["store_blobs"] == single["store_blobs"] > 0
  assert sorted(p.name for p in multi.iterdir() if not p.name.startswith("log_")) == [
      "checkpoints",
      "process_0.json",
      "process_1.json",
      "store",
  ]


def test_leader_errors_reach_followers(runs):
  leader, follower, single, _ = runs
  assert leader["ledger_error"] and leader["ledger_error"] == follower["ledger_error"]
  assert leader["ledger_error"] == single["ledger_error"]


def test_each_host_reads_only_its_shards(runs):
  leader, follower, single, _ = runs
  assert single["base_elements_read"]["read"] == single["base_elements_read"]["total"]
  for r in (leader, follower):  # fsdp over 2 devices, 1 per process: half of each split leaf
    read = r["base_elements_read"]
    assert 0 < read["replicated"] < read["total"] // 100  # only the norms are replicated
    assert read["read"] == (read["total"] - read["replicated"]) // 2 + read["replicated"]


def test_orbax_checkpoint_written_by_both_hosts(runs):
  leader, follower, _, _ = runs
  assert leader["checkpoint_roundtrip"] and follower["checkpoint_roundtrip"]


# ------------------------------------------------------------------ the main job itself
TRAIN = pathlib.Path(__file__).resolve().parents[2] / "launch" / "train.py"
TRAIN_FLAGS = [
    "--config=configs/flock.py:tiny",
    "--config.federation.rounds=2",
    "--config.federation.num_proposers=2",
    "--config.federation.local_steps=2",
    "--config.mesh.clients=2",
    "--config.eval.accuracy=False",
    "--config.eval.asr=False",
]


def _train(workdir, devices, *extra):
  """launch/train.py with `devices` CPU devices in this process, logging to a file."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
  log = workdir.parent / f"{workdir.name}_{len(list(workdir.parent.glob(workdir.name + '_*')))}.log"
  with open(log, "w") as f:
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), *TRAIN_FLAGS, f"--workdir={workdir}", *extra],
        env=env,
        stdout=f,
        stderr=f,
        cwd=TRAIN.parents[1],
    )
  return proc, log


def _hosts(workdir, devices, *extra):
  port = _free_port()
  flags = [f"--coordinator=127.0.0.1:{port}", "--num_processes=2"]
  return [_train(workdir, devices, *flags, f"--process_id={i}", *extra) for i in (0, 1)]


def _stop_resume_and_match_one(tmp_path, per_host: int, *mesh):
  multi, single = tmp_path / "multi", tmp_path / "single"
  ref = _train(single, 2 * per_host, *mesh)
  _wait(_hosts(multi, per_host, "--stop_after=1", *mesh))
  rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows(multi)] == [-1, 0]
  _wait(_hosts(multi, per_host, *mesh) + [ref])
  logs = sorted(tmp_path.glob("multi_*.log"))
  assert all("resuming at round 1" in p.read_text() for p in logs[2:])
  assert "audit: audit OK" in logs[2].read_text()  # the leader audits the whole chain
  assert "audit:" not in logs[3].read_text()  # a follower has no chain to audit
  no_times = lambda d: _no_times(rows(d))
  assert no_times(multi) == no_times(single)
  assert [r["global_hash"] for r in rows(multi)][-1] == [r["global_hash"] for r in rows(single)][-1]
  chain_logs = lambda d: json.loads((d / "chain_logs.json").read_text())
  assert chain_logs(multi) == chain_logs(single)
  summary = lambda d: _no_times([json.loads((d / "summary.json").read_text())])
  assert summary(multi) == summary(single)


def test_main_job_on_two_hosts_stops_resumes_and_matches_one(tmp_path):
  """launch/train.py on 2 processes (eth-tester chain, audit at the end), stopped after round
  0 and continued from the multi-host orbax checkpoint, writes the metrics, chain logs and
  summary of the same job run on one process with 2 devices."""
  _stop_resume_and_match_one(tmp_path, 1)


@pytest.mark.slow
def test_pod_layout_two_devices_per_host(tmp_path):
  """The same with clients:2 x fsdp:2: client groups across hosts, FSDP inside each host."""
  _stop_resume_and_match_one(tmp_path, 2, "--config.mesh.fsdp=2")
