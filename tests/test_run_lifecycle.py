"""A run is never lost: the main job killed anywhere continues bit for bit; a used workdir is
continued or refused, never damaged; user errors are one line; export reads a run."""

import json
import os
import pathlib
import random
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ROOT / "launch" / "train.py"
# Small and fast: 3 rounds of the tiny model.
FAST = (
    "--config.federation.rounds=3",
    "--config.federation.local_steps=2",
    "--config.federation.eval_batches=1",
)


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "FLOCK_JAX_KILL_AT"}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", **extra)
  return env


def _cmd(workdir, *extra, backend="local"):
  return [
      sys.executable,
      str(TRAIN),
      "--config=configs/flock.py:tiny",
      f"--workdir={workdir}",
      f"--config.ledger.backend={backend}",
      *FAST,
      *extra,
  ]


def _train(workdir, *extra, backend="local", expect=0, kill_at=None):
  env = _env(FLOCK_JAX_KILL_AT=kill_at) if kill_at else _env()
  out = subprocess.run(
      _cmd(workdir, *extra, backend=backend),
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert out.returncode == expect, (out.returncode, out.stdout[-3000:], out.stderr[-3000:])
  return out


def _rows(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def _final_tree(workdir):
  from flock_jax.checkpoint import RunCheckpointer

  ck = RunCheckpointer(workdir / "checkpoints", max_to_keep=None)
  tree, meta = ck.restore(ck.latest_step())
  ck.close()
  return ck.latest_step(), tree, meta


def _ledger_view(saved) -> dict:
  """What a saved ledger holds, comparable: the rules' whole state, events and block number
  for a LocalLedger (its pickle's bytes depend on object sharing, not on the state); the
  chain's own bytes for eth-tester (deterministic blocks)."""
  from flock_jax.federated.ledger import LocalLedger

  data = np.asarray(saved, np.uint8).tobytes()
  if not data.startswith(b"FLL"):
    return {"bytes": data}
  led = LocalLedger.from_state(data)
  return {
      "model": {k: v for k, v in vars(led.model).items()},
      "events": led.events,
      "block": led.block_number,
      "stakes": led.stakes().tolist(),
      "claimable": led.claimable,
      "pool": led.pool,
  }


def _assert_same_run(a, b):
  """Everything a run leaves behind, bit for bit (wall times excepted)."""
  assert _rows(a) == _rows(b)
  sa, sb = (json.loads((w / "summary.json").read_text()) for w in (a, b))
  sa.pop("time_s", None), sb.pop("time_s", None)  # wall times
  assert sa == sb
  step_a, tree_a, meta_a = _final_tree(a)
  step_b, tree_b, meta_b = _final_tree(b)
  assert step_a == step_b and meta_a == meta_b
  import jax

  la, lb = jax.tree.leaves_with_path(tree_a), jax.tree.leaves_with_path(tree_b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):  # adapters, optimizer states
    if jax.tree_util.keystr(path) != "['ledger']":
      assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
  assert _ledger_view(tree_a["ledger"]) == _ledger_view(tree_b["ledger"])
  assert sorted(os.listdir(a / "store")) == sorted(os.listdir(b / "store"))
  if (a / "chain_logs.json").exists():
    assert json.loads((a / "chain_logs.json").read_text()) == json.loads(
        (b / "chain_logs.json").read_text()
    )


# ------------------------------------------------------------------ kill anywhere
@pytest.mark.parametrize(
    "backend,kills",
    [
        # Before and after the chain's round, inside a checkpoint write, after the metrics row;
        # then a random moment.
        ("local", ["0:proposed", "1:checkpoint", "2:metrics"]),
        ("eth_tester", ["1:finalized"]),
        # Every point of a round (slow: nine more processes).
        pytest.param(
            "local",
            ["0:trained", "0:proposed", "1:voted", "1:finalized", "1:checkpoint", "2:metrics"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "eth_tester", ["0:trained", "1:finalized", "2:proposed"], marks=pytest.mark.slow
        ),
    ],
)
def test_sigkill_anywhere_then_the_same_command_continues_bit_for_bit(tmp_path, backend, kills):
  ref, run = tmp_path / "ref", tmp_path / "run"
  _train(ref, backend=backend)
  for k in kills[:-1]:
    out = _train(run, backend=backend, kill_at=k, expect=-9)
    assert "Traceback" not in out.stderr
  _kill_at_a_random_moment(run, backend)
  out = _train(run, backend=backend, kill_at=kills[-1], expect=-9)
  assert "Traceback" not in out.stderr
  out = _train(run, backend=backend)
  assert "resuming at round" in out.stdout
  _assert_same_run(ref, run)


def _kill_at_a_random_moment(run, backend):
  """SIGKILL an invocation at a random moment (seeded, so the test is repeatable) between its
  banner and the end of its work: at least a whole round is left when it is drawn, so a
  machine (or a warm compilation cache) that runs faster still kills it mid-run."""
  delay = random.Random(0).uniform(0.2, 1.2)
  proc = subprocess.Popen(
      _cmd(run, backend=backend),
      cwd=ROOT,
      env=_env(PYTHONUNBUFFERED="1"),
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )
  try:
    for line in proc.stdout:
      if line.startswith("flock_jax:"):
        break
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the random kill: shorten the delay"
  finally:
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------ workdir rules
def _snapshot(workdir):
  return {
      p.relative_to(workdir): p.read_bytes()
      for p in sorted(workdir.rglob("*"))
      if p.is_file() and p.name != ".lock"
  }


def test_a_used_workdir_is_continued_refused_or_moved_aside_never_damaged(tmp_path):
  wd = tmp_path / "run"
  _train(wd)
  before = _snapshot(wd)

  again = _train(wd)  # same config: the run is finished, nothing to do, nothing touched
  assert "nothing left to run" in again.stdout
  assert _snapshot(wd) == before

  other = _train(wd, "--config.optim.lr=0.5", expect=2)  # another config: refused, named
  assert "optim.lr" in other.stderr and "--overwrite" in other.stderr
  assert "Traceback" not in other.stderr
  assert _snapshot(wd) == before

  moved = _train(wd, "--config.optim.lr=0.5", "--overwrite")
  assert "moved the old run aside" in moved.stdout
  assert _snapshot(tmp_path / "run.old-1") == before
  assert json.loads((wd / "config.json").read_text())["optim"]["lr"] == 0.5


def test_nothing_is_written_before_config_and_model_are_valid(tmp_path):
  wd = tmp_path / "new"
  out = _train(wd, "--config.model.weights=hf:/no/such/folder", expect=2)
  assert "/no/such/folder" in out.stderr
  assert not wd.exists()


@pytest.mark.parametrize(
    "flag,says",
    [
        ("--config.federation.roundz=3", 'Did you mean "rounds"'),
        ("--config.federation.rounds=-1", "config.federation.rounds=-1"),
        ("--config.model.weights=hf:/no/such/folder", "not a checkpoint folder"),
        ("--no_such_flag=1", "Unknown command line flag"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, flag, says):
  out = _train(tmp_path / "w", flag, expect=2)
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  assert says in lines[0]


def test_show_config_explains_every_field():
  out = subprocess.run(
      [sys.executable, str(TRAIN), "--config=configs/flock.py:tiny", "--show_config"],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert any(l.startswith("federation.rounds = ") for l in lines)
  assert all("  # " in l for l in lines) and not any("(undocumented)" in l for l in lines)


# ------------------------------------------------------------------ export from a run
def test_export_from_a_run_loads_in_peft_with_the_same_logits(tmp_path):
  import torch
  import transformers
  from peft import PeftModel

  wd = tmp_path / "run"
  _train(wd, "--config.federation.rounds=1")
  for fmt in ("peft", "merged"):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "export.py"),
            f"--run={wd}",
            f"--format={fmt}",
            f"--out={tmp_path / fmt}",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]

  # Our own forward of the run's base + global adapter, rebuilt from the run's folder.
  import ml_collections

  from flock_jax.federated.engine import load_model
  from flock_jax.run_config import from_config
  from tests.checkpoint.helpers import our_logits

  run = from_config(ml_collections.ConfigDict(json.loads((wd / "config.json").read_text())))
  cfg, params, _ = load_model(run)
  _, tree, _ = _final_tree(wd)
  toks = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
  ours = our_logits(params, toks, cfg, lora=tree["global_lora"], lcfg=run.lora)

  base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "peft" / "base")
  peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
  merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
  with torch.no_grad():
    for model in (peft_model, merged):
      theirs = model(torch.tensor(toks)).logits.float().numpy()
      # fp32 forward of a 2-layer model, different op order: budget ~1e-5 relative to the
      # logits' scale (a few units), as in tests/model/test_parity.py.
      np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=0)


# ------------------------------------------------------------------ the task ends
def test_a_task_out_of_participants_ends_the_run_cleanly(tmp_path):
  """Every voter always rejects and one slash ejects (min stake 95 of 100): round 0's two
  proposers are ejected, 6 of 8 participants stay, a round needs P + V = 6 + 1. The run ends
  there as the task does (the contract would refuse start_round), exit 0, the reason in
  summary.json; the same command again ends the same way and changes nothing."""
  wd = tmp_path / "run"
  flags = (
      "--config.federation.num_proposers=2",
      "--config.federation.num_voters=5",
      "--config.ledger.min_stake=95",
      "--config.attack.fraction=1.0",
      "--config.attack.voter=always_reject",
      "--config.eval.every=0",
  )
  out = _train(wd, *flags, backend="eth_tester")
  assert "the task ended before round 1: 6 participants are still staked" in out.stdout
  assert "audit: audit OK: 1 rounds" in out.stdout, out.stdout[-2000:]
  rows = _rows(wd)
  assert [r["round"] for r in rows] == [-1, 0] and rows[1]["accepted"] is False
  assert sorted(rows[1]["ejected_now"]) == sorted(rows[1]["proposers"])
  summary = json.loads((wd / "summary.json").read_text())
  assert summary["ended_early"] == {
      "round": 1,
      "reason": "6 participants are still staked, a round needs P + V = 7",
  }
  metrics = (wd / "metrics.jsonl").read_bytes()
  again = _train(wd, *flags, backend="eth_tester")
  assert "the task ended before round 1" in again.stdout
  assert (wd / "metrics.jsonl").read_bytes() == metrics


def test_a_baseline_run_stopped_and_continued_is_the_uninterrupted_one(tmp_path):
  """Baseline mode (FedAvg, no ledger) with client_state='fresh' (no per-client state in the
  checkpoint): --stop_after=1, then the same command, ends exactly where one invocation
  does. The checkpoint records the hash of the G it holds, and the resume checks it."""
  import jax

  flags = ("--config.federation.mode=baseline", "--config.federation.client_state=fresh")
  ref, run = tmp_path / "ref", tmp_path / "run"
  _train(ref, *flags)
  assert "stopped after 1 rounds" in _train(run, *flags, "--stop_after=1").stdout
  assert "resuming at round 1" in _train(run, *flags).stdout
  assert _rows(ref) == _rows(run)
  (step_a, tree_a, meta_a), (step_b, tree_b, meta_b) = _final_tree(ref), _final_tree(run)
  assert step_a == step_b == 3 and meta_a == meta_b and "clients" not in tree_a
  for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    assert np.array_equal(np.asarray(x), np.asarray(y))


def test_a_finished_baseline_run_extended_to_more_rounds_is_the_longer_run(tmp_path):
  """The same command with a larger federation.rounds continues a finished baseline run from
  its last checkpoint: its rows and final state are those of a run that long from the start,
  and the shorter run's summary is kept beside the new one."""
  import jax

  flags = (
      "--config.federation.mode=baseline",
      "--config.federation.client_state=fresh",
      "--config.eval.every=1",
  )
  ref, run = tmp_path / "ref", tmp_path / "run"
  _train(ref, *flags)  # FAST: 3 rounds
  _train(run, *flags, "--config.federation.rounds=2")
  short = json.loads((run / "summary.json").read_text())
  out = _train(run, *flags).stdout
  assert "extending the run to 3 rounds" in out and "resuming at round 2" in out
  assert json.loads((run / "summary.rounds-2.json").read_text()) == short
  assert json.loads((run / "config.json").read_text())["federation"]["rounds"] == 3
  assert _rows(ref) == _rows(run)
  (step_a, tree_a, meta_a), (step_b, tree_b, meta_b) = _final_tree(ref), _final_tree(run)
  assert step_a == step_b == 3 and meta_a == meta_b
  for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "old, new, says",
    [
        ({}, {"federation.rounds": 2}, "not fewer"),
        ({"federation.mode": "flock"}, {"federation.rounds": 5}, "deployed on its chain for 3"),
        ({"optim.schedule": "cosine"}, {"federation.rounds": 5}, "optim.schedule='cosine'"),
        ({}, {"federation.rounds": 5, "optim.lr": 0.5}, "optim.lr"),
    ],
)
def test_a_run_that_cannot_be_extended_is_refused_naming_why(tmp_path, old, new, says):
  """Only federation.rounds may grow, and only where the first rounds do not depend on the
  total: a FLock task's chain was deployed for its rounds; a schedule spans all of them."""
  from flock_jax.run_config import load_config
  from flock_jax.workdir import Workdir, WorkdirError, config_dict

  def config(changes):
    c = load_config("tiny")
    c.federation.mode, c.federation.rounds = "baseline", 3
    for field, value in changes.items():
      section, key = field.split(".")
      c[section][key] = value
    return c

  first = config(old)
  wd = Workdir(tmp_path / "run")
  wd.start(first, "new")
  (tmp_path / "run" / "summary.json").write_text("{}")
  before = _snapshot(tmp_path / "run")
  with pytest.raises(WorkdirError, match=says):
    wd.check(config({**old, **new}))
  assert _snapshot(tmp_path / "run") == before
  assert wd.check(config({**old, "federation.rounds": 3})) == "continue"
