"""Client partitions: sizes, disjointness, coverage, skew, minimums, determinism."""

import numpy as np
import pytest

from flock_jax.data.example import Example
from flock_jax.data.partition import assign, partition, split_heldout


def _pool(per_domain=60, domains=("finance", "gsm8k", "medical", "code")):
  return [
      Example(d, f"{d} q{i}", f"a{i}", uid=f"{d}/{i}", meta={"category": f"c{i % 3}"})
      for d in domains
      for i in range(per_domain)
  ]


def _uids(clients):
  return [e.uid for c in clients for e in c.train + c.heldout]


@pytest.mark.parametrize("scheme", ["domain", "iid", "dirichlet"])
@pytest.mark.parametrize("n", [2, 4, 7])
def test_disjoint_cover_and_split(scheme, n):
  pool = _pool()
  clients = partition(pool, n, scheme=scheme, alpha=1.0, heldout_fraction=0.25, seed=5)
  uids = _uids(clients)
  assert len(uids) == len(set(uids)) == len(pool)  # disjoint and complete
  assert [c.client_id for c in clients] == list(range(n))
  for c in clients:
    assert c.size >= 2 and sum(c.domain_counts.values()) == c.size
    assert len(c.heldout) == min(max(round(0.25 * c.size), 1), c.size - 1)
    assert not {e.uid for e in c.train} & {e.uid for e in c.heldout}


def test_domain_scheme_round_robin():
  clients = partition(_pool(), 6, scheme="domain")
  doms = [list(c.domain_counts) for c in clients]
  assert doms == [["code"], ["finance"], ["gsm8k"], ["medical"], ["code"], ["finance"]]
  assert clients[0].domain_counts["code"] == clients[4].domain_counts["code"] == 30
  assert clients[2].domain_counts["gsm8k"] == 60
  few = partition(_pool(), 3, scheme="domain")  # fewer clients than domains
  assert [list(c.domain_counts) for c in few] == [["code", "medical"], ["finance"], ["gsm8k"]]


def test_iid_sizes_even():
  sizes = [c.size for c in partition(_pool(), 7, scheme="iid")]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 240


def _skew(alpha, seeds=range(6)):
  """Mean share of each client's largest domain."""
  shares = []
  for s in seeds:
    for c in partition(_pool(100), 8, scheme="dirichlet", alpha=alpha, min_examples=1, seed=s):
      shares.append(max(c.domain_counts.values()) / c.size)
  return float(np.mean(shares))


def test_dirichlet_skew_grows_as_alpha_shrinks():
  s_iidish, s_mid, s_skewed = _skew(100.0), _skew(1.0), _skew(0.05)
  assert s_iidish < s_mid < s_skewed
  assert s_iidish < 0.4 and s_skewed > 0.8


def test_dirichlet_over_meta_label_and_min_examples():
  pool = _pool()
  clients = partition(
      pool, 10, scheme="dirichlet", alpha=0.3, label_key="category", min_examples=12, seed=1
  )
  assert min(c.size for c in clients) >= 12
  with pytest.raises(ValueError, match="min_examples"):
    partition(pool, 10, scheme="dirichlet", alpha=0.01, min_examples=23, max_tries=5)
  with pytest.raises(ValueError, match="cannot give"):
    partition(pool, 10, scheme="iid", min_examples=25)
  with pytest.raises(ValueError, match="below min_examples"):
    partition(_pool(3, ("a",)) + _pool(40, ("b",)), 4, scheme="domain", min_examples=2)
  with pytest.raises(KeyError, match="nonesuch"):
    partition(pool, 2, label_key="nonesuch")
  with pytest.raises(ValueError, match="scheme"):
    assign(pool, 2, scheme="random")


def test_deterministic():
  a = partition(_pool(), 5, scheme="dirichlet", seed=3)
  b = partition(_pool(), 5, scheme="dirichlet", seed=3)
  c = partition(_pool(), 5, scheme="dirichlet", seed=4)
  assert a == b and _uids(a) != _uids(c)


def test_split_heldout_edge_cases():
  exs = _pool(5, ("a",))
  assert [len(x) for x in split_heldout(exs, 0.0, 0)] == [5, 0]
  assert [len(x) for x in split_heldout(exs, 0.01, 0)] == [4, 1]
  assert [len(x) for x in split_heldout(exs, 0.99, 0)] == [1, 4]
  assert [len(x) for x in split_heldout(exs[:2], 0.5, 0)] == [1, 1]
  with pytest.raises(ValueError):
    split_heldout(exs, 1.0, 0)
