"""Tables and plots of a sweep (launch/sweep.py): markdown + PNG (matplotlib), with the commands.

  python launch/report.py --sweep=runs/backdoor_tiny --out=docs/results/backdoor_tiny

Reads <sweep>/sweep.json and every run's metrics.jsonl / summary.json; groups runs by their
tags (`method`, `fraction`, `seed`, ...; seeds are aggregated: mean, and min..max as the
spread). Writes to --out:

  README.md              the tables (per method and fraction; economics of FLock runs)
  asr_over_rounds.png    ASR of the global model over rounds, one line per method, per fraction
  loss_over_rounds.png   mean held-out loss over rounds, the same way
  asr_vs_fraction.png    ASR (mean over reported rounds) against the malicious fraction
  stakes.png             mean stake per honest / malicious participant over rounds (FLock)
  cross_domain.png       held-out loss of each trained-on group on each domain (tag trained_on)
  (--partial)            unfinished runs too, through the rounds each has run
  commands.md            the sweep and report commands, the sweep file, every run's command
  runs.json              the per-run numbers the tables come from
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
from collections import defaultdict
from collections.abc import Sequence

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flock_jax.cli import run_main  # noqa: E402

_SWEEP = flags.DEFINE_string("sweep", None, "The sweep's workdir (holding sweep.json).")
_OUT = flags.DEFINE_string("out", None, "Folder for the report (docs/results/<name>).")
_TITLE = flags.DEFINE_string("title", "", "Title of the report (default: the sweep file).")
_REFERENCE = flags.DEFINE_string(
    "reference",
    "fedavg",
    "Method tag of the attack-free run (fraction 0) that each run's held-out loss is "
    "compared with, seed by seed (the clean-cost table); 'self': each method's own. With a "
    "method tag, a second table compares each method with its own attack-free run as well.",
)

_KEEP = flags.DEFINE_multi_string(
    "keep",
    [],
    "runs.json of an earlier report of the same sweep file: its runs that --sweep lacks are "
    "reported as well, named so (a sweep extended in a new workdir after the old one was lost). "
    "Repeat it for several reports; a run in more than one is taken from the first.",
)
_VERSUS = flags.DEFINE_string(
    "versus",
    None,
    "Method tag: a table of every attacked run's held-out loss against that method's run with "
    "the same attackers and seed (e.g. fedavg_oracle, which drops exactly the attackers' "
    "updates).",
)
_PARTIAL = flags.DEFINE_bool(
    "partial",
    False,
    "Also report unfinished runs, through the rounds each has run (a long run read while it "
    "runs); the report names them.",
)


# ------------------------------------------------------------------ reading
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


def _mean(xs):
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
    loss = [(r["round"], _mean(list(r["heldout_loss"].values()))) for r in reported]
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
            "asr_mean": _mean(asr_done),
            "false_activation_final": next(
                (r.get("false_activation") for r in reversed(done) if r.get("asr") is not None),
                None,
            ),
            "loss_final": loss[-1][1] if loss else None,
            "loss_by_domain": last.get("heldout_loss") or {},
            "accuracy_final": _mean((last.get("accuracy") or {}).values()),
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


# ------------------------------------------------------------------ grouping
# The summary.json fields the tables read (economics_table, the early ends), kept in runs.json.
_SUMMARY_KEYS = (
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


def _key_tags(tags: dict) -> tuple:
  return tuple(sorted((k, v) for k, v in tags.items() if k != "seed"))


def groups(runs: list[dict]) -> dict[tuple, list[dict]]:
  """Runs by their tags without the seed (seeds are what a group aggregates)."""
  out: dict[tuple, list[dict]] = defaultdict(list)
  for r in runs:
    out[_key_tags(r["tags"])].append(r)
  return dict(out)


def _stat(values) -> str:
  """'mean (min..max)' over seeds; '-' when nothing was measured."""
  xs = [v for v in values if v is not None]
  if not xs:
    return "-"
  m = sum(xs) / len(xs)
  return f"{m:.3f}" if len(xs) == 1 else f"{m:.3f} ({min(xs):.2f}..{max(xs):.2f})"


def _order(key: tuple, method_order: list[str]):
  d = dict(key)
  m = d.get("method", "")
  rank = method_order.index(m) if m in method_order else len(method_order)
  return tuple((k, v) for k, v in key if k != "method"), rank, str(m)


def _share(rs: list[dict], side: str) -> str:
  """'accepted/proposed' summed over seeds. For an aggregator every valid update goes in and
  the rule weighs or selects inside: 'k/n weighted' (k given nonzero weight) where it records
  per-update weights, else 'n/a (n in)'."""
  made = sum(r[f"{side}_proposals"] for r in rs)
  if any(r["baseline"] for r in rs):
    if all(r["weighted"] is not None for r in rs):
      k = sum(r["weighted"][side != "attacker"] for r in rs)
      return f"{k}/{made} weighted"
    return f"n/a ({made} in)"
  return f"{sum(r[f'{side}_accepted'] for r in rs)}/{made}"


def main_table(runs: list[dict]) -> str:
  """One row per tag group: seeds, ASR (mean over reported rounds, final), false activation,
  held-out loss and accuracy at the end, attacker updates accepted / proposed, accepted rounds."""
  method_order = list(dict.fromkeys(r["tags"].get("method", "") for r in runs))
  gs = groups(runs)
  tag_names = sorted({k for key in gs for k, _ in key})
  head = tag_names + [
      "seeds",
      "ASR mean over rounds",
      "ASR final",
      "false activation final",
      "held-out loss final",
      "accuracy final",
      "attacker updates accepted/proposed",
      "honest updates accepted/proposed",
      "updates flagged invalid (attacker/honest)",
      "accepted rounds (per seed)",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in sorted(gs, key=lambda k: _order(k, method_order)):
    rs, d = gs[key], dict(key)
    acc_rounds = [r["accepted_rounds"] for r in rs if r["accepted_rounds"] is not None]
    cells = [str(d.get(t, "")) for t in tag_names] + [
        f"{len(rs)}" + ("" if all(r["done"] for r in rs) else " (some unfinished)"),
        _stat(r["asr_mean"] for r in rs),
        _stat(r["asr_final"] for r in rs),
        _stat(r["false_activation_final"] for r in rs),
        _stat(r["loss_final"] for r in rs),
        _stat(r["accuracy_final"] for r in rs),
        _share(rs, "attacker"),
        _share(rs, "honest"),
        "/".join(str(sum(r["flagged"][k] for r in rs)) for k in (0, 1)),
        "/".join(str(a) for a in acc_rounds) if acc_rounds else "-",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def round_table(runs: list[dict], field: str = "asr_curve", digits: int = 2) -> str:
  """`field` (asr_curve or loss_curve) at every reported round (round -1: the starting model),
  one row per tag group: the mean over seeds, then each seed's value ('' when no run has more
  than the starting point)."""
  if not any(len(r[field]) > 1 for r in runs):
    return ""
  method_order = list(dict.fromkeys(r["tags"].get("method", "") for r in runs))
  gs = groups(runs)
  rounds = sorted({k for r in runs for k, _ in r[field]})
  tag_names = sorted({k for key in gs for k, _ in key})
  head = tag_names + [f"round {k}" for k in rounds]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in sorted(gs, key=lambda k: _order(k, method_order)):
    rs, d = sorted(gs[key], key=lambda r: r["tags"].get("seed", 0)), dict(key)
    cells = [str(d.get(t, "")) for t in tag_names]
    for k in rounds:
      vals = [dict(r[field]).get(k) for r in rs]
      got = [v for v in vals if v is not None]
      each = "/".join("-" if v is None else f"{v:.{digits}f}" for v in vals)
      cells.append(
          "-" if not got else f"{sum(got) / len(got):.{digits}f}" + f" ({each})" * (len(rs) > 1)
      )
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _late_mean(run: dict, ref: dict) -> tuple[float, float] | None:
  """Mean held-out loss of `run` and of `ref` over the reported rounds both have in the second
  half of the run (round >= last / 2): less at the mercy of one round's client draw than the
  final round alone."""
  a, b = dict(run["loss_curve"]), dict(ref["loss_curve"])
  common = [k for k in a if k in b and k >= 0 and a[k] is not None and b[k] is not None]
  if not common:
    return None
  late = [k for k in common if k >= max(common) / 2]
  return _mean([a[k] for k in late]), _mean([b[k] for k in late])


def _pct_stat(xs: list[float]) -> str:
  """'+m%' for one seed, '+m% (sd s)' over several (sample standard deviation)."""
  m = sum(xs) / len(xs)
  if len(xs) == 1:
    return f"{m:+.1f}%"
  sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
  return f"{m:+.1f}% (sd {sd:.1f})"


def clean_cost_table(runs: list[dict], reference: str = "fedavg", attacked: bool = False) -> str:
  """Held-out loss of each tag group against the attack-free `reference` run (method tag,
  fraction 0) of the same seed, in percent: the clean half of experiment 5's goal (within 1% of
  the no-attack run). reference='self': each method against its own attack-free run.
  `attacked`: against the `reference` method's run with the same attackers and seed instead
  (a defence against the oracle that drops exactly the attackers' updates). Two measures: the
  final round, and the mean over the second half's reported rounds; each as the mean over the
  seeds that have a reference (with the spread over seeds), and per seed. '' when the sweep
  holds no such reference."""
  # attack-free: no attackers in the run's own config (a sweep need not tag the fraction)
  method = lambda r: r["tags"].get("method")
  seed = lambda r: r["tags"].get("seed", 0)
  side = lambda r: tuple(r["attackers"]) if attacked else ()
  refs = {
      (method(r), seed(r), side(r)): r
      for r in runs
      if (attacked or not r["attackers"]) and r["loss_final"]
  }
  ref_of = lambda r: refs.get((method(r) if reference == "self" else reference, seed(r), side(r)))
  if attacked:
    is_ref = lambda r: method(r) == reference or not r["attackers"]
  else:
    is_ref = lambda r: not r["attackers"] and (reference == "self" or method(r) == reference)
  method_order = list(dict.fromkeys(r["tags"].get("method", "") for r in runs))
  gs = {key: rs for key, rs in groups(runs).items() if "method" in dict(key)}
  tag_names = sorted({k for key in gs for k, _ in key})
  if attacked:
    against = f"{reference} under the same attack"
  else:
    against = "its own attack-free run" if reference == "self" else f"{reference} attack-free"
  head = tag_names + [f"final loss vs {against}, mean", "mean of the second half", "each seed"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in sorted(gs, key=lambda k: _order(k, method_order)):
    d = dict(key)
    if all(is_ref(r) for r in gs[key]):
      continue  # the reference itself
    final, late = {}, {}
    for r in sorted(gs[key], key=seed):
      ref = ref_of(r)
      if ref is None or r["loss_final"] is None:
        continue
      final[seed(r)] = 100.0 * (r["loss_final"] / ref["loss_final"] - 1)
      pair = _late_mean(r, ref)
      if pair:
        late[seed(r)] = 100.0 * (pair[0] / pair[1] - 1)
    if not final:
      continue
    each = ", ".join(
        f"seed {s}: {v:+.1f}%" + (f" / {late[s]:+.1f}%" if s in late else "")
        for s, v in sorted(final.items())
    )
    cells = [str(d.get(t, "")) for t in tag_names]
    cells += [_pct_stat(list(final.values())), _pct_stat(list(late.values())) if late else "-"]
    lines.append("| " + " | ".join(cells + [each]) + " |")
  return "\n".join(lines) if len(lines) > 2 else ""


def economics_table(runs: list[dict]) -> str:
  """FLock runs, per honest and per malicious participant (so that sides of different sizes
  compare): final stake, rewards earned, stake slashed; and the ejections."""
  flock = [r for r in runs if r["stake_curve"]]
  if not flock:
    return ""
  gs = groups(flock)
  head = [
      "group",
      "seeds",
      "stake/honest final",
      "stake/malicious final",
      "rewards/honest",
      "rewards/malicious",
      "slashed/honest",
      "slashed/malicious",
      "ejected (M: malicious, H: honest; participant@round; per seed)",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in sorted(gs, key=str):
    rs = gs[key]
    per = []
    for r in rs:
      s, n = r["summary"], _participants(r)
      good, bad = max(n["honest"], 1), n["malicious"]
      each = lambda total, heads: None if total is None or not heads else total / heads
      per.append(
          (
              r["stake_curve"][-1][1] / good,
              each(r["stake_curve"][-1][2], bad),
              each(s.get("reward_honest_total"), good),
              each(s.get("reward_malicious_total"), bad),
              each(s.get("slash_honest_total"), good),
              each(s.get("slash_malicious_total"), bad),
              "n/a"
              if not s  # a run kept from a report that did not record its summary
              else ", ".join(
                  f"{'M' if int(i) in r['attackers'] else 'H'}{i}@{k}"
                  for i, k in (s.get("ejections") or {}).items()
              )
              or "none",
          )
      )
    cells = [", ".join(f"{k}={v}" for k, v in key), str(len(rs))]
    cells += [_stat(p[i] for p in per) for i in range(6)]
    cells.append("; ".join(p[6] for p in per))
    lines.append("| " + " | ".join(cells) + " |")
  bare = [f"`{r['name']}`" for r in flock if not r["summary"]]
  if bare:
    lines += ["", f"Rewards, slashes and ejections leave out {', '.join(bare)} (no summary)."]
  return "\n".join(lines)


def _participants(run: dict) -> dict[str, int]:
  """Honest / malicious head counts of a run (from its config)."""
  return {"honest": run["n"] - len(run["attackers"]), "malicious": len(run["attackers"])}


def _attackers(run_dir: pathlib.Path) -> tuple[int, list[int]]:
  """(N, attacker indices) of a run, from its config.json, as the run itself drew them."""
  import ml_collections

  from flock_jax.run_config import from_config

  from flock_jax.run_config import load_config

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


def probe_table(run: dict) -> str:
  """One row per probed round of a run: the attackers' scores (at the scale the adaptive
  attacker submitted; 'flagged' where the voters found the proposal invalid) and the honest
  proposals' highest score and flags; with the probe's memory (federation.probe_budget), the
  attackers' summed excess after the round and the honest participants' highest. '' when the
  run's voters did not probe."""
  if not run.get("probe"):  # runs.json of reports made before the probe existed lack it
    return ""
  memory = any(p.get("memory") for p in run["probe"])
  lines = [
      "| round | attacker proposals: score (scale) | flagged | honest: highest score | honest "
      "flagged | ASR |" + (" memory: attackers' sums | memory: honest highest |" if memory else ""),
      "|---|---|---|---|---|---|" + ("---|---|" if memory else ""),
  ]
  bad = set(run.get("attackers") or [])
  for p in run["probe"]:
    att = ", ".join(
        f"{i}: {s:.3f}" + (f" ({p['scales'][i]:.3f})" if i in p["scales"] else "")
        for i, s, _ in p["attacker"]
    )
    hon = max((s for _, s, _ in p["honest"]), default=None)
    asr = "-" if p["asr"] is None else f"{p['asr']:.2f}"
    lines.append(
        f"| {p['round']} | {att or '-'} | {sum(f for *_, f in p['attacker'])}/{len(p['attacker'])}"
        f" | {'-' if hon is None else f'{hon:.3f}'} | "
        f"{sum(f for *_, f in p['honest'])}/{len(p['honest'])} | "
        f"{asr} |"
    )
    if memory:
      sums = p.get("memory") or {}
      att = ", ".join(f"{i}: {x:.3f}" for i, x in sorted(sums.items()) if i in bad)
      hon = max((x for i, x in sums.items() if i not in bad), default=None)
      lines[-1] += f" {att or '-'} | {'-' if hon is None else f'{hon:.3f}'} |"
  return "\n".join(lines)


# ------------------------------------------------------------------ plots
def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from cycler import cycler

  # the default 10 colours, then 8 more: a sweep's methods past the tenth keep their own colour
  colours = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
  matplotlib.rcParams["axes.prop_cycle"] = cycler(color=colours)
  return plt


def _curves(rs: list[dict], field: str):
  """(rounds, mean, min, max) over seeds of a per-round curve."""
  by_round: dict[int, list[float]] = defaultdict(list)
  for r in rs:
    for k, v in r[field]:
      if v is not None:
        by_round[k].append(v)
  ks = sorted(by_round)
  return (
      ks,
      [sum(by_round[k]) / len(by_round[k]) for k in ks],
      [min(by_round[k]) for k in ks],
      [max(by_round[k]) for k in ks],
  )


def _panel_key(run: dict, panel: str):
  return run["tags"].get(panel)


def plot_over_rounds(runs, field, ylabel, path, panel="fraction", line="method") -> bool:
  panels = sorted({_panel_key(r, panel) for r in runs}, key=lambda x: (x is None, x))
  if not runs or not any(r[field] for r in runs):
    return False
  plt = _plt()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, p in zip(axes[0], panels):
    sub = [r for r in runs if _panel_key(r, p if False else panel) == p]
    lines = list(dict.fromkeys(r["tags"].get(line, r["name"]) for r in sub))
    for name in lines:
      rs = [r for r in sub if r["tags"].get(line, r["name"]) == name]
      ks, mean, lo, hi = _curves(rs, field)
      if not ks:
        continue
      (h,) = ax.plot(ks, mean, marker="o", ms=3, label=str(name))
      if len(rs) > 1:
        ax.fill_between(ks, lo, hi, color=h.get_color(), alpha=0.15)
    ax.set_title(f"{panel} = {p}" if p is not None else "")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_vs_fraction(runs, path, x="fraction", line="method") -> bool:
  have = [r for r in runs if r["tags"].get(x) is not None and r["asr_mean"] is not None]
  if len({r["tags"][x] for r in have}) < 2:
    return False
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, field, label in (
      (axes[0], "asr_mean", "ASR (mean over reported rounds)"),
      (axes[1], "loss_final", "held-out loss, final"),
  ):
    for name in dict.fromkeys(r["tags"].get(line, "") for r in have):
      rs = [r for r in have if r["tags"].get(line, "") == name]
      xs = sorted({r["tags"][x] for r in rs})
      vals = [[r[field] for r in rs if r["tags"][x] == v and r[field] is not None] for v in xs]
      keep = [(v, ys) for v, ys in zip(xs, vals) if ys]
      if not keep:
        continue
      mean = [sum(ys) / len(ys) for _, ys in keep]
      err = [
          [m - min(ys) for m, (_, ys) in zip(mean, keep)],
          [max(ys) - m for m, (_, ys) in zip(mean, keep)],
      ]
      ax.errorbar(
          [v for v, _ in keep], mean, yerr=err, marker="o", ms=3, capsize=2, label=str(name)
      )
    ax.set_xlabel(x)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_stakes(runs, path) -> bool:
  flock = [r for r in runs if r["stake_curve"] and r["tags"].get("fraction", 1)]
  if not flock:
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for key, rs in sorted(groups(flock).items(), key=str):
    label = ", ".join(f"{v}" for k, v in key)
    hon = _curves(
        [{"c": [(k, h / _participants(r)["honest"]) for k, h, _ in r["stake_curve"]]} for r in rs],
        "c",
    )
    bad = [r for r in rs if _participants(r)["malicious"]]
    mal = _curves(
        [
            {"c": [(k, m / _participants(r)["malicious"]) for k, _, m in r["stake_curve"]]}
            for r in bad
        ],
        "c",
    )
    (h,) = ax.plot(hon[0], hon[1], label=f"{label}: honest")
    if mal[0]:
      ax.plot(mal[0], mal[1], ls="--", color=h.get_color(), label=f"{label}: malicious")
  ax.set_xlabel("round")
  ax.set_ylabel("stake per participant (tokens)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def cross_domain(runs: list[dict]) -> tuple[list[str], list[str], list[list[float | None]]]:
  """(trained_on rows, eval domain columns, final held-out loss mean over seeds)."""
  rs = [r for r in runs if r["tags"].get("trained_on")]
  rows = list(dict.fromkeys(r["tags"]["trained_on"] for r in rs))
  cols = sorted({d for r in rs for d in r["loss_by_domain"]})
  grid = [
      [
          _mean([r["loss_by_domain"].get(c) for r in rs if r["tags"]["trained_on"] == row])
          for c in cols
      ]
      for row in rows
  ]
  return rows, cols, grid


def plot_cross_domain(runs, path) -> bool:
  rows, cols, grid = cross_domain(runs)
  if not rows or not cols:
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2.5, 0.7 * len(rows) + 1.8))
  vals = [[v if v is not None else float("nan") for v in row] for row in grid]
  im = ax.imshow(vals, cmap="viridis_r")
  ax.set_xticks(range(len(cols)), cols)
  ax.set_yticks(range(len(rows)), rows)
  ax.set_xlabel("evaluated on (held-out loss, lower is better)")
  ax.set_ylabel("trained on")
  for i, row in enumerate(vals):
    for j, v in enumerate(row):
      ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ------------------------------------------------------------------ the report
def write_report(
    sweep_dir: str,
    out_dir: str,
    title: str = "",
    reference: str = "fedavg",
    partial: bool = False,
    keep: str | Sequence[str] | None = None,
    versus: str | None = None,
) -> pathlib.Path:
  """The report of a sweep's finished runs; `partial` takes unfinished runs in as well, each
  through the rounds it has run (named so in the report: a long run read while it runs);
  `keep` (earlier reports' runs.json files) adds their runs the workdir lacks; `versus` (a
  method tag) adds the held-out loss of every attacked run against that method's run with the
  same attackers and seed."""
  meta, runs = load_runs(sweep_dir)
  unfinished = [r["name"] for r in runs if not r["done"]]
  cut = [f"`{r['name']}` (through round {r['rounds'] - 1})" for r in runs if not r["done"]]
  if not partial:  # a cut-short run would mix rounds into the means
    runs = [r for r in runs if r["done"]]
  keeps = [keep] if isinstance(keep, (str, os.PathLike)) else list(keep or [])
  kept = []
  for path in keeps:  # a run in two reports comes from the first
    kept += kept_runs(path, meta, runs + kept)
  kept_names = {r["name"] for r in kept}
  unfinished = [n for n in unfinished if n not in kept_names]
  place = {e["name"]: k for k, e in enumerate(meta["runs"])}
  runs = sorted(runs + kept, key=lambda r: place[r["name"]])  # the sweep file's order
  if not runs:
    raise FileNotFoundError(
        f"--sweep={sweep_dir}: no run has finished yet"
        + (" (--partial reports the rounds run so far)" if unfinished else "")
    )
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  made = []
  if plot_over_rounds(runs, "asr_curve", "ASR (triggered prompts)", out / "asr_over_rounds.png"):
    made.append(("ASR over rounds (mean over seeds, band: min..max)", "asr_over_rounds.png"))
  if plot_over_rounds(
      runs, "loss_curve", "held-out loss (mean of domains)", out / "loss_over_rounds.png"
  ):
    made.append(("Held-out loss over rounds", "loss_over_rounds.png"))
  if plot_vs_fraction(runs, out / "asr_vs_fraction.png"):
    made.append(
        ("ASR and final held-out loss against the malicious fraction", "asr_vs_fraction.png")
    )
  if plot_stakes(runs, out / "stakes.png"):
    made.append(("Stake per honest / malicious participant (FLock runs)", "stakes.png"))
  if plot_cross_domain(runs, out / "cross_domain.png"):
    made.append(("Cross-domain matrix", "cross_domain.png"))
  if partial:
    left_out = f" and, unfinished, {', '.join(cut)}" if cut else ""
    have = f"{len(runs) - len(cut)} finished runs{left_out}, of {len(meta['runs'])} in the file"
  else:
    left_out = f" (left out, unfinished: {', '.join(unfinished)})" if unfinished else ""
    have = f"{len(runs)} finished runs of {len(meta['runs'])} in the file{left_out}"
  if kept:
    names = ", ".join(f"`{r['name']}`" for r in kept)
    have += (
        f"; {len(kept)} of them ({names}) are kept from "
        + (
            f"an earlier report of this sweep ({keeps[0]})"
            if len(keeps) == 1
            else f"earlier reports of this sweep file's entries ({', '.join(map(str, keeps))})"
        )
        + (", whose workdir is gone" if len(keeps) == 1 else ", whose workdirs are gone")
    )
  text = [
      f"# {title or meta['sweep']}",
      "",
      f"Sweep `{meta['sweep']}`: {have}. Base config `{meta['base']}`; the overrides every run "
      "shares and each run's command are in [commands.md](commands.md). Numbers are "
      "`mean (min..max)` over seeds. ASR: share of triggered held-out prompts whose greedy "
      "generation contains the target; false activation: the same prompts without the trigger. "
      "Updates accepted/proposed: FLock proposals that entered the global model. An aggregator "
      "takes every valid update in and weighs or selects inside: 'k/n weighted' counts the "
      "updates it gave nonzero weight (Krum, Multi-Krum, FLAME, FLTrust), n/a for "
      "coordinate-wise rules (median, trimmed mean) and FedAvg.",
      "",
      main_table(runs),
      "",
  ]
  ended = [
      (r["name"], r["summary"]["ended_early"]) for r in runs if r["summary"].get("ended_early")
  ]
  if ended:
    text += [
        "Ended early (the task ran out of staked participants; PROTOCOL.md, Liveness): "
        + "; ".join(f"`{name}` before round {e['round']} ({e['reason']})" for name, e in ended)
        + ".",
        "",
    ]
  for field, digits, what in (("asr_curve", 2, "ASR"), ("loss_curve", 3, "Held-out loss")):
    by_round = round_table(runs, field, digits)
    if by_round:
      text += [
          f"## {what} at every reported round (mean over seeds; each seed in brackets)",
          "",
          by_round,
          "",
      ]
  for ref in dict.fromkeys([reference, "self"]):  # the named reference, then each method's own
    cost = clean_cost_table(runs, ref)
    against = "the same method without attackers" if ref == "self" else f"attack-free {ref}"
    if cost:
      text += [f"## Clean cost: held-out loss against {against}, same seed", "", cost, ""]
  if versus:
    cost = clean_cost_table(runs, versus, attacked=True)
    if not cost:
      raise ValueError(f"--versus={versus}: no run of that method shares a seed and attackers")
    text += [
        f"## Held-out loss against {versus} under the same attack, same seed",
        "",
        f"Each run under attack against the `{versus}` run with the same attackers and seed.",
        "",
        cost,
        "",
    ]
  econ = economics_table(runs)
  if econ:
    text += ["## Economics (FLock runs)", "", econ, ""]
  for r in runs:
    table = probe_table(r)
    if table:
      text += [
          f"## The voters' behaviour probe in `{r['name']}`, round by round",
          "",
          "Each proposal's probe score (federation.probe; a proposal over the threshold is "
          "invalid, excluded and slashed), the adaptive attacker's submitted scale in brackets.",
          "",
          table,
          "",
      ]
  rows, cols, grid = cross_domain(runs)
  if rows:
    text += ["## Cross-domain held-out loss (rows: trained on; columns: evaluated on)", ""]
    text += ["| trained on | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row, vals in zip(rows, grid):
      text.append(f"| {row} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    text.append("")
  for caption, png in made:
    text += [f"### {caption}", "", f"![{caption}]({png})", ""]
  (out / "README.md").write_text("\n".join(text))
  cmds = [
      "# How these results were made",
      "",
      "```bash",
      meta["command"],
      f"python launch/report.py --sweep={sweep_dir} --out={out_dir}"
      + (f" --reference={reference}" if reference != "fedavg" else "")
      + (" --partial" if partial else "")
      + "".join(f" --keep={k}" for k in keeps)
      + (f" --versus={versus}" if versus else ""),
      "```",
      "",
      f"## The sweep file ({meta['sweep']})",
      "",
      "```python",
      meta.get("sweep_file", "").rstrip(),
      "```",
      "",
      "## Every run",
      "",
  ]
  cmds += [f"- `{r['name']}`: `{r['command']}`" for r in meta["runs"]]
  (out / "commands.md").write_text("\n".join(cmds) + "\n")
  slim = [{k: v for k, v in r.items() if k != "summary"} for r in runs]
  for r, one in zip(runs, slim):  # what the tables read of the summary, so a report can keep it
    one["summary"] = {k: v for k, v in r["summary"].items() if k in _SUMMARY_KEYS}
  (out / "runs.json").write_text(json.dumps(slim, indent=1))
  return out / "README.md"


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  if not _SWEEP.value or not _OUT.value:
    raise FileNotFoundError("--sweep=<sweep workdir> and --out=<folder> are both required")
  path = write_report(
      _SWEEP.value,
      _OUT.value,
      _TITLE.value,
      _REFERENCE.value,
      _PARTIAL.value,
      _KEEP.value,
      _VERSUS.value,
  )
  print(f"report: {path}")


if __name__ == "__main__":
  run_main(main)
