"""Markdown tables of a sweep's runs (flock_jax.results.runs): one row per tag group, seeds
aggregated as 'mean (min..max)'; the clean cost against an attack-free reference, the economics
per head, the probe's scores round by round, the cross-domain matrix."""

from __future__ import annotations

from collections import defaultdict

from flock_jax.results.runs import mean, participants


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
  return mean([a[k] for k in late]), mean([b[k] for k in late])


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
      s, n = r["summary"], participants(r)
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


def cross_domain(runs: list[dict]) -> tuple[list[str], list[str], list[list[float | None]]]:
  """(trained_on rows, eval domain columns, final held-out loss mean over seeds)."""
  rs = [r for r in runs if r["tags"].get("trained_on")]
  rows = list(dict.fromkeys(r["tags"]["trained_on"] for r in rs))
  cols = sorted({d for r in rs for d in r["loss_by_domain"]})
  grid = [
      [
          mean([r["loss_by_domain"].get(c) for r in rs if r["tags"]["trained_on"] == row])
          for c in cols
      ]
      for row in rows
  ]
  return rows, cols, grid
