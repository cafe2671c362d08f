"""Voters that screen proposals before scoring them (a FLock-round defence, config
federation.screen). Every honest voter sees the same proposals, so every honest voter flags
the same ones; a flagged proposal gets a reject bit (per-proposal mode), and a candidate that
contains one is rejected (whole mode). Tests as in FLAME (Nguyen et al. 2022): an update's
norm against the round's median norm, and its direction against the other updates'.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from flock_jax.pytree import PyTree


def _flat(tree: PyTree) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def screen_flags(
    updates: Sequence[PyTree], mode: str, norm_factor: float, min_cosine: float
) -> np.ndarray:
  """flags [P] bool: True for a proposal the screen rejects.

  mode 'norm': ||Δ_i|| > norm_factor * median_k ||Δ_k||; 'cosine': the median of cos(Δ_i, Δ_k)
  over the other proposals k < min_cosine (a robust majority direction; never with fewer than
  2 proposals, nor for an all-zero update); 'both': either; 'none': nothing flagged.
  """
  p = len(updates)
  flags = np.zeros(p, bool)
  if mode == "none" or p == 0:
    return flags
  mat = np.stack([_flat(u) for u in updates])  # [P, D]
  norms = np.linalg.norm(mat, axis=1)
  if mode in ("norm", "both"):
    flags |= norms > norm_factor * np.median(norms)
  if mode in ("cosine", "both") and p >= 2:
    unit = mat / np.maximum(norms, 1e-30)[:, None]
    cos = unit @ unit.T  # [P, P]
    for i in range(p):
      others = np.delete(cos[i], i)
      if norms[i] > 0:
        flags[i] |= float(np.median(others)) < min_cosine
  return flags


def screened(honest: np.ndarray, flags: np.ndarray, per_proposal: bool) -> np.ndarray:
  """Honest ballots [V] (whole) or [V, P'] (per proposal) after the screen's flags [P']."""
  honest = np.asarray(honest, bool)
  if not flags.any():
    return honest
  if per_proposal:
    return honest & ~flags[None, :]
  return np.zeros_like(honest)
