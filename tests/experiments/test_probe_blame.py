"""Blame under the anchored probes (config.federation.probe_exempt_g).

The anchored and search probes score a proposal G + Δ against G and against the base model and
keep the larger: the base-model score bounds what a whole run lets into G. Once G itself carries
a collapse or a backdoor, that score also flags every honest proposal built on G (measured on
SmolLM2, docs/results, experiment 5). With probe_exempt_g a proposal's score against the base
model counts only where it exceeds G's own on the same prompts: a proposal that adds nothing is
not blamed for G, one that adds to it still is.

Checked here against the definition, on the clean probe and on the triggered one: a zero
update scores G's own collapse without the exemption and nothing with it, and any update scores
max(its collapse against G, its collapse against the base model where that exceeds G's).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_probe import THRESHOLD, _collapsing_update, _run
from test_trigger_search import _engine

from flock_jax.federated import probe as P
from flock_jax.federated import trigger_search as TS
from flock_jax.federated.engine import build


def _exempt(run):
  return dataclasses.replace(
      run, federation=dataclasses.replace(run.federation, probe_exempt_g=True)
  )


def test_the_clean_probe_does_not_blame_a_proposal_for_g_own_collapse():
  run = _run(mode="anchored")
  poisoned = _collapsing_update(run)
  engine, state = build(run)
  engine_x, _ = build(_exempt(run))
  zero = jax.tree.map(jnp.zeros_like, state.global_lora)
  G = jax.tree.map(jnp.add, state.global_lora, poisoned)  # G carries the collapse
  more = jax.tree.map(lambda x: 0.5 * x, poisoned)
  ups = [zero, more, jax.tree.map(jnp.negative, more)]
  with engine.mesh_context():
    plain = P.probe(engine, G, ups, mode="anchored")[0]
    got = P.probe(engine_x, G, ups, mode="anchored")[0]
    vs_g = P.probe(engine, G, ups, mode="collapse")[0]
    full = [jax.tree.map(jnp.add, G, u) for u in ups]
    vs_base = P.probe(engine, zero, full, mode="collapse")[0]  # G + Δ against the base model
    own = P.probe(engine, zero, [G], mode="collapse")[0][0]
  assert own > THRESHOLD + 0.05  # G itself collapses
  assert plain[0] == pytest.approx(own, abs=1e-6)  # without the exemption: blamed for G
  assert abs(got[0]) < 1e-6  # with it: a zero update adds nothing
  # the other updates against the definition (the zero update's base score equals G's own,
  # a tie the lines above settle; these are 0.004 or more from it)
  want = np.maximum(vs_g, np.where(vs_base > own, vs_base, -np.inf))
  np.testing.assert_allclose(got[1:], want[1:], rtol=0, atol=1e-6)


def test_the_triggered_probe_does_not_blame_a_proposal_for_g_own_collapse():
  engine, state = _engine()
  G = jax.tree.map(
      lambda x: x + 0.3 * jax.random.normal(jax.random.key(4), x.shape), state.global_lora
  )
  zero = jax.tree.map(jnp.zeros_like, G)
  u = jax.tree.map(lambda x: 0.2 * jax.random.normal(jax.random.key(5), x.shape), G)
  ups = [zero, u]
  with engine.mesh_context():
    _, found, _ = TS.search_scores(engine, G, ups, slots=2, topk=4, steps=1)
    for k, ids in enumerate(found):
      score = lambda exempt: TS.search_scores(engine, G, ups[k : k + 1], ids=ids, exempt_g=exempt)
      plain, got = score(False)[0][0], score(True)[0][0]
      cand = jax.tree.map(jnp.add, G, ups[k])
      own, c_base, c_g = (
          _against(engine, zero, G, ids),
          _against(engine, zero, cand, ids),
          _against(engine, G, cand, ids),
      )
      assert plain == pytest.approx(max(c_base, c_g), abs=1e-6)
      assert got == pytest.approx(max(c_g, c_base if c_base > own else -np.inf), abs=1e-6)
      if k == 0:  # the zero update
        assert own > 0.01 and plain == pytest.approx(own, abs=1e-6)  # blamed for G
        assert abs(got) < 1e-6  # not with the exemption


def _against(engine, ref, cand, ids):
  """Triggered collapse of `cand` against `ref` alone at the slot tokens `ids`."""
  arrays = engine.population.probe
  tok, seg = np.asarray(arrays["tokens"]), np.asarray(arrays["segment_ids"])
  d, n, t = tok.shape
  suf = TS.common_suffix(tok, seg)
  prefix = jnp.asarray(tok[..., : t - suf].reshape(d * n, -1))
  valid = jnp.asarray(seg[..., : t - suf].reshape(d * n, -1) > 0)
  in_s = np.zeros(engine.run.model.cfg.vocab_size, bool)
  in_s[np.asarray(arrays["answer_tokens"], np.int64)] = True
  kw = dict(cfg=engine.run.model.cfg, lora_cfg=engine.run.lora)
  extra = len(ids) + suf
  cache_c, last = TS.prefill(engine.base, cand, prefix, valid, extra=extra, **kw)
  cache_r, _ = TS.prefill(engine.base, ref, prefix, valid, extra=extra, **kw)
  score, _ = TS.triggered_collapse(
      engine.base,
      (cand, cache_c, ref, cache_r),
      last,
      jnp.asarray(tok[0, 0, t - suf :]),
      jnp.asarray(in_s),
      jnp.asarray(ids, jnp.int32),
      domains=d,
      **kw,
  )
  return float(score)
