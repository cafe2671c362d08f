"""Off-chain side of aggregation and voting (PROTOCOL.md steps 3-5 and per-proposal voting).

- `candidate_order`: proposals in ascending order of proposer address.
- `build_candidate`: ``C = G + mean of (accepted) Δ_i``, summed in that order so
  that every honest voter gets bit-identical bytes (and so ``candidateHash``).
- `gains` / `approve`: ``gain_j = L_j(G) - L_j(C)``, approve iff ``gain_j >= tau``.
- `tally`: ``S = sum_j s_j (+1 | -1)``, accept iff ``S >= 0`` (ties accept), in
  exact integer arithmetic like the contract (stakes are token base units and
  may exceed 2^63).
- Per-proposal mode: `per_proposal_gains`, `per_proposal_tally`, and the vote
  bitmask `bits_to_int` / `int_to_bits` (bit i = proposal i in canonical order).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax.federated import hashing
from flock_jax.pytree import PyTree

Address = Union[str, bytes, int]


def address_int(address: Address) -> int:
  """An Ethereum address as an integer: hex text (``0x`` optional, any case), 20 raw bytes, or an int."""
  if isinstance(address, int):
    return address
  if isinstance(address, (bytes, bytearray)):
    return int.from_bytes(address, "big")
  try:
    return int(address, 16)
  except (TypeError, ValueError) as e:
    raise ValueError(f"not a hex address: {address!r}") from e


def candidate_order(proposer_addresses: Sequence[Address]) -> np.ndarray:
  """Permutation ``order`` (int64[P]) with ``order[i]`` = input position of the
  i-th proposal in canonical order: ascending address as an integer
  (case-insensitive hex). Duplicate addresses raise ValueError.
  """
  keys = [address_int(a) for a in proposer_addresses]
  if len(set(keys)) != len(keys):
    raise ValueError("duplicate proposer addresses: one proposal per proposer per round")
  return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def build_candidate(
    global_adapter: PyTree,
    stacked_deltas: PyTree,
    order: Sequence[int],
    accepted_mask: Optional[Sequence[bool]] = None,
    divisor: Optional[int] = None,
) -> PyTree:
  """``C = G + (1/m) sum_{i in A} Δ_i`` in float32, bit-reproducible.

  Args:
    global_adapter: ``G`` (any real dtype; computed in float32).
    stacked_deltas: the proposals, leading axis K in *input* order.
    order: `candidate_order` of the proposers (a permutation of range(K)).
    accepted_mask: bool[K] in input order (per-proposal mode); None = all.
    divisor: m; None = the number accepted (the mean of the accepted). Per-proposal mode
      with federation.per_proposal_mean='valid' passes K: a rejected proposal counts as a
      zero update, so one accepted alone moves G by Δ_i / K, not Δ_i.

  Exact arithmetic, so other implementations can reproduce the bytes: per
  coordinate, in IEEE float32 with round-to-nearest, ``acc = 0``; for each
  accepted proposal in canonical order ``acc = acc + Δ_i``; then
  ``mean = acc / float32(m)`` (a true division) and ``C = G + mean``. If no
  proposal is accepted, ``C = G``. Computed with numpy on the host (no XLA
  rewrites), returned as float32 ``jnp`` arrays.
  """
  leaves_d, treedef = jax.tree.flatten(stacked_deltas)
  leaves_g = treedef.flatten_up_to(global_adapter)
  k = np.shape(leaves_d[0])[0] if leaves_d else 0
  order = [int(i) for i in order]
  if sorted(order) != list(range(k)):
    raise ValueError(f"order must be a permutation of range({k}), got {order}")
  mask = np.ones(k, bool) if accepted_mask is None else np.asarray(accepted_mask, bool)
  if mask.shape != (k,):
    raise ValueError(f"accepted_mask needs shape ({k},), got {mask.shape}")
  chosen = [i for i in order if mask[i]]
  m = len(chosen) if divisor is None else int(divisor)
  if chosen and m < len(chosen):
    raise ValueError(f"divisor {m} is below the {len(chosen)} proposals it averages")
  out = []
  for g, d in zip(leaves_g, leaves_d):
    g32 = np.asarray(jax.device_get(g), np.float32)
    d32 = np.asarray(jax.device_get(d), np.float32)
    if d32.shape[1:] != g32.shape:
      raise ValueError(
          f"delta leaf shape {d32.shape[1:]} does not match the global leaf {g32.shape}"
      )
    if chosen:
      acc = np.zeros_like(g32)
      for i in chosen:
        acc = acc + d32[i]
      c = g32 + acc / np.float32(m)
    else:
      c = g32.copy()
    out.append(jnp.asarray(c, jnp.float32))
  return jax.tree.unflatten(treedef, out)


def _xp(*xs):
  return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def gains(loss_global: Any, loss_candidate: Any) -> Any:
  """``gain[V] = L(G) - L(C)``: positive when the candidate lowers the held-out loss."""
  xp = _xp(loss_global, loss_candidate)
  return xp.asarray(loss_global) - xp.asarray(loss_candidate)


def approve(gain: Any, tau: float = 0.0) -> Any:
  """Approve iff ``gain >= tau`` (elementwise; PROTOCOL.md default tau = 0)."""
  xp = _xp(gain)
  return xp.asarray(gain) >= tau


def _int_stakes(stakes: Sequence[Any]) -> list[int]:
  out = [int(s) for s in (stakes.tolist() if hasattr(stakes, "tolist") else stakes)]
  if any(s < 0 for s in out):
    raise ValueError("stakes cannot be negative")
  return out


def tally(
    approvals: Sequence[bool], stakes: Sequence[Any], voted: Optional[Sequence[bool]] = None
) -> tuple[int, bool]:
  """``S = sum_j s_j * (+1 if approve else -1)`` over voters who voted; ``accepted = S >= 0``.

  Exact integers (stakes in token base units). ``voted[V]`` (default all)
  leaves out voters who did not vote; with no votes at all S = 0 and the
  candidate is accepted (ties accept).
  """
  a = np.asarray(approvals, bool).reshape(-1)
  s = _int_stakes(stakes)
  v = np.ones(len(s), bool) if voted is None else np.asarray(voted, bool).reshape(-1)
  if not (len(a) == len(s) == len(v)):
    raise ValueError(
        f"approvals ({len(a)}), stakes ({len(s)}) and voted ({len(v)}) need one entry per voter"
    )
  total = sum((sj if aj else -sj) for aj, sj, vj in zip(a, s, v) if vj)
  return total, total >= 0


def per_proposal_gains(loss_global: Any, loss_each: Any) -> Any:
  """``gain[V, P] = L_j(G) - L_j(G + Δ_i)`` from ``loss_global[V]`` and ``loss_each[V, P]``."""
  xp = _xp(loss_global, loss_each)
  return xp.asarray(loss_global)[:, None] - xp.asarray(loss_each)


def per_proposal_tally(
    approvals: Any, stakes: Sequence[Any], voted: Optional[Sequence[bool]] = None
) -> tuple[list[int], np.ndarray]:
  """Stake-weighted tally of each proposal on its own: ``approvals[V, P]`` ->
  (``S[P]`` as Python ints, ``accepted`` bool[P] with ``S >= 0``)."""
  a = np.asarray(approvals, bool)
  if a.ndim != 2:
    raise ValueError(f"approvals needs shape (V, P), got {a.shape}")
  results = [tally(a[:, i], stakes, voted) for i in range(a.shape[1])]
  return [r[0] for r in results], np.asarray([r[1] for r in results], bool)


def bits_to_int(approvals: Sequence[bool]) -> int:
  """Vote bitmask: ``sum_i approvals[i] << i`` (bit i = proposal i in canonical order)."""
  return sum(1 << i for i, b in enumerate(np.asarray(approvals, bool).reshape(-1)) if b)


def int_to_bits(mask: int, num_proposals: int) -> np.ndarray:
  """Inverse of `bits_to_int`: bool[num_proposals]. Raises if ``mask`` has bits at or above P."""
  mask = int(mask)
  if mask < 0 or mask >> num_proposals:
    raise ValueError(f"vote bitmask {mask:#x} does not fit {num_proposals} proposals")
  return np.asarray([(mask >> i) & 1 == 1 for i in range(num_proposals)], bool)


def candidate_bytes(global_bytes: bytes, delta_bytes: Sequence[bytes]) -> bytes:
  """Canonical bytes of G + mean(Δ) from canonical bytes, deltas in canonical order
  (empty `global_bytes`: G = 0, as for a task created with a zero genesis hash).

  The audit (flock_jax.chain.audit) uses it to check a stored candidate
  against the stored proposals, without trusting anything the run computed.
  """
  trees = [hashing.tree_from_canonical_bytes(b) for b in delta_bytes]
  # no stored global adapter (a zero genesis hash): G_0 is zero, shaped like the proposals
  G = (
      hashing.tree_from_canonical_bytes(global_bytes)
      if global_bytes
      else jax.tree.map(np.zeros_like, trees[0])
  )
  deltas = jax.tree.map(lambda *xs: np.stack(xs), *trees)
  return hashing.canonical_bytes(build_candidate(G, deltas, np.arange(len(delta_bytes))))
