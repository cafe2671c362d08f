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
import sys
from collections.abc import Sequence

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flock_jax.cli import run_main  # noqa: E402
from flock_jax.results.plots import (  # noqa: E402
    plot_cross_domain,
    plot_over_rounds,
    plot_stakes,
    plot_vs_fraction,
)
from flock_jax.results.runs import SUMMARY_KEYS, kept_runs, load_runs  # noqa: E402
from flock_jax.results.tables import (  # noqa: E402
    clean_cost_table,
    cross_domain,
    economics_table,
    main_table,
    probe_table,
    round_table,
)

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
    one["summary"] = {k: v for k, v in r["summary"].items() if k in SUMMARY_KEYS}
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
