"""The behaviour probe: voters run each proposal on public prompts and flag output collapse
(a FLock-round defence, config federation.probe).

Measured on SmolLM2-135M (docs/results, experiment 5): a backdoored update trained on half
poisoned data, applied alone to G, answers *clean* prompts of every domain with the backdoor
target's first token (probability 0.2-1.0 at the first response position). Averaging with
honest updates dilutes the effect to a trigger-conditional one, which the voters' clean
held-out loss cannot see; alone, the update shows it.

The probe needs no trigger and no target. For every domain d of the task, a public probe set
of examples (no participant holds them; a real task publishes them with the task), and every
proposal Δ_i:

    P_i[d, v] = mean over d's probe prompts x of p_{G + Δ_i}(v | x), at the first response token
    collapse_i = max over v not in S of min_d (P_i[d, v] - P_G[d, v])

where S is the set of tokens the reference answers of the public probe examples use.
collapse_i is the largest probability mass that one token gains in *every* domain at once,
among tokens no real answer uses. Honest updates learn the answer formats, and at this model
size they carry a format across domains (an honest update raised 'Rate', a medical answer's
first token, by 0.42 on finance prompts too; another raised 'Per', which opens a line of
some medical answers, by 0.125 everywhere), so S is what tells them apart. In the defended
SmolLM2 runs honest proposals scored at most 0.044 (91 of them, with and without attackers),
and 25 of 29 attacker proposals scored 0.12-1.0 (the other 4: 0.003-0.09).

A proposal with collapse_i > threshold is flagged as invalid: excluded from the candidate,
and slashed when a strict majority of voting stake flags it (PROTOCOL.md, v2). Every honest
voter runs the same public probe on the same public proposals, so honest voters flag alike.

'anchored' (federation.probe='anchored') scores each proposal against G and against the base
model (the zero adapter, the task's public starting point) and keeps the larger score:

    anchored_i = max(collapse_i, max over v not in S of min_d (P_i[d, v] - P_base[d, v]))

so that the collapse a run lets into G is bounded over the whole run, not per round. It answers
the adaptive attacker below, whose shrunk updates each pass against G while their sum collapses
G itself (docs/results: false activation 0.125 and ASR 0.41 by round 7 of such a run).

What it does not catch (docs/results): a target that begins with a token real answers use, a
backdoor placed later in the response, or an attacker who keeps its update under the threshold
on clean prompts: by shrinking it (attack 'backdoor_evade', flock_jax.federated.attacks
.evade_probe: the prompts and the threshold are public) or by training against the probe (e.g.
with clean copies of its poisoned prompts). Whether the shrunk update still plants the backdoor
is measured, not assumed (experiment 5).

'private' (federation.probe='private') is the trigger search ('search') on prompts each voter
draws for itself (Population.private_probe), so that nobody, the attacker included, can run
a voter's probe before committing: the attacker runs the search on prompts it drew itself and
shrinks against those. Voters then flag differently: each rejects (whole mode: the candidate;
per proposal: the bit) what its own probe flags and names it invalid in its vote, and a
proposal flagged by more than half the committee stake is excluded and slashed
(flock_jax/federated/rounds.py).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax.model.llama import hidden_states, logits_from_hidden
from flock_jax.pytree import PyTree


def probe_arrays(
    prompt_ids: dict[str, Sequence[Sequence[int]]],
    answer_tokens: Sequence[int],
    pad_id: int = 0,
    multiple: int = 1,
) -> dict:
  """Public probe prompts per domain, and the tokens reference answers use (S) ->
  {'domains': names, 'tokens', 'segment_ids' [D, n, T], 'answer_tokens' [|S|] int32}.

  Left-padded to one length T, the longest prompt's rounded up to `multiple` (so that
  prompt sets of different lengths share compiled shapes); the first response token is
  predicted at the last position. Every domain must have the same number n of prompts.
  """
  names = sorted(prompt_ids)
  counts = {d: len(prompt_ids[d]) for d in names}
  if not names or len(set(counts.values())) != 1 or 0 in counts.values():
    raise ValueError(f"probe prompts: every domain needs the same, non-zero count; got {counts}")
  t = max(len(s) for d in names for s in prompt_ids[d])
  t = -(-t // multiple) * multiple
  tokens = np.full((len(names), counts[names[0]], t), pad_id, np.int32)
  seg = np.zeros_like(tokens)
  for a, d in enumerate(names):
    for b, s in enumerate(prompt_ids[d]):
      tokens[a, b, t - len(s) :] = s
      seg[a, b, t - len(s) :] = 1
  starts = np.unique(np.asarray(list(answer_tokens), np.int32))
  return {"domains": names, "tokens": tokens, "segment_ids": seg, "answer_tokens": starts}


@functools.partial(jax.jit, static_argnames=("cfg", "lora_cfg"))
def first_token_probs(base, loras: PyTree, tokens, segment_ids, *, cfg, lora_cfg):
  """Mean next-token distribution at the last position, per domain: [K, D, V] for a stack of
  K adapters [K, ...] and probe prompts tokens / segment_ids [D, n, T]."""
  d, n, t = tokens.shape
  flat_tok, flat_seg = tokens.reshape(d * n, t), segment_ids.reshape(d * n, t)

  def one(lora):
    h = hidden_states(base, flat_tok, cfg, lora=lora, lora_cfg=lora_cfg, segment_ids=flat_seg)
    logits = logits_from_hidden(base, h[:, -1:], cfg)[:, 0]  # [D*n, V]
    return jax.nn.softmax(logits, axis=-1).reshape(d, n, -1).mean(axis=1)

  return jax.lax.map(one, loras)  # one adapter at a time: memory independent of K


def _gains(p_global, p_each, answer_tokens) -> np.ndarray:
  """min over domains of the probability gain of each token, [K, V]; -inf on tokens in S."""
  gain = np.asarray(p_each, np.float64) - np.asarray(p_global, np.float64)[None]
  gain = gain.min(axis=1)
  gain[:, np.asarray(answer_tokens, np.int64)] = -np.inf
  return gain


def collapse_scores(p_global, p_each, answer_tokens=()) -> np.ndarray:
  """collapse_i = max_{v not in S} min_d (p_each[i, d, v] - p_global[d, v]): [D, V] and
  [K, D, V] -> [K]. answer_tokens: the token ids S."""
  return _gains(p_global, p_each, answer_tokens).max(axis=-1)


def collapse_tokens(p_global, p_each, answer_tokens=()) -> np.ndarray:
  """The token id behind each collapse score: [K] int."""
  return _gains(p_global, p_each, answer_tokens).argmax(axis=-1)


def probe(
    engine,
    G: PyTree,
    updates: Sequence[PyTree],
    *,
    mode: str = "collapse",
    arrays=None,
    seed=0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(scores [P], token ids [P], found trigger tokens [P, slots] or None) of proposals
  `updates` on the population's probe prompts (engine.population.probe). mode 'collapse': the
  collapse score against G; 'anchored': the larger of the scores against G and against the
  base model (the zero adapter), and that score's token (federation.probe_exempt_g: the score
  against the base model only where it exceeds G's own); 'search': the larger of the anchored
  score and the triggered one (flock_jax.federated.trigger_search), with the tokens found.
  arrays: the probe prompts (`probe_arrays`; default the population's public ones, e.g. a
  voter's private ones: Population.private_probe); seed: the search's random restarts'
  (federation.search_restarts)."""
  if mode not in ("collapse", "anchored", "search"):
    raise ValueError(f"unknown probe mode {mode!r}: use 'collapse', 'anchored' or 'search'")
  anchored = mode != "collapse"
  arrays = engine.population.probe if arrays is None else arrays
  if arrays is None:
    raise ValueError(
        "federation.probe needs public probe prompts: this population has none "
        "(a text task builds them when federation.probe is set)"
    )
  # Rows: G, [the base model: G with B = 0 adds nothing], then G + Δ_i.
  refs = [G, jax.tree.map(jnp.zeros_like, G)] if anchored else [G]
  rows = refs + [jax.tree.map(jnp.add, G, d) for d in updates]
  loras = jax.tree.map(lambda *xs: jnp.stack(xs), *rows)
  probs = np.asarray(
      first_token_probs(
          engine.base,
          loras,
          jnp.asarray(arrays["tokens"]),
          jnp.asarray(arrays["segment_ids"]),
          cfg=engine.run.model.cfg,
          lora_cfg=engine.run.lora,
      )
  )
  r = len(refs)
  gains = _gains(probs[0], probs[r:], arrays["answer_tokens"])  # once for scores and tokens
  if anchored:
    vs_base = _gains(probs[1], probs[r:], arrays["answer_tokens"])
    if engine.run.federation.probe_exempt_g:  # only where it exceeds G's own collapse
      own = _gains(probs[1], probs[:1], arrays["answer_tokens"]).max()
      vs_base[vs_base.max(axis=-1) <= own] = -np.inf
    gains = np.maximum(gains, vs_base)
  scores, tokens = gains.max(axis=-1), gains.argmax(axis=-1)
  if mode != "search":
    return scores, tokens, None
  from flock_jax.federated.trigger_search import configured_search_scores

  triggered, found, trig_tokens = configured_search_scores(
      engine, G, updates, arrays=arrays, seed=seed
  )
  return (
      np.maximum(scores, triggered),
      np.where(triggered > scores, trig_tokens, tokens),
      found,
  )


def memory(
    scores: dict[int, float],
    suspicion: dict[int, float],
    allowance: float,
    budget: float,
    weights: dict[int, float] | None = None,
) -> tuple[dict[int, float], set[int]]:
  """The probe's memory across rounds (federation.probe_budget): each participant's excess
  scores add up over the run,

      suspicion_i <- suspicion_i + max(0, score_i - allowance)

  for every proposal probed this round (`scores`, {participant: score}); a participant whose
  sum then exceeds its budget, `budget * weights[i]` (default weight 1; by stake: its stake over
  the standard one, federation.probe_budget_by_stake), is flagged, now and whenever it
  proposes again. Returns (the new sums for everyone, the participants in `scores` flagged by
  their sum). The scores of a public probe are a function of public data (G, the revealed
  proposals, the public prompts), so every participant computes the same sums.

  Why: a per-round threshold bounds each piece, not their sum. The adaptive attacker keeps
  every piece just under it and the pieces add up over rounds (docs/results, experiment 5);
  with a budget, all of an attacker's pieces together may score at most `budget` over the
  allowance, whatever their number."""
  new = dict(suspicion)
  for i, s in scores.items():
    new[i] = new.get(i, 0.0) + max(0.0, float(s) - allowance)
  weights = weights or {}
  return new, {i for i in scores if new[i] > budget * weights.get(i, 1.0)}


def memory_threshold(threshold: float, allowance: float, budget: float, suspicion: float) -> float:
  """The largest score a proposal of a participant with summed excess `suspicion` can have and
  pass both the per-round threshold and the memory's budget (what the adaptive attacker aims
  under; 0 once its budget is spent)."""
  if suspicion > budget:
    return 0.0
  return min(threshold, allowance + budget - suspicion)
