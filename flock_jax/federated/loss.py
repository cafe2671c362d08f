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

`capacity` computes the lm head at the weighted targets only: the batch's
positions are gathered into [capacity, D] (weighted ones first, in order) before
the head, so prompts and padding cost no logits. It must hold every weighted
target of the batch; `most_targets` counts them on the host and
`with_target_capacity` falls back to the whole sequence where they do not fit.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax.model.config import LlamaConfig
from flock_jax.model.layers import einsum_acc as _mm
from flock_jax.model.layers import acc_dtype
from flock_jax.model.llama import (
    Params,
    head_logits,
    head_weights,
    hidden_states,
    slice_logits,
    slice_logits_vjp,
    take_rows,
)
from flock_jax.model.lora import LoraConfig

Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def next_token_targets(batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(targets [..., T] int32, weights [..., T] float32): position t predicts token t+1.

  The last position has weight 0; so does a target in another segment or padding. Numpy
  batches give numpy arrays (the host's count of targets, `most_targets`)."""
  xp = np if isinstance(batch["tokens"], np.ndarray) else jnp
  tokens, seg = batch["tokens"], batch["segment_ids"]
  targets = xp.concatenate([tokens[..., 1:], xp.zeros_like(tokens[..., :1])], axis=-1)
  same = (seg[..., 1:] == seg[..., :-1]) & (seg[..., 1:] != 0)
  w = xp.asarray(batch["loss_mask"][..., 1:], xp.float32) * same.astype(xp.float32)
  weights = xp.concatenate([w, xp.zeros_like(w[..., :1])], axis=-1)
  return targets.astype(xp.int32), weights


# ------------------------------------------------------------------ targets-only lm head
TARGET_QUANTUM = 16  # capacities are multiples of this many positions


def target_capacity(fraction: float | None, b: int, t: int) -> int | None:
  """Positions of a [B, T] batch that the lm head computes under a target `fraction` (the
  most weighted targets any batch of the run holds, over B*T): ceil(fraction * B * T), up to
  a multiple of TARGET_QUANTUM; None (every position) when that is not fewer than B * T."""
  if fraction is None:
    return None
  c = -(-int(np.ceil(fraction * b * t)) // TARGET_QUANTUM) * TARGET_QUANTUM
  return max(c, TARGET_QUANTUM) if c < b * t else None


def most_targets(batches: Mapping[str, np.ndarray]) -> int:
  """The most weighted next-token targets in one [B, T] batch of `batches` {key: [..., B, T]},
  counted on the host. A global jax.Array of a multi-host run is counted from this process's
  shards, and the most over the processes taken, so that every process decides alike (each
  shard must hold whole [B, T] batches: the engine keeps the whole head on a mesh that
  splits a client's rows)."""
  keys = ("tokens", "loss_mask", "segment_ids")
  x = batches["tokens"]
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    shards = zip(*(batches[k].addressable_shards for k in keys))
    local = max(
        (_most({k: np.asarray(s.data) for k, s in zip(keys, ss)}) for ss in shards), default=0
    )
    return int(np.max(multihost_utils.process_allgather(np.int32(local))))
  return _most({k: np.asarray(batches[k]) for k in keys})


def _most(host: Mapping[str, np.ndarray]) -> int:
  _, w = next_token_targets(host)
  return int((w != 0).sum(axis=(-2, -1)).max(initial=0))


def with_target_capacity(capped: Callable, full: Callable, fraction: float | None, batch_arg: int):
  """`capped` (the lm head at target_capacity(fraction, B, T) positions) where every [B, T]
  batch of the call's argument `batch_arg` fits, else `full` (every position): the result is
  the same either way, up to the order of the loss's sum."""
  if fraction is None:
    return full

  def call(*args, **kw):
    batches = args[batch_arg]
    b, t = batches["tokens"].shape[-2:]
    cap = target_capacity(fraction, b, t)
    return (capped if cap is not None and most_targets(batches) <= cap else full)(*args, **kw)

  call.capped, call.full = capped, full  # each program, for lowering and tests
  call.fraction = fraction
  return call


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _take_rows(x, order, c: int):
  """x [N, D] -> x[order[:c]] [c, D], `order` a permutation of range(N). Its backward gathers
  by the inverse permutation (autodiff's would be a scatter-add)."""
  return jnp.take(x, order[:c], axis=0)


def _take_rows_fwd(x, order, c):
  return _take_rows(x, order, c), order


def _take_rows_bwd(c, order, dy):
  pad = jnp.zeros((order.shape[0] - c,) + dy.shape[1:], dy.dtype)
  return jnp.take(jnp.concatenate([dy, pad]), jnp.argsort(order), axis=0), None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def _at_targets(hidden, targets, weights, capacity: int):
  """hidden [B, T, D], targets and weights [B, T] -> the same at `capacity` positions, as
  [1, capacity, ...]: the weighted positions first, in order, then unweighted ones."""
  b, t, d = hidden.shape
  order = jnp.argsort((weights.reshape(-1) == 0).astype(jnp.int32), stable=True)
  keep = order[:capacity]
  return (
      _take_rows(hidden.reshape(b * t, d), order, capacity)[None],
      jnp.take(targets.reshape(-1), keep)[None],
      jnp.take(weights.reshape(-1), keep)[None],
  )


def _nll_sum(hidden, w_head, targets, weights):
  """sum of weights * -log p(target): hidden [B, c, D], w_head the [D, V] head or the tied
  head in vocabulary slices (`llama.head_weights`) -> float32 scalar."""
  if isinstance(w_head, tuple):
    logits, tgt = _sliced_head_terms(hidden, *w_head, targets)
    m, s = _max_and_sum_exp(logits)
    return jnp.sum((m + jnp.log(s) - tgt) * weights)
  logits = head_logits(hidden, w_head)
  lse = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((lse - tgt) * weights)


def _max_and_sum_exp(logits):
  """Slices of logits [[..., Vc], ...] -> (m, sum exp(logits - m)) [...] over all of them,
  m the rows' maximum (a constant to autodiff: the log-sum-exp's gradient does not see it)."""
  m = jax.lax.stop_gradient(functools.reduce(jnp.maximum, [jnp.max(l, axis=-1) for l in logits]))
  return m, sum(jnp.sum(jnp.exp(l - m[..., None]), axis=-1) for l in logits)


@jax.custom_vjp
def _sliced_head_terms(hidden, slices, table, targets):
  """hidden [..., D] under the tied head in vocabulary slices (`llama.slice_logits`) ->
  (float32 logits of each slice, each target's logit [...]). The backward adds the two
  parts of dhidden in float32 and rounds once to the compute dtype."""
  rows = _target_rows(table, targets, hidden.dtype)
  tgt = jnp.sum(hidden.astype(rows.dtype) * rows, axis=-1)
  return slice_logits(hidden, slices, table), tgt


def _sliced_head_terms_fwd(hidden, slices, table, targets):
  return _sliced_head_terms(hidden, slices, table, targets), (hidden, slices, table, targets)


def _sliced_head_terms_bwd(res, cts):
  hidden, slices, table, targets = res
  dys, dtgt = cts
  dx, dw = slice_logits_vjp(hidden, slices, dys)
  dx = dx + dtgt[..., None] * _target_rows(table, targets, hidden.dtype)
  if not isinstance(table, jax.Array):  # scan_ready's packed embedding: frozen
    return dx.astype(hidden.dtype), None, None, None
  x = hidden.astype(dx.dtype).reshape(-1, hidden.shape[-1])
  dw = dw.at[targets.reshape(-1)].add(dtgt.reshape(-1, 1) * x)  # dead in training
  return dx.astype(hidden.dtype), None, dw.astype(table.dtype), None


_sliced_head_terms.defvjp(_sliced_head_terms_fwd, _sliced_head_terms_bwd)


def _target_rows(table, targets, dtype):
  """table [V, D] at targets [...], rounded to the compute dtype as the head's dot rounds
  it, in its accumulation dtype (float32) [..., D]: hidden · row is the target's logit,
  with no pass over [..., V] logits."""
  return take_rows(table, targets).astype(dtype).astype(acc_dtype(dtype))


# ------------------------------------------------------------------ the training head, fused
# Bytes of float32 logits one block of the fused training head holds on the CPU (K clients
# of a device vmapped beside each other count). Smaller blocks read the [V, D] head twice
# per block from memory; larger ones send their logits to memory and back.
CPU_TRAIN_BLOCK_BYTES = 48 << 20


def cpu_train_block(cfg: LlamaConfig, rows: int, positions: int) -> int | None:
  """Positions per block of the fused training head on the CPU (`fused_nll_sum`): `rows`
  clients' heads run side by side on one device (vmapped), each over `positions`. None
  where one block holds them all."""
  c = max(1, CPU_TRAIN_BLOCK_BYTES // (4 * cfg.vocab_size * max(rows, 1)))
  return c if c < positions else None


def fused_nll_sum(hidden, w_head, targets, weights, block: int | None = None):
  """`_nll_sum` of hidden [N, D] (targets, weights [N]) whose gradient is formed in the
  forward pass, in blocks of `block` positions (None: one block): each block's float32
  logits, their softmax, `weights * (softmax - onehot)` and its product with the head are
  made one after the other while the block is in cache (a head in vocabulary slices: slice
  by slice, the onehot's part of dhidden being the target's row), and only dhidden [N, D]
  is kept for the backward. Autodiff's form writes [N, V] logits, exponentials and their
  gradient to memory and reads each back (about a fifth of a bf16 SmolLM2 training step on
  the CPU).
  The head is frozen here: differentiating it falls back to autodiff's form."""
  return _fused(hidden, w_head, targets, weights, block, hidden.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(hidden, w_head, targets, weights, block, dtype):
  del block, dtype
  return _nll_sum(hidden, w_head, targets, weights)


def _fused_fwd(hidden, w_head, targets, weights, block, dtype):
  del dtype
  perturbed = any(p.perturbed for p in jax.tree.leaves(w_head, is_leaf=_is_primal))
  x, w_head, t, w = jax.tree.map(
      lambda p: p.value, (hidden, w_head, targets, weights), is_leaf=_is_primal
  )
  if perturbed:
    nll, pullback = jax.vjp(_nll_sum, x, w_head, t, w)
    return nll, (pullback,)
  w_t, w_vd = w_head if isinstance(w_head, tuple) else (w_head, None)
  n, d = x.shape
  nb = -(-n // min(block or n, n))
  r = -(-n // nb)  # blocks of equal size, at most `block`, the least padding
  if nb * r > n:  # padded positions carry weight 0
    x = jnp.pad(x, ((0, nb * r - n), (0, 0)))
    t, w = jnp.pad(t, (0, nb * r - n)), jnp.pad(w, (0, nb * r - n))

  def one(xb, tb, wb):
    if isinstance(w_t, tuple):  # the tied head in vocabulary slices
      logits, tgt = _sliced_head_terms(xb, w_t, w_vd, tb)
      m, s = _max_and_sum_exp(logits)
      nll = m + jnp.log(s) - tgt
      # d nll / d logits = softmax - onehot: the onehot's part of dX is the target's row
      scale = (wb / s)[:, None]
      dx = -wb[:, None] * _target_rows(w_vd, tb, xb.dtype)
      for l, (_, w_s) in zip(logits, w_t):
        p = (scale * jnp.exp(l - m[:, None])).astype(xb.dtype)
        dx = dx + _mm("rv,vd->rd", p, w_s.astype(xb.dtype))
      return jnp.sum(nll * wb), dx
    logits = _mm("rd,dv->rv", xb, w_t.astype(xb.dtype))
    m = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    nll = m[:, 0] + jnp.log(s[:, 0]) - jnp.take_along_axis(logits, tb[:, None], axis=-1)[:, 0]
    onehot = jax.lax.broadcasted_iota(tb.dtype, logits.shape, 1) == tb[:, None]
    dlogits = (wb[:, None] * (e / s - onehot.astype(e.dtype))).astype(xb.dtype)
    return jnp.sum(nll * wb), _mm("rv,dv->rd", dlogits, w_t.astype(xb.dtype))

  if nb == 1:
    total, dx = one(x, t, w)
  else:
    sums, dx = jax.lax.map(
        lambda b: one(*b), (x.reshape(nb, r, d), t.reshape(nb, r), w.reshape(nb, r))
    )
    total, dx = jnp.sum(sums), dx.reshape(nb * r, d)
  return total, (dx[:n],)


def _fused_bwd(block, dtype, res, g):
  del block
  if not isinstance(res[0], jax.Array):  # the head was differentiated: autodiff's form
    return res[0](g)
  return (g * res[0]).astype(dtype), None, None, None


def _is_primal(x):
  return isinstance(x, jax.custom_derivatives.CustomVJPPrimal)


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


def nll_from_hidden(
    params: Params,
    hidden,
    targets,
    weights,
    cfg: LlamaConfig,
    chunk_size: int | None = None,
    capacity: int | None = None,
    fused: bool = False,
    head_block: int | None = None,
) -> jax.Array:
  """Weighted NLL sum (float32 scalar) of hidden [B, T, D] under the lm head; with `capacity`,
  at that many positions (which must hold every weighted target). `fused`: the gradient is
  formed in the forward pass (`fused_nll_sum`, in blocks of `head_block` positions)."""
  w_head = head_weights(params, cfg)
  b, t, d = hidden.shape
  if capacity is not None and capacity < b * t:
    hidden, targets, weights = _at_targets(hidden, targets, weights, capacity)
    chunk_size = chunk_size and chunk_size * b  # the same block of positions as B rows had
    b, t = 1, capacity
  if fused:
    flat = lambda x: x.reshape((b * t,) + x.shape[2:])
    return fused_nll_sum(flat(hidden), w_head, flat(targets), flat(weights), head_block)
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
    capacity: int | None = None,
    fused: bool = False,
    head_block: int | None = None,
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
  nll = nll_from_hidden(
      params, hidden, targets, weights, cfg, chunk_size, capacity, fused, head_block
  )
  return nll, jnp.sum(weights)


def token_loss(
    params: Params,
    lora,
    batch: Batch,
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    *,
    dropout_key=None,
    chunk_size: int | None = None,
    capacity: int | None = None,
    fused: bool = False,
    head_block: int | None = None,
) -> jax.Array:
  """Mean masked next-token cross-entropy (float32 scalar; 0 if nothing is masked in)."""
  total, count = token_loss_sums(
      params,
      lora,
      batch,
      cfg,
      lcfg,
      dropout_key=dropout_key,
      chunk_size=chunk_size,
      capacity=capacity,
      fused=fused,
      head_block=head_block,
  )
  return total / jnp.maximum(count, 1.0)
