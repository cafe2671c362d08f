"""CHAMP (270 competition math problems) from the `champ-dataset` wheel. MIT.

The wheel holds one JSON file, `{"problems": {id: problem}, "concepts": ..., "hints": ...}`.
A problem has `_text`, `category` (Number-Theory, Inequality, Polynomial,
Sequence, Combinatorics), `solution.steps[]._text` and `_answer`, where math
spans are delimited by `@@` (removed here). Most of the 72 MB are model
conversations, which we ignore.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from flock_jax.data import wheels
from flock_jax.data.answers import answer_line
from flock_jax.data.example import Example

WHEEL = "champ-dataset"
MEMBER_PATTERN = "champ_dataset/dataset_files/*.json"


def _clean(text: str) -> str:
  return text.replace("@@", "").strip()


@functools.lru_cache(maxsize=1)
def _problems() -> tuple[dict[str, Any], ...]:
  data = json.loads(wheels.read_member(WHEEL, MEMBER_PATTERN))
  return tuple(data["problems"].values())


def parse_problem(p: dict[str, Any]) -> Example:
  """prompt = problem text; response = solution steps, one per line, then the answer line."""
  answer = _clean(p.get("_answer") or p["_raw_answer"])
  steps = [_clean(s.get("_text") or s["_raw_text"]) for s in p["solution"]["steps"]]
  response = "\n".join(steps + [answer_line(answer)])
  return Example(
      domain="champ",
      prompt=_clean(p.get("_text") or p["_raw_text"]),
      response=response,
      answer=answer,
      uid=f"champ/{p['identifier']}",
      meta={"category": p["category"]},
  )


def load_champ(*, limit: int | None = None) -> list[Example]:
  """All 270 CHAMP problems (or the first `limit`), in file order."""
  return [parse_problem(p) for p in _problems()[:limit]]
