"""Run a sweep: one launch/train.py run per entry of a sweep file, each in its own workdir.

  python launch/sweep.py --config=configs/sweeps/backdoor_tiny.py --workdir=runs/backdoor
  python launch/report.py --sweep=runs/backdoor --out=docs/results/backdoor_tiny

A sweep file's `get_config(arg)` returns an ml_collections.ConfigDict:

  base     the run config every entry starts from, e.g. 'configs/flock.py:tiny'
  common   {field: value} overrides of every entry ('federation.rounds': 10)
  runs     a list of entries, each {'name': ..., 'tags': {...}, 'overrides': {...}}; tags
           (method, fraction, seed, ...) are what launch/report.py groups by

Every override is applied to the base config before anything runs: a misspelled field fails
at once, naming the entry and the field. Each entry runs as `python launch/train.py
--config=<base> --config.<field>=<value> ... --workdir=<sweep workdir>/<name>` in a
subprocess, so the sweep is exactly the commands it records (sweep.json). Run the same
command again and finished runs (summary.json present) are skipped, half-finished ones
continue from their last checkpoint (train.py's rule), and entries added to the file since
run: a sweep is extended by editing its file and running it again. A finished run whose entry
now asks for more rounds is run again too: train.py extends a baseline run (and refuses a
FLock run, naming why).
"""

from __future__ import annotations

import json
import os
import shlex
import pathlib
import subprocess
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flock_jax.cli import run_main  # noqa: E402
from flock_jax.run_config import RunConfigError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

_CONFIG = flags.DEFINE_string("config", None, "The sweep file (configs/sweeps/<name>.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's folder; run <name> lives in <name>/.")
_ONLY = flags.DEFINE_string("only", "", "Run only the entries whose name contains this text.")
_SHARD = flags.DEFINE_string(
    "shard", "", "'k/n': run only entries k, k+n, k+2n, ... (n sweeps side by side)."
)
_DRY = flags.DEFINE_boolean("dry_run", False, "Check every entry and print the commands only.")
_TIMEOUT = flags.DEFINE_integer("timeout", 0, "Seconds one run may take (0 = no limit).")


def load_module(path: str):
  import importlib.util

  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"--config={path}: no such sweep file")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def load_sweep(spec: str) -> dict:
  """The sweep file's config as plain data: {'base', 'common', 'runs'}."""
  path, _, arg = spec.partition(":")
  sweep = load_module(path).get_config(arg or None)
  sweep = sweep.to_dict() if hasattr(sweep, "to_dict") else dict(sweep)
  for k in ("base", "runs"):
    if k not in sweep:
      raise RunConfigError(f"sweep {path}: get_config() has no '{k}'")
  names = [r["name"] for r in sweep["runs"]]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise RunConfigError(f"sweep {path}: run names must be unique; repeated: {dup}")
  sweep.setdefault("common", {})
  return sweep


def base_config(base: str):
  """get_config(arg) of a 'path.py[:arg]' config spec (relative to the repository root)."""
  path, _, arg = base.partition(":")
  if not os.path.isabs(path):
    path = str(ROOT / path)
  return load_module(path).get_config(arg or None)


def overrides_of(sweep: dict, entry: dict) -> dict:
  return {**sweep.get("common", {}), **entry.get("overrides", {})}


def resolve(sweep: dict, entry: dict):
  """The entry's run config: base + common + its overrides; a field that does not exist fails
  naming the entry and the field; the result is checked by flock_jax.run_config."""
  from flock_jax.run_config import from_config

  config = base_config(sweep["base"])
  for field, value in overrides_of(sweep, entry).items():
    node, *path = field.split(".")
    parent, where = config, [node]
    try:
      for key in [node, *path][:-1]:
        parent = parent[key]
        where.append(key)
      last = field.split(".")[-1]
      if last not in parent:
        raise KeyError(last)
    except (KeyError, AttributeError, TypeError):
      raise RunConfigError(
          f"sweep entry {entry['name']!r}: override config.{field} names no config field"
      ) from None
    parent[last] = value
  try:
    from_config(config)
  except RunConfigError as e:
    raise RunConfigError(f"sweep entry {entry['name']!r}: {e}") from None
  return config


def _flag_value(v) -> str:
  if isinstance(v, bool):
    return "True" if v else "False"
  if isinstance(v, dict):
    return ",".join(f"{k}={val}" for k, val in v.items())
  return str(v)


def command(sweep: dict, entry: dict, workdir: pathlib.Path) -> list[str]:
  """The train.py command line of an entry (argv, no shell)."""
  argv = [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={ROOT / sweep['base']}"]
  argv += [f"--config.{k}={_flag_value(v)}" for k, v in overrides_of(sweep, entry).items()]
  return argv + [f"--workdir={workdir / entry['name']}"]


def display(argv: list[str]) -> str:
  """A command as a user types it from the repository root (shell-quoted, relative paths)."""
  root = str(ROOT) + os.sep
  return shlex.join(["python"] + [a.replace(root, "") for a in argv[1:]])


def status(workdir: pathlib.Path, name: str, rounds: int | None = None) -> str:
  """'done' (summary.json), 'partial' (a run folder without it, or a finished run with fewer
  rounds than the entry asks: train.py extends it) or 'new'."""
  run = workdir / name
  if (run / "summary.json").exists():
    if rounds is None:
      return "done"
    done = json.loads((run / "config.json").read_text()).get("federation", {}).get("rounds")
    return "partial" if isinstance(done, int) and done < rounds else "done"
  return "partial" if (run / "config.json").exists() else "new"


def bar(done: int, total: int, elapsed: float) -> str:
  from flock_jax.federated.metrics import progress_bar

  return progress_bar(done, total, elapsed, "runs")


def run_sweep(
    spec: str,
    workdir: str,
    only: str = "",
    dry_run: bool = False,
    timeout: int = 0,
    shard: str = "",
):
  """Runs every entry not yet done; returns {name: 'done' | 'skipped' | 'failed (rc)'}."""
  sweep = load_sweep(spec)
  entries = [e for e in sweep["runs"] if only in e["name"]]
  if shard:
    k, n = (int(x) for x in shard.split("/"))
    if not 0 <= k < n:
      raise RunConfigError(f"--shard={shard}: expected k/n with 0 <= k < n")
    entries = entries[k::n]
  # every entry checked before anything runs; its rounds tell a finished run from a shorter one
  rounds = {e["name"]: resolve(sweep, e).federation.rounds for e in entries}
  wd = pathlib.Path(workdir).expanduser().absolute()
  cmds = {e["name"]: command(sweep, e, wd) for e in entries}
  state = lambda name: status(wd, name, rounds[name])
  if dry_run:
    for e in entries:
      print(f"{e['name']} [{state(e['name'])}]: " + display(cmds[e["name"]]))
    return {}
  wd.mkdir(parents=True, exist_ok=True)
  record = {
      "sweep": spec,
      "sweep_file": pathlib.Path(spec.partition(":")[0]).read_text(),
      "command": " ".join(
          ["python", "launch/sweep.py", f"--config={spec}", f"--workdir={workdir}"]
      ),
      "base": sweep["base"],
      "runs": [
          {
              "name": e["name"],
              "tags": e.get("tags", {}),
              "overrides": overrides_of(sweep, e),
              "command": display(command(sweep, e, wd)),
          }
          for e in sweep["runs"]
      ],
  }
  (wd / "sweep.json").write_text(json.dumps(record, indent=2))
  todo = [e for e in entries if state(e["name"]) != "done"]
  results = {e["name"]: "skipped" for e in entries if e not in todo}
  print(f"sweep {spec}: {len(entries)} runs, {len(results)} already done, {len(todo)} to run")
  start = time.perf_counter()
  for k, e in enumerate(todo):
    name = e["name"]
    print(
        f"{bar(k, len(todo), time.perf_counter() - start)} | {name} " f"({state(name)})",
        flush=True,
    )
    (wd / name).mkdir(parents=True, exist_ok=True)
    with open(wd / f"{name}.log", "a") as log:
      try:
        rc = subprocess.run(
            cmds[name], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout or None
        ).returncode
      except subprocess.TimeoutExpired:
        rc = "timeout"
    results[name] = "done" if rc == 0 and state(name) == "done" else f"failed ({rc})"
    if results[name] != "done":
      print(f"  {name}: {results[name]}; see {wd / (name + '.log')}", flush=True)
  print(f"{bar(len(todo), len(todo), time.perf_counter() - start)} | finished", flush=True)
  failed = [n for n, r in results.items() if r.startswith("failed")]
  if failed:
    print(f"{len(failed)} run(s) failed: {failed}; run the same command to retry them")
  return results


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  if not _CONFIG.value or not _WORKDIR.value:
    raise RunConfigError("--config=<sweep file> and --workdir=<folder> are both required")
  results = run_sweep(
      _CONFIG.value, _WORKDIR.value, _ONLY.value, _DRY.value, _TIMEOUT.value, _SHARD.value
  )
  if any(r.startswith("failed") for r in results.values()):
    raise SystemExit(1)


if __name__ == "__main__":
  run_main(main)
