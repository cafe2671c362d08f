"""Stacked per-client batches [K, B, T]."""

import numpy as np
import pytest

from flock_jax.data.batching import client_batches, client_steps


def _client(rows, T=8, tag=0):
  toks = (np.arange(rows)[:, None] * 10 + tag * 1000 + np.zeros((1, T), int)).astype(np.int32)
  return {
      "tokens": toks,
      "loss_mask": np.ones((rows, T), np.float32),
      "segment_ids": np.ones((rows, T), np.int32),
      "positions": np.tile(np.arange(T, dtype=np.int32), (rows, 1)),
  }


def test_shapes_and_ownership():
  clients = [_client(5, tag=0), _client(30, tag=1), _client(2, tag=2)]
  batches = list(client_batches(clients, batch_size=4, num_steps=3, seed=0))
  assert len(batches) == 3
  for b in batches:
    assert b["tokens"].shape == (3, 4, 8) and b["tokens"].dtype == np.int32
    assert b["loss_mask"].dtype == np.float32
    for k in range(3):  # every row comes from its own client
      assert (b["tokens"][k] // 1000 == k).all()


def test_small_client_sees_every_row_before_repeats():
  steps = client_steps([_client(5)], batch_size=2, num_steps=5, seed=1)
  rows = steps["tokens"][:, 0, :, 0].reshape(-1) // 10  # [E*B] row ids in order
  assert sorted(rows[:5]) == list(range(5)) and sorted(rows[5:10]) == list(range(5))


def test_deterministic_and_independent_per_client():
  a = client_steps([_client(9), _client(9, tag=1)], 3, 4, seed=2)
  b = client_steps([_client(9), _client(9, tag=1)], 3, 4, seed=2)
  c = client_steps([_client(9), _client(9, tag=1)], 3, 4, seed=2, round_index=1)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["tokens"], c["tokens"])
  order0 = a["tokens"][:, 0] % 1000
  order1 = a["tokens"][:, 1] % 1000
  assert not np.array_equal(order0, order1)  # clients shuffle independently
  alone = client_steps([_client(9)], 3, 4, seed=2)  # client 0's stream ignores the others
  assert np.array_equal(alone["tokens"][:, 0], a["tokens"][:, 0])


def test_errors():
  with pytest.raises(ValueError, match="no rows"):
    client_steps([_client(0)], 2, 1, seed=0)
  with pytest.raises(ValueError, match="sequence lengths"):
    client_steps([_client(3, T=8), _client(3, T=16)], 2, 1, seed=0)
