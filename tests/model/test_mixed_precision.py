"""bf16 compute with float32 accumulation: logits within a stated error budget of float32,
the backward's matmuls on the fast bf16 x bf16 -> f32 path, f32 LoRA masters' gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.checkpoint.hf_names import params_from_state_dict
from flock_jax.federated.loss import token_loss
from flock_jax.model import forward
from flock_jax.model import layers as L
from flock_jax.model.lora import LoraConfig, init_lora
from tests.model.hf_reference import random_hf_model, state_dict_numpy
from tests.model.test_parity import tiny

pytestmark = pytest.mark.numerics

U_BF16 = 2.0**-8  # unit roundoff of bfloat16: 2^-p, p = 8 significand bits (eps/2)


def rel_rms(a, b) -> float:
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def _batch(cfg, b=2, t=32, seed=0):
  tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
  ones = np.ones_like(tokens)
  pos = np.broadcast_to(np.arange(t, dtype=np.int32), tokens.shape)
  return {
      "tokens": tokens,
      "loss_mask": ones.astype(np.float32),
      "segment_ids": ones,
      "positions": pos,
  }


@pytest.mark.parametrize("seed", [4, 5])
def test_bf16_logits_within_budget_of_f32(seed):
  """Error budget: every rounding to bf16 on a logit's path (each projection's weights,
  its input and its output, the residual add: ~10 per layer, plus the embedding and the
  head) has relative error uniform in +-u, RMS u/sqrt(3); k independent ones add up to
  sqrt(k) u / sqrt(3) (3 layers: 0.0076; measured 0.0063 and 0.0059, 0.0065 on both seeds
  before SwiGLU and the LoRA add rounded once). Allowed: 3x."""
  cfg = tiny()
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=seed)), cfg)
  tokens = _batch(cfg, seed=seed)["tokens"]
  f32 = np.asarray(forward(params, tokens, cfg))
  cb = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
  bf = np.asarray(forward(jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params), tokens, cb))
  k = 10 * cfg.num_layers + 5
  budget = 3 * np.sqrt(k) * U_BF16 / np.sqrt(3)
  err = rel_rms(bf, f32)
  assert 0 < err <= budget, (err, budget)


def _dots(jaxpr, out):
  """Every dot_general equation in a jaxpr and its sub-jaxprs (scan bodies, custom vjps)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append(eqn)
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _dots(sub.jaxpr, out)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _dots(sub, out)
  return out


def test_bf16_training_step_runs_every_matmul_bf16_with_f32_accumulation():
  """The mechanism behind the bf16 speed: forward and backward, every matmul (the 7
  projections, LoRA's A and B, the lm head, and attention's two einsums and their four
  backward ones) takes two bf16 operands and accumulates in f32. Autodiff would have run
  attention's backward as float32 x bf16 dots, which XLA:CPU computes in float32."""
  cfg = tiny().replace(dtype="bfloat16", param_dtype="bfloat16")
  lcfg = LoraConfig(rank=4, alpha=8.0)
  base = jax.tree.map(
      lambda x: x.astype(jnp.bfloat16),
      params_from_state_dict(state_dict_numpy(random_hf_model(tiny(), seed=1)), tiny()),
  )
  lora = init_lora(cfg, lcfg, jax.random.key(0))  # float32 masters
  batch = _batch(cfg)
  grad = jax.grad(lambda l: token_loss(base, l, batch, cfg, lcfg))
  dots = _dots(jax.make_jaxpr(grad)(lora).jaxpr, [])
  weight_dots = [e for e in dots if max(v.aval.ndim for v in e.invars) <= 3]
  attention_dots = [e for e in dots if max(v.aval.ndim for v in e.invars) == 5]
  # per layer: 7 projections + 2x7 LoRA forward, 7 dx + 4x7 LoRA backward; head fwd + bwd
  assert len(weight_dots) >= 56 + 2
  assert len(attention_dots) >= 6  # 2 forward, 4 backward (one scanned layer body)
  assert len(weight_dots) + len(attention_dots) == len(dots)
  for e in dots:
    dtypes = [v.aval.dtype for v in e.invars]
    assert dtypes == [jnp.bfloat16, jnp.bfloat16], (e, dtypes)
    assert e.params["preferred_element_type"] == jnp.float32, e
  g = jax.jit(grad)(lora)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g))  # f32 master gradients
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))


def test_bf16_lora_gradients_close_to_f32():
  """LoRA gradients of a bf16 step against the f32 step: the same budget reasoning as the
  logits, with the backward doubling the roundings on the path (allowed: 6 sqrt(k) u/sqrt(3)
  relative RMS, k = 20 L + 10, over all of B's gradients)."""
  cfg = tiny()
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=6)), cfg)
  lcfg = LoraConfig(rank=4, alpha=8.0)
  lora = init_lora(cfg, lcfg, jax.random.key(1))
  lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)
  batch = _batch(cfg, seed=3)
  g32 = jax.grad(lambda l: token_loss(params, l, batch, cfg, lcfg))(lora)
  cb = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
  pb = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  gbf = jax.grad(lambda l: token_loss(pb, l, batch, cb, lcfg))(lora)
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(gbf)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
  k = 20 * cfg.num_layers + 10
  assert rel_rms(a, b) <= 6 * np.sqrt(k) * U_BF16 / np.sqrt(3), rel_rms(a, b)


def test_dense_custom_backward_equals_autodiff_in_f32():
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  w = jax.random.normal(jax.random.key(1), (16, 24))
  ref = lambda x, w: jnp.sum(jnp.sin(jnp.einsum("bti,io->bto", x, w)))
  ours = lambda x, w: jnp.sum(jnp.sin(L.dense(x, w)))
  for r, o in zip(jax.grad(ref, (0, 1))(x, w), jax.grad(ours, (0, 1))(x, w)):
    np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-5, atol=1e-5)


def test_swiglu_custom_backward_equals_autodiff():
  """layers.swiglu's hand-written backward against autodiff of silu(g) * u, in float64
  (x64 on: the comparison is of the formulas, not of roundings)."""
  with jax.enable_x64(True):
    g = jax.random.normal(jax.random.key(0), (2, 5, 12), jnp.float64) * 3
    u = jax.random.normal(jax.random.key(1), (2, 5, 12), jnp.float64)
    w = jax.random.normal(jax.random.key(2), (2, 5, 12), jnp.float64)
    ref = lambda g, u: jnp.sum(w * jax.nn.silu(g) * u)
    ours = lambda g, u: jnp.sum(w * L.swiglu(g, u))
    np.testing.assert_allclose(float(ours(g, u)), float(ref(g, u)), rtol=1e-13)
    for r, o in zip(jax.grad(ref, (0, 1))(g, u), jax.grad(ours, (0, 1))(g, u)):
      np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-12, atol=1e-13)


def test_bf16_swiglu_rounds_once():
  """In bf16 each output is the float32 value rounded once: within half a bf16 unit
  (U_BF16 relative) of the exact value, plus float32's own error. jax.nn.silu in bf16
  rounded after each of its operations, about 3x that."""
  g = jax.random.normal(jax.random.key(3), (4096,)) * 3
  u = jax.random.normal(jax.random.key(4), (4096,))
  gb, ub = g.astype(jnp.bfloat16), u.astype(jnp.bfloat16)
  exact = jax.nn.silu(np.asarray(gb, np.float64)) * np.asarray(ub, np.float64)
  got = np.asarray(L.swiglu(gb, ub), np.float64)
  assert L.swiglu(gb, ub).dtype == jnp.bfloat16
  err = np.abs(got - exact) / np.maximum(np.abs(exact), 1e-30)
  assert err.max() <= U_BF16 * (1 + 2**-12), err.max()  # + float32's few units in exp, /
  dg, du = jax.grad(lambda g, u: jnp.sum(L.swiglu(g, u).astype(jnp.float32)), (0, 1))(gb, ub)
  assert dg.dtype == du.dtype == jnp.bfloat16


def test_bf16_projection_adds_its_lora_branch_in_f32_and_rounds_once():
  """llama._project in bf16: the frozen projection and the LoRA branch (each a float32
  accumulation) are summed in float32 and rounded to bf16 once. Rounding the projection to
  bf16 first, as an earlier version did, added up to half a bf16 unit of the projection to
  each output's error (that form fails this bound)."""
  from flock_jax.model import llama

  k = jax.random.split(jax.random.key(9), 4)
  x = jax.random.normal(k[0], (2, 8, 32)).astype(jnp.bfloat16)
  w = (jax.random.normal(k[1], (32, 48)) / 6).astype(jnp.bfloat16)
  # a branch about a tenth of the projection, as LoRA's are
  ab = {"a": jax.random.normal(k[2], (32, 4)) / 6, "b": jax.random.normal(k[3], (4, 48)) / 5}
  got = llama._project(x, w, ab, 0.5, None, 0.0, jnp.bfloat16)
  assert got.dtype == jnp.bfloat16
  f64 = lambda t: np.asarray(t, np.float64)
  y = f64(x) @ f64(w)
  low = f64(np.asarray(f64(x) @ f64(ab["a"].astype(jnp.bfloat16)), np.float32).astype(jnp.bfloat16))
  lora = 0.5 * low @ f64(ab["b"].astype(jnp.bfloat16))
  exact = y + lora
  err = np.abs(f64(got) - exact)
  # half a bf16 unit of the result; one bf16 unit (2u) of slack in each rank-r activation
  # (rounded here from float64, there from a float32 sum: a near tie can round either way);
  # float32's accumulation error (32- and 4-term dots) is far below 2^-12 of the terms
  slack = 0.5 * np.abs(low) @ np.abs(f64(ab["b"].astype(jnp.bfloat16)))
  bound = U_BF16 * (np.abs(exact) + 2 * slack) + 2**-12 * (np.abs(y) + np.abs(lora))
  assert np.all(err <= bound), (err - bound).max()


def _bf16(t):
  return np.asarray(np.asarray(t, np.float32).astype(jnp.bfloat16), np.float64)


def test_bf16_projection_backward_rounds_dx_once():
  """The backward of llama._project in bf16: the output's bf16 cotangent goes into every
  backward matmul as it came, and dX (the frozen projection's and the LoRA branch's, each a
  float32 accumulation) is summed in float32 and rounded once. Rounding each part to bf16
  and adding them in bf16 (autodiff of the two functions, as before) fails the bound;
  LoRA's gradients come back float32, within float32's accumulation error of the formula."""
  from flock_jax.model import llama

  k = jax.random.split(jax.random.key(10), 5)
  x = jax.random.normal(k[0], (2, 8, 32)).astype(jnp.bfloat16)
  w = (jax.random.normal(k[1], (32, 48)) / 6).astype(jnp.bfloat16)
  ab = {"a": jax.random.normal(k[2], (32, 4)) / 6, "b": jax.random.normal(k[3], (4, 48)) / 5}
  dy = jax.random.normal(k[4], (2, 8, 48)).astype(jnp.bfloat16)
  scale = 0.5
  _, vjp = jax.vjp(lambda x, ab: llama._project(x, w, ab, scale, None, 0.0, jnp.bfloat16), x, ab)
  dx, dab = vjp(dy)
  assert dx.dtype == jnp.bfloat16 and dab["a"].dtype == dab["b"].dtype == jnp.float32
  f64 = lambda t: np.asarray(t, np.float64)
  a16, b16 = _bf16(ab["a"]), _bf16(ab["b"])
  dxb = f64(dy) @ f64(w).T
  dlow = _bf16(scale * np.asarray(f64(dy) @ b16.T, np.float32))  # bf16, as the matmul takes it
  dxl = dlow @ a16.T
  exact = dxb + dxl
  # half a bf16 unit of the result; one unit of slack in each rank-r cotangent (a near tie
  # can round either way); float32's accumulation far below 2^-12 of the terms
  bound = U_BF16 * (np.abs(exact) + 2 * np.abs(dlow) @ np.abs(a16).T) + 2**-12 * (
      np.abs(dxb) + np.abs(dxl)
  )
  assert np.all(np.abs(f64(dx) - exact) <= bound), (np.abs(f64(dx) - exact) - bound).max()
  three_roundings = _bf16(_bf16(dxb) + _bf16(dxl))
  assert np.any(np.abs(three_roundings - exact) > bound)
  # LoRA's gradients: dA = x^T dlow, dB = scale low^T dy (low = x A in bf16)
  low = _bf16(np.asarray(f64(x) @ a16, np.float32))
  xs, dys, dls, ls = (t.reshape(-1, t.shape[-1]) for t in (f64(x), f64(dy), dlow, low))
  da, db = xs.T @ dls, scale * ls.T @ dys
  # dlow's and low's bf16 roundings can differ by a near tie (as above): one unit of each
  da_tol = 2 * U_BF16 * np.abs(xs).T @ np.abs(dls) + 1e-5 * np.abs(da).max()
  assert np.all(np.abs(f64(dab["a"]) - da) <= da_tol)
  db_tol = 2 * U_BF16 * scale * np.abs(ls).T @ np.abs(dys) + 1e-5 * np.abs(db).max()
  assert np.all(np.abs(f64(dab["b"]) - db) <= db_tol)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_projection_custom_backward_equals_autodiff(quantized, dropout):
  """llama._lora_linear's hand-written backward against autodiff of the plain formula
  x w + s dropped(x) A B, in float64 (x64 on: the formulas, not roundings), for a float and
  an int8 base, with and without LoRA dropout."""
  from flock_jax.model import llama, quant

  with jax.enable_x64(True):
    k = jax.random.split(jax.random.key(11), 6)
    x = jax.random.normal(k[0], (2, 5, 16), jnp.float64)
    w = jax.random.normal(k[1], (16, 24), jnp.float64)
    if quantized:
      qw = quant.quantize(w)
      w = {"q": qw["q"], "scale": qw["scale"].astype(jnp.float64)}
    a = jax.random.normal(k[2], (16, 4), jnp.float64)
    b = jax.random.normal(k[3], (4, 24), jnp.float64)
    keep = jax.random.bernoulli(k[4], 0.75, x.shape) if dropout else None
    c = jax.random.normal(k[5], (2, 5, 24), jnp.float64)

    def plain(x, a, b):
      base = (x @ w["q"].astype(x.dtype)) * w["scale"] if quantized else x @ w
      xl = x if keep is None else jnp.where(keep, x / (1 - dropout), 0)
      return jnp.sum(c * (base + 0.5 * (xl @ a) @ b))

    ours = lambda x, a, b: jnp.sum(c * llama._lora_linear(x, w, a, b, 0.5, dropout, keep))
    np.testing.assert_allclose(float(ours(x, a, b)), float(plain(x, a, b)), rtol=1e-13)
    for r, o in zip(jax.grad(plain, (0, 1, 2))(x, a, b), jax.grad(ours, (0, 1, 2))(x, a, b)):
      np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-12, atol=1e-12)
