"""Rejecting malformed updates, with messages naming the client and the leaf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.federated.validate import (
    InvalidUpdateError,
    check_update,
    finite_mask,
    partition_valid,
    validate_stacked,
    validate_update,
)


def like():
  return {
      "layers": {
          "q": {"a": jnp.zeros((2, 8, 4)), "b": jnp.zeros((2, 4, 32))},
          "v": {"a": jnp.zeros((2, 8, 4)), "b": jnp.zeros((2, 4, 16))},
      }
  }


def test_valid_update_passes():
  validate_update(jax.tree.map(lambda x: x + 1.0, like()), like(), client=0)
  assert check_update(like(), like()) is None


def test_wrong_shape_message():
  u = like()
  u["layers"]["q"]["b"] = jnp.zeros((2, 8, 16))
  with pytest.raises(InvalidUpdateError) as e:
    validate_update(u, like(), client=3)
  assert str(e.value) == "client 3: leaf 'layers/q/b' has shape (2, 8, 16), expected (2, 4, 32)"
  assert e.value.client == 3 and e.value.path == "layers/q/b"
  assert isinstance(e.value, ValueError)


def test_nan_inf_message():
  u = like()
  a = np.zeros((2, 8, 4), np.float32)
  a[0, 0, :2] = np.nan
  a[1, 3, 0] = np.inf
  a[1, 3, 1] = -np.inf
  u["layers"]["v"]["a"] = jnp.asarray(a)
  with pytest.raises(
      InvalidUpdateError, match=r"^client 1: leaf 'layers/v/a' contains 4 NaN/Inf values$"
  ):
    validate_update(u, like(), client=1)


def test_missing_and_extra_leaf():
  u = like()
  del u["layers"]["v"]["b"]
  with pytest.raises(InvalidUpdateError, match="client 2: missing leaf 'layers/v/b'"):
    validate_update(u, like(), client=2)
  u = like()
  u["layers"]["k"] = {"a": jnp.zeros(3)}
  with pytest.raises(InvalidUpdateError, match="client 0x12: unexpected leaf 'layers/k/a'"):
    validate_update(u, like(), client="0x12")


def test_wrong_dtype():
  u = like()
  u["layers"]["q"]["a"] = u["layers"]["q"]["a"].astype(jnp.bfloat16)
  with pytest.raises(
      InvalidUpdateError, match="leaf 'layers/q/a' has dtype bfloat16, expected float32"
  ):
    validate_update(u, like())


def test_partition_valid():
  good = like()
  bad = like()
  bad["layers"]["q"]["a"] = jnp.full((2, 8, 4), jnp.nan)
  valid, errors = partition_valid([good, bad, good], like(), client_ids=["a", "b", "c"])
  assert valid == [0, 2]
  assert len(errors) == 1 and errors[0].client == "b" and "64 NaN/Inf" in str(errors[0])


def test_stacked_and_finite_mask():
  stacked = jax.tree.map(lambda x: jnp.zeros((3,) + x.shape), like())
  validate_stacked(stacked, like())
  assert finite_mask(stacked).tolist() == [True, True, True]
  stacked["layers"]["v"]["b"] = stacked["layers"]["v"]["b"].at[1, 0, 0, 0].set(jnp.nan)
  with pytest.raises(
      InvalidUpdateError, match="client 7: leaf 'layers/v/b' contains 1 NaN/Inf values"
  ):
    validate_stacked(stacked, like(), client_ids=[5, 7, 9])
  assert jax.jit(finite_mask)(stacked).tolist() == [True, False, True]
  bad_shape = jax.tree.map(lambda x: jnp.zeros((3,) + x.shape), like())
  bad_shape["layers"]["q"]["a"] = jnp.zeros((3, 2, 8, 5))
  with pytest.raises(
      InvalidUpdateError, match="per-client shape \\(2, 8, 5\\), expected \\(2, 8, 4\\)"
  ):
    validate_stacked(bad_shape, like())
  ragged = jax.tree.map(lambda x: jnp.zeros((3,) + x.shape), like())
  ragged["layers"]["q"]["a"] = jnp.zeros((2, 2, 8, 4))
  with pytest.raises(InvalidUpdateError, match="leading clients axis"):
    validate_stacked(ragged, like())


def test_host_leaves_are_checked_like_device_leaves():
  """The round copies its proposals off the device once (rounds._host_unstack) and checks
  numpy leaves: the same verdicts and messages as for jax arrays."""
  ok = jax.device_get(jax.tree.map(lambda x: x + 1.0, like()))
  assert check_update(ok, like()) is None
  bad = jax.device_get(like())
  bad["layers"]["v"]["b"] = np.asarray(bad["layers"]["v"]["b"]).copy()
  bad["layers"]["v"]["b"][1, 2, 3] = np.inf
  assert str(check_update(bad, like(), client=1)) == (
      "client 1: leaf 'layers/v/b' contains 1 NaN/Inf values"
  )
  wrong = jax.device_get(like())
  wrong["layers"]["q"]["a"] = np.zeros((2, 8, 4), np.int32)
  assert "has dtype int32, expected float32" in str(check_update(wrong, like(), client=2))
  # float64 host leaves count as jnp.asarray makes them (float32 without x64), as before
  wide = jax.tree.map(lambda x: np.zeros(x.shape, np.float64), like())
  assert check_update(wide, like()) is None
