"""Random transaction sequences against the contract and the Python model side by side
(flock_jax/chain/fuzz.py): every step reverts on both with the same message or succeeds on
both with identical events; after every step token conservation, contract == model for
every account, no negative stake, ejected never drawn and finalize-once are checked.
`python launch/fuzz_chain.py --transactions=10000` is the long run."""

import json
import pathlib
import subprocess
import sys

import pytest

from flock_jax.chain.fuzz import Fuzzer, Violation

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seed", [3, 11])
def test_random_transactions_agree_with_the_model(seed):
  stats = Fuzzer(seed, num_participants=8).run(250)
  assert stats.violations == 0
  assert stats.finalized_rounds >= 10  # settlement is exercised, not only reverts
  assert stats.reverted < stats.succeeded  # invalid calls are a minority
  assert stats.invariant_checks >= 250


def test_a_planted_disagreement_is_found(monkeypatch):
  """The fuzzer can fail: a model that pays one wei more than the contract is caught."""
  from flock_jax.chain import settlement

  real = settlement.settle

  def off_by_one(**kw):
    st = real(**kw)
    ops = tuple(
        settlement.Op(o.kind, o.who, o.amount + (o.kind == "reward"), o.code) for o in st.ops
    )
    return settlement.Settlement(**{**st.__dict__, "ops": ops})

  monkeypatch.setattr(settlement, "settle", off_by_one)
  with pytest.raises(Violation):
    Fuzzer(3, num_participants=8).run(250)


def test_fuzz_command_prints_one_json_line():
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "fuzz_chain.py"), "--transactions=60", "--seed=2"],
      capture_output=True,
      text=True,
      cwd=ROOT,
  )
  line = json.loads(out.stdout.strip().splitlines()[-1])
  assert out.returncode == 0, out.stderr[-2000:]
  assert set(line) == {
      "transactions",
      "succeeded",
      "reverted",
      "finalized_rounds",
      "invariant_checks",
      "violations",
  }
  assert line["transactions"] == 60 and line["violations"] == 0
