"""Finance word problems with exact answers (decimal arithmetic, half-up rounding).

Templates: compound interest, simple interest, loan payment, percentage change,
currency conversion, profit margin, break-even units. Exchange rates are
stated in each prompt (made up, plausible), so every answer follows from the
prompt alone.
"""

from __future__ import annotations

import math
import random
from decimal import Decimal

from flock_jax.data.example import Example
from flock_jax.data.generated.templates import CTX, D, fmt, generate, money, num, rounded

_COMPOUNDING = {1: "annually", 4: "quarterly", 12: "monthly"}
_CURRENCIES = {  # code: (name, plausible units per 1 USD: low, high)
    "EUR": ("euros", 0.85, 0.98),
    "GBP": ("pounds sterling", 0.72, 0.84),
    "JPY": ("yen", 105.0, 155.0),
    "CHF": ("Swiss francs", 0.84, 0.95),
    "CAD": ("Canadian dollars", 1.25, 1.40),
    "INR": ("rupees", 74.0, 86.0),
}


def _rate(rng: random.Random, lo: float, hi: float, step: float) -> Decimal:
  """A value in [lo, hi] on a grid of `step`."""
  k = rng.randint(0, round((hi - lo) / step))
  return D(lo) + D(step) * k


def compound_interest(rng: random.Random) -> tuple[str, str, str]:
  p = D(rng.randrange(1000, 50001, 500))
  r = _rate(rng, 1.5, 9.0, 0.25)
  n = rng.choice(sorted(_COMPOUNDING))
  t = rng.randint(1, 30)
  a = CTX.multiply(p, CTX.power(1 + r / 100 / n, n * t))
  prompt = (
      f"An investment of {money(p)} earns {num(r)}% annual interest, compounded "
      f"{_COMPOUNDING[n]}. What is it worth after {t} years? Round to the nearest cent."
  )
  working = (
      f"Use A = P(1 + r/n)^(n*t) with P = {money(p)}, r = {num(r / 100)}, n = {n}, t = {t}.\n"
      f"A = {num(p)} * (1 + {num(r / 100)}/{n})^{n * t} = {money(a)}."
  )
  return prompt, working, fmt(a, 2)


def simple_interest(rng: random.Random) -> tuple[str, str, str]:
  p = D(rng.randrange(500, 20001, 100))
  r = _rate(rng, 1.0, 12.0, 0.5)
  months = rng.choice([6, 9, 12, 18, 24, 36])
  i = p * r / 100 * months / 12
  prompt = (
      f"How much simple interest does a principal of {money(p)} earn at {num(r)}% per year "
      f"over {months} months? Round to the nearest cent."
  )
  working = f"I = P * r * t = {num(p)} * {num(r / 100)} * {months}/12 = {money(i)}."
  return prompt, working, fmt(i, 2)


def loan_payment(rng: random.Random) -> tuple[str, str, str]:
  p = D(rng.randrange(5000, 400001, 1000))
  r = _rate(rng, 2.0, 12.0, 0.25)
  years = rng.choice([1, 2, 3, 5, 10, 15, 20, 30])
  i, n = r / 100 / 12, 12 * years
  m = CTX.divide(p * i, 1 - CTX.power(1 + i, -n))
  prompt = (
      f"A {years}-year loan of {money(p)} has a fixed annual rate of {num(r)}%, paid monthly. "
      f"What is the monthly payment? Round to the nearest cent."
  )
  working = (
      f"Monthly rate i = {num(r)}%/12, number of payments n = {n}.\n"
      f"M = P*i / (1 - (1 + i)^-n) = {money(m)}."
  )
  return prompt, working, fmt(m, 2)


def percentage_change(rng: random.Random) -> tuple[str, str, str]:
  old = D(rng.randrange(1000, 50001)) / 100
  new = D(rng.randrange(1000, 50001)) / 100
  if new == old:
    new += 1
  ch = (new - old) / old * 100
  prompt = (
      f"A share price moves from {money(old)} to {money(new)}. What is the percentage "
      f"change? Round to two decimal places; a fall is negative."
  )
  working = f"Change = (new - old) / old * 100 = ({num(new)} - {num(old)}) / {num(old)} * 100 = {fmt(ch, 2)}%."
  return prompt, working, fmt(ch, 2)


def currency_conversion(rng: random.Random) -> tuple[str, str, str]:
  code = rng.choice(sorted(_CURRENCIES))
  name, lo, hi = _CURRENCIES[code]
  step = 0.01 if hi > 10 else 0.0001
  rate = _rate(rng, lo, hi, step)
  usd = D(rng.randrange(100, 1000001)) / 100
  out = usd * rate
  prompt = (
      f"At an exchange rate of 1 USD = {num(rate)} {code}, how many {name} do you get for "
      f"{money(usd)}? Round to two decimal places."
  )
  working = f"{num(usd)} USD * {num(rate)} {code}/USD = {fmt(out, 2)} {code}."
  return prompt, working, fmt(out, 2)


def profit_margin(rng: random.Random) -> tuple[str, str, str]:
  revenue = D(rng.randrange(10_000, 5_000_001, 250))
  cost = D(rng.randrange(5_000, int(revenue) * 6 // 5 + 1, 250))
  margin = (revenue - cost) / revenue * 100
  prompt = (
      f"A company has revenue of {money(revenue)} and total costs of {money(cost)}. "
      f"What is its profit margin in percent? Round to two decimal places."
  )
  working = (
      f"Profit = {money(revenue)} - {money(cost)} = {money(revenue - cost)}.\n"
      f"Margin = profit / revenue * 100 = {fmt(margin, 2)}%."
  )
  return prompt, working, fmt(margin, 2)


def break_even_units(rng: random.Random) -> tuple[str, str, str]:
  fixed = D(rng.randrange(1_000, 500_001, 100))
  price = D(rng.randrange(500, 50001, 25)) / 100
  var = rounded(price * D(rng.randint(10, 90)) / 100, 2)
  units = math.ceil(fixed / (price - var))
  prompt = (
      f"A product sells for {money(price)} a unit with a variable cost of {money(var)} a "
      f"unit, and fixed costs are {money(fixed)}. How many units must be sold to break even?"
  )
  working = (
      f"Contribution per unit = {money(price)} - {money(var)} = {money(price - var)}.\n"
      f"Units = fixed costs / contribution = {num(fixed)} / {num(price - var)}, rounded up = {units}."
  )
  return prompt, working, str(units)


TEMPLATES = (
    compound_interest,
    simple_interest,
    loan_payment,
    percentage_change,
    currency_conversion,
    profit_margin,
    break_even_units,
)


def generate_finance(n: int, seed: int = 0) -> list[Example]:
  """`n` finance questions with distinct prompts, the same for the same seed."""
  return generate("finance", TEMPLATES, n, seed)
