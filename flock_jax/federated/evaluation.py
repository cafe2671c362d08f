"""Held-out loss of M candidate adapters for V voters at once (PROTOCOL.md step 3).

  heldout_loss(base, adapters {leaf: [M, ...]}, batches {key: [V, n, B, T]}) -> [V, M]

Voter j scores every candidate on its own private held-out batches: entry
[j, m] is the token-weighted mean next-token loss of adapter m over voter j's
n batches. M = 2 in whole-candidate mode (G_r and C_r), 1 + P per proposal
(G_r and each G_r + Δ_i). Voters and candidates are vmapped; the n batches
of one voter are scanned, so only one [B, T] batch per (voter, candidate) is
in flight.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from flock_jax.federated.loss import target_capacity, token_loss_sums, with_target_capacity
from flock_jax.model.config import LlamaConfig
from flock_jax.model.lora import LoraConfig
from flock_jax.sharding import clients_axis_for


def _one(base, lora, batches, *, cfg, lcfg, chunk_size, target_fraction=None):
  """Token-weighted mean loss of one adapter over batches {key: [n, B, T]} (float32 scalar)."""
  capacity = target_capacity(target_fraction, *batches["tokens"].shape[-2:])

  def body(acc, batch):
    s, c = token_loss_sums(base, lora, batch, cfg, lcfg, chunk_size=chunk_size, capacity=capacity)
    return (acc[0] + s, acc[1] + c), None

  (total, count), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), batches)
  return total / jnp.maximum(count, 1.0)


# Bytes of float32 logits a block of the scoring lm head may hold on the CPU (about 256
# tokens of SmolLM2's 49,152-word vocabulary): the block's logits are reduced while still in
# cache. The whole [tokens, V] array went to memory and back twice; a bf16 SmolLM2 scoring
# call on 2 CPU devices took 11% less time in blocks (in-process A/B: 0.953 -> 0.842 s).
# With the head in vocabulary slices (llama.head_slices) each slice's logits are an eighth
# of that: 48 MiB against 24 took 3% less (bf16; float32 the same), 96 MiB 5-8% more.
CPU_SCORE_BLOCK_BYTES = 48 << 20


def cpu_score_chunk(cfg: LlamaConfig, rows: int, seq_len: int) -> int | None:
  """Sequence chunk for the scoring loss on the CPU: `rows` [B]-rows of the program are in
  flight at once (voters x candidates x B on one device), so a chunk of c positions is a
  [rows * c, V] block of logits. None where one block holds the whole sequence (small
  vocabularies, the tiny models)."""
  tokens = max(1, CPU_SCORE_BLOCK_BYTES // (4 * cfg.vocab_size))
  c = max(1, tokens // max(rows, 1))
  return c if c < seq_len else None


def make_heldout_loss(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    *,
    chunk_size: int | None = None,
    target_fraction: float | None = None,
) -> Callable:
  """jitted heldout_loss(base, adapters [M, ...], batches [V, n, B, T]) -> float32 [V, M].

  chunk_size: sequence chunk of the lm-head loss (config.model.loss_chunk); None computes
  the whole sequence at once, except on the CPU, where blocks of `cpu_score_chunk` are
  faster (forward only: nothing is recomputed). target_fraction: the lm head at the
  targets only, as in clients.make_local_train."""
  full = jax.jit(_heldout_loss_fn(cfg, lcfg, chunk_size, None))
  if target_fraction is None:
    return full
  capped = jax.jit(_heldout_loss_fn(cfg, lcfg, chunk_size, target_fraction))
  return with_target_capacity(capped, full, target_fraction, batch_arg=2)


def _heldout_loss_fn(cfg, lcfg, chunk_size, target_fraction) -> Callable:
  def heldout_loss(base, adapters, batches):
    # Under a mesh, the voters (or, when the clients axis does not divide V, the
    # candidates) are split over the clients' devices.
    v, m = jax.tree.leaves(batches)[0].shape[0], jax.tree.leaves(adapters)[0].shape[0]
    by_voter = clients_axis_for(v)
    by_candidate = None if by_voter else clients_axis_for(m)
    chunk = chunk_size
    if chunk is None and jax.default_backend() == "cpu":
      split = jax.sharding.get_abstract_mesh().shape["clients"] if by_voter or by_candidate else 1
      b, t = batches["tokens"].shape[-2:]
      chunk = cpu_score_chunk(cfg, v * m * b // split, t)
    one = functools.partial(
        _one, cfg=cfg, lcfg=lcfg, chunk_size=chunk, target_fraction=target_fraction
    )
    per_candidate = jax.vmap(one, in_axes=(None, 0, None), spmd_axis_name=by_candidate)
    out = jax.vmap(per_candidate, in_axes=(None, None, 0), spmd_axis_name=by_voter)(
        base, adapters, batches
    )
    # [V, M] back on every device: every host reads the whole matrix (votes, reports).
    return out if not (by_voter or by_candidate) else jax.lax.with_sharding_constraint(out, P())

  return heldout_loss


def heldout_loss_loop(
    cfg: LlamaConfig, lcfg: LoraConfig, base, adapters, batches, chunk_size: int | None = None
) -> jax.Array:
  """Reference: the same [V, M] matrix with a Python loop over voters and candidates."""
  one = jax.jit(functools.partial(_one, cfg=cfg, lcfg=lcfg, chunk_size=chunk_size))
  v = batches["tokens"].shape[0]
  m = jax.tree.leaves(adapters)[0].shape[0]
  rows = []
  for j in range(v):
    bj = jax.tree.map(lambda x: x[j], batches)
    rows.append([one(base, jax.tree.map(lambda x: x[i], adapters), bj) for i in range(m)])
  return jnp.asarray(rows)
