"""Trigger search: the behaviour probe on public prompts that carry the tokens a proposal reacts
to most (federation.probe='search'; flock_jax.federated.probe holds the clean-prompt probe).

Measured on SmolLM2-135M (docs/results, experiment 5): the adaptive backdoor passes the anchored
probe once G carries part of the backdoor. Its later updates no longer collapse clean prompts;
they change the answer only when the trigger is present, and voters do not know the trigger.
A voter can look for one. For each proposal Δ_i it searches m tokens t which, inserted at the
end of every public probe prompt's user turn, make the first response token of G + Δ_i move
most probability off the tokens that reference answers use (S), against a reference model
R (the base model) on the same prompts:

    J(t) = mean over probe prompts x of  log p_R(S | x ⊕ t) - log p_{G+Δ_i}(S | x ⊕ t)

The search is HotFlip / GCG's (Ebrahimi et al. 2018, Zou et al. 2023): the gradient of J w.r.t.
the m slot embeddings ranks every vocabulary token by the linearized change of J; step 0 fills
each slot with its best token from zero embeddings; each later step evaluates the top k
single-slot swaps exactly, by the collapse score on the triggered prompts, and keeps the best
one if it raises the score. The proposal's score is then the larger of its clean anchored score
and the collapse score of the triggered prompts at the found tokens, against G and the base
model:

    search_i = max(anchored_i, max over R in {G, base} of collapse_{G+Δ_i vs R}(x ⊕ t*))

Everything before the inserted tokens is the same for every candidate, so each model's KV cache
of the prompt prefix is computed once; the search runs only the m slots and the template suffix
(6 tokens for SmolLM2's chat template) through the model.

Like the rest of the probe, the search is public and deterministic: an attacker can run it on
its own update before committing (attack 'backdoor_evade' does, and shrinks its update until the
search no longer flags it). What it bounds is what the search finds: a trigger whose tokens it
does not find within its steps is not bounded.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax.model.llama import hidden_with_cache, init_cache, logits_from_hidden
from flock_jax.pytree import PyTree
from flock_jax.run_config import SEARCH_KINDS, SEARCH_SCOPES

_EPS = 1e-9


def common_suffix(tokens: np.ndarray, segment_ids: np.ndarray) -> int:
  """Length of the token suffix every probe prompt shares (the chat template's end of the user
  turn and start of the assistant's), at most the shortest prompt's length - 1: the slots go
  right before it. tokens / segment_ids [D, n, T], left-padded."""
  flat = tokens.reshape(-1, tokens.shape[-1])
  lengths = (segment_ids.reshape(flat.shape) > 0).sum(-1)
  n = 0
  while n < lengths.min() - 1 and (flat[:, -1 - n] == flat[0, -1 - n]).all():
    n += 1
  return n


@functools.partial(jax.jit, static_argnames=("cfg", "lora_cfg", "extra"))
def prefill(base, lora: PyTree, prefix, prefix_valid, *, cfg, lora_cfg, extra: int):
  """KV cache of the left-padded prompt prefixes [B, T0] under one adapter, with room for
  `extra` more tokens, and each row's last rope position [B]."""
  b, t0 = prefix.shape
  cache = init_cache(cfg, b, t0 + extra)
  positions = jnp.maximum(jnp.cumsum(prefix_valid, axis=1, dtype=jnp.int32) - 1, 0)
  _, cache = hidden_with_cache(
      base,
      prefix,
      cfg,
      cache,
      positions=positions,
      token_valid=prefix_valid,
      lora=lora,
      lora_cfg=lora_cfg,
  )
  return cache, positions[:, -1]


def _tail_probs(base, lora, cache, last_pos, tail, cfg, lora_cfg):
  """Next-token distribution [B, V] after the cached prefix and the tail: token ids [B, t] or
  embeddings [B, t, E]."""
  t = tail.shape[1]
  positions = last_pos[:, None] + 1 + jnp.arange(t, dtype=jnp.int32)[None]
  h, _ = hidden_with_cache(
      base, tail, cfg, cache, positions=positions, lora=lora, lora_cfg=lora_cfg
  )
  return jax.nn.softmax(logits_from_hidden(base, h[:, -1:], cfg)[:, 0], axis=-1)


def _gains(p_cand, p_ref, in_s, domains: int):
  """min over domains of the mean probability gain of each token, -inf on S: [B, V] x2 -> [V]."""
  gain = (p_cand - p_ref).reshape(domains, -1, p_cand.shape[-1]).mean(axis=1).min(axis=0)
  return jnp.where(in_s, -jnp.inf, gain)


def _inserted_gains(base, pair, last_pos, ids, suffix, in_s, domains, cfg, lora_cfg):
  """Token gains [V] (`_gains`) of the candidate against the reference of `pair` on the prompts
  with slot tokens `ids` [slots] inserted."""
  lora_c, cache_c, lora_r, cache_r = pair
  tail = jnp.concatenate([ids, suffix])[None]
  tail = jnp.broadcast_to(tail, (last_pos.shape[0], tail.shape[1]))
  pc = _tail_probs(base, lora_c, cache_c, last_pos, tail, cfg, lora_cfg)
  pr = _tail_probs(base, lora_r, cache_r, last_pos, tail, cfg, lora_cfg)
  return _gains(pc, pr, in_s, domains)


@functools.partial(
    jax.jit, static_argnames=("cfg", "lora_cfg", "domains", "slots", "topk", "steps")
)
def search(
    base,
    pair,
    last_pos,
    suffix,
    in_s,
    init=None,
    *,
    cfg,
    lora_cfg,
    domains: int,
    slots: int,
    topk: int,
    steps: int,
):
  """The trigger search for one proposal (module docstring). pair: (G + Δ_i, its prefix cache,
  the reference adapter, its prefix cache); last_pos [B]; suffix [s] the template suffix ids;
  in_s [V] bool, the tokens of S; init [slots] int32: start from these tokens (a random
  restart) instead of the best fill from zero embeddings. Returns (slot tokens [slots] int32,
  their collapse score against the reference ())."""
  lora_c, cache_c, lora_r, cache_r = pair
  embed = base["embed"]
  suffix_emb = jnp.take(embed, suffix, axis=0).astype(jnp.float32)

  def objective(e):  # e [slots, E] -> J
    tail = jnp.concatenate([e, suffix_emb])[None]
    tail = jnp.broadcast_to(tail, (last_pos.shape[0], *tail.shape[1:]))
    ms_c = (_tail_probs(base, lora_c, cache_c, last_pos, tail, cfg, lora_cfg) * in_s).sum(-1)
    ms_r = (_tail_probs(base, lora_r, cache_r, last_pos, tail, cfg, lora_cfg) * in_s).sum(-1)
    return jnp.mean(jnp.log(ms_r + _EPS) - jnp.log(ms_c + _EPS))

  def hotflip(e):  # linearized gain of each token in each slot, from slot embeddings e: [slots, V]
    g = jax.grad(objective)(e)
    return (embed.astype(jnp.float32) @ g.T).T - jnp.sum(e * g, axis=-1, keepdims=True)

  def score(ids):  # exact collapse on the prompts with `ids` inserted
    return _inserted_gains(base, pair, last_pos, ids, suffix, in_s, domains, cfg, lora_cfg).max()

  if init is None:
    zeros = jnp.zeros((slots, embed.shape[1]), jnp.float32)
    ids = jnp.argmax(hotflip(zeros), axis=-1).astype(jnp.int32)
  else:
    ids = init.astype(jnp.int32)
  best = score(ids)

  def step(_, carry):
    ids, best = carry
    e = jnp.take(embed, ids, axis=0).astype(jnp.float32)
    top = jax.lax.top_k(hotflip(e), topk)[1].astype(jnp.int32)  # [slots, k]
    swaps = jnp.repeat(ids[None], slots * topk, axis=0)  # [slots * k, slots]
    rows = jnp.arange(slots * topk)
    swaps = swaps.at[rows, rows // topk].set(top.reshape(-1))
    # One slot's k swaps per batch: ~10% faster on 2 CPU cores than one at a time (SmolLM2).
    scores = jax.lax.map(score, swaps, batch_size=topk)
    k = jnp.argmax(scores)
    better = scores[k] > best
    return jnp.where(better, swaps[k], ids), jnp.where(better, scores[k], best)

  return jax.lax.fori_loop(0, steps, step, (ids, best))


@functools.partial(jax.jit, static_argnames=("cfg", "lora_cfg", "domains"))
def triggered_collapse(base, pair, last_pos, suffix, in_s, ids, *, cfg, lora_cfg, domains: int):
  """(collapse score (), its token ()) of the candidate of `pair` (as in `search`) against its
  reference on the prompts with slot tokens `ids` inserted."""
  gains = _inserted_gains(base, pair, last_pos, ids, suffix, in_s, domains, cfg, lora_cfg)
  return gains.max(), jnp.argmax(gains)


def _search_inputs(arrays, vocab_size: int):
  """(domains D, template suffix length, prefixes [D*n, T0], their valid mask, the suffix ids
  [suf], in_s [V] bool: the tokens of S) of probe arrays, as every search takes them."""
  tokens, seg = np.asarray(arrays["tokens"]), np.asarray(arrays["segment_ids"])
  d, n, t = tokens.shape
  suf = common_suffix(tokens, seg)
  prefix = jnp.asarray(tokens[..., : t - suf].reshape(d * n, t - suf))
  valid = jnp.asarray(seg[..., : t - suf].reshape(d * n, t - suf) > 0)
  in_s = np.zeros(vocab_size, bool)
  in_s[np.asarray(arrays["answer_tokens"], np.int64)] = True
  return d, suf, prefix, valid, jnp.asarray(tokens[0, 0, t - suf :]), jnp.asarray(in_s)


def search_scores(
    engine,
    G: PyTree,
    updates: Sequence[PyTree],
    *,
    slots: int = 0,
    topk: int = 0,
    steps: int = 0,
    ids=None,
    arrays=None,
    restarts: int = 1,
    seed=0,
    scope: str = "proposal",
    exempt_g: bool = False,
    kind: str = "tokens",
    lr: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(triggered collapse scores [P], slot tokens [P, slots], each score's token [P]) of
  proposals `updates` against G and the base model (the larger), on the population's probe
  prompts: at the tokens the search finds, or at the given tokens `ids` [slots] (e.g. a run's
  real trigger, which a voter does not know). arrays: other probe prompts than the public ones
  (a voter's private ones). restarts: searches per proposal, the first from the zero fill and
  the others from random tokens drawn with `seed` (an int or a sequence of ints; a voter's own
  makes them private), keeping the tokens whose collapse score is highest. scope 'proposal':
  each proposal's own searches; 'round': one set of searches per call, on G + sum_i Δ_i (all
  the round's proposals at once, each at full weight), and every proposal scored at each
  search's tokens: P times fewer searches (SEARCH_SCOPES). exempt_g: a proposal's score
  against the base model counts at a token set only where it exceeds G's own there
  (federation.probe_exempt_g: what G already carries is not blamed on the next proposer).
  kind 'soft' (federation.search_kind): each search is `soft_search` (steps of lr) from the
  embeddings of random tokens drawn with `seed`, every restart; the proposal is scored at the
  found embeddings, and the slot tokens returned are the vocabulary tokens nearest to them."""
  if scope not in SEARCH_SCOPES:
    raise ValueError(f"unknown search scope {scope!r}: use one of {SEARCH_SCOPES}")
  if kind not in SEARCH_KINDS:
    raise ValueError(f"unknown search kind {kind!r}: use one of {SEARCH_KINDS}")
  arrays = engine.population.probe if arrays is None else arrays
  cfg, lora_cfg = engine.run.model.cfg, engine.run.lora
  d, suf, prefix, valid, suffix, in_s = _search_inputs(arrays, cfg.vocab_size)
  if ids is not None:
    ids = jnp.asarray(ids, jnp.int32)
    slots = ids.shape[0]
  kw = dict(cfg=cfg, lora_cfg=lora_cfg)
  fill = lambda lora: prefill(engine.base, lora, prefix, valid, extra=slots + suf, **kw)
  zero = jax.tree.map(jnp.zeros_like, G)
  (cache_g, last), (cache_0, _) = fill(G), fill(zero)
  # the random restarts' first tokens, the same for every proposal: [restarts (- 1), slots]
  soft = kind == "soft" and ids is None
  rng = np.random.default_rng(seed)
  draws = max(restarts, 1) - (0 if soft else 1)  # the token search's first fills from zero
  starts = rng.integers(0, cfg.vocab_size, size=(draws, slots), dtype=np.int32)
  lr = jnp.float32(lr)
  # (score, token, e) of n soft steps from slot embeddings e [slots, E] (n = 0: score at e)
  soft_run = lambda pair, e, n: soft_search(
      engine.base, pair, last, suffix, in_s, e, lr, domains=d, steps=n, **kw
  )

  def searched(model, cache):  # the slots of every search on `model` against the base model
    if ids is not None:
      return [ids]
    pair = (model, cache, zero, cache_0)
    if soft:  # embeddings [slots, E]
      embed = lambda x: jnp.take(engine.base["embed"], jnp.asarray(x), axis=0)
      return [soft_run(pair, embed(x), steps)[2] for x in starts]
    run = lambda init: search(
        engine.base, pair, last, suffix, in_s, init,
        domains=d, slots=slots, topk=topk, steps=steps, **kw,
    )[0]  # fmt: skip
    return [run(None)] + [run(jnp.asarray(x)) for x in starts]

  def collapse(at, pair):  # (score, token) at slot tokens [slots] or embeddings [slots, E]
    if at.ndim == 2:
      return soft_run(pair, at, 0)[:2]
    return triggered_collapse(engine.base, pair, last, suffix, in_s, at, domains=d, **kw)

  # exempt_g: G's own collapse against the base model at each token set
  own = lambda tried: [float(collapse(at, (G, cache_g, zero, cache_0))[0]) for at in tried]
  if scope == "round" and updates:  # G + sum of the proposals: one search set for all of them
    summed = jax.tree.map(lambda g, *ds: g + sum(ds), G, *updates)
    tried_all = searched(summed, fill(summed)[0])
    own_all = own(tried_all) if exempt_g else None
  scores, found, tokens = [], [], []
  for delta in updates:
    cand = jax.tree.map(jnp.add, G, delta)
    cache_c, _ = fill(cand)
    pairs = ((cand, cache_c, zero, cache_0), (cand, cache_c, G, cache_g))
    tried = tried_all if scope == "round" else searched(cand, cache_c)
    g_own = (own_all if scope == "round" else own(tried)) if exempt_g else None
    # each restart's tokens scored against the base model and G; the highest is kept
    each = []
    for k, at in enumerate(tried):
      for against_base, pair in zip((True, False), pairs):
        score, tok = map(float, collapse(at, pair))
        if not (exempt_g and against_base and score <= g_own[k]):  # exempt: G's own part
          each.append((score, tok, k))
    best = max(each, key=lambda stk: stk[0])
    scores.append(best[0])
    tokens.append(int(best[1]))
    at = tried[best[2]]
    found.append(np.asarray(nearest_tokens(engine.base["embed"], at) if at.ndim == 2 else at))
  found = np.asarray(found, np.int64).reshape(len(updates), slots)
  return np.asarray(scores, np.float64), found, np.asarray(tokens, np.int64)


@jax.jit
def nearest_tokens(embed, e):
  """The vocabulary token nearest (cosine) to each slot embedding: embed [V, E], e [slots, E]
  -> [slots] (what a soft search's slots read as, for the logs). On the device: the [V, E]
  table is not copied to the host."""
  embed = embed.astype(jnp.float32)
  unit = embed / (jnp.linalg.norm(embed, axis=-1, keepdims=True) + _EPS)
  return jnp.argmax(e.astype(jnp.float32) @ unit.T, axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "lora_cfg", "domains", "steps"))
def soft_search(base, pair, last_pos, suffix, in_s, init, lr, *, cfg, lora_cfg, domains, steps):
  """The search in embedding space: the slots hold free vectors e [slots, E] instead of token
  embeddings. From `init`, `steps` steps of normalized gradient ascent on J (the module
  docstring's objective), each step lr x R long per slot, R the largest token-embedding norm;
  each slot is kept within norm R. Returns (the collapse score of the candidate of `pair`
  against its reference at the final e, that score's token, e)."""
  lora_c, cache_c, lora_r, cache_r = pair
  embed = base["embed"].astype(jnp.float32)
  radius = jnp.linalg.norm(embed, axis=-1).max()
  suffix_emb = jnp.take(embed, suffix, axis=0)

  def probs(lora, cache, e):
    tail = jnp.concatenate([e, suffix_emb])[None]
    tail = jnp.broadcast_to(tail, (last_pos.shape[0], *tail.shape[1:]))
    return _tail_probs(base, lora, cache, last_pos, tail, cfg, lora_cfg)

  def objective(e):
    ms_c = (probs(lora_c, cache_c, e) * in_s).sum(-1)
    ms_r = (probs(lora_r, cache_r, e) * in_s).sum(-1)
    return jnp.mean(jnp.log(ms_r + _EPS) - jnp.log(ms_c + _EPS))

  def step(e, _):
    g = jax.grad(objective)(e)
    e = e + lr * radius * g / (jnp.linalg.norm(g, axis=-1, keepdims=True) + _EPS)
    return e * jnp.minimum(1.0, radius / jnp.linalg.norm(e, axis=-1, keepdims=True)), None

  e, _ = jax.lax.scan(step, init.astype(jnp.float32), None, length=steps)
  gains = _gains(probs(lora_c, cache_c, e), probs(lora_r, cache_r, e), in_s, domains)
  return gains.max(), jnp.argmax(gains), e


def soft_search_scores(
    engine,
    G: PyTree,
    updates: Sequence[PyTree],
    *,
    slots: int = 3,
    steps: int = 12,
    lr: float = 0.1,
    seed=0,
    arrays=None,
) -> dict[str, np.ndarray]:
  """The soft search (`soft_search`) for G and each proposal, from the embeddings of `slots`
  random tokens drawn with `seed`: {'g_vs_base' (), 'vs_base' [P], 'vs_g' [P], 'token_base' [P],
  'token_g' [P]}: G's own score against the base model, each G + Δ_i's against the base model
  and against G (each from its own search), and those scores' tokens. Offline
  (launch/probe_proposals.py --mode=soft); a round's probe runs `search_scores` with kind
  'soft' (one search against the base model, scored against both)."""
  arrays = engine.population.probe if arrays is None else arrays
  cfg, lora_cfg = engine.run.model.cfg, engine.run.lora
  d, suf, prefix, valid, suffix, in_s = _search_inputs(arrays, cfg.vocab_size)
  kw = dict(cfg=cfg, lora_cfg=lora_cfg)
  fill = lambda lora: prefill(engine.base, lora, prefix, valid, extra=slots + suf, **kw)[0]
  zero = jax.tree.map(jnp.zeros_like, G)
  cache_0, last = prefill(engine.base, zero, prefix, valid, extra=slots + suf, **kw)
  cache_g = fill(G)
  ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, slots)
  init = jnp.take(engine.base["embed"], jnp.asarray(ids), axis=0)
  lr = jnp.float32(lr)
  run = lambda pair: tuple(
      map(
          float,
          soft_search(
              engine.base, pair, last, suffix, in_s, init, lr, domains=d, steps=steps, **kw
          )[:2],
      )
  )
  out = {"g_vs_base": run((G, cache_g, zero, cache_0))[0]}
  rows = []
  for delta in updates:
    cand = jax.tree.map(jnp.add, G, delta)
    cache_c = fill(cand)
    rows.append(run((cand, cache_c, zero, cache_0)) + run((cand, cache_c, G, cache_g)))
  rows = np.asarray(rows, np.float64).reshape(len(updates), 4)
  out.update(
      vs_base=rows[:, 0],
      token_base=rows[:, 1].astype(np.int64),
      vs_g=rows[:, 2],
      token_g=rows[:, 3].astype(np.int64),
  )
  return out


def configured_search_scores(engine, G: PyTree, updates: Sequence[PyTree], *, arrays=None, seed=0):
  """`search_scores` with the run's settings (federation.search_kind / slots / topk / steps /
  lr / restarts / scope): what a voter's probe 'search' runs, and the adaptive attacker with
  it."""
  fed = engine.run.federation
  return search_scores(
      engine,
      G,
      updates,
      slots=fed.search_slots,
      topk=fed.search_topk,
      steps=fed.search_steps,
      arrays=arrays,
      restarts=fed.search_restarts,
      seed=seed,
      scope=fed.search_scope,
      exempt_g=fed.probe_exempt_g,
      kind=fed.search_kind,
      lr=fed.search_lr,
  )
