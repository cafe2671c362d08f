"""The one record every data source produces."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt/response pair.

  Attributes:
    domain: the data set or task family ("gsm8k", "finance", ...); partitioning
      by domain and per-domain metrics key on it.
    prompt: the user turn.
    response: the assistant turn the model is trained to produce.
    answer: the exact final answer, where the task has one ("18", "1276.28"),
      for exact-match evaluation; None for free-form tasks.
    uid: a stable identifier ("gsm8k/test/17", "finance/7/42"), unique within
      a loaded set; used to check disjointness and to trace examples.
    poisoned: True when `poison.poison` rewrote this example.
    meta: extra per-source fields (HumanEval's tests, Dolly's category, ...).
  """

  domain: str
  prompt: str
  response: str
  answer: str | None = None
  uid: str = ""
  poisoned: bool = False
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (meta copied)."""
    d = dataclasses.asdict(self)
    d["meta"] = dict(self.meta)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Example":
    """Inverse of `to_dict`; unknown keys are rejected by the constructor."""
    return cls(**dict(d))
