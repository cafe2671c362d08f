"""The on-chain role draw, replicated in Python (FlockTask.draw_roles + FlockLogic.draw).

Protocol v2: ``start_round`` (block b) freezes the participant set;
``draw_roles`` (a later block, within 256) computes
``seed_r = keccak256(seed_{r-1} ‖ uint256(r) ‖ blockhash(b))``. The seed does not
depend on any proposal or candidate, and nobody can change the set once the
block whose hash seeds it is known. Candidates are the active participants
in the contract's list order; weight 1 each (uniform) or their stake
(stake-weighted). `draw_indices` picks P + V of them (shuffle, systematic sampling
in proportion to weight, weighted fill-up; see its docstring). The first P picks
are the proposers (then sorted by address), the next V the voters (in draw order).
"""

from __future__ import annotations

from typing import Sequence

from eth_utils import keccak


def round_seed(prev_seed: bytes, round_index: int, seed_block_hash: bytes) -> bytes:
  """seed_r = keccak256(seed_{r-1} ‖ r as uint256 ‖ blockhash(seed block))."""
  return keccak(prev_seed + round_index.to_bytes(32, "big") + seed_block_hash)


def address_key(address: str) -> int:
  """Sort key of an address: its integer value (the contract's order)."""
  return int(address, 16)


def _word(seed: bytes, k: int) -> int:
  return int.from_bytes(keccak(seed + k.to_bytes(32, "big")), "big")


def draw_indices(seed: bytes, weights: Sequence[int], need: int) -> list[int]:
  """`need` distinct indices into `weights` (all > 0), in a random order (FlockLogic.draw):
  a seeded Fisher-Yates shuffle, then systematic sampling in proportion to weight over the
  shuffled order (an index of weight w <= W / need is picked with probability exactly
  need * w / W), then successive weighted sampling for seats left over when an index
  holds several points. Raises ValueError when there is not enough to draw from."""
  n = len(weights)
  total = sum(weights)
  order = list(range(n))
  for i in range(n - 1, 0, -1):
    j = _word(seed, 2**128 + i) % (i + 1)
    order[i], order[j] = order[j], order[i]
  if total <= 0 or need > n:
    raise ValueError("draw: not enough weight to draw from")
  u = _word(seed, 2**129) % total
  w = list(weights)
  picked: list[int] = []
  cum = pt = 0
  for idx in order:
    cum += weights[idx]
    hit = False
    while pt < need and (u + pt * total) // need < cum:
      hit, pt = True, pt + 1
    if hit:
      picked.append(idx)
      w[idx] = 0
    if pt >= need:
      break
  left = sum(w)
  for k in range(len(picked), need):
    rem = _word(seed, k) % left
    acc = 0
    for i, x in enumerate(w):  # the first index whose running sum exceeds rem
      acc += x
      if acc > rem:
        break
    picked.append(i)
    left -= w[i]
    w[i] = 0
  return picked


def draw_roles(
    seed: bytes,
    candidates: Sequence[tuple[str, int]],
    num_proposers: int,
    num_voters: int,
    stake_weighted: bool,
) -> tuple[list[str], list[str]]:
  """Draw disjoint proposers and voters without replacement.

  Args:
    seed: the round seed (32 bytes).
    candidates: ``(address, stake)`` of the active participants, in list order.
  Returns:
    ``(proposers sorted by address, voters in draw order)``.
  Raises:
    ValueError: fewer than P + V candidates.
  """
  need = num_proposers + num_voters
  if len(candidates) < need:
    raise ValueError(f"{len(candidates)} active participants, need P + V = {need}; call close")
  weights = [s if stake_weighted else 1 for _, s in candidates]
  picked = [candidates[i][0] for i in draw_indices(seed, weights, need)]
  return sorted(picked[:num_proposers], key=address_key), picked[num_proposers:]
