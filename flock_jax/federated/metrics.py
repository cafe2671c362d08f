"""What one round reports, and the per-round JSONL file a run writes."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable

import numpy as np


@dataclasses.dataclass
class RoundMetrics:
  """One round.

  proposers / voters / clients: participant indices (proposers in the ledger's
  order). gains: whole mode [V] per voter; per-proposal mode [V][P].
  proposal_accepted: per proposer (per-proposal mode; in whole mode every
  valid proposal shares the candidate's fate). rejected_updates: the
  InvalidUpdateError messages of updates dropped before hashing.
  heldout_loss: the global model's loss per domain after the round.

  Generation-based report (flock_jax.eval, on report rounds): accuracy {domain: exact-match
  share, or pass@1 against the unit tests for a code domain (HumanEval)}; asr / asr_exact:
  triggered held-out prompts whose greedy generation contains / equals the attack's target;
  false_activation(_exact): the same prompts without the trigger.
  Economics (FLock rounds, whole tokens, after settlement): stake_honest / stake_malicious
  (sums over participants, attackers = any non-honest behaviour), reward_* / slash_* (this
  round, by side), ejected (all so far), ejected_now, attacker_proposals (valid proposals by
  attackers) and attacker_accepted (those that entered the global model); gas_used (the
  round's transactions on an EVM ledger; None on the 'local' one).
  """

  round: int
  mode: str
  train_loss: float
  heldout_loss: dict[str, float]
  accepted: bool | None = None
  tally: int | None = None
  void: bool = False
  proposers: list[int] = dataclasses.field(default_factory=list)
  voters: list[int] = dataclasses.field(default_factory=list)
  clients: list[int] = dataclasses.field(default_factory=list)
  approvals: list = dataclasses.field(default_factory=list)
  gains: list = dataclasses.field(default_factory=list)
  proposal_accepted: list[bool] = dataclasses.field(default_factory=list)
  rejected_updates: list[str] = dataclasses.field(default_factory=list)
  candidate_hash: str = ""
  global_hash: str = ""
  chain_global_hash: str = ""
  block_hash: str = ""
  rewards: dict[int, int] = dataclasses.field(default_factory=dict)
  slashes: dict[int, int] = dataclasses.field(default_factory=dict)
  time_train_s: float = 0.0
  time_hash_s: float = 0.0
  time_eval_s: float = 0.0
  time_chain_s: float = 0.0
  time_report_s: float = 0.0
  time_round_s: float = 0.0
  time_generate_s: float = 0.0
  accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
  asr: float | None = None
  asr_exact: float | None = None
  false_activation: float | None = None
  false_activation_exact: float | None = None
  stake_honest: float | None = None
  stake_malicious: float | None = None
  reward_honest: float | None = None
  reward_malicious: float | None = None
  slash_honest: float | None = None
  slash_malicious: float | None = None
  ejected: list[int] = dataclasses.field(default_factory=list)
  ejected_now: list[int] = dataclasses.field(default_factory=list)
  attacker_proposals: int | None = None
  attacker_accepted: int | None = None
  gas_used: int | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def mean_heldout_loss(self) -> float:
    return float(np.mean(list(self.heldout_loss.values()))) if self.heldout_loss else float("nan")

  def to_dict(self) -> dict[str, Any]:
    return _jsonable(dataclasses.asdict(self))

  def summary(self) -> str:
    held = " ".join(f"{k}={v:.4f}" for k, v in self.heldout_loss.items())
    if self.round < 0:
      line = f"round  -1 [{self.mode}] the starting model, heldout: {held}"
      if self.accuracy:
        line += " | acc " + " ".join(f"{k}={v:.2f}" for k, v in self.accuracy.items())
      if self.asr is not None:
        line += f" | ASR {self.asr:.2f} (clean {self.false_activation:.2f})"
      return line
    head = f"round {self.round:3d} [{self.mode}] train={self.train_loss:.4f} heldout: {held}"
    if self.mode.startswith("flock"):
      acc = "void" if self.void else ("accepted" if self.accepted else "rejected")
      head += f" | {acc} tally={_tokens(self.tally)}"
      if self.proposal_accepted:
        head += f" bits={''.join('1' if b else '0' for b in self.proposal_accepted)}"
    if self.rejected_updates:
      head += f" | dropped {len(self.rejected_updates)} invalid update(s)"
    if self.accuracy:
      head += " | acc " + " ".join(f"{k}={v:.2f}" for k, v in self.accuracy.items())
    if self.asr is not None:
      head += f" | ASR {self.asr:.2f} (clean {self.false_activation:.2f})"
    if self.attacker_proposals:
      head += f" | attackers in {self.attacker_accepted}/{self.attacker_proposals}"
    return head + (
        f" | train {self.time_train_s:.2f}s eval {self.time_eval_s:.2f}s "
        f"chain {self.time_chain_s:.3f}s"
    )


def economics(
    ledger,
    outcome,
    attack,
    proposers: list[int],
    proposal_accepted: list[bool],
    valid_ids: list[int],
    min_stake: int,
) -> dict[str, Any]:
  """The economics fields of RoundMetrics after a FLock round settled (whole tokens).

  ledger: the Ledger (its stakes after settlement); outcome: the round's Outcome (rewards,
  slashes and ejections by participant index); attack: the run's AttackSpec (who is an
  attacker); min_stake in base units (below it a participant is ejected).
  """
  from flock_jax.federated.ledger import WEI

  n = ledger.num_participants
  stakes = [int(s) for s in ledger.stakes()]
  bad = set(attack.attackers(n))
  side = lambda amounts, mal: sum(int(v) for i, v in amounts.items() if (int(i) in bad) == mal)
  now = sorted(int(i) for i in getattr(outcome, "ejected", ()))
  return {
      "stake_honest": sum(s for i, s in enumerate(stakes) if i not in bad) / WEI,
      "stake_malicious": sum(s for i, s in enumerate(stakes) if i in bad) / WEI,
      "reward_honest": side(outcome.rewards, False) / WEI,
      "reward_malicious": side(outcome.rewards, True) / WEI,
      "slash_honest": side(outcome.slashes, False) / WEI,
      "slash_malicious": side(outcome.slashes, True) / WEI,
      "ejected": sorted(set(now) | {i for i, s in enumerate(stakes) if s < min_stake}),
      "ejected_now": now,
      "attacker_proposals": sum(i in bad for i in valid_ids),
      "attacker_accepted": sum(
          acc and i in bad and i in valid_ids for i, acc in zip(proposers, proposal_accepted)
      ),
  }


def attackers_in(attack, who: list[int], valid: list[bool]) -> dict[str, int]:
  """attacker_proposals / attacker_accepted for a baseline round (clients `who`): valid
  updates by attackers, as in a FLock round; an aggregator takes every valid update in, so
  the two are equal (an invalid one is counted in rejected_updates)."""
  n = sum(attack.is_attacker(i) and v for i, v in zip(who, valid))
  return {"attacker_proposals": n, "attacker_accepted": n}


def _mean(xs) -> float | None:
  xs = [x for x in xs if x is not None]
  return float(np.mean(xs)) if xs else None


def summary_extras(rows: list[dict], attackers: list[int]) -> dict[str, Any]:
  """summary.json's attack, accuracy and economics part, from the metrics rows of a run.

  asr_final / asr_best (lowest) / asr_mean (over reported rounds >= 0) / asr_mean_last_half;
  asr_by_round; false_activation_final; accuracy_final (by domain) and accuracy_start;
  totals of rewards and slashes by side; final stakes; ejections (participant -> the round it
  was ejected in) and rounds_to_eject_all_attackers (None if some attacker stayed);
  attacker proposals made / accepted in all; gas_used_total (EVM ledgers).
  """
  done = [r for r in rows if r["round"] >= 0]
  out: dict[str, Any] = {}
  asr = [(r["round"], r.get("asr")) for r in done if r.get("asr") is not None]
  if asr:
    vals = [a for _, a in asr]
    out["asr_by_round"] = {str(k): a for k, a in asr}
    out["asr_final"], out["asr_best"], out["asr_mean"] = vals[-1], min(vals), _mean(vals)
    out["asr_mean_last_half"] = _mean(vals[len(vals) // 2 :])
    out["asr_exact_final"] = next(
        r.get("asr_exact") for r in reversed(done) if r.get("asr") is not None
    )
    out["false_activation_final"] = next(
        r.get("false_activation") for r in reversed(done) if r.get("asr") is not None
    )
  start = next((r for r in rows if r["round"] == -1), None)
  if start is not None and start.get("asr") is not None:
    out["asr_start"] = start["asr"]
  acc = [r for r in done if r.get("accuracy")]
  if acc:
    out["accuracy_final"] = acc[-1]["accuracy"]
    out["accuracy_final_mean"] = _mean(acc[-1]["accuracy"].values())
  if start is not None and start.get("accuracy"):
    out["accuracy_start"] = start["accuracy"]
  for k in ("reward_honest", "reward_malicious", "slash_honest", "slash_malicious"):
    vals = [r.get(k) for r in done if r.get(k) is not None]
    if vals:
      out[f"{k}_total"] = float(sum(vals))
  last = next((r for r in reversed(done) if r.get("stake_honest") is not None), None)
  if last is not None:
    out["stake_honest_final"] = last["stake_honest"]
    out["stake_malicious_final"] = last["stake_malicious"]
  ejections: dict[str, int] = {}
  for r in done:
    for i in r.get("ejected_now") or []:
      ejections.setdefault(str(i), r["round"])
  out["ejections"] = ejections
  if attackers:
    ej = [ejections.get(str(i)) for i in attackers]
    out["rounds_to_eject_all_attackers"] = None if any(e is None for e in ej) else max(ej) + 1
  props = [r.get("attacker_proposals") for r in done if r.get("attacker_proposals") is not None]
  if props:
    out["attacker_proposals_total"] = int(sum(props))
    out["attacker_accepted_total"] = int(sum(r.get("attacker_accepted") or 0 for r in done))
  gas = [r.get("gas_used") for r in done if r.get("gas_used") is not None]
  if gas:
    out["gas_used_total"] = int(sum(gas))
  out["time_s"] = {
      k: float(sum(r.get(f"time_{k}_s") or 0.0 for r in rows))
      for k in ("train", "eval", "generate", "chain", "report", "round")
  }
  return out


def _clock(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_bar(done: int, total: int, elapsed: float, unit: str = "", width: int = 24) -> str:
  """'[######..................] 3/12 rounds elapsed 0:01:12 ETA 0:04:48': the ETA is the mean
  time per finished step times the steps left (of a run: rounds; of a sweep: runs)."""
  fill = int(width * done / max(total, 1))
  eta = _clock(elapsed / done * (total - done)) if done else "?"
  unit = f" {unit}" if unit else ""
  return (
      f"[{'#' * fill}{'.' * (width - fill)}] {done}/{total}{unit} elapsed {_clock(elapsed)} "
      f"ETA {eta}"
  )


def _tokens(x: int | None) -> str:
  return "-" if x is None else f"{x / 1e18:+.3g}"


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (bytes, bytearray)):
    return "0x" + bytes(x).hex()
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (float, np.floating)):
    return None if np.isnan(x) else float(x)  # JSON has no NaN: a metric not measured is null
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.bool_,)):
    return bool(x)
  if isinstance(x, int) and abs(x) >= 2**53:
    return str(x)  # token amounts in base units: exact as text
  return x


class JsonlWriter:
  """Appends one JSON object per line to `path` (flushed per round, so a crash loses nothing)."""

  def __init__(self, path: str | os.PathLike):
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    self.path = os.fspath(path)

  def write(self, m: RoundMetrics | dict) -> None:
    row = m.to_dict() if isinstance(m, RoundMetrics) else _jsonable(m)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_all(path: str | os.PathLike, metrics: Iterable[RoundMetrics]) -> None:
  w = JsonlWriter(path)
  for m in metrics:
    w.write(m)
