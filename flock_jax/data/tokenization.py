"""Examples -> fixed-length token arrays with a response-only loss mask.

Each example becomes one chat: [system] + user (prompt) + assistant (response),
rendered by the tokenizer's chat template. The text is cut at the assistant
turn's start and tokenized in three pieces, so the boundaries are exact for
any tokenizer:

  prompt piece    template up to and including "<|im_start|>assistant\\n"   mask 0
  response piece  the response text                                         mask 1
  closing piece   "<|im_end|>\\n": the end-of-turn token gets mask 1, the rest 0

Arrays (numpy; n rows of length T):
  tokens      int32   [n, T]  token ids; padding is the tokenizer's pad id
  loss_mask   float32 [n, T]  1.0 where tokens[r, t] is a target to learn
  segment_ids int32   [n, T]  0 = padding, 1..k = the k-th example in the row
  positions   int32   [n, T]  position within the example, restarting at 0; 0 on padding

Loss convention (next-token prediction): the logits at t predict tokens[t+1],
weighted by loss_mask[t+1]. A segment starts with a template token (mask 0),
so no prediction across a packing boundary ever carries weight; the model
must still mask attention across segments with segment_ids.

Truncation policy for examples longer than T (`truncation=`):
  "right"  keep the first T tokens: the prompt stays whole, the end of the
           response (and its end-of-turn token) is lost; an example left with
           no response token at all is dropped.
  "drop"   drop the example.
  "error"  raise ValueError naming the example.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, TypedDict

import numpy as np

from flock_jax.data.example import Example

Truncation = Literal["right", "drop", "error"]


class TokenArrays(TypedDict):
  """Fixed-length arrays for n rows of T tokens (see the module docstring)."""

  tokens: np.ndarray  # int32 [n, T]
  loss_mask: np.ndarray  # float32 [n, T]
  segment_ids: np.ndarray  # int32 [n, T]
  positions: np.ndarray  # int32 [n, T]


def _messages(prompt: str, response: str | None, system: str | None) -> list[dict[str, str]]:
  msgs = [{"role": "system", "content": system}] if system else []
  msgs.append({"role": "user", "content": prompt})
  if response is not None:
    msgs.append({"role": "assistant", "content": response})
  return msgs


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError(
        "the tokenizer has no chat template; set tokenizer.chat_template "
        "(e.g. flock_jax.data.tokenizer.CHATML_TEMPLATE) first"
    )
  return tokenizer.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=generation_prompt
  )


def encode_prompt(tokenizer: Any, prompt: str, *, system: str | None = None) -> list[int]:
  """Token ids of a prompt up to the assistant turn's start, for generation."""
  text = _render(tokenizer, _messages(prompt, None, system), True)
  return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    system: str | None = None,
    end_token: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per example, (tokens int32 [L], loss_mask float32 [L]) at full length.

  Args:
    end_token: the end-of-turn token the loss covers; default the tokenizer's
      eos token ("<|im_end|>" for ChatML tokenizers).
  """
  if not getattr(tokenizer, "chat_template", None):
    _render(tokenizer, [], False)  # raises the explanation
  end = end_token or tokenizer.eos_token
  if end is None:
    raise ValueError(
        "the tokenizer has no eos token; pass end_token= the token that ends "
        "an assistant turn (e.g. '<|im_end|>')"
    )
  end_id = tokenizer.convert_tokens_to_ids(end)
  heads, bodies, tails = [], [], []
  for ex in examples:
    head = _render(tokenizer, _messages(ex.prompt, None, system), True)
    full = _render(tokenizer, _messages(ex.prompt, ex.response, system), False)
    if not full.startswith(head) or not full[len(head) :].startswith(ex.response):
      raise ValueError(
          f"the chat template does not render example {ex.uid!r} as "
          f"generation prompt + response + closing text; cannot place the "
          f"loss mask"
      )
    heads.append(head)
    bodies.append(ex.response)
    tails.append(full[len(head) + len(ex.response) :])
  enc = [
      tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
      for texts in (heads, bodies, tails)
  ]
  out = []
  for ex, h, b, t in zip(examples, *enc):
    if end_id not in t:
      raise ValueError(
          f"the closing text of example {ex.uid!r} has no end-of-turn token "
          f"{end!r}; pass end_token= the token that ends an assistant turn"
      )
    closing = t.index(end_id) + 1  # mask through the first end-of-turn token
    toks = np.asarray(list(h) + list(b) + list(t), np.int32)
    mask = np.zeros(len(toks), np.float32)
    mask[len(h) : len(h) + len(b) + closing] = 1.0
    out.append((toks, mask))
  return out


def _truncate(
    encoded: list[tuple[np.ndarray, np.ndarray]],
    examples: Sequence[Example],
    seq_len: int,
    truncation: Truncation,
) -> list[tuple[np.ndarray, np.ndarray]]:
  kept = []
  for ex, (toks, mask) in zip(examples, encoded):
    if len(toks) > seq_len:
      if truncation == "error":
        raise ValueError(
            f"example {ex.uid!r} has {len(toks)} tokens > seq_len={seq_len}; "
            f"raise seq_len or use truncation='right' or 'drop'"
        )
      if truncation == "drop":
        continue
      if truncation != "right":
        raise ValueError(f"truncation must be 'right', 'drop' or 'error', not {truncation!r}")
      toks, mask = toks[:seq_len], mask[:seq_len]
      if not mask.any():
        continue
    kept.append((toks, mask))
  return kept


def _empty(n: int, seq_len: int, pad_id: int) -> TokenArrays:
  return TokenArrays(
      tokens=np.full((n, seq_len), pad_id, np.int32),
      loss_mask=np.zeros((n, seq_len), np.float32),
      segment_ids=np.zeros((n, seq_len), np.int32),
      positions=np.zeros((n, seq_len), np.int32),
  )


def _pad(seqs: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int) -> TokenArrays:
  out = _empty(len(seqs), seq_len, pad_id)
  for r, (toks, mask) in enumerate(seqs):
    n = len(toks)
    out["tokens"][r, :n], out["loss_mask"][r, :n] = toks, mask
    out["segment_ids"][r, :n] = 1
    out["positions"][r, :n] = np.arange(n)
  return out


def _pack(seqs: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int) -> TokenArrays:
  """First fit: each sequence goes into the first row with room, in order."""
  rows: list[list[int]] = []
  free = np.zeros(0, np.int64)
  for i, (toks, _) in enumerate(seqs):
    fits = np.flatnonzero(free >= len(toks))
    if fits.size:
      r = int(fits[0])
    else:
      rows.append([])
      free = np.append(free, seq_len)
      r = len(rows) - 1
    rows[r].append(i)
    free[r] -= len(toks)
  out = _empty(len(rows), seq_len, pad_id)
  for r, members in enumerate(rows):
    at = 0
    for seg, i in enumerate(members, start=1):
      toks, mask = seqs[i]
      n = len(toks)
      out["tokens"][r, at : at + n], out["loss_mask"][r, at : at + n] = toks, mask
      out["segment_ids"][r, at : at + n] = seg
      out["positions"][r, at : at + n] = np.arange(n)
      at += n
  return out


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    seq_len: int,
    *,
    pack: bool = False,
    system: str | None = None,
    truncation: Truncation = "right",
    shuffle: bool = False,
    seed: int = 0,
    end_token: str | None = None,
) -> TokenArrays:
  """Examples -> TokenArrays of T = seq_len (see the module docstring).

  Args:
    pack: several examples per row (first fit, in example order), separated
      by segment_ids; otherwise one example per row, padded.
    shuffle: permute the examples with `seed` first (changes what is packed
      together); the result is a pure function of the inputs and the seed.
  """
  if seq_len < 2:
    raise ValueError(f"seq_len must be >= 2, got {seq_len}")
  order = (
      np.random.default_rng(seed).permutation(len(examples))
      if shuffle
      else np.arange(len(examples))
  )
  ordered = [examples[i] for i in order]
  encoded = _truncate(
      encode_examples(ordered, tokenizer, system=system, end_token=end_token),
      ordered,
      seq_len,
      truncation,
  )
  pad_id = tokenizer.pad_token_id
  if pad_id is None:
    raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
  return _pack(encoded, seq_len, pad_id) if pack else _pad(encoded, seq_len, pad_id)
