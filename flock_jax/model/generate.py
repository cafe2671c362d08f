"""Fast batched generation with a KV cache: one prefill, then a jitted loop of one-token steps.

Shape letters: B batch (prompts), P prompt length (left-padded), N new
tokens, S = P + N - 1 cache slots, C clients, V vocabulary.

  out = generate(params, cfg, prompt_tokens, prompt_valid, max_new_tokens=32, key=key)
  out.tokens [B, N]   (pad_id after a row's EOS; the EOS itself is kept)

Prompts are left-padded so that every row's last column is its last real
token and all rows decode in lock step; rope positions are per row
(cumsum(valid) - 1), so a padded row sees exactly the positions it would see
alone. Everything from prefill to the last step runs in one jit; the loop is
a `lax.while_loop` that exits as soon as every row has emitted an EOS id.

`generate_clients` runs many clients' LoRA adapters ([C, ...] leading axis)
over a shared frozen base in one call (jax.vmap); `chat_generate` wraps it all
for strings with a tokenizer's chat template, which is what attack-success
evaluation needs.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax import distributed
from flock_jax.model import llama
from flock_jax.model.config import LlamaConfig
from flock_jax.model.sampling import Sampling, SamplingMode, sample_with


class GenerateOutput(NamedTuple):
  """What `generate` returns (generate_clients puts a leading [C] axis on every field).

  tokens    [B, N] int32: generated ids; pad_id after a row's first EOS id.
  lengths   [B] int32: tokens generated per row, its EOS included.
  finished  [B] bool: the row emitted an EOS id within N tokens.
  logprobs  [B, N] float32: log p(token) under the model's untempered
            distribution (0 after EOS); sum over a row = answer log-likelihood.
  steps     () int32: decode positions run (< N when all rows stopped early).
  """

  tokens: jax.Array
  lengths: jax.Array
  finished: jax.Array
  logprobs: jax.Array
  steps: jax.Array


# ------------------------------------------------------------------ the jitted core
def _choose(logits, key, step, mode: SamplingMode, temperature, top_p):
  """Next tokens [B] and their untempered log-probs [B] from logits [B, V]."""
  tok = sample_with(logits, jax.random.fold_in(key, step), mode, temperature, top_p)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


def _is_eos(tok, eos):
  """tok [B] in eos [E] (-1 entries never match a generated token)."""
  return (tok[:, None] == eos[None, :]).any(axis=-1)


def _generate_core(
    params,
    lora,
    tokens,
    valid,
    key,
    eos,
    pad_id,
    temperature,
    top_p,
    *,
    cfg: LlamaConfig,
    lora_cfg,
    n: int,
    mode: SamplingMode,
) -> GenerateOutput:
  """Prefill tokens [B, P] (valid [B, P]), then decode up to n tokens; traceable, vmappable.

  eos [E] int32, pad_id, temperature and top_p (scalars) are traced, so changing
  them never recompiles; the static `mode` holds what shapes the program.
  """
  b, p = tokens.shape
  cache = llama.init_cache(cfg, b, p + n - 1)
  positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
  hidden, cache = llama.hidden_with_cache(
      params,
      tokens,
      cfg,
      cache,
      positions=positions,
      token_valid=valid,
      lora=lora,
      lora_cfg=lora_cfg,
  )
  logits = llama.logits_from_hidden(params, hidden[:, -1:], cfg)[:, 0]
  tok, logp = _choose(logits, key, 0, mode, temperature, top_p)
  first_pos = jnp.sum(valid, axis=1, dtype=jnp.int32)  # position of generated token 0

  out = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok)
  logps = jnp.zeros((b, n), jnp.float32).at[:, 0].set(logp)
  state = (jnp.int32(1), cache, tok, _is_eos(tok, eos), out, logps, jnp.ones((b,), jnp.int32))

  def cond(state):
    i, _, _, done, *_ = state
    return (i < n) & ~jnp.all(done)

  def body(state):
    i, cache, prev, done, out, logps, lengths = state
    # Feeds token i-1 at its position and cache slot P+i-1, reads token i.
    logits, cache = llama.forward_with_cache(
        params,
        prev[:, None],
        cfg,
        cache,
        positions=(first_pos + i - 1)[:, None],
        token_valid=jnp.ones((b, 1), bool),
        lora=lora,
        lora_cfg=lora_cfg,
    )
    tok, logp = _choose(logits[:, 0], key, i, mode, temperature, top_p)
    tok = jnp.where(done, pad_id, tok)
    logp = jnp.where(done, 0.0, logp)
    out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
    logps = jax.lax.dynamic_update_slice(logps, logp[:, None], (0, i))
    lengths = lengths + (~done).astype(jnp.int32)
    return i + 1, cache, tok, done | _is_eos(tok, eos), out, logps, lengths

  steps, _, _, done, out, logps, lengths = jax.lax.while_loop(cond, body, state)
  return GenerateOutput(out, lengths, done, logps, steps)


_STATIC = ("cfg", "lora_cfg", "n", "mode")
_generate_jit = jax.jit(_generate_core, static_argnames=_STATIC)


def _clients_core(
    params,
    lora,
    tokens,
    valid,
    key,
    eos,
    pad_id,
    temperature,
    top_p,
    *,
    per_client_prompts: bool,
    **static,
):
  c = jax.tree.leaves(lora)[0].shape[0]
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(c))
  prompt_axis = 0 if per_client_prompts else None
  fn = lambda lo, t, v, k: _generate_core(
      params, lo, t, v, k, eos, pad_id, temperature, top_p, **static
  )
  return jax.vmap(fn, in_axes=(0, prompt_axis, prompt_axis, 0))(lora, tokens, valid, keys)


_clients_jit = jax.jit(_clients_core, static_argnames=_STATIC + ("per_client_prompts",))


# ------------------------------------------------------------------ checks and public API
def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_prompts(tokens, valid, cfg: LlamaConfig, lead: tuple[int, ...] = ()):
  if tokens.ndim != 2 + len(lead) or tokens.shape != valid.shape:
    raise ValueError(
        f"prompt_tokens {tokens.shape} and prompt_valid {valid.shape} must be equal "
        f"{'[C, B, P]' if lead else '[B, P]'} arrays"
    )
  if not (jnp.issubdtype(tokens.dtype, jnp.integer) and valid.dtype == bool):
    raise ValueError(
        f"prompt_tokens must be integer (got {tokens.dtype}) and prompt_valid "
        f"bool (got {valid.dtype})"
    )
  if not (_concrete(tokens) and _concrete(valid)):
    return
  t, v = np.asarray(tokens), np.asarray(valid)
  rows = v.reshape(-1, v.shape[-1])
  if not rows[:, -1].all():
    bad = int(np.flatnonzero(~rows[:, -1])[0])
    raise ValueError(
        f"prompt row {bad} does not end in a real token: prompts must be LEFT-"
        "padded with at least one real token per row (see left_pad)"
    )
  if (np.diff(rows.astype(np.int8), axis=-1) < 0).any():
    bad = int(np.flatnonzero((np.diff(rows.astype(np.int8), axis=-1) < 0).any(-1))[0])
    raise ValueError(
        f"prompt row {bad} has padding after a real token: prompts must be "
        "left-padded (valid = False then True)"
    )
  real = t[v]
  if real.size and (real.min() < 0 or real.max() >= cfg.vocab_size):
    raise ValueError(
        f"prompt token ids must be in [0, {cfg.vocab_size}), got " f"[{real.min()}, {real.max()}]"
    )


def _check_lora(lora, lora_cfg, cfg: LlamaConfig, clients: bool):
  if lora is None:
    if clients:
      raise ValueError("generate_clients needs a [C, ...]-stacked lora tree")
    return
  if lora_cfg is None:
    raise ValueError("lora given without lora_cfg (its LoraConfig sets the scale)")
  from flock_jax.model.lora import lora_shapes

  want = lora_shapes(cfg, lora_cfg)
  if set(lora) != set(want):
    raise ValueError(f"lora targets {sorted(lora)} != lora_cfg.targets {sorted(want)}")
  lead = None
  for name, ab in want.items():
    for part, sds in ab.items():
      leaf = lora[name][part]
      shape = tuple(leaf.shape)
      core = shape[1:] if clients else shape
      if core != sds.shape or (clients and len(shape) != len(sds.shape) + 1):
        raise ValueError(
            f"lora leaf {name}.{part} has shape {shape}; expected "
            f"{'[C] + ' if clients else ''}{list(sds.shape)}"
        )
      if clients:
        lead = shape[0] if lead is None else lead
        if shape[0] != lead:
          raise ValueError(f"lora leaf {name}.{part} has {shape[0]} clients, others {lead}")


def _static(cfg, lora_cfg, max_new_tokens, temperature, top_k, top_p):
  if int(max_new_tokens) < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  sampling = Sampling(float(temperature), top_k, top_p)
  return sampling, dict(cfg=cfg, lora_cfg=lora_cfg, n=int(max_new_tokens), mode=sampling.mode())


def _stops(cfg: LlamaConfig, eos_ids, pad_id):
  """(eos [E] int32, padded with -1 to a power of two so few shapes compile; pad_id () int32)."""
  eos = sorted({int(e) for e in (cfg.eos_ids if eos_ids is None else eos_ids)})
  bad = [e for e in eos if not 0 <= e < cfg.vocab_size]
  if bad:
    raise ValueError(f"eos_ids {bad} are outside the vocabulary [0, {cfg.vocab_size})")
  width = bucket_length(len(eos), minimum=4)
  return (jnp.asarray(eos + [-1] * (width - len(eos)), jnp.int32), jnp.asarray(pad_id, jnp.int32))


def _key(key, sampling: Sampling):
  if key is None:
    if not sampling.greedy:
      raise ValueError("sampling (temperature > 0) needs an explicit PRNG key")
    return jax.random.key(0)
  return key


def generate(
    params,
    cfg: LlamaConfig,
    prompt_tokens,
    prompt_valid,
    *,
    max_new_tokens: int,
    key=None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: Sequence[int] | None = None,
    lora=None,
    lora_cfg=None,
    pad_id: int = 0,
) -> GenerateOutput:
  """Generates up to max_new_tokens for left-padded prompts [B, P] (valid [B, P] bool).

  temperature 0 is greedy; otherwise tokens are sampled with `key` (step i
  uses fold_in(key, i)), after top_k / top_p filtering. A row stops at its
  first token in eos_ids (default cfg.eos_ids); later tokens are pad_id.
  lora / lora_cfg: one adapter tree applied on the fly. Compiles once per
  (shapes, cfg, lora_cfg, max_new_tokens, greedy or not, top_k, top_p or not);
  temperature, the top_p value, eos_ids and pad_id are data.
  """
  prompt_tokens, prompt_valid = jnp.asarray(prompt_tokens), jnp.asarray(prompt_valid)
  _check_prompts(prompt_tokens, prompt_valid, cfg)
  _check_lora(lora, lora_cfg, cfg, clients=False)
  sampling, static = _static(
      cfg, lora_cfg if lora is not None else None, max_new_tokens, temperature, top_k, top_p
  )
  return _generate_jit(
      params,
      lora,
      prompt_tokens.astype(jnp.int32),
      prompt_valid,
      _key(key, sampling),
      *_stops(cfg, eos_ids, pad_id),
      *sampling.values(),
      **static,
  )


def generate_clients(
    params,
    cfg: LlamaConfig,
    prompt_tokens,
    prompt_valid,
    *,
    lora,
    lora_cfg,
    max_new_tokens: int,
    key=None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: Sequence[int] | None = None,
    pad_id: int = 0,
) -> GenerateOutput:
  """`generate` for C clients' adapters (every lora leaf [C, ...]) over one shared base.

  Prompts are shared ([B, P]) or per client ([C, B, P]). Client c samples
  with fold_in(key, c), so its output equals
  generate(..., lora=lora[c], key=jax.random.fold_in(key, c)).
  Every output field gets a leading [C] axis.
  """
  prompt_tokens, prompt_valid = jnp.asarray(prompt_tokens), jnp.asarray(prompt_valid)
  per_client = prompt_tokens.ndim == 3
  _check_lora(lora, lora_cfg, cfg, clients=True)
  c = jax.tree.leaves(lora)[0].shape[0]
  _check_prompts(prompt_tokens, prompt_valid, cfg, lead=(c,) if per_client else ())
  if per_client and prompt_tokens.shape[0] != c:
    raise ValueError(f"per-client prompts have {prompt_tokens.shape[0]} clients, lora has {c}")
  sampling, static = _static(cfg, lora_cfg, max_new_tokens, temperature, top_k, top_p)
  return _clients_jit(
      params,
      lora,
      prompt_tokens.astype(jnp.int32),
      prompt_valid,
      _key(key, sampling),
      *_stops(cfg, eos_ids, pad_id),
      *sampling.values(),
      per_client_prompts=per_client,
      **static,
  )


# ------------------------------------------------------------------ token lists <-> arrays
def bucket_length(n: int, minimum: int = 16) -> int:
  """The power of two >= max(n, minimum): prompt lengths share few compiled shapes."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def left_pad(
    seqs: Sequence[Sequence[int]],
    length: int | None = None,
    pad_id: int = 0,
    rows: int | None = None,
):
  """Token lists -> (tokens [R, length] int32, valid [R, length] bool), left-padded.

  length defaults to bucket_length(longest); rows >= len(seqs) adds all-pad
  filler rows made of one real pad token (so they stay valid prompts).
  """
  if not seqs or any(len(s) == 0 for s in seqs):
    raise ValueError("left_pad needs at least one sequence and no empty sequence")
  longest = max(len(s) for s in seqs)
  length = bucket_length(longest) if length is None else length
  if length < longest:
    raise ValueError(f"length {length} is shorter than the longest sequence ({longest})")
  rows = len(seqs) if rows is None else rows
  tokens = np.full((rows, length), pad_id, np.int32)
  valid = np.zeros((rows, length), bool)
  valid[len(seqs) :, -1] = True
  for i, s in enumerate(seqs):
    tokens[i, length - len(s) :] = s
    valid[i, length - len(s) :] = True
  return tokens, valid


def trim(tokens, stop_ids: Sequence[int]) -> list[list[int]]:
  """Generated tokens [B, N] -> per-row id lists up to (without) the first stop id."""
  stop = set(int(s) for s in stop_ids)
  out = []
  for row in np.asarray(tokens).tolist():
    cut = next((j for j, t in enumerate(row) if t in stop), len(row))
    out.append(row[:cut])
  return out


# ------------------------------------------------------------------ chat
_STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>")


def stop_ids(tokenizer, cfg: LlamaConfig) -> tuple[int, ...]:
  """cfg.eos_ids plus the tokenizer's eos and chat end-of-turn tokens it knows."""
  ids = set(cfg.eos_ids)
  if tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  vocab = tokenizer.get_vocab()
  ids.update(int(vocab[t]) for t in _STOP_TOKENS if t in vocab)
  return tuple(sorted(i for i in ids if i < cfg.vocab_size))


def chat_prompt_ids(
    tokenizer, prompts: Sequence[str], system: str | None = None
) -> list[list[int]]:
  """Each prompt as a user turn (after an optional system turn), chat-templated, token ids."""
  out = []
  for p in prompts:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    msgs.append({"role": "user", "content": p})
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
  return out


def _chat_batches(tokenizer, cfg, prompts, system, batch_size, min_bucket):
  """Yields (index, count, tokens [R, P], valid [R, P], pad) batches; R, P powers of two."""
  if isinstance(prompts, str):
    raise ValueError("prompts must be a list of strings, not one string")
  ids = chat_prompt_ids(tokenizer, prompts, system)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  pad = pad if pad < cfg.vocab_size else 0
  for start in range(0, len(ids), batch_size):
    chunk = ids[start : start + batch_size]
    rows = min(batch_size, bucket_length(len(chunk), minimum=1))
    length = bucket_length(max(len(s) for s in chunk), minimum=min_bucket)
    yield start // batch_size, len(chunk), *left_pad(chunk, length, pad_id=pad, rows=rows), pad


def _decode(tokenizer, tokens, n, stops) -> list[str]:
  return [tokenizer.decode(row, skip_special_tokens=True) for row in trim(tokens[:n], stops)]


def _batch_kw(kw: dict, index: int) -> dict:
  """Batch `index` samples with fold_in(key, index), so batches draw independent tokens."""
  if kw.get("key") is None:
    return kw
  return {**kw, "key": jax.random.fold_in(kw["key"], index)}


def chat_generate(
    params,
    cfg: LlamaConfig,
    tokenizer,
    prompts: Sequence[str],
    system: str | None = None,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    min_bucket: int = 16,
    **kw: Any,
) -> list[str]:
  """Chat answers (strings) for prompts, batched, until a stop token or max_new_tokens.

  Stops at cfg.eos_ids and the tokenizer's eos / <|im_end|>-like tokens.
  Prompt lengths are bucketed to powers of two (>= min_bucket) and batches to
  powers of two (<= batch_size), so a run compiles only a few shapes.
  Other keywords (key, temperature, top_k, top_p, lora, lora_cfg) go to `generate`.
  """
  stops = stop_ids(tokenizer, cfg)
  answers: list[str] = []
  for i, count, tokens, valid, pad in _chat_batches(
      tokenizer, cfg, prompts, system, batch_size, min_bucket
  ):
    out = generate(
        params,
        cfg,
        tokens,
        valid,
        max_new_tokens=max_new_tokens,
        eos_ids=stops,
        pad_id=pad,
        **_batch_kw(kw, i),
    )
    answers += _decode(tokenizer, distributed.fetch(out.tokens), count, stops)
  return answers


def chat_generate_clients(
    params,
    cfg: LlamaConfig,
    tokenizer,
    prompts: Sequence[str],
    system: str | None = None,
    *,
    lora,
    lora_cfg,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    min_bucket: int = 16,
    **kw: Any,
) -> list[list[str]]:
  """chat_generate for every client of a [C, ...] lora stack: answers[c][i] for prompt i."""
  stops = stop_ids(tokenizer, cfg)
  c = jax.tree.leaves(lora)[0].shape[0]
  answers: list[list[str]] = [[] for _ in range(c)]
  for i, count, tokens, valid, pad in _chat_batches(
      tokenizer, cfg, prompts, system, batch_size, min_bucket
  ):
    out = distributed.fetch(
        generate_clients(
            params,
            cfg,
            tokens,
            valid,
            lora=lora,
            lora_cfg=lora_cfg,
            max_new_tokens=max_new_tokens,
            eos_ids=stops,
            pad_id=pad,
            **_batch_kw(kw, i),
        ).tokens
    )
    for ci in range(c):
      answers[ci] += _decode(tokenizer, out[ci], count, stops)
  return answers


@functools.partial(jax.jit, static_argnames=("cfg", "lora_cfg"))
def _full_logits(params, tokens, segment_ids, lora, *, cfg, lora_cfg):
  return llama.forward(params, tokens, cfg, segment_ids=segment_ids, lora=lora, lora_cfg=lora_cfg)


def naive_greedy(params, cfg, tokens, valid, n, lora=None, lora_cfg=None):
  """Greedy decoding by a Python loop of full forward passes (no cache): [B, n].

  The baseline `generate` is tested and benchmarked against.

  The sequence lives in a fixed [B, P + n] buffer whose not-yet-generated tail
  is right padding (segment 0), which causal attention never lets earlier
  positions see: one compile instead of one per length.
  """
  fwd = lambda p, t, s: _full_logits(p, t, s, lora, cfg=cfg, lora_cfg=lora_cfg)
  b, plen = tokens.shape
  toks = np.concatenate([tokens, np.zeros((b, n), np.int32)], axis=1)
  seg = np.concatenate([valid, np.zeros((b, n), bool)], axis=1).astype(np.int32)
  for i in range(n):
    logits = fwd(params, toks, seg)[:, plen + i - 1]
    toks[:, plen + i] = np.asarray(jnp.argmax(logits, axis=-1))
    seg[:, plen + i] = 1
  return toks[:, plen:]
