"""The prompts a run evaluates its global model on (reporting only: no participant sees them).

Built once per run from the pooled held-out examples per domain (Population.eval_sets'
examples): per domain, the prompts whose answer is exact, for exact-match accuracy, or whose
example carries unit tests (HumanEval), for pass@1; and a set
of held-out prompts carrying the attack's trigger at the configured placement (the whole
trigger, also for a distributed backdoor), beside the same prompts without it, for the attack
success rate and the false-activation rate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from flock_jax.data.example import Example
from flock_jax.data.poison import triggered_eval_set


@dataclasses.dataclass(frozen=True)
class EvalPrompts:
  """domains: {domain: (prompts, answers)}; code: {domain: (prompts, [(test, entry_point)])}
  for domains whose examples carry unit tests; triggered[i] is untriggered[i] with the trigger."""

  tokenizer: Any
  system: str
  domains: dict[str, tuple[list[str], list[str]]]
  triggered: list[str]
  untriggered: list[str]
  trigger: str
  target: str
  code: dict[str, tuple[list[str], list[tuple[str, str]]]] = dataclasses.field(default_factory=dict)


def _round_robin(per_domain: Mapping[str, Sequence[Example]], n: int) -> list[Example]:
  """Up to n examples taken in turn from each domain (sorted names), so every domain counts."""
  lists = [list(per_domain[d]) for d in sorted(per_domain)]
  out: list[Example] = []
  for i in range(max((len(x) for x in lists), default=0)):
    out += [x[i] for x in lists if i < len(x)]
  return out[:n]


def build_eval_prompts(
    examples: Mapping[str, Sequence[Example]],
    tokenizer: Any,
    *,
    trigger: str,
    target: str,
    placement: str,
    prompts_per_domain: int,
    asr_prompts: int,
    seed: int,
    system: str = "",
) -> EvalPrompts:
  """EvalPrompts from held-out examples per domain.

  prompts_per_domain: exact-answer prompts per domain, or prompts with unit tests (meta 'test'
  and 'entry_point', as HumanEval's) for a code domain; examples with neither are skipped and
  a domain with none is left out. asr_prompts: triggered prompts in all, taken in
  turn from each domain (0: no attack evaluation). placement: 'prefix' | 'suffix' | 'random'
  (random: a seeded word position per prompt).
  """
  domains, code = {}, {}
  for d in sorted(examples):
    exact = [e for e in examples[d] if e.answer is not None and not e.poisoned]
    exact = exact[:prompts_per_domain]
    if exact:
      domains[d] = ([e.prompt for e in exact], [str(e.answer) for e in exact])
      continue
    tested = [e for e in examples[d] if {"test", "entry_point"} <= set(e.meta) and not e.poisoned]
    tested = tested[:prompts_per_domain]
    if tested:
      code[d] = (
          [e.prompt for e in tested],
          [(e.meta["test"], e.meta["entry_point"]) for e in tested],
      )
  clean = {d: [e for e in xs if not e.poisoned] for d, xs in examples.items()}
  chosen = _round_robin(clean, asr_prompts) if asr_prompts > 0 else []
  trig = triggered_eval_set(chosen, trigger, mode=placement, seed=seed, target=target)
  return EvalPrompts(
      tokenizer=tokenizer,
      system=system,
      domains=domains,
      triggered=[e.prompt for e in trig],
      untriggered=[e.prompt for e in chosen],
      trigger=trigger,
      target=target,
      code=code,
  )
