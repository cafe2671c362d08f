"""The generation-based part of a round's report: exact-match accuracy per domain (pass@1 for
a code domain), attack success rate with and without the trigger. One batched KV-cache
generation call per domain (all its prompts at once) and one for the triggered and untriggered
prompts together."""

from __future__ import annotations

import time
from typing import Any

from flock_jax.eval import code_exec
from flock_jax.eval.scores import accuracy, attack_success
from flock_jax.model.generate import chat_generate
from flock_jax.pytree import PyTree


def _generate(engine, lora: PyTree, prompts: list[str], max_new_tokens: int) -> list[str]:
  p = engine.population.prompts
  return chat_generate(
      engine.base,
      engine.run.model.cfg,
      p.tokenizer,
      prompts,
      p.system or None,
      max_new_tokens=max_new_tokens,
      batch_size=len(prompts),  # one call: every prompt in one batch
      lora=lora,
      lora_cfg=engine.run.lora,
  )


def generation_report(engine, lora: PyTree) -> dict[str, Any]:
  """RoundMetrics fields for the global adapter `lora` (greedy decoding).

  accuracy {domain: exact-match share; for a code domain, pass@1 of the greedy completion run
  against the example's unit tests in a sandboxed subprocess} (config.eval.accuracy); asr / asr_exact (triggered
  prompts: target contained / generation equal to the target) and false_activation /
  false_activation_exact (the same prompts without the trigger) (config.eval.asr);
  asr_samples: the first two triggered generations; time_generate_s. {} when the population
  carries no prompts (a synthetic token task).
  """
  ev, p = engine.run.eval, getattr(engine.population, "prompts", None)
  if p is None or not (ev.accuracy or ev.asr):
    return {}
  start = time.perf_counter()
  out: dict[str, Any] = {}
  n_acc, n_asr = ev.generate_max_new_tokens, ev.asr_max_new_tokens or ev.generate_max_new_tokens
  if ev.accuracy:
    out["accuracy"] = {
        d: accuracy(_generate(engine, lora, prompts, n_acc), answers)
        for d, (prompts, answers) in p.domains.items()
    }
    for d, (prompts, tests) in p.code.items():
      gens = _generate(engine, lora, prompts, n_acc)
      programs = [
          code_exec.humaneval_program(q, g, test, entry)
          for q, g, (test, entry) in zip(prompts, gens, tests)
      ]
      out["accuracy"][d] = code_exec.pass_rate(programs)[0]
  if ev.asr and p.triggered:
    gens = _generate(engine, lora, p.triggered + p.untriggered, n_asr)
    trig, clean = gens[: len(p.triggered)], gens[len(p.triggered) :]
    a, f = attack_success(trig, p.target), attack_success(clean, p.target)
    out.update(
        asr=a["contains"],
        asr_exact=a["exact"],
        false_activation=f["contains"],
        false_activation_exact=f["exact"],
        asr_samples=trig[:2],
    )
  out["time_generate_s"] = time.perf_counter() - start
  return out
