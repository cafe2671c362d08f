"""The on-chain role draw, replicated in Python (FlockTask.draw_roles + FlockLogic.draw).

Protocol v2: ``start_round`` (block b) freezes the participant set;
``draw_roles`` (a later block, within 256) computes
``seed_r = keccak256(seed_{r-1} ‖ uint256(r) ‖ blockhash(b))``. The seed does not
depend on any proposal or candidate, and nobody can change the set once the
block whose hash seeds it is known. Candidates are the active participants
in the contract's list order; weight 1 each (uniform) or their stake
(stake-weighted). Pick k uses ``x_k = uint256(keccak256(seed_r ‖ uint256(k)))``
and takes the first candidate whose prefix sum of the weights not yet picked
exceeds ``x_k % remaining_total`` (a Fenwick tree on chain). The first P picks
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


def draw_indices(seed: bytes, weights: Sequence[int], need: int) -> list[int]:
  """`need` distinct indices, each pick in proportion to its weight among those left
  (FlockLogic.draw). Raises ValueError when the weight runs out."""
  w = list(weights)
  total = sum(w)
  picked = []
  for k in range(need):
    if total <= 0:
      raise ValueError("draw: no weight left to draw from")
    rem = int.from_bytes(keccak(seed + k.to_bytes(32, "big")), "big") % total
    acc = 0
    for i, x in enumerate(w):  # same pick as the Fenwick descent: first prefix sum > rem
      acc += x
      if acc > rem:
        break
    picked.append(i)
    total -= w[i]
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
