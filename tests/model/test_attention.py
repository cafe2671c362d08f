"""LlamaConfig.attention: 'xla' (two einsums, the default) and 'cudnn' (cuDNN's fused flash
attention on a GPU). On the CPU: the option's errors. On a GPU (`JAX_PLATFORMS=cuda pytest
tests/model/test_attention.py`): the fused path's logits against Hugging Face's float32
PyTorch Llama within the bf16 budget, and its right-padded loss and LoRA gradients under
vmapped clients against the einsum path's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.checkpoint.hf_names import params_from_state_dict
from flock_jax.federated.loss import token_loss
from flock_jax.model import forward
from flock_jax.model import layers as L
from flock_jax.model.config import ConfigError
from flock_jax.model.llama import hidden_states, logits_from_hidden
from flock_jax.model.lora import LoraConfig, init_lora
from tests.model.hf_reference import random_hf_model, state_dict_numpy
from tests.model.test_mixed_precision import U_BF16, rel_rms
from tests.model.test_parity import tiny

ON_GPU = jax.default_backend() == "gpu"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="cuDNN's fused attention needs a CUDA GPU")


def _cfg(**kw):
  # Head dim 64: the fused kernel's usual shapes (multiple of 8, at most 128 on Hopper).
  return tiny(hidden_size=256, intermediate_size=384, num_heads=4, num_kv_heads=2, **kw)


def test_unknown_attention_is_refused_by_name():
  with pytest.raises(ConfigError, match="attention='flash'"):
    _cfg(attention="flash")


def test_cudnn_attention_refuses_float32_compute():
  with pytest.raises(ConfigError, match="needs dtype bfloat16 or float16"):
    _cfg(attention="cudnn")


@pytest.mark.skipif(ON_GPU, reason="the CPU's error")
def test_cudnn_attention_on_the_cpu_says_it_needs_a_gpu():
  cfg = _cfg(dtype="bfloat16", param_dtype="bfloat16", attention="cudnn")
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=0)), cfg)
  with pytest.raises(ValueError, match="runs on a GPU only; this program's backend is 'cpu'"):
    forward(params, np.zeros((1, 8), np.int32), cfg)


def _padded_batch(cfg, b=3, t=64, seed=0):
  """Right-padded rows of one sequence each, of lengths 64, 41 and 7."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
  seg = np.zeros((b, t), np.int32)
  for row, n in enumerate((64, 41, 7)):
    seg[row, :n] = 1
  pos = np.broadcast_to(np.arange(t, dtype=np.int32), tokens.shape)
  return {
      "tokens": tokens,
      "loss_mask": (seg > 0).astype(np.float32),
      "segment_ids": seg,
      "positions": np.ascontiguousarray(pos),
  }


def test_packing_with_cudnn_attention_is_refused_by_the_run_config():
  from flock_jax.run_config import RunConfigError, from_config
  from configs.flock import get_config

  c = get_config("tiny")
  c.model.overrides = {"dtype": "bfloat16", "param_dtype": "bfloat16", "attention": "cudnn"}
  c.data.pack = True
  with pytest.raises(RunConfigError, match="data.pack=True with .*attention='cudnn'"):
    from_config(c)
  c.data.pack = False
  assert from_config(c).model.cfg.attention == "cudnn"


@gpu_only
@pytest.mark.numerics
@pytest.mark.parametrize("seed", [4, 5])
def test_cudnn_logits_within_the_bf16_budget_of_hf_float32(seed):
  """Budget as in test_mixed_precision (every bf16 rounding on a logit's path, 3x), against
  Hugging Face's float32 Llama: the fused kernel's own roundings (P in bf16, as the einsum
  path does) are inside it."""
  cfg = _cfg(dtype="bfloat16", param_dtype="bfloat16", attention="cudnn")
  hf = random_hf_model(cfg, seed=seed)
  params = params_from_state_dict(state_dict_numpy(hf), cfg)
  tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 128)).astype(np.int32)
  import torch

  with torch.no_grad():
    ref = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
  bf = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  fused = np.asarray(forward(bf, tokens, cfg))
  einsum = np.asarray(forward(bf, tokens, cfg.replace(attention="xla")))
  budget = 3 * np.sqrt(10 * cfg.num_layers + 5) * U_BF16 / np.sqrt(3)
  err, err_xla = rel_rms(fused, ref), rel_rms(einsum, ref)
  assert np.isfinite(fused).all()
  assert 0 < err <= budget, (err, err_xla, budget)


@gpu_only
@pytest.mark.numerics
def test_cudnn_padded_loss_and_lora_grads_match_the_einsum_path():
  """Right padding (cuDNN's row lengths; padded keys masked, the causal square skipped) under
  vmapped clients, as local training runs it: loss and LoRA gradients of the fused path
  against the einsum path, both bf16. Budget: two bf16 computations of one function differ
  by about two bf16 budgets; gradients of a loss, up to twice that again."""
  cfg = _cfg(dtype="bfloat16", param_dtype="bfloat16", attention="cudnn")
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=1)), cfg)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  lcfg = LoraConfig(rank=8, alpha=16.0)
  lora = init_lora(cfg, lcfg, jax.random.key(0))
  lora = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(1), x.shape), lora)
  batches = jax.tree.map(
      lambda *x: np.stack(x), _padded_batch(cfg, seed=0), _padded_batch(cfg, seed=1)
  )

  def loss_and_grad(c):
    one = jax.value_and_grad(lambda lo, bt: token_loss(params, lo, bt, c, lcfg))
    return jax.jit(jax.vmap(one, in_axes=(None, 0)))(lora, batches)  # [2 clients]

  (l_fused, g_fused), (l_xla, g_xla) = loss_and_grad(cfg), loss_and_grad(
      cfg.replace(attention="xla")
  )
  budget = 2 * 3 * np.sqrt(10 * cfg.num_layers + 5) * U_BF16 / np.sqrt(3)
  l_fused, l_xla = np.asarray(l_fused), np.asarray(l_xla)
  assert np.all(np.abs(l_fused - l_xla) <= budget * np.abs(l_xla)), (l_fused, l_xla, budget)
  gf = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(g_fused)])
  gx = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(g_xla)])
  assert np.isfinite(gf).all() and np.abs(gx).max() > 0
  assert rel_rms(gf, gx) <= 2 * budget, (rel_rms(gf, gx), budget)


@pytest.mark.numerics
def test_the_model_rotates_q_and_k_alike_on_the_fused_path(monkeypatch):
  """On the 'cudnn' path the model rotates q and k itself, in [B, T, N, Dh] (the einsum path
  rotates its heads-major copies): a whole bf16 forward through that branch, its fused call
  run by jax's XLA implementation on the CPU, gives the einsum path's logits on every real
  token. Budget: the two differ only in attention's sums, whose bf16 roundings (the
  probabilities and the output, 2 a layer) may land apart: 3 sqrt(2 L) u / sqrt(3) relative
  RMS (equal here). Skipping the rotation on that path is caught (0.027 here)."""
  real_call = L.padded_causal_attention
  monkeypatch.setattr(L.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(
      L, "padded_causal_attention", lambda *a, implementation: real_call(*a, implementation="xla")
  )
  cfg = _cfg(dtype="bfloat16", param_dtype="bfloat16", attention="cudnn")
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=1)), cfg)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  batch = {k: jnp.asarray(v) for k, v in _padded_batch(cfg).items()}
  real = np.asarray(batch["segment_ids"]) > 0

  def logits(c):
    h = hidden_states(
        params, batch["tokens"], c, segment_ids=batch["segment_ids"], positions=batch["positions"]
    )
    return np.asarray(logits_from_hidden(params, h, c), np.float32)[real]

  fused, einsum = logits(cfg), logits(cfg.replace(attention="xla"))
  budget = 3 * np.sqrt(2 * cfg.num_layers) * U_BF16 / np.sqrt(3)
  assert rel_rms(fused, einsum) <= budget, (rel_rms(fused, einsum), budget)
  monkeypatch.setattr(L, "apply_rope", lambda x, cos, sin: x)
  assert rel_rms(logits(cfg), einsum) > budget


@pytest.mark.numerics
def test_the_fused_call_computes_the_einsum_path_on_every_real_token():
  """The arguments 'cudnn' gives jax.nn.dot_product_attention (causal, row lengths from the
  segment ids), run by jax's own XLA implementation on the CPU: every real token's output
  equals the einsum path's under the causal-segment mask (f32, the same sums in another
  order: within 1e-5 relative); padded query rows are loss-masked and not compared."""
  rng = np.random.default_rng(0)
  b, t, h, kh, dh = 3, 64, 4, 2, 32
  q = jnp.asarray(rng.standard_normal((b, t, h, dh)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, t, kh, dh)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((b, t, kh, dh)), jnp.float32)
  seg = jnp.asarray(_padded_batch(_cfg())["segment_ids"])
  ref = np.asarray(L.attention(q, k, v, L.causal_segment_mask(seg)))
  lengths = L.row_lengths(seg)
  assert lengths.tolist() == [64, 41, 7]
  out = np.asarray(L.padded_causal_attention(q, k, v, lengths, implementation="xla"))
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(out[real], ref[real], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="row lengths"):
    L.padded_causal_attention(q, k, v, lengths[:2], implementation="xla")


def _reference_attention(q, k, v, mask):
  """The einsum attention with autodiff's softmax (where, softmax, cast), as before
  attention had its own backward."""
  b, t, h, dh = q.shape
  kh = k.shape[2]
  q = q.reshape(b, t, kh, h // kh, dh)
  s = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) / np.sqrt(dh)
  s = jnp.where(mask[:, None, None], s, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", p, v, preferred_element_type=jnp.float32)
  return out.reshape(b, t, h, dh).astype(v.dtype)


def _qkv_mask(dtype, seed=0, b=2, t=12, h=4, kh=2, dh=16):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.normal(size=(b, t, n, dh)), dtype) for n in (h, kh, kh))
  seg = np.ones((b, t), np.int32)
  seg[1, 9:] = 0  # a padded tail: rows and columns fully masked
  return q, k, v, L.causal_segment_mask(jnp.asarray(seg))


@pytest.mark.numerics
def test_masked_softmax_gradients_are_autodiffs_in_float32():
  """The hand-written softmax backward against autodiff of where-softmax in float32: the same
  formula, summed in another order (the forward too: its operands are heads-major). Budget: a
  gradient entry's path sums n <= S + Dh + 2 = 30
  products (softmax row, head dim, both einsums), each ordering may round every partial sum,
  so two of them differ by at most 2 n u max|g| (u = 2^-24), on every entry alike."""
  q, k, v, mask = _qkv_mask(jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask) * w)
  got = jax.grad(loss(L.attention), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss(_reference_attention), argnums=(0, 1, 2))(q, k, v)
  n = q.shape[1] + q.shape[-1] + 2
  out, ref_out = L.attention(q, k, v, mask), _reference_attention(q, k, v, mask)
  budget = 2 * n * 2.0**-24 * float(jnp.abs(ref_out).max())  # the same sums, reordered
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=budget, rtol=0)
  for g, r in zip(got, ref):
    budget = 2 * n * 2.0**-24 * float(jnp.abs(r).max())
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=budget, rtol=0)
  assert float(jnp.abs(got[0]).max()) > 1e-2  # the gradient is not trivially zero


def test_bf16_attention_keeps_only_bf16_probabilities_for_its_backward():
  """What a bf16 attention saves for its backward (a scanned layer stacks each of these
  per layer): no float32 [.., T, S] array and no broadcast mask, one bf16 [.., T, S]."""
  from jax._src.ad_checkpoint import saved_residuals

  q, k, v, mask = _qkv_mask(jnp.bfloat16)
  t = q.shape[1]
  f = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask).astype(jnp.float32))
  square = lambda res: [a for a, _ in res if a.shape[-2:] == (t, t) and a.size > mask.size]
  got = square(saved_residuals(f(L.attention), q, k, v))
  assert [a.dtype for a in got] == [jnp.bfloat16]
  old = square(saved_residuals(f(_reference_attention), q, k, v))
  assert len(old) > 1 and jnp.float32 in [a.dtype for a in old]  # what it saved before


def _rope_autodiff(x, cos, sin):
  """HF's rotate-half RoPE as written before it had its own backward."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
  return out.astype(x.dtype)


def _rope_case(dtype, seed=0, b=2, t=7, n=3, dh=16):
  from tests.model.test_parity import tiny

  r = np.random.default_rng(seed)
  x = jnp.asarray(r.normal(size=(b, t, n, dh)), dtype)
  positions = jnp.asarray(r.integers(0, 500, (b, t)), jnp.int32)
  cfg = tiny()
  assert cfg.dim_head == dh
  cos, sin = L.rope_tables(positions, cfg)  # [B, T, Dh]
  g = jnp.asarray(r.normal(size=x.shape), dtype)
  return x, cos[:, :, None], sin[:, :, None], g


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rope_backward_is_the_transposed_rotation(dtype):
  """RoPE's hand-written backward against autodiff of the rotate-half forward. Each entry of
  dx is g_i c + g_j s: two products and one sum, in float32 on both sides. In float32 they
  agree to 2 u max|g| (u = 2^-24; one reordering at most). In bf16 (u = 2^-8) autodiff
  rounds g s to bf16 before adding it (at most u max|g|), and both round a sum of magnitude
  up to 2 max|g|, which may land one ulp (2u of it) apart: 5 u max|g| in all."""
  x, cos, sin, g = _rope_case(dtype)
  # Forward: the same two products and sum per entry (a contraction into an FMA may round
  # once less): 4 u32 max|x|, and in bf16 the final roundings may land an ulp apart.
  fwd, ref_fwd = (np.asarray(f(x, cos, sin), np.float32) for f in (L.apply_rope, _rope_autodiff))
  mx = float(np.abs(np.asarray(x, np.float32)).max())
  fwd_budget = 4 * 2.0**-24 * mx + (0 if dtype == jnp.float32 else 2 * U_BF16 * 2 * mx)
  np.testing.assert_allclose(fwd, ref_fwd, atol=fwd_budget, rtol=0)
  got = jax.vjp(lambda x: L.apply_rope(x, cos, sin), x)[1](g)[0]
  ref = jax.vjp(lambda x: _rope_autodiff(x, cos, sin), x)[1](g)[0]
  assert got.dtype == dtype
  u = 2.0**-24 if dtype == jnp.float32 else U_BF16
  budget = (2 if dtype == jnp.float32 else 5) * u * float(jnp.abs(g.astype(jnp.float32)).max())
  np.testing.assert_allclose(
      np.asarray(got, np.float32), np.asarray(ref, np.float32), atol=budget, rtol=0
  )
  # The transpose, not a copy of the forward: <R x, g> = <x, R^T g> in float64.
  x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
  c64, s64 = np.asarray(cos, np.float64), np.asarray(sin, np.float64)
  h = x64.shape[-1] // 2
  rx = x64 * c64 + np.concatenate([-x64[..., h:], x64[..., :h]], -1) * s64
  lhs, rhs = np.sum(rx * g64), np.sum(x64 * np.asarray(got, np.float64))
  assert abs(lhs - rhs) <= 4 * u * np.sum(np.abs(x64 * g64)), (lhs, rhs)


@pytest.mark.numerics
@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_attention_gradients_within_the_budget_of_float32(seed):
  """The bf16 backward (four bf16 x bf16 -> f32 matmuls, ds rounded to bf16) against float32
  autodiff on the same bf16-exact inputs. Budget, as for the logits: a gradient's path has
  k = 3 roundings to bf16 (p, ds or dout's product, the output), relative error uniform in
  +-u, u = 2^-8, so sqrt(k) u / sqrt(3) relative RMS; allowed 3x (measured ~0.003)."""
  q, k, v, mask = _qkv_mask(jnp.bfloat16, seed=seed)
  w = jnp.asarray(np.random.default_rng(seed + 10).normal(size=q.shape), jnp.bfloat16)
  up = lambda x: x.astype(jnp.float32)
  loss = lambda fn: lambda q, k, v: jnp.sum(up(fn(q, k, v, mask)) * up(w))
  got = jax.grad(loss(L.attention), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss(_reference_attention), argnums=(0, 1, 2))(up(q), up(k), up(v))
  budget = 3 * np.sqrt(3) * U_BF16 / np.sqrt(3)
  for name, a, r in zip("qkv", got, ref):
    assert a.dtype == jnp.bfloat16
    err = rel_rms(np.asarray(up(a)), np.asarray(r))
    assert 0 < err <= budget, (name, err, budget)
