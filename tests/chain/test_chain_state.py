"""The in-process chain saved as bytes and loaded back (run checkpoints carry it): the same
chain, the same bytes, the earlier format still read, and a damaged dump named as such."""

import pytest

from flock_jax.chain import WEI
from flock_jax.chain.backend import EthTesterBackend, _pack_kv
from flock_jax.chain.errors import ChainError

from tests.chain.helpers import make_chain, play_round


def _v1(kv):
  """The first format: a count, then length-prefixed key and value records."""
  parts = [len(kv).to_bytes(8, "big")]
  for k in sorted(kv):
    parts += [len(k).to_bytes(4, "big"), k, len(kv[k]).to_bytes(4, "big"), kv[k]]
  return b"".join(parts)


@pytest.fixture(scope="module")
def played():
  chain = make_chain(8, stakes=[11 * WEI] * 8, mint=20 * WEI)
  play_round(chain, skip_vote={*range(8)})  # slashes and ejections: storage written
  return chain


def _head(backend):
  b = backend.w3.eth.get_block("latest")
  return int(b["number"]), bytes(b["hash"]), bytes(b["stateRoot"])


def test_dump_loads_back_to_the_same_chain_and_bytes(played):
  data = played.backend.dump_state()
  assert data == played.backend.dump_state()  # keys sorted: the same store, the same bytes
  again = EthTesterBackend(9, state=data)
  assert _head(again) == _head(played.backend)
  assert again.dump_state() == data
  # the restored chain keeps going: the next block is the one the original would mine
  played_snap = played.backend.snapshot()
  played.backend.mine(1)
  again.mine(1)
  assert _head(again) == _head(played.backend)
  played.backend.revert(played_snap)


def test_the_first_format_still_loads(played):
  kv = played.backend.evm.chain.chaindb.db.wrapped_db.kv_store
  old = _v1(kv)
  assert old != _pack_kv(kv)
  assert _head(EthTesterBackend(9, state=old)) == _head(played.backend)


@pytest.mark.parametrize("cut", [1, 100, -1])
def test_a_damaged_dump_is_named(played, cut):
  data = played.backend.dump_state()
  for bad in (data[:cut], data[:-cut] if cut > 0 else data + b"\0"):
    with pytest.raises(ChainError, match="the saved eth-tester chain state is broken"):
      EthTesterBackend(9, state=bad)
  with pytest.raises(ChainError, match="the saved eth-tester chain state is broken"):
    EthTesterBackend(9, state=_v1({b"k": b"v"})[:-1])
