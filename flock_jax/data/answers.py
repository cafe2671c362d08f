"""Final answers: the sentence every source ends with, extraction, exact match.

Every response this package builds ends with one line `The answer is X.`
(GSM8K's `#### X` is rewritten to it unless asked to keep it), so one
extractor serves all exact-match evaluations.
"""

from __future__ import annotations

import re

ANSWER_PREFIX = "The answer is"

_SENTENCE = re.compile(r"The answer is[:\s]*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_HASHES = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def answer_line(answer: str) -> str:
  """`The answer is {answer}.` (no full stop added if the answer ends with one)."""
  return f"{ANSWER_PREFIX} {answer}{'' if answer.endswith('.') else '.'}"


def extract_answer(text: str) -> str | None:
  """The final answer in a generated or reference text, or None.

  Looks, in order, for the last `The answer is X`, the last `#### X`, and the
  last number in the text.
  """
  for pattern in (_SENTENCE, _HASHES):
    hits = pattern.findall(text)
    if hits:
      got = hits[-1].strip()
      return (got[:-1] if got.endswith(".") else got).strip()
  nums = _NUMBER.findall(text)
  return nums[-1] if nums else None


def normalize_answer(answer: str) -> str:
  """Canonical form for comparison: lower case; no `$`, `%`, thousands commas,
  surrounding spaces or final full stop; numbers in their shortest form
  ("18.00" -> "18", "0.50" -> "0.5")."""
  s = answer.strip().lower().rstrip(".").strip()
  s = s.replace("$", "").replace("%", "").strip()
  if re.fullmatch(r"-?[\d,]*\.?\d+", s):
    s = s.replace(",", "")
    if "." in s:
      s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
      s = "0"
  return " ".join(s.split())


def exact_match(prediction: str, answer: str) -> bool:
  """Whether the answer extracted from `prediction` equals `answer` (normalized)."""
  got = extract_answer(prediction)
  return got is not None and normalize_answer(got) == normalize_answer(answer)
