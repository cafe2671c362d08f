"""PNG plots of a sweep's runs (matplotlib, Agg): ASR and loss over rounds, ASR and loss against
the malicious fraction, stake per head over rounds, the cross-domain heat map."""

from __future__ import annotations

from collections import defaultdict

from flock_jax.results.runs import participants
from flock_jax.results.tables import cross_domain, groups


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
        [{"c": [(k, h / participants(r)["honest"]) for k, h, _ in r["stake_curve"]]} for r in rs],
        "c",
    )
    bad = [r for r in rs if participants(r)["malicious"]]
    mal = _curves(
        [
            {"c": [(k, m / participants(r)["malicious"]) for k, _, m in r["stake_curve"]]}
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
