"""Helpers shared by the chain tests: small deployed tasks and a full round."""

from __future__ import annotations

import dataclasses
from typing import Callable

from eth_utils import keccak

from flock_jax.chain import FlockChain, TaskParams, WEI
from flock_jax.chain.backend import EthTesterBackend
from flock_jax.chain.types import PHASE_VOTE

STAKE = 100 * WEI

# Small, fast defaults: 8 participants, 2 proposers, 3 voters, 4 rounds.
SMALL = TaskParams(
    total_rounds=4,
    num_proposers=2,
    num_voters=3,
    min_stake=10 * WEI,
    slash_bps=1_000,
    proposer_share_bps=5_000,
    reward_pool=1_000 * WEI,
    vote_window=12,
)


def make_chain(
    num_participants: int = 8, stakes: int | list[int] = STAKE, mint: int | None = None, **overrides
) -> FlockChain:
  """A fresh in-process chain with a task deployed and every participant staked.
  Two spare accounts (``chain.backend.accounts[-2:]``) are not participants."""
  chain = FlockChain(EthTesterBackend(num_participants + 3), num_participants)
  chain.deploy(dataclasses.replace(SMALL, **overrides), stakes=stakes, mint=mint)
  return chain


def blob_hash(tag: str) -> bytes:
  """A distinct, deterministic 32-byte hash for test proposals/candidates."""
  return keccak(text=tag)


def play_round(
    chain: FlockChain,
    approve: Callable[[int], bool] = lambda j: True,
    skip_propose: set[int] = frozenset(),
    skip_vote: set[int] = frozenset(),
    candidate: Callable[[int], bytes] | None = None,
    skip_reveal: set[int] = frozenset(),
):
  """One full whole-candidate round through every phase: everyone drawn commits and
  reveals unless skipped. Returns (roles, outcome); windows are waited out as needed."""
  roles = chain.start_round()
  for i in roles.proposers:
    if i not in skip_propose:
      chain.propose(i, blob_hash(f"proposal {roles.round} {i}"))
  chain.reveal_proposals([i for i in roles.proposers if i not in skip_propose | skip_reveal])
  cand = blob_hash(f"candidate {roles.round}")
  if chain.phase()[0] == PHASE_VOTE:
    for j in roles.voters:
      if j not in skip_vote:
        chain.vote(j, candidate(j) if candidate else cand, approve(j))
  return roles, chain.finalize()
