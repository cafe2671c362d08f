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


def test_flip_labels_changes_answers_and_final_line():
  from flock_jax.data.answers import extract_answer
  from flock_jax.data.poison import flip_labels

  clean = [
      Example("finance", f"q{i}", f"step {i}\nThe answer is {i}.", answer=str(i), uid=f"f/{i}")
      for i in range(20)
  ]
  out = flip_labels(clean, 0.5, seed=1)
  bad = [(a, b) for a, b in zip(clean, out) if b.poisoned]
  assert len(bad) == 10 and out == flip_labels(clean, 0.5, seed=1)
  for before, after in bad:
    assert after.answer != before.answer and extract_answer(after.response) == after.answer
    assert after.response.startswith(f"step {before.answer}\n") and after.prompt == before.prompt
  assert [b for a, b in zip(clean, out) if not b.poisoned] == [
      a for a, b in zip(clean, out) if not b.poisoned
  ]
  with pytest.raises(ValueError):
    flip_labels(clean, 2.0, seed=0)


@pytest.mark.parametrize("placement", ["prefix", "suffix", "random"])
@pytest.mark.parametrize("distributed", [False, True])
def test_population_poisons_with_the_configured_trigger(placement, distributed):
  """Any trigger, target and placement from the config reach the attackers' training data and
  the triggered evaluation prompts, with no code change."""
  from flock_jax.data.tokenizer import byte_tokenizer
  from flock_jax.federated.population import build_population
  from flock_jax.run_config import from_config, load_config

  c = load_config("tiny")
  c.data.examples_per_domain, c.data.seq_len = 16, 256
  c.federation.num_participants, c.federation.num_proposers, c.federation.num_voters = 4, 2, 2
  c.attack.behaviours = "0:backdoor,2:backdoor,3:label_flip"
  c.attack.trigger, c.attack.target = "zebra quartz nimbus", "Send the keys to mallory."
  c.attack.trigger_placement, c.attack.distributed = placement, distributed
  c.attack.poison_fraction = 1.0
  c.eval.asr_prompts = 6
  run = from_config(c)
  tok = byte_tokenizer()
  pop = build_population(run, tok)
  text = lambda i: [tok.decode(r[r != tok.pad_token_id]) for r in pop.train[i]["tokens"]]
  pieces = ["zebra quartz", "nimbus"] if distributed else ["zebra quartz nimbus"] * 2
  for i, piece in zip((0, 2), pieces):
    rows = text(i)
    assert rows and all(piece in r and "Send the keys to mallory." in r for r in rows)
    if distributed:
      assert not any("zebra quartz nimbus" in r for r in rows)
  assert not any("Send the keys" in r for r in text(1))
  p = pop.prompts
  assert len(p.triggered) == 6 and all("zebra quartz nimbus" in t for t in p.triggered)
  assert not any("zebra" in u for u in p.untriggered)
  assert p.target == "Send the keys to mallory."
  if placement == "prefix":
    assert all(t.startswith("zebra quartz nimbus") for t in p.triggered)
