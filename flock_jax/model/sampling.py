"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Shape letters: B batch, V vocabulary, K candidates kept by top-k / top-p.
The order of the filters is Hugging Face's (temperature, then top-k, then
top-p over the renormalised top-k), so a setting means what it means there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen; hashable, so it is a static argument of jit.

  temperature 0 is greedy (argmax; top_k/top_p are then ignored). top_k keeps
  the k most likely tokens; top_p keeps the smallest set of most likely tokens
  whose probability reaches p (the most likely token is always kept).
  """

  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    if not self.temperature >= 0.0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 1):
      raise ValueError(f"top_k must be a positive integer or None, got {self.top_k}")
    if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  def mode(self) -> "SamplingMode":
    """The part that shapes the compiled program (temperature and top_p values do not)."""
    return SamplingMode(
        self.greedy, None if self.greedy else self.top_k, not self.greedy and self.top_p is not None
    )

  def values(self):
    """(temperature, top_p) as float32 scalars: traced, so changing them never recompiles."""
    t = 1.0 if self.greedy else self.temperature
    return jnp.float32(t), jnp.float32(1.0 if self.top_p is None else self.top_p)


@dataclasses.dataclass(frozen=True)
class SamplingMode:
  """Static sampling structure: greedy or not, top-k size, whether a nucleus cut is applied."""

  greedy: bool = True
  top_k: int | None = None
  nucleus: bool = False


def candidates_with(logits, mode: SamplingMode, temperature, top_p):
  """Tempered, filtered candidate logits [B, K] (-inf where cut by top-p) and their ids [B, K].

  Without top-k or top-p, K = V and the ids are the identity (no sort is paid).
  """
  b, v = logits.shape
  scaled = logits.astype(jnp.float32) / temperature
  if mode.top_k is None and not mode.nucleus:
    return scaled, jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, v))
  k = v if mode.top_k is None else min(int(mode.top_k), v)
  vals, ids = jax.lax.top_k(scaled, k)  # sorted, most likely first
  if mode.nucleus:
    probs = jax.nn.softmax(vals, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    vals = jnp.where(mass_before < top_p, vals, -jnp.inf)
  return vals, ids.astype(jnp.int32)


def sample_with(logits, key, mode: SamplingMode, temperature, top_p):
  """Next tokens [B] int32 for logits [B, V]; `key` is used only when sampling."""
  if mode.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  vals, ids = candidates_with(logits, mode, temperature, top_p)
  choice = jax.random.categorical(key, vals, axis=-1)
  return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]


def candidates(logits, sampling: Sampling):
  """`candidates_with` for a (non-greedy) Sampling."""
  return candidates_with(logits, sampling.mode(), *sampling.values())


def sample(logits, key, sampling: Sampling):
  """Next tokens [B] int32 for logits [B, V] under `sampling`."""
  return sample_with(logits, key, sampling.mode(), *sampling.values())
