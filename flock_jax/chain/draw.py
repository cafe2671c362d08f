"""The on-chain role draw, replicated in Python (contracts/FlockTask.vy `_draw`).

``seed_r = keccak256(seed_{r-1} ‖ uint256(r) ‖ globalHash_r)``; pick k uses
``x_k = uint256(keccak256(seed_r ‖ uint256(k)))``. Candidates are the active
participants (not ejected, stake >= s_min) in registration order. Uniform:
take index ``x_k % m``; stake-weighted: the first candidate whose running
stake sum exceeds ``x_k % total``. The pick is swap-removed with the last
candidate. The first P picks are the proposers (then sorted by address),
the next V the voters (in draw order).
"""

from __future__ import annotations

from typing import Sequence

from eth_utils import keccak


def round_seed(prev_seed: bytes, round_index: int, global_hash: bytes) -> bytes:
  """seed_r = keccak256(seed_{r-1} ‖ r as uint256 ‖ globalHash_r)."""
  return keccak(prev_seed + round_index.to_bytes(32, "big") + global_hash)


def address_key(address: str) -> int:
  """Sort key of an address: its integer value (the contract's order)."""
  return int(address, 16)


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
    candidates: ``(address, stake)`` of the active participants, in
      registration order.
  Returns:
    ``(proposers sorted by address, voters in draw order)``.
  Raises:
    ValueError: fewer than P + V candidates.
  """
  need = num_proposers + num_voters
  if len(candidates) < need:
    raise ValueError(f"{len(candidates)} active participants, need P + V = {need}")
  cands = [a for a, _ in candidates]
  weights = [s for _, s in candidates]
  total = sum(weights)
  picked = []
  for k in range(need):
    x = int.from_bytes(keccak(seed + k.to_bytes(32, "big")), "big")
    m = len(cands)
    j = x % m
    if stake_weighted:
      target = x % total
      acc = 0
      for i in range(m):
        acc += weights[i]
        if acc > target:
          j = i
          break
      total -= weights[j]
    picked.append(cands[j])
    cands[j], weights[j] = cands[m - 1], weights[m - 1]
    cands.pop()
    weights.pop()
  return sorted(picked[:num_proposers], key=address_key), picked[num_proposers:]
