"""launch/sweep.py (overrides checked up front, resume after a kill, skip finished runs) and
launch/report.py (tables and plots from small fixture workdirs)."""

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from flock_jax.run_config import RunConfigError, from_config, load_config
from flock_jax.workdir import config_dict

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


sweep_mod = _load("sweep")
report_mod = _load("report")

# The smallest run that still trains: baseline FedAvg, 1 local step, no generation.
FAST = {
    "ledger.backend": "local",
    "federation.mode": "baseline",
    "federation.num_participants": 4,
    "federation.num_proposers": 2,
    "federation.num_voters": 2,
    "federation.clients_per_round": 2,
    "federation.rounds": 4,
    "federation.local_steps": 1,
    "data.examples_per_domain": 12,
    "data.seq_len": 192,
    "eval.accuracy": False,
    "eval.asr": False,
    "checkpoint.every": 1,
}


def _sweep_file(tmp_path, runs, common=FAST, name="sweep_file"):
  path = tmp_path / f"{name}.py"
  path.write_text(
      "import ml_collections\n"
      "def get_config(arg=None):\n"
      f"  return ml_collections.ConfigDict({{'base': 'configs/flock.py:tiny', 'common': {common!r},"
      f" 'runs': {runs!r}}}, allow_dotted_keys=True)\n"
  )
  return str(path)


def test_misspelled_override_fails_naming_it(tmp_path):
  spec = _sweep_file(
      tmp_path,
      [{"name": "ok", "overrides": {}}, {"name": "bad", "overrides": {"federation.roundz": 3}}],
  )
  with pytest.raises(RunConfigError, match=r"'bad'.*config\.federation\.roundz"):
    sweep_mod.run_sweep(spec, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()  # nothing ran, nothing was written
  bad_value = _sweep_file(
      tmp_path, [{"name": "v", "overrides": {"federation.vote_mode": "al"}}], name="bad_value"
  )
  with pytest.raises(RunConfigError, match=r"'v'.*vote_mode"):
    sweep_mod.run_sweep(bad_value, str(tmp_path / "wd"))
  out = subprocess.run(
      [
          sys.executable,
          str(ROOT / "launch" / "sweep.py"),
          f"--config={spec}",
          f"--workdir={tmp_path}/wd",
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
  )
  assert out.returncode == 2 and "federation.roundz" in out.stderr and "Traceback" not in out.stderr


def _rows(path):
  if not path.exists():
    return []
  return [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]


def _wait_group_gone(pgid: int, timeout: float = 60.0) -> None:
  """Until no process of the killed group is still running (zombies aside): the sweep's
  train.py child can outlive proc.wait() by a moment and still hold the run's workdir lock."""

  def running(stat: pathlib.Path) -> bool:
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
      return False
    return int(fields[2]) == pgid and fields[0] != "Z"  # fields: state, ppid, pgrp, ...

  deadline = time.time() + timeout
  while any(running(p) for p in pathlib.Path("/proc").glob("[0-9]*/stat")):
    assert time.time() < deadline, "the killed sweep's processes did not exit"
    time.sleep(0.1)


@pytest.mark.parametrize(
    "sweep_file",
    sorted(p.name for p in (ROOT / "configs" / "sweeps").glob("*.py") if p.name != "common.py"),
)
def test_every_sweep_entry_resolves_at_every_scale(sweep_file):
  """Every entry of every committed sweep file names real fields with valid values, at the
  tiny and the SmolLM2 scale (a mistake fails here, not hours into a sweep)."""
  extra = {
      "defence.py": (
          "smollm2:probe",
          "smollm2:clean",
          "smollm2:anchored",
          "smollm2:long",
          "smollm2:search",
          "smollm2:private",
          "smollm2:memory",
          "smollm2:soft",
          "smollm2:voters",
      ),
      "backdoor.py": ("smollm2:aggregators", "smollm2:fractions"),
  }.get(sweep_file, ())
  args = ("tiny", "smollm2") + extra
  for arg in args:
    sweep = sweep_mod.load_sweep(f"{ROOT / 'configs' / 'sweeps' / sweep_file}:{arg}")
    assert sweep["runs"]
    for entry in sweep["runs"]:
      sweep_mod.resolve(sweep, entry)


def test_sweep_resumes_after_a_kill(tmp_path):
  spec = _sweep_file(
      tmp_path,
      [
          {"name": "a", "tags": {"method": "fedavg"}, "overrides": {"seed": 0}},
          {
              "name": "b",
              "tags": {"method": "fedavg"},
              "overrides": {"seed": 1, "log.tensorboard": True},
          },
      ],
  )
  wd = tmp_path / "wd"
  cmd = [sys.executable, str(ROOT / "launch" / "sweep.py"), f"--config={spec}", f"--workdir={wd}"]
  proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
  deadline = time.time() + 500
  try:  # kill the whole sweep (it and its train.py) once run b has finished its first round
    while not any(r["round"] >= 0 for r in _rows(wd / "b" / "metrics.jsonl")):
      assert proc.poll() is None, "the sweep ended before it could be killed"
      assert time.time() < deadline
      time.sleep(0.2)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_group_gone(proc.pid)
  assert (wd / "a" / "summary.json").exists() and not (wd / "b" / "summary.json").exists()
  a_done = (wd / "a" / "summary.json").stat().st_mtime_ns
  results = sweep_mod.run_sweep(spec, str(wd))
  assert results == {"a": "skipped", "b": "done"}
  assert (wd / "a" / "summary.json").stat().st_mtime_ns == a_done  # not run again
  assert "resuming at round" in (wd / "b.log").read_text()
  rounds = [r["round"] for r in _rows(wd / "b" / "metrics.jsonl")]
  assert rounds == [-1, 0, 1, 2, 3]  # each round once, the killed one rerun
  # TensorBoard: one event file per invocation; a rerun round's latest event is its row
  from tests.test_tensorboard import read_events

  files = sorted((wd / "b" / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 2 and not (wd / "a" / "tensorboard").exists()
  last = {}
  for f in files:
    for e in read_events(f)[1:]:
      last[e.step] = {v.tag: v.simple_value for v in e.summary.value}
  rows = _rows(wd / "b" / "metrics.jsonl")
  assert sorted(last) == [r["round"] for r in rows]
  for r in rows[1:]:
    assert last[r["round"]]["train_loss"] == pytest.approx(r["train_loss"], rel=1e-6)  # float32
  record = json.loads((wd / "sweep.json").read_text())
  assert [r["name"] for r in record["runs"]] == ["a", "b"] and "--config.seed=1" in record["runs"][
      1
  ]["command"]


# ------------------------------------------------------------------ report from fixtures
def _fixture_run(wd, name, tags, asr, loss, stakes=None, fraction=0.0, n=10):
  c = load_config("tiny")
  c.federation.num_participants = n
  c.federation.num_proposers, c.federation.num_voters = 3, 3
  c.attack.fraction, c.attack.proposer = fraction, "backdoor"
  run = wd / name
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps(config_dict(c)))
  rows = []
  for k, (a, lo) in enumerate(zip(asr, loss)):
    row = {
        "round": k - 1,
        "heldout_loss": {"finance": lo, "medical": lo + 0.5},
        "asr": a,
        "false_activation": 0.0,
        "accuracy": {"finance": 0.1, "medical": 0.3},
    }
    if stakes and k > 0:
      row.update(
          stake_honest=stakes[k - 1][0],
          stake_malicious=stakes[k - 1][1],
          accepted=k % 2 == 0,
          attacker_proposals=1,
          attacker_accepted=k % 2,
          proposers=[1, 2, 3],
          proposal_accepted=[k % 2 == 1] * 3,
      )
      bad = from_config(c).attack.attackers(n)
      if k == 1 and bad:  # one more proposal, an attacker's, that the voters found invalid
        row["proposers"] = [1, 2, 3, bad[0]]
        row["proposal_accepted"] += [False]
        row["rejected_updates"] = [f"participant {bad[0]}: behaviour probe: token 'ACC' ..."]
    rows.append(row)
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  summary = {"ejections": {}, "slash_malicious_total": 3.0}
  if name == "flock_f0.4_s1":  # hypothetical: this run's task ran out of participants
    summary["ended_early"] = {"round": 2, "reason": "5 participants are still staked"}
  (run / "summary.json").write_text(json.dumps(summary))
  return {
      "name": name,
      "tags": tags,
      "overrides": {},
      "command": f"python launch/train.py --workdir={name}",
  }


def _fixture_sweep(tmp_path) -> tuple[pathlib.Path, list[dict]]:
  """A sweep workdir of FedAvg and FLock at fractions 0 and 0.4 (seeds 0, 1) and two
  cross-domain runs: (workdir, its entries)."""
  wd, entries = tmp_path / "sweep", []
  for seed in (0, 1):
    for frac in (0.0, 0.4):
      entries.append(
          _fixture_run(
              wd,
              f"fedavg_f{frac}_s{seed}",
              {"method": "fedavg", "fraction": frac, "seed": seed},
              asr=[0.0, 0.5 + frac, 0.6 + frac + 0.1 * seed],
              loss=[3.0, 2.5, 2.0],
              fraction=frac,
          )
      )
      entries.append(
          _fixture_run(
              wd,
              f"flock_f{frac}_s{seed}",
              {"method": "flock", "fraction": frac, "seed": seed},
              asr=[0.0, 0.1, 0.2 * seed],
              loss=[3.0, 2.6, 2.2 + 0.1 * seed],
              stakes=[(600.0, 400.0), (610.0, 360.0)],
              fraction=frac,
          )
      )
  entries.append(
      _fixture_run(wd, "local_fin", {"trained_on": "finance", "seed": 0}, [0, 0], [3.0, 1.0])
  )
  entries.append(
      _fixture_run(wd, "flock_all", {"trained_on": "all", "seed": 0}, [0, 0], [3.0, 1.5])
  )
  (wd / "sweep.json").write_text(
      json.dumps(
          {
              "sweep": "configs/sweeps/x.py",
              "sweep_file": "# the sweep file\n",
              "base": "configs/flock.py:tiny",
              "command": "python launch/sweep.py --config=configs/sweeps/x.py --workdir=runs/x",
              "runs": entries,
          }
      )
  )
  return wd, entries


def test_report_builds_from_fixture_workdirs(tmp_path):
  wd, entries = _fixture_sweep(tmp_path)
  out = tmp_path / "report"
  readme = report_mod.write_report(str(wd), str(out))
  text = readme.read_text()
  for png in (
      "asr_over_rounds.png",
      "loss_over_rounds.png",
      "asr_vs_fraction.png",
      "stakes.png",
      "cross_domain.png",
  ):
    assert (out / png).stat().st_size > 1000 and f"({png})" in text
  # fedavg at 0.4: ASR over rounds 0..1 = mean(0.9, 1.0) seed 0, mean(0.9, 1.1) seed 1
  line = next(x for x in text.splitlines() if x.startswith("| 0.4 | fedavg"))
  assert "| 2 | 0.975 (0.95..1.00) | 1.050 (1.00..1.10) |" in line
  assert "| 2.250 (2.25..2.25) |" in line  # final held-out loss: mean of 2.0 and 2.5
  flock = next(x for x in text.splitlines() if x.startswith("| 0.4 | flock"))
  # attacker, honest updates accepted / proposed, both seeds; proposals found invalid by side
  assert "| 2/4 | 4/8 | 2/0 |" in flock
  assert "## Economics" in text and "## Cross-domain" in text
  econ = next(x for x in text.splitlines() if x.startswith("| fraction=0.4, method=flock"))
  # per participant: 4 attackers share the 3.0 slashed; stakes 610 over 6, 360 over 4
  assert econ.endswith(
      "| 101.667 (101.67..101.67) | 90.000 (90.00..90.00) | - | - | - | 0.750 (0.75..0.75) "
      "| none; none |"
  ), econ
  assert "`flock_f0.4_s1` before round 2 (5 participants are still staked)" in text
  # ASR per reported round, fedavg at 0.4: seeds 0 and 1 at round 1 are 1.0 and 1.1
  part = text.split("## ASR at every reported round")[1].split("##")[0]
  by_round = next(x for x in part.splitlines() if x.startswith("| 0.4 | fedavg"))
  assert "| 1.05 (1.00/1.10) |" in by_round and "| 0.00 (0.00/0.00) |" in by_round
  assert "| finance | 1.000 | 1.500 |" in text
  # held-out loss (mean of the two domains) per reported round, flock at 0.4: 2.45 and 2.55
  part = text.split("## Held-out loss at every reported round")[1].split("##")[0]
  by_round = next(x for x in part.splitlines() if x.startswith("| 0.4 | flock"))
  assert by_round.endswith("| 2.850 (2.850/2.850) | 2.500 (2.450/2.550) |"), by_round
  # clean cost: final loss against attack-free FedAvg of the same seed (2.25 both seeds); the
  # second half's mean is round 1 alone here (rounds 0..1), the same; sd of 8.9 and 13.3: 3.1
  cost = text.split("## Clean cost")[1].split("##")[0].splitlines()
  row = next(x for x in cost if x.startswith("| 0.4 | flock"))
  assert row.endswith(
      "| +11.1% (sd 3.1) | +11.1% (sd 3.1) | seed 0: +8.9% / +8.9%, seed 1: +13.3% / +13.3% |"
  ), row
  assert "| +0.0% (sd 0.0) |" in next(x for x in cost if x.startswith("| 0.4 | fedavg"))
  assert not any(x.startswith(("| 0.0 | fedavg", "| finance", "| all")) for x in cost)
  cmds = (out / "commands.md").read_text()
  assert (
      "python launch/sweep.py --config=configs/sweeps/x.py" in cmds
      and "--workdir=local_fin" in cmds
  )
  assert len(json.loads((out / "runs.json").read_text())) == len(entries)


def test_report_counts_the_updates_an_aggregator_weighted(tmp_path):
  """A selecting aggregator's row counts the updates it gave nonzero weight, by side, from
  each round's extra.weights (a rejected update has none); a coordinate-wise rule's says n/a."""
  wd, entries = tmp_path / "sweep", []
  for method in ("krum", "median"):
    entries.append(
        _fixture_run(
            wd, method, {"method": method, "seed": 0}, [0.0, 0.5, 0.5], [3, 2, 1], fraction=0.3
        )
    )
  c = load_config("tiny")
  c.federation.num_participants, c.attack.fraction, c.attack.proposer = 10, 0.3, "backdoor"
  attackers = from_config(c).attack.attackers(10)
  honest = [i for i in range(10) if i not in attackers]
  a, h1, h2 = attackers[0], honest[0], honest[1]
  rounds = [
      # Krum picks the attacker; then an honest update, with the attacker's found invalid
      ([a, h1, h2], [], [1.0, 0.0, 0.0]),
      ([a, h1, h2], [f"participant {a}: NaN in the update"], [0.0, 1.0]),
  ]
  for method in ("krum", "median"):
    rows = [json.loads(x) for x in (wd / method / "metrics.jsonl").read_text().splitlines()]
    for row, (who, rejected, weights) in zip(rows[1:], rounds):
      row.update(mode="baseline", clients=who, rejected_updates=rejected)
      row["attacker_proposals"] = sum(i in attackers for i in who) - len(rejected)
      if method == "krum":
        row["extra"] = {"weights": weights}
    (wd / method / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (wd / "sweep.json").write_text(
      json.dumps({"sweep": "x", "sweep_file": "", "base": "b", "command": "c", "runs": entries})
  )
  text = report_mod.write_report(str(wd), str(tmp_path / "report")).read_text()
  krum = next(x for x in text.splitlines() if x.startswith("| krum"))
  median = next(x for x in text.splitlines() if x.startswith("| median"))
  assert "| 1/1 weighted | 1/4 weighted |" in krum, krum
  assert "| n/a (1 in) | n/a (4 in) |" in median, median


def test_a_finished_run_with_fewer_rounds_than_its_entry_is_run_again(tmp_path):
  """An entry whose federation.rounds was raised is not 'done' on a shorter finished run:
  the sweep runs it again, and train.py extends it (tests/test_run_lifecycle.py)."""
  run = tmp_path / "a"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"federation": {"rounds": 10}}))
  assert sweep_mod.status(tmp_path, "a", 10) == "partial"  # no summary: unfinished
  (run / "summary.json").write_text("{}")
  assert sweep_mod.status(tmp_path, "a", 10) == "done"
  assert sweep_mod.status(tmp_path, "a", 20) == "partial"
  assert sweep_mod.status(tmp_path, "b", 20) == "new"


def test_report_tabulates_the_probe_and_reads_an_unfinished_run_with_partial(tmp_path):
  """The voters' probe table (each proposal's score by side, flagged where the round found it
  invalid, the adaptive attacker's scale); an unfinished run is left out of a report unless
  --partial, which reports it through its last round and names it."""
  wd = tmp_path / "sweep"
  entry = _fixture_run(
      wd, "flock_probe", {"method": "flock", "seed": 0}, [0.0, 0.0, 0.25], [3, 2, 1], fraction=0.3
  )
  c = load_config("tiny")
  c.federation.num_participants, c.attack.fraction, c.attack.proposer = 10, 0.3, "backdoor"
  attackers = from_config(c).attack.attackers(10)
  honest = [i for i in range(10) if i not in attackers]
  a, b, h1, h2 = attackers[0], attackers[1], honest[0], honest[1]
  path = wd / "flock_probe" / "metrics.jsonl"
  rows = [json.loads(x) for x in path.read_text().splitlines()]
  rows[1].update(
      proposers=[a, h1, h2],
      rejected_updates=[],
      extra={"probe_scores": {str(a): 0.04, str(h1): 0.078, str(h2): 0.01},
             "evade_scales": {str(a): 0.7071}},
  )  # fmt: skip
  rows[2].update(
      proposers=[a, b, h1],
      rejected_updates=[  # the probe's words, and validation's
          f"participant {a}: behaviour probe: ...",
          f"client {b}: leaf 'down/a' contains 1 NaN/Inf values",
      ],
      extra={"probe_scores": {str(a): 0.133, str(b): 0.136, str(h1): 0.007},
             "evade_scales": {str(a): 0.015625, str(b): 0.015625}},
  )  # fmt: skip
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  (wd / "flock_probe" / "summary.json").unlink()  # still running
  (wd / "sweep.json").write_text(
      json.dumps({"sweep": "x", "sweep_file": "", "base": "b", "command": "c", "runs": [entry]})
  )
  with pytest.raises(FileNotFoundError, match="--partial"):
    report_mod.write_report(str(wd), str(tmp_path / "r0"))
  text = report_mod.write_report(str(wd), str(tmp_path / "r1"), partial=True).read_text()
  assert "unfinished, `flock_probe` (through round 1)" in text
  table = text.split("## The voters' behaviour probe in `flock_probe`")[1].split("##")[0]
  lines = [x for x in table.splitlines() if x.startswith("| 0 |") or x.startswith("| 1 |")]
  assert lines[0] == f"| 0 | {a}: 0.040 (0.707) | 0/1 | 0.078 | 0/2 | 0.00 |"
  assert lines[1] == f"| 1 | {a}: 0.133 (0.016), {b}: 0.136 (0.016) | 2/2 | 0.007 | 0/1 | 0.25 |"
  assert "--partial" in (tmp_path / "r1" / "commands.md").read_text()
  # with the probe's memory: the attackers' sums after each round and the honest highest
  rows[1]["extra"]["probe_suspicion"] = {str(a): 0.03, str(h1): 0.068, str(h2): 0.0}
  rows[2]["extra"]["probe_suspicion"] = {str(a): 0.153, str(b): 0.126, str(h1): 0.068}
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  text = report_mod.write_report(str(wd), str(tmp_path / "r2"), partial=True).read_text()
  table = text.split("## The voters' behaviour probe in `flock_probe`")[1].split("##")[0]
  lines = [x for x in table.splitlines() if x.startswith("| 0 |") or x.startswith("| 1 |")]
  assert lines[0].endswith(f"| 0.00 | {a}: 0.030 | 0.068 |"), lines[0]
  pair = sorted([(a, 0.153), (b, 0.126)])
  assert lines[1].endswith(
      f"| 0.25 | {pair[0][0]}: {pair[0][1]:.3f}, {pair[1][0]}: {pair[1][1]:.3f} | 0.068 |"
  )


def test_the_clean_cost_needs_an_attack_free_reference(tmp_path):
  """Runs of the reference method under attack are no reference for the clean cost, tagged
  with a fraction or not (the attacks sweep tags the attack, not the fraction)."""
  wd, entries = tmp_path / "sweep", []
  for method in ("fedavg", "flock"):
    tags = {"attack": "scale", "method": method, "seed": 0}
    entries.append(_fixture_run(wd, method, tags, [0, 0, 0], [3, 2, 1], fraction=0.3))
  (wd / "sweep.json").write_text(
      json.dumps({"sweep": "x", "sweep_file": "", "base": "b", "command": "c", "runs": entries})
  )
  text = report_mod.write_report(str(wd), str(tmp_path / "report")).read_text()
  assert "| scale | flock |" in text and "## Clean cost" not in text


def test_the_clean_cost_against_the_same_method_without_attackers(tmp_path):
  """reference='self' compares each method under attack with its own attack-free run of the same
  seed; the second-half mean averages the reported rounds >= last / 2 of both runs."""
  wd, entries = tmp_path / "sweep", []
  loss = {  # rounds -1..3; the reported mean adds 0.25 (medical = finance + 0.5)
      ("fedavg", 0.0): [3.0, 2.0, 1.75, 1.75, 1.75],
      ("flock", 0.0): [3.0, 2.0, 1.75, 1.95, 1.75],
      ("flock", 0.3): [3.0, 2.0, 1.75, 2.15, 1.95],
  }
  for (method, frac), lo in loss.items():
    tags = {"method": method, "fraction": frac, "seed": 0}
    entries.append(_fixture_run(wd, f"{method}_{frac}", tags, [0] * 5, lo, fraction=frac))
  (wd / "sweep.json").write_text(
      json.dumps({"sweep": "x", "sweep_file": "", "base": "b", "command": "c", "runs": entries})
  )
  text = report_mod.write_report(str(wd), str(tmp_path / "report")).read_text()
  own = text.split("## Clean cost: held-out loss against the same method without attackers")[1]
  rows = [x for x in own.split("##")[0].splitlines() if x.startswith("| 0.")]
  # final: 2.2 / 2.0 = +10%; rounds 2..3 (>= 3 / 2): (2.4 + 2.2) / (2.2 + 2.0) = +9.5%
  assert rows == ["| 0.3 | flock | +10.0% | +9.5% | seed 0: +10.0% / +9.5% |"], rows
  # against FedAvg both flock rows appear: the attack-free one costs (2.2 + 2.0) / 4.0 = +5%
  fed = text.split("## Clean cost: held-out loss against attack-free fedavg")[1].split("##")[0]
  assert "| 0.0 | flock | +0.0% | +5.0% | seed 0: +0.0% / +5.0% |" in fed
  assert "| 0.3 | flock | +10.0% | +15.0% |" in fed


def test_a_report_keeps_the_runs_of_an_earlier_report_whose_workdir_is_gone(tmp_path):
  """--keep: a sweep extended in a new workdir reports the earlier report's runs that the new
  workdir lacks, and every table comes out as from the whole workdir (economics included: the
  tables' summary fields travel in runs.json); runs of another sweep are refused by name."""
  wd, entries = _fixture_sweep(tmp_path)
  whole = report_mod.write_report(str(wd), str(tmp_path / "whole")).read_text()
  early = tmp_path / "whole" / "runs.json"
  lost = ["flock_f0.4_s1", "fedavg_f0.0_s0", "local_fin"]
  for name in lost:  # a new workdir: the rest of the sweep, rerun or never run before
    shutil.rmtree(wd / name)
  with pytest.raises(ValueError, match="runs \\['flock_f0.4_s1'\\] have other tags"):
    moved = json.loads((wd / "sweep.json").read_text())
    entry = next(e for e in moved["runs"] if e["name"] == "flock_f0.4_s1")
    entry["tags"] = {**entry["tags"], "seed": 7}
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "sweep.json").write_text(json.dumps(moved))
    report_mod.write_report(str(tmp_path / "moved"), str(tmp_path / "x"), keep=str(early))
  report = report_mod.write_report(str(wd), str(tmp_path / "new"), keep=str(early))
  text = report.read_text()
  head, body = text.split("\n\n", 2)[1:], whole.split("\n\n", 2)[2]
  assert head[1] == body, "a table differs from the whole workdir's report"
  assert "`fedavg_f0.0_s0`, `flock_f0.4_s1`, `local_fin`) are kept" in head[0], head[0]
  assert f"--keep={early}" in (tmp_path / "new" / "commands.md").read_text()
  again = {r["name"]: r for r in json.loads((tmp_path / "new" / "runs.json").read_text())}
  assert again == {r["name"]: r for r in json.loads(early.read_text())}
  # Runs of another sweep file, and a file that is not a report's runs.json, are refused.
  other = tmp_path / "other.json"
  other.write_text(json.dumps([{"name": "krum_f0.1_s0", "tags": {}}]))
  with pytest.raises(ValueError, match="runs \\['krum_f0.1_s0'\\] are not entries of sweep"):
    report_mod.write_report(str(wd), str(tmp_path / "x"), keep=str(other))
  other.write_text(json.dumps({"runs": 3}))
  with pytest.raises(ValueError, match="not a report's runs.json"):
    report_mod.write_report(str(wd), str(tmp_path / "x"), keep=str(other))
  with pytest.raises(FileNotFoundError, match="--keep=.*no such file"):
    report_mod.write_report(str(wd), str(tmp_path / "x"), keep=str(tmp_path / "none.json"))


def test_a_report_keeps_the_runs_of_several_earlier_reports(tmp_path):
  """--keep repeated: the runs of each report that the workdir lacks are added, a run in two
  reports is taken from the first, and the tables come out as from the whole workdir."""
  wd, _ = _fixture_sweep(tmp_path)
  whole = report_mod.write_report(str(wd), str(tmp_path / "whole")).read_text()
  early = json.loads((tmp_path / "whole" / "runs.json").read_text())
  lost = ["flock_f0.4_s1", "fedavg_f0.0_s0", "local_fin"]
  for name in lost:
    shutil.rmtree(wd / name)
  first, second = tmp_path / "first.json", tmp_path / "second.json"
  first.write_text(json.dumps([r for r in early if r["name"] in lost[:2]]))
  # the second report holds the third lost run, as a report made before the probe existed
  # wrote it (no "probe" field), and a stale copy of the first one
  stale = [{**r, "loss_final": 99.0} for r in early if r["name"] == lost[0]]
  (third,) = [r for r in early if r["name"] == lost[2]]
  assert third["probe"] == []
  older = {k: v for k, v in third.items() if k != "probe"}
  second.write_text(json.dumps(stale + [older]))
  report = report_mod.write_report(str(wd), str(tmp_path / "new"), keep=[str(first), str(second)])
  text = report.read_text()
  assert text.split("\n\n", 2)[2] == whole.split("\n\n", 2)[2], "a table differs"
  assert f"earlier reports of this sweep file's entries ({first}, {second})" in text
  assert f"--keep={first} --keep={second}" in (tmp_path / "new" / "commands.md").read_text()
  again = {r["name"]: r for r in json.loads((tmp_path / "new" / "runs.json").read_text())}
  # the stale copy lost to the first report's; the older run comes back as it was kept
  assert again == {r["name"]: r for r in early if r["name"] != lost[2]} | {lost[2]: older}


def test_the_aggregators_30_percent_runs_are_entries_of_the_fractions_sweep():
  """'smollm2:fractions' repeats the 30% runs of 'smollm2:aggregators' under the same names,
  tags and overrides, over the same shared overrides: the same runs, which is what lets a
  fractions report keep them (--keep) from the aggregators report."""
  path = ROOT / "configs" / "sweeps" / "backdoor.py"
  aggs = sweep_mod.load_sweep(f"{path}:smollm2:aggregators")
  fracs = sweep_mod.load_sweep(f"{path}:smollm2:fractions")
  assert dict(aggs["common"]) == dict(fracs["common"])
  entries = {e["name"]: e for e in fracs["runs"]}
  assert len(entries) == len(fracs["runs"]), "a name repeats"
  for e in aggs["runs"]:
    assert e["name"] in entries, e["name"]
    assert dict(entries[e["name"]]["overrides"]) == dict(e["overrides"]), e["name"]
    assert dict(entries[e["name"]]["tags"]) == dict(e["tags"]), e["name"]
  # and every method of experiment 1 appears at every fraction. At K = 4 two are run at 30%
  # only, as the aggregators sweep did: Multi-Krum's default keeps m = K - f = 4 updates
  # (FedAvg), and Trimmed Mean with one trimmed per side is the median
  # (test_trimmed_mean_of_four_is_the_median).
  assert dict(fracs["common"])["federation.clients_per_round"] == 4
  at_30_only = {"multikrum", "trimmed_mean"}
  methods = {e["tags"]["method"] for e in fracs["runs"]}
  assert at_30_only <= {e["tags"]["method"] for e in fracs["runs"] if e["tags"]["fraction"] == 0.3}
  for f in (0.0, 0.1, 0.2, 0.3, 0.4):
    at = {e["tags"]["method"] for e in fracs["runs"] if e["tags"]["fraction"] == f} - at_30_only
    assert at == methods - at_30_only, (f, methods - at_30_only - at)


def test_the_held_out_loss_against_another_method_under_the_same_attack(tmp_path):
  """versus='fedavg_oracle': each attacked run against that method's run with the same
  attackers and seed (a seed without one has no row); attack-free runs have no row."""
  wd, entries = tmp_path / "sweep", []
  loss = {  # rounds -1..3; the reported mean adds 0.25 (medical = finance + 0.5)
      ("fedavg_oracle", 0.3, 0): [3.0, 2.0, 1.75, 2.15, 1.95],
      ("flock", 0.3, 0): [3.0, 2.0, 1.75, 1.95, 1.75],
      ("flock", 0.3, 1): [3.0, 2.0, 1.75, 1.95, 1.75],  # no oracle run of seed 1
      ("flock", 0.0, 0): [3.0, 2.0, 1.75, 1.75, 1.75],
  }
  for (method, frac, seed), lo in loss.items():
    tags = {"method": method, "fraction": frac, "seed": seed}
    name = f"{method}_{frac}_{seed}"
    entries.append(_fixture_run(wd, name, tags, [0] * 5, lo, fraction=frac))
  (wd / "sweep.json").write_text(
      json.dumps({"sweep": "x", "sweep_file": "", "base": "b", "command": "c", "runs": entries})
  )
  out = tmp_path / "report"
  text = report_mod.write_report(str(wd), str(out), versus="fedavg_oracle").read_text()
  part = text.split("## Held-out loss against fedavg_oracle under the same attack")[1]
  rows = [x for x in part.split("##")[0].splitlines() if x.startswith("| 0.")]
  # final: 2.0 / 2.2 = -9.1%; rounds 2..3: (2.2 + 2.0) / (2.4 + 2.2) = -8.7%; seed 1 has no row
  assert rows == ["| 0.3 | flock | -9.1% | -8.7% | seed 0: -9.1% / -8.7% |"], rows
  assert "--versus=fedavg_oracle" in (out / "commands.md").read_text()
  with pytest.raises(ValueError, match="--versus=krum: no run of that method"):
    report_mod.write_report(str(wd), str(tmp_path / "x"), versus="krum")
