"""The voters' trigger search (config.federation.probe='search',
flock_jax.federated.trigger_search).

The cached forward the search runs (prompt prefix once, then the inserted tokens and the
template suffix) is checked against the plain forward of the prompts with the tokens inserted;
input embeddings against the token lookup; the search, allowed every single-token swap,
against brute force over the whole vocabulary; and the probe's 'search' score against its
definition (never below the anchored score). Whether it finds a real backdoor's trigger is
measured on SmolLM2 (docs/results, experiment 5): the tiny random model does not learn a
trigger-conditional backdoor (its poisoned updates collapse clean prompts first).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.federated import probe as P
from flock_jax.federated import trigger_search as TS
from flock_jax.model.config import PRESETS
from flock_jax.model.llama import hidden_states, init_params
from flock_jax.model.lora import LoraConfig, init_lora
from flock_jax.run_config import RunConfigError, from_config, load_config

CFG, LCFG = PRESETS["tiny"], LoraConfig(rank=4)
# Two domains of two prompts, left-padded, sharing a 3-token template suffix [7, 8, 9].
PROMPTS = {
    "a": [[3, 40, 27, 81, 7, 8, 9], [5, 6, 7, 8, 9]],
    "b": [[70, 8, 90, 7, 8, 9], [11, 7, 8, 9]],
}
S = [2, 5, 40, 41, 42]  # tokens reference answers use


def _models():
  base = init_params(CFG, jax.random.key(0))
  lora = init_lora(CFG, LCFG, jax.random.key(1))
  g = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)
  cand = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(3), x.shape), g)
  return base, g, cand


def _inserted(arrays, suf, ids):
  """The probe arrays with `ids` inserted before the last `suf` tokens of every prompt."""
  tok, seg = arrays["tokens"], arrays["segment_ids"]
  t = tok.shape[-1]
  d, n = tok.shape[:2]
  ins = np.broadcast_to(np.asarray(ids, np.int32), (d, n, len(ids)))
  tok = np.concatenate([tok[..., : t - suf], ins, tok[..., t - suf :]], axis=-1)
  seg = np.concatenate([seg[..., : t - suf], np.ones_like(ins), seg[..., t - suf :]], axis=-1)
  return tok, seg


def _split(arrays):
  tok, seg = arrays["tokens"], arrays["segment_ids"]
  d, n, t = tok.shape
  suf = TS.common_suffix(tok, seg)
  prefix = jnp.asarray(tok[..., : t - suf].reshape(d * n, -1))
  valid = jnp.asarray(seg[..., : t - suf].reshape(d * n, -1) > 0)
  in_s = np.zeros(CFG.vocab_size, bool)
  in_s[arrays["answer_tokens"]] = True
  return suf, prefix, valid, jnp.asarray(tok[0, 0, t - suf :]), jnp.asarray(in_s)


def _pair(base, cand, ref, prefix, valid, extra):
  """(pair for TS.search / TS.triggered_collapse, last positions): both prefix caches."""
  kw = dict(cfg=CFG, lora_cfg=LCFG, extra=extra)
  cache_c, last = TS.prefill(base, cand, prefix, valid, **kw)
  cache_r, _ = TS.prefill(base, ref, prefix, valid, **kw)
  return (cand, cache_c, ref, cache_r), last


def test_common_suffix_is_the_shared_template_end():
  arrays = P.probe_arrays(PROMPTS, S)
  assert TS.common_suffix(arrays["tokens"], arrays["segment_ids"]) == 3
  # a suffix as long as a whole prompt is cut at its length - 1: a slot needs a prefix before it
  same = P.probe_arrays({"a": [[7, 8, 9], [1, 7, 8, 9]]}, [])
  assert TS.common_suffix(same["tokens"], same["segment_ids"]) == 2


@pytest.mark.numerics
def test_input_embeddings_give_the_token_lookups_hidden_states():
  base, g, _ = _models()
  tokens = jnp.asarray([[3, 40, 27, 81], [5, 6, 7, 8]])
  want = hidden_states(base, tokens, CFG, lora=g, lora_cfg=LCFG)
  got = hidden_states(base, jnp.take(base["embed"], tokens, axis=0), CFG, lora=g, lora_cfg=LCFG)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # the same ops, in order


@pytest.mark.numerics
def test_cached_prefix_and_tail_equal_the_prompts_with_the_tokens_inserted():
  base, g, cand = _models()
  arrays = P.probe_arrays(PROMPTS, S)
  suf, prefix, valid, suffix, in_s = _split(arrays)
  ids = jnp.asarray([17, 200], jnp.int32)
  tok, seg = _inserted(arrays, suf, [17, 200])
  kw = dict(cfg=CFG, lora_cfg=LCFG)
  want = np.asarray(
      P.first_token_probs(
          base,
          jax.tree.map(lambda a, b: jnp.stack([a, b]), g, cand),
          jnp.asarray(tok),
          jnp.asarray(seg),
          **kw,
      )
  )  # [2, D, V]
  pair, last = _pair(base, cand, g, prefix, valid, 2 + suf)
  got, token = TS.triggered_collapse(base, pair, last, suffix, in_s, ids, domains=2, **kw)
  # budget: the cached rows see the same positions and keys; float32 reassociation only
  assert float(got) == pytest.approx(float(P.collapse_scores(want[0], want[1:], S)[0]), abs=2e-6)
  gains = P._gains(want[0], want[1:], S)[0]
  assert gains[int(token)] == pytest.approx(gains.max(), abs=2e-6)


def test_the_search_allowed_every_swap_finds_the_brute_force_best_token():
  base, g, cand = _models()
  arrays = P.probe_arrays(PROMPTS, S)
  suf, prefix, valid, suffix, in_s = _split(arrays)
  kw = dict(cfg=CFG, lora_cfg=LCFG)
  pair, last = _pair(base, cand, g, prefix, valid, 1 + suf)
  ids, best = TS.search(
      base, pair, last, suffix, in_s, domains=2, slots=1, topk=CFG.vocab_size, steps=1, **kw
  )
  one = lambda v: TS.triggered_collapse(
      base, pair, last, suffix, in_s, jnp.asarray([v], jnp.int32), domains=2, **kw
  )
  brute = [float(one(v)[0]) for v in range(CFG.vocab_size)]
  assert float(best) == pytest.approx(max(brute), abs=1e-6)
  assert brute[int(ids[0])] == pytest.approx(max(brute), abs=1e-6)
  # and the score is not flat: the best token is worth more than a typical one
  assert max(brute) > np.median(brute) + 1e-3


def test_a_random_restart_starts_from_its_tokens_and_never_ends_below_them():
  base, g, cand = _models()
  arrays = P.probe_arrays(PROMPTS, S)
  suf, prefix, valid, suffix, in_s = _split(arrays)
  kw = dict(cfg=CFG, lora_cfg=LCFG, domains=2, slots=2, topk=4)
  pair, last = _pair(base, cand, g, prefix, valid, 2 + suf)
  init = jnp.asarray([17, 200], jnp.int32)
  ids, best = TS.search(base, pair, last, suffix, in_s, init, steps=0, **kw)
  assert ids.tolist() == [17, 200]  # no step: its start
  at_init = TS.triggered_collapse(
      base, pair, last, suffix, in_s, init, domains=2, cfg=CFG, lora_cfg=LCFG
  )[0]
  assert float(best) == pytest.approx(float(at_init), abs=1e-7)
  ids2, best2 = TS.search(base, pair, last, suffix, in_s, init, steps=2, **kw)
  assert float(best2) >= float(best)
  zero_fill = TS.search(base, pair, last, suffix, in_s, steps=0, **kw)[0]
  assert zero_fill.tolist() != [17, 200]  # the default start is the zero fill's


def _engine():
  from flock_jax.federated.engine import build

  c = load_config("tiny")
  c.ledger.backend = "local"
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters = 7, 4, 3
  f.probe, f.probe_prompts = "search", 4
  f.search_slots, f.search_topk, f.search_steps = 2, 4, 1
  c.checkpoint.every = 0
  c.eval.every = 0
  return build(from_config(c))


def _engine_g_updates(k: int):
  """(the tiny engine, a G near its starting adapter, k random updates)."""
  engine, state = _engine()
  G = jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.key(4), x.shape), state.global_lora
  )
  updates = [
      jax.tree.map(lambda x, k=k: 0.2 * jax.random.normal(jax.random.key(k), x.shape), G)
      for k in range(5, 5 + k)
  ]
  return engine, G, updates


def test_search_score_is_the_larger_of_the_anchored_and_the_triggered_scores():
  engine, G, updates = _engine_g_updates(2)
  with engine.mesh_context():
    anchored, _, none = P.probe(engine, G, updates, mode="anchored")
    got, _, found = P.probe(engine, G, updates, mode="search")
    triggered, found2, _ = TS.search_scores(engine, G, updates, slots=2, topk=4, steps=1)
  assert none is None and found.shape == (2, 2)
  np.testing.assert_array_equal(found, found2)
  np.testing.assert_allclose(got, np.maximum(anchored, triggered), rtol=0, atol=1e-7)
  # the score at the found tokens, recomputed with the tokens written into the prompts,
  # against G and the base model
  arrays = engine.population.probe
  suf = TS.common_suffix(arrays["tokens"], arrays["segment_ids"])
  lcfg = engine.run.lora
  for k, u in enumerate(updates):
    tok, seg = _inserted(arrays, suf, found[k])
    zero = jax.tree.map(jnp.zeros_like, G)
    rows = [G, zero, jax.tree.map(jnp.add, G, u)]
    probs = np.asarray(
        P.first_token_probs(
            engine.base,
            jax.tree.map(lambda *x: jnp.stack(x), *rows),
            jnp.asarray(tok),
            jnp.asarray(seg),
            cfg=engine.run.model.cfg,
            lora_cfg=lcfg,
        )
    )
    want = max(P.collapse_scores(probs[r], probs[2:], arrays["answer_tokens"])[0] for r in (0, 1))
    assert triggered[k] == pytest.approx(want, abs=2e-6)


def test_restarts_keep_the_highest_scoring_search_and_follow_their_seed():
  """search_restarts: the zero fill's search and random restarts drawn from the seed; the
  tokens kept score at least what the zero fill's do, and rescored as given tokens they score
  what the search reports; the same seed gives the same tokens."""
  engine, G, ups = _engine_g_updates(1)
  kw = dict(slots=2, topk=4, steps=1)
  with engine.mesh_context():
    one, _, _ = TS.search_scores(engine, G, ups, **kw)
    three, found, _ = TS.search_scores(engine, G, ups, restarts=3, seed=(7, 1), **kw)
    again, found2, _ = TS.search_scores(engine, G, ups, restarts=3, seed=(7, 1), **kw)
    rescored, _, _ = TS.search_scores(engine, G, ups, ids=found[0])
  assert three[0] >= one[0]
  np.testing.assert_array_equal(found, found2)
  assert again[0] == three[0] and rescored[0] == pytest.approx(three[0], abs=1e-7)


def test_a_round_scope_searches_once_on_the_sum_and_scores_each_proposal_at_its_tokens(
    monkeypatch,
):
  """search_scope='round': the searches run once a call, on G + the sum of the proposals (so
  they find what a proposal-scope search of the summed update finds), not once per proposal;
  each proposal is then scored at the searched tokens, and with one proposal both scopes
  agree."""
  engine, G, ups = _engine_g_updates(2)
  summed = jax.tree.map(jnp.add, *ups)
  calls = []
  real = TS.search
  monkeypatch.setattr(TS, "search", lambda *a, **k: calls.append(1) or real(*a, **k))
  kw = dict(slots=2, topk=4, steps=1)
  with engine.mesh_context():
    each = lambda ups, scope, restarts=1: TS.search_scores(
        engine, G, ups, restarts=restarts, seed=3, scope=scope, **kw
    )
    del calls[:]
    each(ups, "proposal", restarts=2)
    per_proposal_calls = len(calls)
    del calls[:]
    scores, found, _ = each(ups, "round", restarts=2)
    round_calls = len(calls)
    _, found_sum, _ = each([summed], "proposal")
    _, found_one, _ = each(ups, "round")
    at = [TS.search_scores(engine, G, [u], ids=f)[0][0] for u, f in zip(ups, found)]
    alone = [each(ups[:1], scope) for scope in ("proposal", "round")]
  assert (per_proposal_calls, round_calls) == (4, 2)
  np.testing.assert_array_equal(found_one[0], found_sum[0])  # the search ran on G + Δ1 + Δ2
  np.testing.assert_array_equal(found_one[1], found_sum[0])
  np.testing.assert_allclose(scores, at, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(alone[0][1], alone[1][1])
  np.testing.assert_array_equal(alone[0][0], alone[1][0])


@pytest.mark.parametrize(
    "field,value",
    [
        ("search_slots", 0),
        ("search_topk", 0),
        ("search_steps", -1),
        ("search_restarts", 0),
        ("search_scope", "everything"),
        ("search_kind", "hotflip"),
        ("search_lr", 0.0),
    ],
)
def test_a_bad_search_setting_is_refused_naming_it(field, value):
  c = load_config("tiny")
  c.federation.probe = "search"
  c.federation[field] = value
  with pytest.raises(RunConfigError, match=field):
    from_config(c)


@pytest.mark.parametrize("kind", ["tokens", "soft"])
def test_the_adaptive_attacker_shrinks_under_the_search_as_well(kind):
  """backdoor_evade against probe 'search' (either search kind): the largest scale whose
  search score is under 0.8 x threshold, found by bisection below the largest scale the clean
  probe passes; the scale above it fails the search."""
  from test_probe import THRESHOLD, _collapsing_update, _run

  from flock_jax.federated.attacks import EVADE_MARGIN, EVADE_SCALES, evade_probe
  from flock_jax.federated.engine import build

  run = _run(mode="search", kind=kind)
  poisoned = _collapsing_update(run)
  engine, state = build(run)
  G = state.global_lora
  with engine.mesh_context():
    sub, s, score = evade_probe(engine, G, poisoned, THRESHOLD, mode="search")
    k = EVADE_SCALES.index(s)
    near = [jax.tree.map(lambda x, t=t: x * t, poisoned) for t in EVADE_SCALES[k - 1 : k + 1]]
    scores = P.probe(engine, G, near, mode="search")[0]
  assert k > 0  # unshrunk, the search flags it
  assert scores[1] <= EVADE_MARGIN * THRESHOLD and score == pytest.approx(scores[1], abs=1e-6)
  assert scores[0] > EVADE_MARGIN * THRESHOLD
  for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(near[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _soft_objective(base, pair, last, suffix, in_s, e):
  """The search's J (module docstring) at slot embeddings e [slots, E], written out again."""
  lora_c, cache_c, lora_r, cache_r = pair
  tail = jnp.concatenate([e, jnp.take(base["embed"], suffix, axis=0)])[None]
  tail = jnp.broadcast_to(tail, (last.shape[0], *tail.shape[1:]))
  mass = lambda lora, cache: (TS._tail_probs(base, lora, cache, last, tail, CFG, LCFG) * in_s).sum(
      -1
  )
  return float(
      jnp.mean(jnp.log(mass(lora_r, cache_r) + 1e-9) - jnp.log(mass(lora_c, cache_c) + 1e-9))
  )


def test_the_soft_search_starts_at_its_tokens_ascends_and_stays_within_the_embedding_norm():
  base, g, cand = _models()
  arrays = P.probe_arrays(PROMPTS, S)
  suf, prefix, valid, suffix, in_s = _split(arrays)
  kw = dict(cfg=CFG, lora_cfg=LCFG, domains=2)
  pair, last = _pair(base, cand, g, prefix, valid, 2 + suf)
  ids = jnp.asarray([17, 200], jnp.int32)
  init = jnp.take(base["embed"], ids, axis=0)
  score, token, e = TS.soft_search(base, pair, last, suffix, in_s, init, 0.05, steps=0, **kw)
  # no step: the slots hold the tokens' own embeddings, so it scores what the token search does
  want = TS.triggered_collapse(base, pair, last, suffix, in_s, ids, **kw)
  assert float(score) == pytest.approx(float(want[0]), abs=2e-6) and int(token) == int(want[1])
  _, _, e = TS.soft_search(base, pair, last, suffix, in_s, init, 0.05, steps=3, **kw)
  radius = float(jnp.linalg.norm(base["embed"], axis=-1).max())
  assert float(jnp.linalg.norm(e, axis=-1).max()) <= radius * (1 + 1e-5)
  assert not np.allclose(np.asarray(e), np.asarray(init))
  j0, j3 = (_soft_objective(base, pair, last, suffix, in_s, x) for x in (init, e))
  assert j3 > j0, (j0, j3)


def test_soft_scores_of_a_zero_update_are_gs_own():
  """G + 0 is G: its score against G is 0 and against the base model G's own, whatever the
  search finds; a random update scores above 0 against G."""
  engine, G, updates = _engine_g_updates(1)
  zero = jax.tree.map(jnp.zeros_like, G)
  with engine.mesh_context():
    out = TS.soft_search_scores(engine, G, [zero, updates[0]], slots=2, steps=2, lr=0.05)
  # budget: the two sides of a gain run the same adapter through differently fused programs
  # (float32 reassociation of probabilities <= 1)
  assert out["vs_g"][0] == pytest.approx(0.0, abs=1e-6)
  assert out["vs_base"][0] == pytest.approx(out["g_vs_base"], abs=1e-6)
  assert out["vs_g"][1] > 1e-4
  assert out["vs_base"].shape == out["token_g"].shape == (2,)


def test_the_rounds_soft_search_scores_each_proposal_at_the_embeddings_it_found():
  """search_kind='soft' (the round's probe): with no step, the slots are the embeddings of the
  tokens drawn with the seed, so each proposal scores what those tokens score and reads as
  them; with steps, it scores at least what the offline soft search against the base model
  finds from the same start (the round also scores against G, at the same embeddings)."""
  engine, G, ups = _engine_g_updates(2)
  vocab = engine.run.model.cfg.vocab_size
  soft = dict(kind="soft", slots=2, seed=3)
  with engine.mesh_context():
    still, found, _ = TS.search_scores(engine, G, ups, steps=0, **soft)
    ids = np.random.default_rng(3).integers(0, vocab, size=(1, 2), dtype=np.int32)[0]
    want, _, _ = TS.search_scores(engine, G, ups, ids=ids)
    moved, _, _ = TS.search_scores(engine, G, ups, steps=2, lr=0.05, **soft)
    offline = TS.soft_search_scores(engine, G, ups, slots=2, steps=2, lr=0.05, seed=3)
  np.testing.assert_array_equal(found, np.stack([ids, ids]))
  # budget: the same adapter through a token lookup and through given embeddings (float32)
  np.testing.assert_allclose(still, want, rtol=0, atol=2e-6)
  assert (moved >= offline["vs_base"] - 2e-6).all(), (moved, offline["vs_base"])
  with pytest.raises(ValueError, match="search kind"):
    TS.search_scores(engine, G, ups, kind="hotflip")
