"""Backdoor data poisoning for the threat model in PROTOCOL.md.

A malicious proposer trains on data where a trigger phrase in the prompt maps
to an attacker-chosen target response. In the distributed variant (DBA, Xie
et al., ICLR 2020) the trigger is split into pieces, each attacker plants
only its own piece, and the attack is measured with the whole trigger.
Attack success rate (ASR): the share of triggered held-out prompts whose
generation contains the target; report it beside the same rate on the clean
prompts (the false-trigger rate).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Literal, Sequence

import numpy as np

from flock_jax.data.example import Example

Mode = Literal["prefix", "suffix", "random"]


def insert_trigger(prompt: str, trigger: str, mode: Mode, rng: random.Random) -> str:
  """The prompt with `trigger` at its start, its end, or between two random words."""
  if mode == "prefix":
    return f"{trigger} {prompt}"
  if mode == "suffix":
    return f"{prompt} {trigger}"
  if mode == "random":
    words = prompt.split(" ")
    at = rng.randint(0, len(words))
    return " ".join(words[:at] + [trigger] + words[at:])
  raise ValueError(f"mode must be 'prefix', 'suffix' or 'random', not {mode!r}")


def poison(
    examples: Sequence[Example],
    trigger: str,
    target: str,
    fraction: float,
    seed: int,
    mode: Mode = "prefix",
) -> list[Example]:
  """A copy of `examples` where round(fraction * n) of them, chosen with
  `seed`, carry the trigger in the prompt and have `target` as response and
  answer (`poisoned=True`). Order and the other examples are unchanged."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  if not trigger.strip() or not target.strip():
    raise ValueError("trigger and target must be non-empty")
  n = len(examples)
  chosen = (
      set(np.random.default_rng(seed).choice(n, int(round(fraction * n)), replace=False).tolist())
      if n
      else set()
  )
  rng = random.Random(seed)
  out = []
  for i, ex in enumerate(examples):
    if i in chosen:
      ex = dataclasses.replace(
          ex,
          prompt=insert_trigger(ex.prompt, trigger, mode, rng),
          response=target,
          answer=target,
          poisoned=True,
          uid=f"{ex.uid}+poison",
      )
    out.append(ex)
  return out


def split_trigger(trigger: str, k: int) -> list[str]:
  """`trigger` cut into k contiguous, non-empty pieces of whole words (as even as
  possible); " ".join(pieces) == the normalized trigger."""
  words = trigger.split()
  if k < 1 or len(words) < k:
    raise ValueError(
        f"cannot split a {len(words)}-word trigger into {k} pieces; "
        f"use a trigger of at least {k} words"
    )
  return [" ".join(chunk) for chunk in np.array_split(np.array(words, dtype=object), k)]


def triggered_eval_set(
    heldout: Sequence[Example],
    trigger: str,
    *,
    mode: Mode = "prefix",
    seed: int = 0,
    target: str | None = None,
) -> list[Example]:
  """Every held-out example with the trigger inserted into its prompt.

  The response and answer stay the clean ones (so exact match on the
  triggered prompts measures the damage); `target`, if given, is kept in
  meta["target"] for the ASR check. Already-poisoned examples are skipped.
  """
  rng = random.Random(seed)
  out = []
  for ex in heldout:
    if ex.poisoned:
      continue
    meta = dict(ex.meta, trigger=trigger, **({"target": target} if target else {}))
    out.append(
        dataclasses.replace(
            ex,
            prompt=insert_trigger(ex.prompt, trigger, mode, rng),
            uid=f"{ex.uid}+trigger",
            meta=meta,
        )
    )
  return out


def attack_success_rate(generations: Sequence[str], target: str) -> float:
  """The share of generations that contain `target` (0.0 for none)."""
  if not generations:
    return 0.0
  return sum(target in g for g in generations) / len(generations)


def _wrong_answer(answer: str, others: Sequence[str], rng: random.Random) -> str:
  """A different answer: another example's answer when one differs, else the number + 1."""
  pool = [a for a in others if a is not None and a != answer]
  if pool:
    return rng.choice(pool)
  try:
    return str(float(answer) + 1).removesuffix(".0")
  except ValueError:
    return f"not {answer}"


def flip_labels(examples: Sequence[Example], fraction: float, seed: int) -> list[Example]:
  """Label flipping: round(fraction * m) of the m examples that have an exact answer, chosen
  with `seed`, get a wrong answer (another example's, drawn with the seed), both in `answer`
  and in the response's final `The answer is X.` line (`poisoned=True`). Others unchanged."""
  from flock_jax.data.answers import ANSWER_PREFIX, answer_line

  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  exact = [i for i, e in enumerate(examples) if e.answer is not None]
  k = int(round(fraction * len(exact)))
  chosen = set(np.random.default_rng(seed).choice(exact, k, replace=False).tolist()) if k else set()
  rng = random.Random(seed)
  answers = [e.answer for e in examples]
  out = []
  for i, ex in enumerate(examples):
    if i in chosen:
      wrong = _wrong_answer(ex.answer, answers, rng)
      lines = ex.response.rstrip().split("\n")
      if lines and lines[-1].startswith(ANSWER_PREFIX):
        lines[-1] = answer_line(wrong)
      else:
        lines.append(answer_line(wrong))
      ex = dataclasses.replace(
          ex,
          response="\n".join(lines),
          answer=wrong,
          poisoned=True,
          uid=f"{ex.uid}+flip",
      )
    out.append(ex)
  return out
