"""Fixtures for the chain tests: one compiled contract set, a small deployed task,
and snapshot/revert isolation so that each test starts from the same state."""

from __future__ import annotations

from typing import Iterator

import pytest

from flock_jax.chain import FlockChain
from flock_jax.chain.compile import load_contract

from tests.chain.helpers import make_chain


@pytest.fixture(scope="session", autouse=True)
def compiled():
  """Compile both contracts once per session (cached on disk across sessions)."""
  return load_contract("StakeToken"), load_contract("FlockTask")


@pytest.fixture(scope="module")
def base_chain() -> FlockChain:
  return make_chain()


@pytest.fixture
def chain(base_chain: FlockChain) -> Iterator[FlockChain]:
  """The module's chain, reverted to its deployed state after each test."""
  snap = base_chain.snapshot()
  yield base_chain
  base_chain.revert(snap)
