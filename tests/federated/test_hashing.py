"""Canonical bytes and keccak-256 of adapter trees."""

import hashlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eth_utils import keccak

from flock_jax.federated import hashing


def tree():
  return {
      "layers": {
          "v": {
              "a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
              "b": jnp.ones((3, 2), jnp.float32),
          },
          "q": {"a": jnp.full((2, 2), -0.5, jnp.float32), "b": jnp.zeros((2,), jnp.float32)},
      }
  }


def test_deterministic_and_order_insensitive():
  t = tree()
  h = hashing.tree_hash(t)
  assert len(h) == 32 and h == hashing.tree_hash(t) == hashing.tree_hash(tree())
  reordered = {
      "layers": {
          "q": {"b": t["layers"]["q"]["b"], "a": t["layers"]["q"]["a"]},
          "v": {"b": t["layers"]["v"]["b"], "a": t["layers"]["v"]["a"]},
      }
  }
  assert list(reordered["layers"]) != list(t["layers"])
  assert hashing.tree_hash(reordered) == h
  assert hashing.hash_hex(t) == "0x" + h.hex() == hashing.hash_hex(h)
  assert len(hashing.hash_hex(t)) == 66


def test_one_bit_flip_changes_hash():
  t = tree()
  a = np.asarray(t["layers"]["v"]["a"]).copy()
  a.view(np.uint32)[1, 2] ^= 1  # lowest mantissa bit of one value
  t2 = tree()
  t2["layers"]["v"]["a"] = jnp.asarray(a)
  assert hashing.tree_hash(t2) != hashing.tree_hash(tree())


def test_structure_and_shape_change_hash_with_same_values():
  x = jnp.arange(6, dtype=jnp.float32)
  h = {
      hashing.tree_hash({"a": x.reshape(2, 3)}),
      hashing.tree_hash({"a": x.reshape(3, 2)}),
      hashing.tree_hash({"b": x.reshape(2, 3)}),
      hashing.tree_hash({"a": x[:3], "b": x[3:]}),
      hashing.tree_hash({"a": {"b": x.reshape(2, 3)}}),
  }
  assert len(h) == 5


def test_dtypes_are_canonicalised_to_float32():
  t32 = {"a": jnp.array([1.0, 2.5], jnp.float32)}
  assert hashing.tree_hash({"a": jnp.array([1.0, 2.5], jnp.bfloat16)}) == hashing.tree_hash(t32)
  assert hashing.tree_hash({"a": np.array([1.0, 2.5], np.float64)}) == hashing.tree_hash(t32)


def test_round_trip():
  t = tree()
  data = hashing.canonical_bytes(t)
  back = hashing.tree_from_canonical_bytes(data)
  assert hashing.canonical_bytes(back) == data
  for k in ("q", "v"):
    for leaf in ("a", "b"):
      np.testing.assert_array_equal(back["layers"][k][leaf], t["layers"][k][leaf])
  like = {
      "layers": {
          k: {l: v.astype(jnp.bfloat16) for l, v in d.items()} for k, d in t["layers"].items()
      }
  }
  back2 = hashing.tree_from_canonical_bytes(data, like=like)
  assert back2["layers"]["q"]["a"].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="paths differ"):
    hashing.tree_from_canonical_bytes(data, like={"x": jnp.zeros(1)})
  with pytest.raises(ValueError):
    hashing.tree_from_canonical_bytes(data[:-1])


def test_known_answer_hand_built_bytes():
  t = {"w": {"b": jnp.array([1.0, -2.0], jnp.float32), "a": jnp.array(0.5, jnp.float32)}}
  expected = (
      b"FLKT"
      + struct.pack("<I", 1)
      + struct.pack("<I", 2)
      # leaf "w/a": scalar
      + struct.pack("<I", 3)
      + b"w/a"
      + struct.pack("<I", 0)
      + struct.pack("<f", 0.5)
      # leaf "w/b": shape (2,)
      + struct.pack("<I", 3)
      + b"w/b"
      + struct.pack("<I", 1)
      + struct.pack("<Q", 2)
      + struct.pack("<ff", 1.0, -2.0)
  )
  assert hashing.canonical_bytes(t) == expected
  assert hashing.tree_hash(t) == keccak(expected)
  # keccak-256, not NIST SHA3-256 (different padding):
  assert keccak(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
  assert hashing.tree_hash(t) != hashlib.sha3_256(expected).digest()


def test_sorted_by_path_string_not_by_key_tuple():
  # '-' (0x2d) sorts before '/' (0x2f): path "a-c" comes before "a/b".
  t = {"a": {"b": jnp.zeros(1)}, "a-c": jnp.ones(1)}
  data = hashing.canonical_bytes(t)
  assert data.index(b"a-c") < data.index(b"a/b")


def test_bad_keys_rejected():
  with pytest.raises(ValueError, match="no '/'"):
    hashing.canonical_bytes({"a/b": jnp.zeros(1)})


@pytest.mark.parametrize("threaded_bytes", [0, hashing.THREADED_HASH_BYTES])
def test_tree_hashes_on_threads_equal_one_by_one_in_order(monkeypatch, threaded_bytes):
  """A round's proposals hash on a few threads (trees of THREADED_HASH_BYTES or more; these
  are smaller, and hash in turn unless the bound is 0): same digests, same order, every
  dtype."""
  monkeypatch.setattr(hashing, "THREADED_HASH_BYTES", threaded_bytes)
  pools = []
  real = hashing.concurrent.futures.ThreadPoolExecutor
  monkeypatch.setattr(
      hashing.concurrent.futures, "ThreadPoolExecutor", lambda n: pools.append(n) or real(n)
  )
  r = np.random.default_rng(3)
  trees = [
      {"a": jnp.asarray(r.normal(size=(4, 5)), dt), "b": {"c": jnp.asarray(r.normal(size=7), dt)}}
      for dt in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float32, jnp.float32)
  ]
  got = hashing.tree_hashes(trees)
  assert len(pools) == (threaded_bytes == 0)
  assert got == [hashing.tree_hash(t) for t in trees]
  assert len(set(got)) == len(trees)
  assert hashing.tree_hashes(trees[:1]) == [hashing.tree_hash(trees[0])]
  # bf16 hashes as its exact float32 values
  assert got[1] == hashing.tree_hash(jax.tree.map(lambda x: x.astype(jnp.float32), trees[1]))
