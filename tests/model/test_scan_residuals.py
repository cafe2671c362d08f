"""bf16/f16 residuals of the layer scan stored as same-width integers on the CPU
(llama._residuals_as_bits): XLA:CPU would otherwise convert every whole stacked [L, ...]
residual buffer to float32 and back at each layer. The gradients must not change."""

import re

import jax
import numpy as np
import pytest

from flock_jax.federated.loss import token_loss
from flock_jax.model import llama
from flock_jax.model.llama import init_params
from flock_jax.model.lora import LoraConfig, init_lora
from flock_jax.model.quant import prepare_base
from tests.model.test_mixed_precision import U_BF16, _batch, rel_rms
from tests.model.test_parity import tiny

L = 5  # a layer count no other dimension of the tiny model has
_INSTR = re.compile(r"%(\S+) = (\w+)\[([\d,]*)\]\S* (\S+)\(([^)]*)\)")


def _setup(dtype, quantize="none", remat="none"):
  cfg32 = tiny(num_layers=L, remat=remat)
  base32 = init_params(cfg32, jax.random.key(0))
  cfg, base = prepare_base(
      cfg32.replace(dtype=dtype, param_dtype=dtype, quantize=quantize), cfg32, base32
  )
  lcfg = LoraConfig(rank=4, alpha=8.0, dropout=0.1)
  lora = init_lora(cfg, lcfg, jax.random.key(1))
  lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)
  batch = {k: np.stack([v, v[::-1]]) for k, v in _batch(cfg, seed=3).items()}  # 2 clients
  keys = jax.random.split(jax.random.key(5), 2)

  def step(lora):  # vmapped clients, as local training runs them
    one = lambda b, k: jax.value_and_grad(
        lambda l: token_loss(base, l, b, cfg, lcfg, dropout_key=k)
    )(lora)
    return jax.vmap(one)(batch, keys)

  return cfg, jax.jit(step), lora


def _without_bits(monkeypatch, fn):
  """fn() with the plain scan."""
  with monkeypatch.context() as m:
    m.setattr(llama, "_stacks_bf16_by_copy", lambda cfg: False)
    return fn()


def _whole_stack_converts(hlo: str, low: str) -> list[str]:
  """Instructions converting a whole [L, ...] buffer of `low` (bf16, f16) to float32."""
  shapes = {m[1]: (m[2], m[3]) for m in _INSTR.finditer(hlo)}
  out = []
  for m in _INSTR.finditer(hlo):
    name, dtype, dims, op, operands = m.groups()
    if op == "convert" and dtype == "f32" and dims.startswith(f"{L},") and dims.count(",") >= 2:
      src = shapes.get(operands.strip().lstrip("%"))
      if src == (low, dims):
        out.append(name)
  return out


@pytest.mark.parametrize(
    "dtype,quantize,remat",
    [("bfloat16", "none", "none"), ("float16", "none", "none"), ("bfloat16", "int8", "none")]
    + [("bfloat16", "none", "full"), ("bfloat16", "none", "dots")],
)
def test_gradients_with_integer_residuals_equal_the_plain_scan(monkeypatch, dtype, quantize, remat):
  """Same forward, same bits saved: loss and every LoRA gradient agree. Budget: one
  rounding of the 16-bit dtype in relative RMS, in case XLA fuses the two programs
  differently (on the machine that wrote this they are bit for bit equal)."""
  cfg, step, lora = _setup(dtype, quantize, remat)
  assert llama._stacks_bf16_by_copy(cfg)
  loss1, g1 = step(lora)
  loss0, g0 = _without_bits(monkeypatch, lambda: _setup(dtype, quantize, remat)[1](lora))
  u = U_BF16 if dtype == "bfloat16" else 2.0**-11  # float16: p = 11
  np.testing.assert_allclose(np.asarray(loss1), np.asarray(loss0), rtol=u)
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g1)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g0)])
  assert np.isfinite(a).all() and np.abs(b).max() > 0
  assert rel_rms(a, b) <= u, rel_rms(a, b)


def test_no_whole_stack_conversion_in_the_compiled_step(monkeypatch):
  """The mechanism: without the integer residuals, XLA:CPU's compiled bf16 step converts
  whole [L, ...] residual stacks to f32 (the detector finds them); with them, none."""
  cfg, step, lora = _setup("bfloat16")
  with_bits = step.lower(lora).compile().as_text()
  plain = _without_bits(monkeypatch, lambda: _setup("bfloat16")[1].lower(lora).compile().as_text())
  assert _whole_stack_converts(plain, "bf16"), "detector found nothing in the plain scan"
  assert _whole_stack_converts(with_bits, "bf16") == []
  assert re.search(rf"u16\[{L},[\d,]+\]\S* dynamic-update-slice\(", with_bits)


def _grad_step_of_base(cfg):
  """A jitted bf16 LoRA gradient with the base as an argument (as local training passes it:
  a closed-over base would be folded into constants at compile time)."""
  lcfg = LoraConfig(rank=4, alpha=8.0)
  batch = _batch(cfg, seed=3)
  step = jax.jit(lambda base, l: jax.grad(lambda l: token_loss(base, l, batch, cfg, lcfg))(l))
  return step, init_lora(cfg, lcfg, jax.random.key(1))


def test_weights_scan_as_integers_not_as_a_float32_copy(monkeypatch):
  """XLA:CPU has no bf16 dynamic-slice: scanning the bf16 weight stacks, it converts each
  whole [L, ...] stack to float32 every step and converts every layer's slice back
  (SmolLM2: ~10% of a bf16 step). The stacks are scanned as integer bits instead: the
  compiled step converts no whole weight stack, where the plain one does, and the LoRA
  gradients are the plain scan's."""
  cfg = tiny(num_layers=L).replace(dtype="bfloat16", param_dtype="bfloat16")
  base = init_params(cfg, jax.random.key(0))
  step, lora = _grad_step_of_base(cfg)
  packed = step.lower(base, lora).compile().as_text()
  with monkeypatch.context() as m:
    m.setattr(llama, "_weights_as_bits", lambda w: w)
    step0, _ = _grad_step_of_base(cfg)
    plain = step0.lower(base, lora).compile().as_text()
    g0 = step0(base, lora)
  weight_dims = {",".join(map(str, w.shape)) for w in jax.tree.leaves(base["layers"])}
  stack = lambda hlo: [
      n for n in _whole_stack_converts(hlo, "bf16") if _dims(hlo, n) in weight_dims
  ]
  assert stack(plain), "detector found no weight-stack conversion in the plain scan"
  assert stack(packed) == []
  # The same bits reach the same matmuls; one bf16 rounding allowed (fusions may differ).
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(step(base, lora))])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g0)])
  assert np.abs(b).max() > 0 and rel_rms(a, b) <= U_BF16, rel_rms(a, b)


def _dims(hlo: str, name: str) -> str:
  return next(m[3] for m in _INSTR.finditer(hlo) if m[1] == name)


def test_differentiating_a_bf16_base_on_the_cpu_is_refused_by_name():
  """The packed weights are integers to autodiff: a gradient with respect to the base would
  silently be zero, so it is refused, naming why and what to do."""
  cfg = tiny(num_layers=2).replace(dtype="bfloat16", param_dtype="bfloat16")
  base = init_params(cfg, jax.random.key(0))
  lcfg = LoraConfig(rank=4, alpha=8.0)
  lora = init_lora(cfg, lcfg, jax.random.key(1))
  batch = _batch(cfg, seed=3)
  with pytest.raises(NotImplementedError, match="base weights.*float32"):
    jax.grad(lambda b: token_loss(b, lora, batch, cfg, lcfg))(base)


def test_a_base_packed_once_per_run_gives_the_same_gradients_without_the_stack_copies():
  """llama.scan_ready packs the layer stacks once (the engine keeps that copy for training
  and scoring): the compiled step then copies no whole [L, ...] stack into integers, where
  packing inside the step does at every call, and the gradients are the same. float32
  params pass through unchanged."""
  cfg = tiny(num_layers=L).replace(dtype="bfloat16", param_dtype="bfloat16")
  base = init_params(cfg, jax.random.key(0))
  ready = llama.scan_ready(base, cfg)
  assert all(isinstance(n, llama._Packed) for n in llama._leaves(ready["layers"]))
  assert isinstance(ready["embed"], llama._Packed)  # its lookups gather the bits
  np.testing.assert_array_equal(llama._unpack(ready["embed"]), base["embed"])
  step, lora = _grad_step_of_base(cfg)
  dims = {",".join(map(str, w.shape)) for w in jax.tree.leaves(base["layers"])}
  made = re.compile(r"= [us]16\[([\d,]+)\]\S* (?:fusion|bitcast-convert|copy)\(")
  whole = lambda hlo: [d for d in made.findall(hlo) if d in dims]
  assert whole(step.lower(base, lora).compile().as_text()), "detector found no stack copy"
  assert whole(step.lower(ready, lora).compile().as_text()) == []
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(step(ready, lora))])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(step(base, lora))])
  assert np.abs(b).max() > 0 and rel_rms(a, b) <= U_BF16, rel_rms(a, b)
  f32 = tiny(num_layers=L)
  p32 = init_params(f32, jax.random.key(0))
  assert llama.scan_ready(p32, f32) is p32


def test_scan_ready_stores_the_tied_head_in_slices_and_scoring_copies_no_head():
  """A tied embedding's lm head is stored once by scan_ready in vocabulary slices
  (llama.HEAD_T: each slice in both layouts, [D, Vc] and [Vc, D]). With it, the compiled
  scoring program of a SmolLM2-shaped head ([49152, 576]: XLA:CPU copied the embedding into
  the head's layout at every bf16 call) copies no head slice, and the loss and LoRA
  gradients equal those of the plain embedding to float32's reordered sums (a bf16 rounding
  of dX may flip: the gradients' budget is one bf16 unit, relative RMS)."""
  from flock_jax.federated.evaluation import make_heldout_loss

  cfg = tiny(num_layers=1, hidden_size=576, intermediate_size=64, vocab_size=49152)
  cfg = cfg.replace(
      dtype="bfloat16",
      param_dtype="bfloat16",
      num_heads=9,
      num_kv_heads=3,
      tie_word_embeddings=True,
  )
  base = init_params(cfg, jax.random.key(0))
  ready = llama.scan_ready(base, cfg)
  slices = ready[llama.HEAD_T]
  assert len(slices) == 49152 // llama.CPU_HEAD_SLICE
  embed = np.asarray(base["embed"])
  np.testing.assert_array_equal(np.concatenate([np.asarray(t) for t, _ in slices], 1), embed.T)
  np.testing.assert_array_equal(np.concatenate([np.asarray(w) for _, w in slices], 0), embed)
  lcfg = LoraConfig(rank=4, alpha=8.0)
  lora = jax.tree.map(lambda x: x[None], init_lora(cfg, lcfg, jax.random.key(1)))
  # [4, 128]: at a few positions XLA:CPU reads the head in place, at these it copied it
  batch = {k: np.asarray(v)[None, None] for k, v in _batch(cfg, b=4, t=128).items()}
  score = make_heldout_loss(cfg, lcfg)  # no target fraction: the whole-sequence program
  head_copy = re.compile(r"= bf16\[(?:576,8192|8192,576|576,49152)\]\S* (?:copy|fusion)\(")
  assert head_copy.findall(score.lower(ready, lora, batch).compile().as_text()) == []
  plain = {**{k: v for k, v in ready.items() if k != llama.HEAD_T}, "embed": base["embed"]}
  np.testing.assert_allclose(
      np.asarray(score(ready, lora, batch)), np.asarray(score(plain, lora, batch)), rtol=1e-5
  )
  one = {k: v[0, 0] for k, v in batch.items()}
  lora1 = jax.tree.map(lambda x: x[0], lora)
  grad = jax.jit(jax.grad(lambda l, b: token_loss(b, l, one, cfg, lcfg)))
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad(lora1, ready))])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad(lora1, plain))])
  assert np.abs(b).max() > 0 and rel_rms(a, b) <= U_BF16, rel_rms(a, b)


@pytest.mark.parametrize("width", [4, 5, 12])
def test_sliced_head_and_its_backward_equal_autodiff(width):
  """llama.slice_logits over llama.head_slices(w, width) (equal slices of at most `width`
  of V = 12 columns, each read in its stored layouts) against autodiff of x @ w^T, in
  float64 (x64 on: the formulas, not roundings). The slices are w's copies: the head's
  gradient is w's, counted once."""
  with jax.enable_x64(True):
    k = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(k[0], (2, 5, 8), np.float64)
    w = jax.random.normal(k[1], (12, 8), np.float64)
    c = jax.random.normal(k[2], (2, 5, 12), np.float64)
    slices = llama.head_slices(w, width)
    assert len(slices) == -(-12 // width) and max(t.shape[1] for t, _ in slices) <= width
    ref = lambda x, w: (c * (x @ w.T)).sum()
    ours = lambda x, w: (c * llama.head_logits(x, (llama.head_slices(w, width), w))).sum()
    np.testing.assert_allclose(float(ours(x, w)), float(ref(x, w)), rtol=1e-13)
    for r, o in zip(jax.grad(ref, (0, 1))(x, w), jax.grad(ours, (0, 1))(x, w)):
      np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-12, atol=1e-12)


def test_only_16_bit_compute_on_the_cpu_takes_the_integer_path():
  assert not llama._stacks_bf16_by_copy(tiny())
  assert llama._stacks_bf16_by_copy(tiny().replace(dtype="bfloat16"))


def _rms_norm_autodiff(x, w, eps):
  """RMSNorm as written before it had its own backward (autodiff differentiates it)."""
  x32 = x.astype(np.float32)
  x32 = x32 * jax.lax.rsqrt(jax.numpy.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (w.astype(np.float32) * x32).astype(x.dtype)


@pytest.mark.numerics
def test_rms_norm_gradients_are_autodiffs_in_float32():
  """The hand-written RMSNorm backward, dx = r (dn - n mean(dn n)) and dw, against autodiff in
  float32: the same sums in another order. Budget: dx sums D = 64 terms, dw 15 rows; two
  orderings differ by at most 2 n u max|g| per entry (u = 2^-24, n = 64 + 15 + 4 for the
  elementwise roundings on the way)."""
  from flock_jax.model import layers

  r = np.random.default_rng(0)
  x = jax.numpy.asarray(r.normal(size=(3, 5, 64)) * 3.0, np.float32)
  w = jax.numpy.asarray(1.0 + 0.1 * r.normal(size=(64,)), np.float32)
  ct = jax.numpy.asarray(r.normal(size=x.shape), np.float32)
  f = lambda fn: lambda x, w: jax.numpy.sum(fn(x, w, 1e-5) * ct)
  got = jax.grad(f(layers.rms_norm), argnums=(0, 1))(x, w)
  ref = jax.grad(f(_rms_norm_autodiff), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(layers.rms_norm(x, w, 1e-5), _rms_norm_autodiff(x, w, 1e-5))
  for a, b in zip(got, ref):
    budget = 2 * (64 + 15 + 4) * 2.0**-24 * float(jax.numpy.abs(b).max())
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=budget, rtol=0)
  assert float(jax.numpy.abs(got[0]).max()) > 1e-2


def test_bf16_layer_stacks_no_float32_activation():
  """What a bf16 model saves per scanned layer for its backward: only 16-bit activations
  (as integers on the CPU), no float32 [.., D] (the norms' upcast inputs were three such
  stacks per norm), no float32 [.., T, S] (attention's probabilities) and no bf16 stack
  (which XLA:CPU would convert whole at every layer)."""
  from jax._src.ad_checkpoint import saved_residuals

  cfg, _, lora = _setup("bfloat16")
  base = init_params(cfg, jax.random.key(0))
  batch = _batch(cfg, seed=3)
  lcfg = LoraConfig(rank=4, alpha=8.0)
  stacked = [
      a
      for a, where in saved_residuals(lambda l: token_loss(base, l, batch, cfg, lcfg), lora)
      if "output of scan" in where and a.shape[0] == L
  ]
  assert stacked, "found no stacked residual"
  wide = [str(a) for a in stacked if a.dtype != np.uint16 and a.shape[-1] > 1]
  assert wide == [], wide  # float32 [.., 1] (a norm's 1/rms a row) is all that may stay
