"""Generated finance and medical domains, the registry, and answer extraction."""

import re

import pytest

from flock_jax.data.answers import answer_line, exact_match, extract_answer, normalize_answer
from flock_jax.data.generated import GENERATORS, generate_finance, generate_medical
from flock_jax.data.generated.medical import DRUG_CLASSES
from flock_jax.data.registry import load_domain, load_domains


@pytest.mark.parametrize("gen", [generate_finance, generate_medical])
def test_deterministic_distinct_and_answered(gen):
  a, b, c = gen(300, seed=7), gen(300, seed=7), gen(300, seed=8)
  assert a == b and a != c
  assert len({e.prompt for e in a}) == 300 and len({e.uid for e in a}) == 300
  assert all(e.answer and extract_answer(e.response) == e.answer for e in a)
  assert all(e.response.endswith(answer_line(e.answer)) for e in a)
  assert len({e.meta["template"] for e in a}) >= 6


def _num(pattern, text):
  return float(re.search(pattern, text).group(1).replace(",", ""))


def test_finance_answers_match_independent_float_math():
  checked = 0
  for e in generate_finance(400, seed=1):
    t, p = e.meta["template"], e.prompt
    if t == "compound_interest":
      pv, r = _num(r"of \$([\d,.]+)", p), _num(r"earns ([\d.]+)%", p)
      n = {"annually": 1, "quarterly": 4, "monthly": 12}[re.search(r"compounded (\w+)", p).group(1)]
      yrs = _num(r"after (\d+) years", p)
      want = pv * (1 + r / 100 / n) ** (n * yrs)
    elif t == "loan_payment":
      pv, r, yrs = (
          _num(r"loan of \$([\d,.]+)", p),
          _num(r"rate of ([\d.]+)%", p),
          _num(r"A (\d+)-year", p),
      )
      i = r / 1200
      want = pv * i / (1 - (1 + i) ** (-12 * yrs))
    elif t == "percentage_change":
      old, new = _num(r"from \$([\d,.]+)", p), _num(r"to \$([\d,.]+)\.", p)
      want = (new - old) / old * 100
    else:
      continue
    assert abs(float(e.answer) - want) <= 0.0051, (e.prompt, e.answer, want)
    checked += 1
  assert checked > 100


def test_medical_answers():
  for e in generate_medical(400, seed=2):
    t, p = e.meta["template"], e.prompt
    if t == "bmi":
      kg, cm = _num(r"weighs ([\d.]+) kg", p), _num(r"is ([\d.]+) cm", p)
      assert abs(float(e.answer) - kg / (cm / 100) ** 2) <= 0.051
    elif t == "iv_drip_rate":
      ml, h, f = (
          _num(r"Infuse (\d+) mL", p),
          _num(r"over (\d+) hour", p),
          _num(r"of (\d+) drops", p),
      )
      assert abs(int(e.answer) - ml * f / (h * 60)) <= 0.5
    elif t == "drug_class":
      drug = re.search(r"(?:does|card:) (\S+?)[ .]", p).group(1)
      assert e.answer == DRUG_CLASSES[drug]


def test_registry_generated_names_and_counts():
  assert set(GENERATORS) == {"finance", "medical"}
  exs = load_domains({"finance": {"n": 20, "seed": 3}, "medical": {"n": 10}})
  assert [e.domain for e in exs] == ["finance"] * 20 + ["medical"] * 10
  assert load_domain("finance", n=5, seed=3) == exs[:5]
  with pytest.raises(ValueError, match="distinct"):
    from flock_jax.data.generated.templates import generate

    generate("x", [lambda rng: ("same", "w", "1")], 2, seed=0)


def test_answer_extraction_and_exact_match():
  assert extract_answer("work\nThe answer is $1,234.50.") == "$1,234.50"
  assert extract_answer("steps\n#### 72") == "72"
  assert extract_answer("so it is 3 then 41") == "41"
  assert extract_answer("nothing here") is None
  assert normalize_answer("$1,234.50") == normalize_answer("1234.5") == "1234.5"
  assert normalize_answer("18.00") == "18" and normalize_answer("-0.0") == "0"
  assert exact_match("The answer is 18.", "18.00")
  assert exact_match("The answer is NSAID.", "nsaid")
  assert not exact_match("The answer is 17.", "18")
  assert answer_line("1.") == "The answer is 1." and answer_line("x") == "The answer is x."
