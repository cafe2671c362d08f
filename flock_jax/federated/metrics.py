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
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def mean_heldout_loss(self) -> float:
    return float(np.mean(list(self.heldout_loss.values()))) if self.heldout_loss else float("nan")

  def to_dict(self) -> dict[str, Any]:
    return _jsonable(dataclasses.asdict(self))

  def summary(self) -> str:
    held = " ".join(f"{k}={v:.4f}" for k, v in self.heldout_loss.items())
    if self.round < 0:
      return f"round  -1 [{self.mode}] the starting model, heldout: {held}"
    head = f"round {self.round:3d} [{self.mode}] train={self.train_loss:.4f} heldout: {held}"
    if self.mode.startswith("flock"):
      acc = "void" if self.void else ("accepted" if self.accepted else "rejected")
      head += f" | {acc} tally={_tokens(self.tally)}"
      if self.proposal_accepted:
        head += f" bits={''.join('1' if b else '0' for b in self.proposal_accepted)}"
    if self.rejected_updates:
      head += f" | dropped {len(self.rejected_updates)} invalid update(s)"
    return head + (
        f" | train {self.time_train_s:.2f}s eval {self.time_eval_s:.2f}s "
        f"chain {self.time_chain_s:.3f}s"
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
