"""A sweep's runs as the report reads them: each run's metrics.jsonl and summary.json reduced to
the numbers the tables and plots need (ASR and loss curves, updates accepted per side, probe
scores, stakes), and runs kept from an earlier report's runs.json."""

from __future__ import annotations

import json
import os
import pathlib
import re


def _rows(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except ValueError:
      break
  return out


def _rejected(row: dict) -> list[int]:
  """Participants whose update a round rejected: its rejected_updates, each naming
  'participant i: ...' (the behaviour probe) or 'client i: ...' (validation: NaN, shape)."""
  return [
      int(m.group(1))
      for e in row.get("rejected_updates") or []
      if (m := re.match(r"(?:participant|client) (\d+):", e))
  ]


def _flagged(rows: list[dict], attackers: list[int]) -> tuple[int, int]:
  """(attacker, honest) proposals the voters found invalid (NaN, wrong shape, missing blob, the
  behaviour probe)."""
  bad, out = set(attackers), [0, 0]
  for r in rows:
    for i in _rejected(r):
      out[i not in bad] += 1
  return out[0], out[1]


def _accepted(row: dict, bad: set, malicious: bool) -> int:
  """Updates of one side that entered G in a round: FLock rows from proposal_accepted (one
  per proposer); baseline rows from the row's attacker_accepted, the rest honest."""
  if row.get("proposers"):
    acc = zip(row["proposers"], row.get("proposal_accepted") or [])
    return sum(bool(a) and (i in bad) == malicious for i, a in acc)
  n = row.get("attacker_accepted") or 0
  return n if malicious else sum(bool(b) for b in row.get("proposal_accepted") or []) - n


def _valid(rows: list[dict], attackers: list[int], malicious: bool) -> int:
  """Valid updates proposed by one side over the rounds. FLock rows: attackers' from the row
  (attacker_proposals also leaves out duplicates, e.g. two free riders' identical zeros);
  honest ones are the proposers less those rejected as invalid. Baseline rows: the clients
  less those rejected (rows before this rule counted an attacker's invalid update too)."""
  bad, n = set(attackers), 0
  for r in rows:
    if r.get("proposers") and malicious:
      # rows before the committee views counted only what honest voters passed: an update a
      # malicious majority let in was accepted without being counted as proposed
      n += max(r.get("attacker_proposals") or 0, _accepted(r, bad, True))
      continue
    rejected = set(_rejected(r))
    n += sum(
        (i in bad) == malicious and i not in rejected
        for i in r.get("proposers") or r.get("clients") or []
    )
  return n


def _weighted(rows: list[dict], attackers: list[int]) -> tuple[int, int] | None:
  """(attacker, honest) updates an aggregator gave nonzero weight, over the rounds, from each
  round's `extra.weights` (Krum, Multi-Krum, FLAME, FLTrust record one per valid update).
  None when a round has none (a coordinate-wise rule: median, trimmed mean, FedAvg)."""
  bad, out = set(attackers), [0, 0]
  for r in rows:
    weights = (r.get("extra") or {}).get("weights")
    rejected = set(_rejected(r))
    valid = [i for i in r.get("clients") or [] if i not in rejected]
    if weights is None or len(weights) != len(valid):
      return None
    for i, w in zip(valid, weights):
      out[i not in bad] += w > 0
  return (out[0], out[1]) if rows else None


def _probe_rounds(rows: list[dict], attackers: list[int]) -> list[dict]:
  """Per round whose voters ran the behaviour probe (federation.probe): each scored proposal's
  (participant, score, flagged), by side, and the adaptive attacker's submitted scales."""
  bad, out = set(attackers), []
  for r in rows:
    extra = r.get("extra") or {}
    scores = extra.get("probe_scores")
    if not scores:
      continue
    flagged = set(_rejected(r))
    cells = [(int(i), float(s), int(i) in flagged) for i, s in scores.items()]
    out.append(
        {
            "round": r["round"],
            "attacker": [c for c in cells if c[0] in bad],
            "honest": [c for c in cells if c[0] not in bad],
            "scales": {int(i): float(s) for i, s in (extra.get("evade_scales") or {}).items()},
            # the probe's memory (federation.probe_budget): everyone's summed excess so far
            "memory": {int(i): float(s) for i, s in (extra.get("probe_suspicion") or {}).items()},
            "asr": r.get("asr"),
        }
    )
  return out


def mean(xs):
  """The mean of the values that are not None (None when there are none)."""
  xs = [x for x in xs if x is not None]
  return sum(xs) / len(xs) if xs else None


def load_runs(sweep_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
  """(sweep.json, one dict per run: name, tags, done, rows, summary, and derived numbers)."""
  wd = pathlib.Path(sweep_dir)
  meta_path = wd / "sweep.json"
  if not meta_path.exists():
    raise FileNotFoundError(f"--sweep={sweep_dir}: no sweep.json (not a launch/sweep.py folder)")
  meta = json.loads(meta_path.read_text())
  runs = []
  for entry in meta["runs"]:
    run_dir = wd / entry["name"]
    rows = _rows(run_dir / "metrics.jsonl")
    if not rows:
      continue
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    done = [r for r in rows if r["round"] >= 0]
    reported = [r for r in rows if r.get("heldout_loss")]
    asr = [(r["round"], r["asr"]) for r in rows if r.get("asr") is not None]
    asr_done = [a for k, a in asr if k >= 0]
    loss = [(r["round"], mean(list(r["heldout_loss"].values()))) for r in reported]
    last = reported[-1] if reported else rows[-1]
    n, attackers = _attackers(run_dir)
    baseline = any(str(r.get("mode", "")).startswith("baseline") for r in rows)
    runs.append(
        {
            "baseline": baseline,
            "n": n,
            "attackers": attackers,
            "name": entry["name"],
            "tags": entry.get("tags", {}),
            "done": bool(summary),
            "rounds": len(done),
            "asr_curve": asr,
            "loss_curve": loss,
            "asr_final": asr_done[-1] if asr_done else None,
            "asr_mean": mean(asr_done),
            "false_activation_final": next(
                (r.get("false_activation") for r in reversed(done) if r.get("asr") is not None),
                None,
            ),
            "loss_final": loss[-1][1] if loss else None,
            "loss_by_domain": last.get("heldout_loss") or {},
            "accuracy_final": mean((last.get("accuracy") or {}).values()),
            "accepted_rounds": sum(bool(r.get("accepted")) for r in done)
            if any(r.get("accepted") is not None for r in done)
            else None,
            "flagged": _flagged(done, attackers),
            "weighted": _weighted(done, attackers) if baseline else None,
            "attacker_proposals": _valid(done, attackers, True),
            "attacker_accepted": sum(_accepted(r, set(attackers), True) for r in done),
            "honest_proposals": _valid(done, attackers, False),
            "honest_accepted": sum(_accepted(r, set(attackers), False) for r in done),
            "probe": _probe_rounds(done, attackers),
            "stake_curve": [
                (r["round"], r.get("stake_honest"), r.get("stake_malicious"))
                for r in done
                if r.get("stake_honest") is not None
            ],
            "summary": summary,
        }
    )
  return meta, runs


# The summary.json fields the tables read (economics_table, the early ends), kept in runs.json.
SUMMARY_KEYS = (
    "reward_honest_total",
    "reward_malicious_total",
    "slash_honest_total",
    "slash_malicious_total",
    "ejections",
    "ended_early",
)


def kept_runs(path: str | os.PathLike, meta: dict, have: list[dict]) -> list[dict]:
  """The runs of an earlier report's runs.json (write_report's `slim` list) that `have` lacks.
  Each must be an entry of the same sweep file (`meta`, the workdir's sweep.json) with the same
  tags: a report does not mix sweeps."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"--keep={path}: no such file (a report's runs.json)")
  try:
    old = json.loads(p.read_text())
    names = [r["name"] for r in old]
  except (ValueError, TypeError, KeyError) as e:
    raise ValueError(f"--keep={path}: not a report's runs.json ({e!r})") from None
  entries = {e["name"]: e.get("tags", {}) for e in meta["runs"]}
  foreign = [n for n in names if n not in entries]
  if foreign:
    raise ValueError(f"--keep={path}: runs {foreign} are not entries of sweep {meta['sweep']}")
  moved = [r["name"] for r in old if r.get("tags", {}) != entries[r["name"]]]
  if moved:
    raise ValueError(f"--keep={path}: runs {moved} have other tags in sweep {meta['sweep']}")
  present = {r["name"] for r in have}
  return [{**r, "summary": r.get("summary") or {}} for r in old if r["name"] not in present]


def participants(run: dict) -> dict[str, int]:
  """Honest / malicious head counts of a run (from its config)."""
  return {"honest": run["n"] - len(run["attackers"]), "malicious": len(run["attackers"])}


def _attackers(run_dir: pathlib.Path) -> tuple[int, list[int]]:
  """(N, attacker indices) of a run, from its config.json, as the run itself drew them."""
  import ml_collections  # here: reading a run's curves needs neither

  from flock_jax.run_config import from_config, load_config

  # fields added after the run was made keep their defaults
  config = load_config("tiny").to_dict()
  for section, values in json.loads((run_dir / "config.json").read_text()).items():
    if isinstance(values, dict) and isinstance(config.get(section), dict):
      config[section].update(values)
    else:
      config[section] = values
  run = from_config(ml_collections.ConfigDict(config))
  n = run.federation.num_participants
  return n, run.attack.attackers(n)
