"""A run's folder: what is in it, whether a new invocation may continue it, and moving it aside.

  workdir/
    config.json     the resolved run config (written once, when the run starts)
    metrics.jsonl   one row per finished round (round -1: the starting model)
    summary.json    written when the last round is done
    checkpoints/    run state + ledger state per round boundary (orbax, atomic per step)
    store/          every adapter blob whose hash went on chain
    chain.json      the task address (a JSON-RPC node outlives the process)
    chain_logs.json the task's events and final state, at the end
    .lock           held (flock) by the process running in it

Rules (issue "a run is never lost"): starting in a folder that holds a run either continues it
(same config) or refuses naming the fields that differ; `--overwrite` moves the old run aside
(`<workdir>.old-<k>`), never deletes it; nothing is written before the config and the model
are validated (`check` writes nothing; `start` is called after).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
from typing import Any

# Fields a continuing run may change: where the node is, not what the run is.
MAY_DIFFER = ("ledger.rpc_url", "ledger.task")


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as asked: says why and what to do."""


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1} (lists and scalars are leaves)."""
  if isinstance(d, dict):
    out: dict[str, Any] = {}
    for k, v in d.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def config_dict(config: Any) -> dict:
  """A ConfigDict as plain JSON data (what config.json holds)."""
  return (
      json.loads(config.to_json_best_effort())
      if hasattr(config, "to_json_best_effort")
      else dict(config)
  )


def config_diff(old: dict, new: dict) -> list[str]:
  """'field: old -> new' for every field that differs (MAY_DIFFER excepted; a field added
  later, absent on one side and at its default on the other, is the same run)."""
  from flock_jax.run_config import OPTIONAL_FIELDS

  a, b = flatten(old), flatten(new)
  out = []
  for k in sorted(set(a) | set(b)):
    if k in MAY_DIFFER or a.get(k) == b.get(k):
      continue
    if k in OPTIONAL_FIELDS and (k not in a or k not in b):
      if a.get(k, b.get(k)) == OPTIONAL_FIELDS[k]:
        continue
    out.append(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
  return out


def old_rounds(config: dict) -> Any:
  return config.get("federation", {}).get("rounds")


def extension_refused(old: dict, new: dict) -> str | None:
  """Why a run config `new` that differs from the workdir's `old` only in federation.rounds
  cannot continue it as more rounds of the same run, or None when it can. Rounds 0..R-1 of
  an R'-round run are those of the R-round run when nothing in them depends on the total: a
  baseline run (a FLock task was deployed for its rounds, and its round reward is
  pool / (T - r)) with a constant learning rate (a schedule spans rounds x local steps)."""
  a, b = old_rounds(old), old_rounds(new)
  if not isinstance(a, int) or not isinstance(b, int) or b < a:
    return f"federation.rounds {a!r} -> {b!r}: a run can be extended to more rounds, not fewer"
  if new.get("federation", {}).get("mode") != "baseline":
    return (
        f"federation.rounds {a} -> {b}: a FLock run's task was deployed on its chain for {a} "
        "rounds (the round reward is pool / (T - r)), so it cannot be extended; start a new "
        "run in another --workdir"
    )
  if new.get("optim", {}).get("schedule") != "constant":
    return (
        f"federation.rounds {a} -> {b}: optim.schedule={new['optim'].get('schedule')!r} spans "
        "rounds x local steps, so more rounds would change every step's learning rate; only "
        "a constant schedule can be extended"
    )
  return None


class Workdir:
  """Paths of a run folder and the checks before a run may write into it."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path).expanduser().absolute()
    self._lock = None

  def __truediv__(self, name: str) -> pathlib.Path:
    return self.path / name

  @property
  def config_path(self) -> pathlib.Path:
    return self.path / "config.json"

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.path / "metrics.jsonl"

  @property
  def summary_path(self) -> pathlib.Path:
    return self.path / "summary.json"

  def holds_run(self) -> bool:
    return self.path.is_dir() and any(self.path.iterdir())

  def check(self, config: Any, *, overwrite: bool = False) -> str:
    """'new' (empty or absent), 'continue' (same config), 'overwrite' (will be moved aside).
    Raises WorkdirError naming the differing fields. Writes nothing."""
    if self.path.exists() and not self.path.is_dir():
      raise WorkdirError(f"--workdir={self.path} is a file, not a folder; pick another --workdir")
    if not self.holds_run():
      return "new"
    if overwrite:
      return "overwrite"
    if not self.config_path.exists():
      raise WorkdirError(
          f"--workdir={self.path} is not empty and holds no config.json (not a flock_jax run): "
          "pick an empty or new --workdir, or pass --overwrite to move its contents aside"
      )
    try:
      old = json.loads(self.config_path.read_text())
    except ValueError as e:
      raise WorkdirError(
          f"{self.config_path} is not valid JSON ({e}); pass --overwrite to move the run aside"
      ) from None
    new = config_dict(config)
    diff = config_diff(old, new)
    if diff == [f"federation.rounds: {old_rounds(old)!r} -> {old_rounds(new)!r}"]:
      why_not = extension_refused(old, new)
      if why_not is None:
        return "extend"
      raise WorkdirError(f"--workdir={self.path}: {why_not}")
    if diff:
      raise WorkdirError(
          f"--workdir={self.path} holds a run with another config ({'; '.join(diff)}): run the "
          "same config to continue it, pass --overwrite to move it aside and start again, or "
          "use another --workdir"
      )
    return "continue"

  def start(self, config: Any, status: str) -> None:
    """Creates (or, for 'overwrite', first moves aside) the folder, takes the lock and writes
    config.json for a new run, or for an extended one ('extend': the finished run's summary is
    kept as summary.rounds-<old rounds>.json). Call only after the config and the model are
    validated."""
    if status == "overwrite":
      k = 1
      while self.path.with_name(f"{self.path.name}.old-{k}").exists():
        k += 1
      aside = self.path.with_name(f"{self.path.name}.old-{k}")
      os.rename(self.path, aside)
      print(f"moved the old run aside to {aside}", flush=True)
    self.path.mkdir(parents=True, exist_ok=True)
    self.lock()
    if status == "extend" and self.summary_path.exists():
      rounds = old_rounds(json.loads(self.config_path.read_text()))
      os.replace(self.summary_path, self.path / f"summary.rounds-{rounds}.json")
    if status != "continue":
      tmp = self.path / ".config.json.tmp"
      tmp.write_text(json.dumps(config_dict(config), indent=2, sort_keys=True))
      os.replace(tmp, self.config_path)

  def lock(self) -> None:
    """One process per run folder (released by the OS when the process dies, even by SIGKILL)."""
    f = open(self.path / ".lock", "w")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.close()
      raise WorkdirError(
          f"--workdir={self.path} is in use by another running process; wait for it or use "
          "another --workdir"
      ) from None
    self._lock = f

  def metrics_rows(self, before_round: int | None = None) -> list[dict]:
    """Rows of metrics.jsonl (those with round < before_round when given); a torn last line
    (a kill mid-write) is dropped."""
    if not self.metrics_path.exists():
      return []
    rows = []
    for line in self.metrics_path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except ValueError:
        break
    if before_round is not None:
      rows = [r for r in rows if int(r["round"]) < before_round]
    return rows

  def rewrite_metrics(self, rows: list[dict]) -> None:
    """Replace metrics.jsonl atomically (on resume: drop rows of rounds being rerun)."""
    tmp = self.path / ".metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, self.metrics_path)

  def append_metrics(self, row: dict) -> None:
    """One round's row, flushed and fsynced: a kill loses at most the row being written."""
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def write_json(self, name: str, data: Any) -> None:
    tmp = self.path / f".{name}.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, self.path / name)


def flock_run_config(workdir: str | os.PathLike) -> dict:
  """A finished or running FLock run's config.json as data; a ValueError, naming the run's
  mode, for a baseline run (it has no proposals to re-score)."""
  config = json.loads((pathlib.Path(workdir) / "config.json").read_text())
  mode = config["federation"]["mode"]
  if mode != "flock":
    raise ValueError(f"{workdir} is a {mode} run; only FLock runs have proposals")
  return config


def proposal_hashes(rows: list[dict], store_dir: str | os.PathLike) -> list[dict[int, str]]:
  """{proposer: hash} per round row: the recorded hashes, else the store's write order (which
  assumes every proposer revealed a proposal no other proposer copied)."""
  if all("proposal_hashes" in r["extra"] for r in rows):
    return [{int(i): h for i, h in r["extra"]["proposal_hashes"].items()} for r in rows]
  blobs = sorted(pathlib.Path(store_dir).glob("0x*.bin"), key=lambda p: p.stat().st_mtime_ns)
  names, k, out = [p.stem for p in blobs], 1, []  # names[0]: the starting G
  for r in rows:
    new = len(r["proposers"])  # every revealed proposal is stored, valid or not
    out.append(dict(zip(r["proposers"], names[k : k + new])))
    k += new
    if r["candidate_hash"]:
      if k >= len(names) or names[k] != r["candidate_hash"]:
        raise ValueError(f"round {r['round']}: the store's order does not match the metrics")
      k += 1
  return out
