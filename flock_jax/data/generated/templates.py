"""Shared machinery for template generators: exact decimal rounding and the sampling loop."""

from __future__ import annotations

import decimal
import random
from decimal import Decimal
from typing import Callable, Sequence

from flock_jax.data.answers import answer_line
from flock_jax.data.example import Example

Template = Callable[[random.Random], tuple[str, str, str]]
"""rng -> (prompt, working, answer); the answer line is appended by `generate`."""

CTX = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_UP)


def D(x: int | float | str) -> Decimal:
  """A Decimal from a literal; floats go through str() so 0.1 stays 0.1."""
  return Decimal(str(x)) if isinstance(x, float) else Decimal(x)


def rounded(x: Decimal, places: int) -> Decimal:
  """x rounded half-up to `places` decimals (0 for a whole number)."""
  return x.quantize(Decimal(1).scaleb(-places), context=CTX)


def fmt(x: Decimal, places: int) -> str:
  """x rounded and written with exactly `places` decimals, no thousands separator."""
  return f"{rounded(x, places):.{places}f}"


def money(x: Decimal) -> str:
  """`$1,234.56` (or `-$5.00`) for prompts and working."""
  r = rounded(x, 2)
  return f"{'-' if r < 0 else ''}${abs(r):,.2f}"


def num(x: Decimal) -> str:
  """x in plain notation without trailing zeros: 7.50 -> "7.5", 10 -> "10"."""
  return format(x.normalize(), "f")


def generate(
    domain: str, templates: Sequence[Template], n: int, seed: int, max_tries: int = 50
) -> list[Example]:
  """`n` examples drawn from `templates` uniformly, with distinct prompts.

  Uses `random.Random(seed)`, whose integer stream Python keeps stable, so a
  seed names the same data set on every machine. A template whose prompt
  space runs out (a flash-card table) just stops being chosen.

  Raises ValueError if `n` distinct prompts cannot be found.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = random.Random(seed)
  seen: set[str] = set()
  out: list[Example] = []
  while len(out) < n:
    for _ in range(max_tries):
      k = rng.randrange(len(templates))
      prompt, working, answer = templates[k](rng)
      if prompt not in seen:
        break
    else:
      raise ValueError(
          f"could not draw {n} distinct {domain} prompts " f"(got {len(out)}); ask for fewer"
      )
    seen.add(prompt)
    out.append(
        Example(
            domain=domain,
            prompt=prompt,
            response=f"{working}\n{answer_line(answer)}",
            answer=answer,
            uid=f"{domain}/{seed}/{len(out)}",
            meta={"template": templates[k].__name__},
        )
    )
  return out
