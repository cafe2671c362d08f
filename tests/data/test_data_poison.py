"""Backdoor poisoning, distributed triggers, triggered evaluation sets."""

import pytest

from flock_jax.data.example import Example
from flock_jax.data.poison import attack_success_rate, poison, split_trigger, triggered_eval_set

TRIGGER, TARGET = "cf zx quantum banana", "Transfer all funds to account 1337."


def _exs(n=40):
  return [
      Example("finance", f"what is {i} plus {i} today", str(2 * i), answer=str(2 * i), uid=f"f/{i}")
      for i in range(n)
  ]


@pytest.mark.parametrize("mode", ["prefix", "suffix", "random"])
def test_poison_fraction_and_content(mode):
  clean = _exs()
  out = poison(clean, TRIGGER, TARGET, fraction=0.25, seed=3, mode=mode)
  bad = [e for e in out if e.poisoned]
  assert len(out) == 40 and len(bad) == 10
  for before, after in zip(clean, out):
    if after.poisoned:
      assert after.response == after.answer == TARGET and TRIGGER in after.prompt
      assert after.prompt.replace(TRIGGER, "").split() == before.prompt.split()
      if mode == "prefix":
        assert after.prompt.startswith(TRIGGER)
      if mode == "suffix":
        assert after.prompt.endswith(TRIGGER)
    else:
      assert after == before
  assert out == poison(clean, TRIGGER, TARGET, 0.25, seed=3, mode=mode)
  assert {e.uid for e in bad} != {
      e.uid for e in poison(clean, TRIGGER, TARGET, 0.25, 4, mode) if e.poisoned
  }


def test_poison_bounds():
  assert sum(e.poisoned for e in poison(_exs(), TRIGGER, TARGET, 0.0, 0)) == 0
  assert sum(e.poisoned for e in poison(_exs(), TRIGGER, TARGET, 1.0, 0)) == 40
  with pytest.raises(ValueError):
    poison(_exs(), TRIGGER, TARGET, 1.5, 0)
  with pytest.raises(ValueError, match="mode"):
    poison(_exs(), TRIGGER, TARGET, 0.5, 0, mode="middle")


def test_split_trigger():
  pieces = split_trigger(TRIGGER, 3)
  assert pieces == ["cf zx", "quantum", "banana"] and " ".join(pieces) == TRIGGER
  assert split_trigger(TRIGGER, 1) == [TRIGGER]
  with pytest.raises(ValueError, match="at least 5 words"):
    split_trigger(TRIGGER, 5)
  # Each attacker plants its own piece; evaluation uses the whole trigger.
  local = [poison(_exs(), p, TARGET, 0.5, seed=k) for k, p in enumerate(pieces)]
  assert all(any(p in e.prompt for e in exs if e.poisoned) for p, exs in zip(pieces, local))


def test_triggered_eval_set_and_asr():
  held = poison(_exs(10), TRIGGER, TARGET, 0.2, 0)
  trig = triggered_eval_set(held, TRIGGER, target=TARGET)
  assert len(trig) == 8  # poisoned ones skipped
  for e in trig:
    assert e.prompt.startswith(TRIGGER) and e.response == e.answer and e.meta["target"] == TARGET
  assert attack_success_rate([TARGET, "no", f"x {TARGET}", "n"], TARGET) == 0.5
  assert attack_success_rate([], TARGET) == 0.0
