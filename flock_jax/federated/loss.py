"""Masked next-token cross-entropy of a LoRA-adapted Llama, from hidden states.

A batch is a dict of int arrays, each [B, T]:

  tokens       token ids
  loss_mask    1 where the token is a training target (the assistant's reply)
  segment_ids  packed-sequence ids, 0 = padding
  positions    rope positions (restart at 0 in each segment)

Next-token: position t predicts tokens[t+1], weighted by loss_mask[t+1]
(and never across a segment boundary or into padding). The loss is the mean
over weighted targets. Gradients flow to the adapter tree only: the frozen
base is a plain, non-differentiated argument, so no lm-head or embedding
gradient is ever formed.

`chunk_size` computes the lm head and log-softmax over sequence chunks of
that length under `jax.checkpoint`, so [B, T, V] float32 logits are never all
alive at once (Llama 3 has V = 128,256); only [B, chunk, V] is, forward and
backward.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from flock_jax.model.config import LlamaConfig
from flock_jax.model.layers import dense
from flock_jax.model.llama import Params, hidden_states, lm_head
from flock_jax.model.lora import LoraConfig

Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def next_token_targets(batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(targets [B, T] int32, weights [B, T] float32): position t predicts token t+1.

  The last position has weight 0; so does a target in another segment or padding.
  """
  tokens, seg = batch["tokens"], batch["segment_ids"]
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  w = batch["loss_mask"][:, 1:].astype(jnp.float32) * same.astype(jnp.float32)
  weights = jnp.concatenate([w, jnp.zeros_like(w[:, :1])], axis=1)
  return targets.astype(jnp.int32), weights


def _nll_sum(hidden, w_head, targets, weights):
  """sum of weights * -log p(target): hidden [B, c, D], w_head [D, V] -> float32 scalar."""
  logits = dense(hidden, w_head, jnp.float32)  # its backward: dhidden in the compute dtype
  lse = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((lse - tgt) * weights)


def nll_from_hidden(
    params: Params, hidden, targets, weights, cfg: LlamaConfig, chunk_size: int | None = None
) -> jax.Array:
  """Weighted NLL sum (float32 scalar) of hidden [B, T, D] under the lm head."""
  w_head = lm_head(params, cfg)
  b, t, d = hidden.shape
  if not chunk_size or chunk_size >= t:
    return _nll_sum(hidden, w_head, targets, weights)
  n = -(-t // chunk_size)
  pad = n * chunk_size - t
  if pad:  # padded positions carry weight 0
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))

  def split(x):  # [B, n*c, ...] -> [n, B, c, ...]
    return jnp.moveaxis(x.reshape((b, n, chunk_size) + x.shape[2:]), 1, 0)

  # Recompute each chunk's logits in the backward pass instead of storing them.
  chunk = jax.checkpoint(lambda xs: _nll_sum(xs[0], w_head, xs[1], xs[2]))
  return jnp.sum(jax.lax.map(chunk, (split(hidden), split(targets), split(weights))))


def token_loss_sums(
    params: Params,
    lora,
    batch: Batch,
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    *,
    dropout_key=None,
    chunk_size: int | None = None,
):
  """(weighted NLL sum, number of weighted targets), both float32 scalars."""
  hidden = hidden_states(
      params,
      batch["tokens"],
      cfg,
      lora=lora,
      lora_cfg=lcfg,
      segment_ids=batch["segment_ids"],
      positions=batch["positions"],
      dropout_key=dropout_key,
  )
  targets, weights = next_token_targets(batch)
  return nll_from_hidden(params, hidden, targets, weights, cfg, chunk_size), jnp.sum(weights)


def token_loss(
    params: Params,
    lora,
    batch: Batch,
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    *,
    dropout_key=None,
    chunk_size: int | None = None,
) -> jax.Array:
  """Mean masked next-token cross-entropy (float32 scalar; 0 if nothing is masked in)."""
  total, count = token_loss_sums(
      params, lora, batch, cfg, lcfg, dropout_key=dropout_key, chunk_size=chunk_size
  )
  return total / jnp.maximum(count, 1.0)
