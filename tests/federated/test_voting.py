"""Candidate construction, gains, tallies and vote bitmasks (PROTOCOL.md steps 3-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.federated import hashing, voting

ADDRS = [
    "0xBb00000000000000000000000000000000000002",
    "0x0a00000000000000000000000000000000000009",
    "0xaa00000000000000000000000000000000000001",
    "0x0A00000000000000000000000000000000000008",
]


def test_candidate_order_by_address_as_int():
  order = voting.candidate_order(ADDRS)
  assert order.tolist() == [3, 1, 2, 0]
  assert voting.candidate_order([a.lower() for a in ADDRS]).tolist() == [3, 1, 2, 0]
  assert voting.candidate_order([bytes.fromhex(a[2:]) for a in ADDRS]).tolist() == [3, 1, 2, 0]
  with pytest.raises(ValueError, match="duplicate"):
    voting.candidate_order([ADDRS[0], ADDRS[0].lower()])


def make(k=4, seed=0):
  rng = np.random.default_rng(seed)
  g = {
      "q": {"a": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32)},
      "v": jnp.asarray(rng.standard_normal(5), jnp.float32),
  }
  d = jax.tree.map(
      lambda x: jnp.asarray(
          rng.standard_normal((k,) + x.shape) * 1e-3 + 1e3 * rng.standard_normal(), jnp.float32
      ),
      g,
  )
  return g, d


def test_candidate_is_mean_and_input_order_does_not_change_hash():
  g, d = make()
  order = voting.candidate_order(ADDRS)
  c = voting.build_candidate(g, d, order)
  np.testing.assert_allclose(c["v"], g["v"] + np.asarray(d["v"]).mean(0), rtol=1e-5)
  h = hashing.tree_hash(c)
  rng = np.random.default_rng(1)
  for _ in range(5):
    perm = rng.permutation(4)
    d_p = jax.tree.map(lambda x: x[perm], d)
    addrs_p = [ADDRS[i] for i in perm]
    assert hashing.tree_hash(voting.build_candidate(g, d_p, voting.candidate_order(addrs_p))) == h


def test_candidate_sums_sequentially_in_canonical_order():
  g = {"w": jnp.zeros(1, jnp.float32)}
  vals = np.array(
      [1e8, 1.0, -1e8, 1.0], np.float32
  )  # float32: (((0+1e8)+1)-1e8)+1 = 1, other orders differ
  d = {"w": jnp.asarray(vals[:, None])}
  c = voting.build_candidate(g, d, [0, 1, 2, 3])
  acc = np.float32(0)
  for v in vals:
    acc = np.float32(acc + v)
  assert np.asarray(c["w"])[0] == np.float32(acc / np.float32(4))
  assert np.asarray(voting.build_candidate(g, d, [0, 2, 1, 3])["w"])[0] == np.float32(0.5)


def test_candidate_with_accepted_mask():
  g, d = make()
  order = voting.candidate_order(ADDRS)
  mask = [True, False, True, False]
  c = voting.build_candidate(g, d, order, accepted_mask=mask)
  np.testing.assert_allclose(
      c["q"]["a"], g["q"]["a"] + np.asarray(d["q"]["a"])[[0, 2]].mean(0), rtol=1e-5
  )
  none = voting.build_candidate(g, d, order, accepted_mask=[False] * 4)
  np.testing.assert_array_equal(none["v"], g["v"])
  with pytest.raises(ValueError, match="permutation"):
    voting.build_candidate(g, d, [0, 0, 1, 2])


def test_candidate_divisor_counts_rejected_proposals_as_zero_updates():
  """per_proposal_mean='valid': the accepted sum over all K valid proposals; one accepted
  alone moves G by Δ_i / K. A divisor below the number averaged is refused."""
  g, d = make()
  order = voting.candidate_order(ADDRS)
  mask = [False, True, False, False]
  c = voting.build_candidate(g, d, order, accepted_mask=mask, divisor=4)
  want = np.asarray(g["q"]["a"], np.float32) + np.asarray(d["q"]["a"], np.float32)[1] / np.float32(
      4
  )
  np.testing.assert_array_equal(np.asarray(c["q"]["a"]), want)
  with pytest.raises(ValueError, match="divisor 1 is below the 2"):
    voting.build_candidate(g, d, order, accepted_mask=[True, True, False, False], divisor=1)


def test_gains_and_approve():
  lg = np.array([2.0, 1.0, 3.0], np.float32)
  lc = np.array([1.5, 1.0, 3.5], np.float32)
  gain = voting.gains(lg, lc)
  np.testing.assert_allclose(gain, [0.5, 0.0, -0.5])
  assert voting.approve(gain).tolist() == [True, True, False]  # tau = 0: gain 0 approves
  assert voting.approve(gain, tau=0.1).tolist() == [True, False, False]
  assert voting.approve(voting.gains(jnp.asarray(lg), jnp.asarray(lc))).tolist() == [
      True,
      True,
      False,
  ]


def test_tally_stake_weighted_ties_accept_and_big_ints():
  assert voting.tally([True, False, False], [5, 2, 2]) == (1, True)
  assert voting.tally([True, False], [3, 3]) == (0, True)
  assert voting.tally([True, False, False], [3, 2, 2]) == (-1, False)
  big = 10**24  # beyond int64: exact
  assert voting.tally([True, False], [big + 1, big]) == (1, True)
  assert voting.tally([True, False, False], [3, 2, 2], voted=[True, True, False]) == (1, True)
  assert voting.tally([], []) == (0, True)


def test_per_proposal():
  lg = np.array([1.0, 1.0, 1.0])
  le = np.array([[0.5, 1.5, 1.0], [0.9, 0.8, 1.2], [1.1, 1.6, 0.7]])
  g = voting.per_proposal_gains(lg, le)
  assert g.shape == (3, 3)
  np.testing.assert_allclose(g[1], [0.1, 0.2, -0.2])
  approvals = voting.approve(g)
  s, acc = voting.per_proposal_tally(approvals, [4, 1, 2])
  # proposal 0: +4 +1 -2 = 3; proposal 1: -4 +1 -2 = -5; proposal 2: +4 -1 +2 = 5
  assert s == [3, -5, 5] and acc.tolist() == [True, False, True]


def test_bitmask_round_trip():
  bits = [True, False, True, True, False]
  assert voting.bits_to_int(bits) == 0b01101
  assert voting.int_to_bits(0b01101, 5).tolist() == bits
  assert voting.bits_to_int([]) == 0
  many = [i % 3 == 0 for i in range(300)]
  assert voting.int_to_bits(voting.bits_to_int(many), 300).tolist() == many
  with pytest.raises(ValueError, match="does not fit"):
    voting.int_to_bits(0b100000, 5)


def test_candidate_bytes_with_a_zero_genesis():
  """No stored G_0 (a task created with a zero genesis hash): G = 0, so the candidate is
  the mean of the proposals; the audit rebuilt it from b'' and failed with 'bad magic' in v1."""
  from flock_jax.federated import hashing

  d = [{"a": np.full((2, 2), v, np.float32)} for v in (1.0, 3.0)]
  got = hashing.tree_from_canonical_bytes(
      voting.candidate_bytes(b"", [hashing.canonical_bytes(x) for x in d])
  )
  np.testing.assert_array_equal(np.asarray(got["a"]), np.full((2, 2), 2.0, np.float32))
