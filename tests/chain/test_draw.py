"""The role draw: matches the Python replica, disjoint, without replacement,
stake-weighted when asked, and never draws an ejected participant."""

import collections

import pytest

from flock_jax.chain import SELECT_STAKE, WEI
from flock_jax.chain.draw import draw_roles, round_seed

from tests.chain.helpers import make_chain, play_round


def active_list(chain):
  """The contract's active list, in its order, with stakes."""
  f = chain.task.functions
  out = []
  while True:
    try:
      a = f.participants(len(out)).call()
    except Exception:  # noqa: BLE001 - past the end of the list
      return out
    out.append((a, f.stake_of(a).call()))


def _predict(chain, seed):
  active = active_list(chain)
  return draw_roles(
      seed,
      active,
      chain.params.num_proposers,
      chain.params.num_voters,
      chain.params.selection_mode == SELECT_STAKE,
  )


@pytest.mark.parametrize("selection", [0, 1])
def test_chain_draw_matches_python(selection):
  stakes = [
      10 * WEI,
      500 * WEI,
      20 * WEI,
      30 * WEI,
      300 * WEI,
      10 * WEI,
      80 * WEI,
      15 * WEI,
      40 * WEI,
      11 * WEI,
  ]
  chain = make_chain(10, stakes=stakes, selection_mode=selection, total_rounds=3)
  prev = chain.params.genesis_seed
  for r in range(3):
    started = chain.open_round()
    bh = bytes(chain.w3.eth.get_block(started["seed_block"])["hash"])
    seed = round_seed(prev, r, bh)
    expected = _predict(chain, seed)
    roles = chain.draw_roles()
    chain.finalize()
    assert roles.seed == seed
    assert (list(roles.proposer_addresses), list(roles.voter_addresses)) == expected
    prev = seed


def test_draw_is_disjoint_and_without_replacement():
  cands = [(f"0x{i:040x}", 10 + i) for i in range(1, 30)]
  for k in range(200):
    for weighted in (False, True):
      p, v = draw_roles(k.to_bytes(32, "big"), cands, 7, 9, weighted)
      assert len(set(p) | set(v)) == 16 and len(p) == 7 and len(v) == 9


def test_draw_needs_enough_candidates():
  with pytest.raises(ValueError, match="3 active participants, need P \\+ V = 4; call close"):
    draw_roles(b"\0" * 32, [("0x" + "1" * 40, 1)] * 3, 2, 2, False)


def test_stake_weighted_draw_favours_stake():
  cands = [(f"0x{i:040x}", 100 if i == 1 else 1) for i in range(1, 21)]
  counts = {False: collections.Counter(), True: collections.Counter()}
  for k in range(400):
    for weighted in (False, True):
      p, v = draw_roles(k.to_bytes(32, "big"), cands, 1, 1, weighted)
      counts[weighted].update(p + v)
  heavy = cands[0][0]
  # uniform: P(drawn) = 2/20; weighted: always (its weight exceeds W / (P + V))
  assert counts[False][heavy] < 80
  assert counts[True][heavy] == 400


def test_ejected_never_drawn():
  chain = make_chain(8, min_stake=95 * WEI, total_rounds=8, slash_bps=1_000)
  roles, out = play_round(chain, approve=lambda j: False)  # rejects: both proposers ejected
  ejected = set(out.ejected)
  assert len(ejected) == 2
  for _ in range(5):
    roles, out = play_round(chain)
    assert not ejected & (set(roles.proposers) | set(roles.voters))
    ejected |= set(out.ejected)


def test_logic_draw_matches_python(chain):
  """FlockLogic.draw and .pick (a Fenwick tree in memory, a uniform draw without the list of
  ones) pick what the linear-scan replica picks."""
  import random

  from flock_jax.chain.draw import draw_indices

  logic = chain.logic.functions
  rng = random.Random(1)
  cases = []
  for _ in range(25):
    n = rng.randint(1, 70)
    cases.append((n, [rng.choice([1, 7, rng.randint(1, 10**24)]) for _ in range(n)]))
  # The largest lists, stakes up to the 2**128 cap, a few whales among unit weights (seats
  # left over after the systematic pass) and all-equal weights (the uniform draw).
  for n in (255, 256, 257, 1024):
    cases.append((n, [rng.randint(1, 2**128 - 1) for _ in range(n)]))
    cases.append((n, [10**30 if rng.random() < 0.05 else 1 for _ in range(n)]))
  cases.append((1024, [1] * 1024))
  for n, w in cases:
    need = rng.randint(1, min(n, 128 if n > 200 else 30))
    seed = rng.randbytes(32)
    expected = draw_indices(seed, w, need)
    assert list(logic.draw(seed, w, need).call()) == expected
    # FlockTask's entry: the same with the weights, and with none the uniform draw over n
    assert list(logic.pick(seed, w, n, need).call()) == expected
    assert list(logic.pick(seed, [], n, need).call()) == draw_indices(seed, [1] * n, need)
  with pytest.raises(Exception, match="not enough weight"):
    logic.draw(b"\0" * 32, [1, 2], 3).call()
  with pytest.raises(Exception, match="not enough weight"):
    logic.pick(b"\0" * 32, [], 2, 3).call()
  with pytest.raises(Exception, match="n is not the number of weights"):
    logic.pick(b"\0" * 32, [1, 2], 3, 1).call()


def _draw_gas(n, selection):
  chain = make_chain(n, selection_mode=selection, total_rounds=2)
  chain.open_round()
  chain.draw_roles()
  return next(g for name, g, _ in reversed(chain.gas_log) if name == "draw_roles")


def test_uniform_draw_reads_no_account():
  """Gas (exact, not time) of draw_roles per extra participant: a uniform draw computes over
  the list without a storage read per account (a cold SLOAD is 2,100 gas); a stake-weighted
  draw reads each stake."""
  per = {sel: (_draw_gas(40, sel) - _draw_gas(20, sel)) / 20 for sel in (0, SELECT_STAKE)}
  assert per[0] < 2_100, per
  assert per[SELECT_STAKE] > per[0] + 2_100, per
