"""The training lm head with its gradient formed in the forward pass (loss.fused_nll_sum):
autodiff's loss and gradient, in blocks of positions, with only dhidden [N, D] kept for the
backward instead of [N, V] logits. Local training on the CPU runs it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.federated import clients as cl
from flock_jax.federated import loss as L
from flock_jax.model.config import preset
from flock_jax.model.llama import head_slices, init_params
from flock_jax.model.lora import LoraConfig, init_lora
from tests.federated.test_head_at_targets import U32, _opt, _train_tol
from tests.model.test_mixed_precision import U_BF16

pytestmark = pytest.mark.numerics  # CI reruns these with XLA:CPU limited to AVX2


def _problem(n, d, v, dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(k[0], (n, d), dtype)
  emb = (jax.random.normal(k[1], (v, d), dtype) / np.sqrt(d)).astype(dtype)
  t = jax.random.randint(k[2], (n,), 0, v)
  w = (jax.random.uniform(k[3], (n,)) > 0.3).astype(jnp.float32)  # some positions weigh 0
  return x, emb, t, w


def _close_to_scale(a, r, terms):
  """|a - r| within `terms` float32 roundings of r's largest entry: the same sums in another
  order (a sum of m terms moves by at most m u of its terms' magnitude, first order)."""
  a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
  assert np.abs(a - r).max() <= terms * U32 * np.abs(r).max(), (np.abs(a - r).max(), terms)


def _reference(x, emb, t, w):
  """sum(w * -log softmax(x emb^T)[t]), written from the formula (no loss.py code)."""
  logp = jax.nn.log_softmax(x @ emb.T, axis=-1)
  return -jnp.sum(w * jnp.take_along_axis(logp, t[:, None], axis=-1)[:, 0])


def _head(form, emb):
  """The heads loss.py takes: the [D, V] projection, or a tied embedding's in vocabulary
  slices (`llama.head_slices`: of at most 16 columns, V = 50 in four; or one slice)."""
  if form == "plain":
    return emb.T
  return (head_slices(emb, 16 if form == "slices" else emb.shape[0]), emb)


@pytest.mark.parametrize("form", ["plain", "slices", "one slice"])
@pytest.mark.parametrize("block", [None, 8, 37, 100])
def test_loss_and_gradient_equal_the_formula_in_float64(form, block):
  """Every block size (8: five blocks, the last padded; 37 and 100: one), the [D, V] head
  and the tied head in slices: the formula's value and gradient in float64 (x64 on: the
  formulas are compared, not roundings). The cotangent is not 1, as in a mean loss."""
  with jax.enable_x64(True):
    x, emb, t, w = _problem(37, 16, 50, jnp.float64)
    head = _head(form, emb)
    ours = lambda x: 0.3 * L.fused_nll_sum(x, head, t, w, block)
    ref = lambda x: 0.3 * _reference(x, emb, t, w)
    (v, g), (v0, g0) = jax.value_and_grad(ours)(x), jax.value_and_grad(ref)(x)
    np.testing.assert_allclose(float(v), float(v0), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-12, atol=1e-14)
    # the gradient can fail: a wrong target's term moves it
    g_bad = jax.grad(lambda x: 0.3 * L.fused_nll_sum(x, head, (t + 1) % 50, w, block))(x)
    assert np.abs(np.asarray(g_bad) - np.asarray(g0)).max() > 1e-3


@pytest.mark.parametrize("form", ["plain", "slices"])
def test_a_differentiated_head_gets_autodiffs_gradient(form):
  """The fused form keeps no logits, so it cannot give the head's gradient; where the head
  is differentiated it falls back to autodiff's form, for the head and the hidden states
  (a tied head in slices: the embedding's gradient, the slices being its copies)."""
  x, emb, t, w = _problem(20, 8, 30, jnp.float32, seed=1)
  if form == "plain":
    ours = jax.grad(lambda x, e: L.fused_nll_sum(x, e.T, t, w, 8), (0, 1))(x, emb)
  else:
    sl = head_slices(emb, 16)
    ours = jax.grad(lambda x, e: L.fused_nll_sum(x, (sl, e), t, w, 8), (0, 1))(x, emb)
  ref = jax.grad(lambda x, e: _reference(x, e, t, w), (0, 1))(x, emb)
  for a, b in zip(ours, ref):  # dhidden sums V = 30 terms, dhead N = 20
    _close_to_scale(a, b, terms=30 + 20 + 8)
  assert float(jnp.abs(ours[1]).max()) > 0  # not a zero stand-in


def test_autodiffs_sliced_loss_equals_the_formula_in_float64():
  """`_nll_sum` under the tied head in slices (scoring, and training where the head is not
  fused): its value and autodiff's gradients for the hidden states and the embedding (the
  custom backward of `_sliced_head_terms`) equal the formula's in float64."""
  with jax.enable_x64(True):
    x, emb, t, w = _problem(37, 16, 50, jnp.float64, seed=3)
    ours = lambda x, e: 0.3 * L._nll_sum(x, (head_slices(e, 16), e), t, w)
    ref = lambda x, e: 0.3 * _reference(x, e, t, w)
    (v, g), (v0, g0) = [jax.value_and_grad(f, (0, 1))(x, emb) for f in (ours, ref)]
    np.testing.assert_allclose(float(v), float(v0), rtol=1e-13)
    for a, b in zip(g, g0):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_bf16_dhidden_within_its_rounding_budget():
  """In bf16 (bf16 hidden states and head, float32 logits and accumulation), dhidden has
  two roundings: each `w (softmax - onehot)` entry rounded to bf16 before the matmul (U_BF16
  of each term), and the float32 sum rounded to bf16 once. The bound below adds those up
  per entry, with float32's own: V = 512 products accumulated (512 u32 of the terms'
  magnitudes) and the last rounding's relative error on top of the first's."""
  x, emb, t, w = _problem(64, 32, 512, jnp.float32, seed=2)
  xb, eb = x.astype(jnp.bfloat16), emb.astype(jnp.bfloat16)
  head = (head_slices(eb, 128), eb)  # four slices
  g = jax.grad(lambda x: L.fused_nll_sum(x, head, t, w, 16).astype(jnp.float32))(xb)
  assert g.dtype == jnp.bfloat16
  f64 = lambda a: np.asarray(a, np.float64)
  logits = f64(xb) @ f64(eb).T
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  dl = f64(w)[:, None] * (p - np.eye(512)[np.asarray(t)])
  exact = dl @ f64(eb)
  terms = np.abs(dl) @ np.abs(f64(eb))
  bound = (U_BF16 + 512 * U32) * terms * (1 + U_BF16) + U_BF16 * np.abs(exact)
  err = np.abs(f64(g) - exact)
  assert (err <= bound).all(), (err / bound).max()
  # the bound is not loose enough to pass anything: bf16 dhidden rounded twice more fails it
  worse = f64(((g.astype(jnp.float32) * 1.01).astype(jnp.bfloat16)))
  assert not (np.abs(worse - exact) <= bound).all()


def _temp_bytes(fn, *args):
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_the_backward_keeps_no_logits():
  """A training step's temporary memory, a large vocabulary (its [N, V] float32 logits are
  16 MiB): autodiff's form holds the logits (and their exponentials) for the backward; the
  fused form, in blocks of 16 positions, a few blocks' worth (logits, exponentials, gradient)."""
  cfg = preset("tiny").replace(vocab_size=32768, num_layers=1)
  lcfg = LoraConfig(rank=4, alpha=8.0)
  base = init_params(cfg, jax.random.key(0))
  lora = init_lora(cfg, lcfg, jax.random.key(1))
  rng = np.random.default_rng(0)
  b, t = 2, 64
  batch = {
      "tokens": jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32),
      "loss_mask": jnp.ones((b, t), jnp.int32),
      "segment_ids": jnp.ones((b, t), jnp.int32),
      "positions": jnp.tile(jnp.arange(t, dtype=jnp.int32), (b, 1)),
  }
  logits = b * t * cfg.vocab_size * 4

  def step(fused, block=None):
    loss = lambda l: L.token_loss(base, l, batch, cfg, lcfg, fused=fused, head_block=block)
    return jax.jit(jax.value_and_grad(loss))

  assert _temp_bytes(step(False), lora) >= logits
  assert _temp_bytes(step(True, 16), lora) < logits / 2  # 16 of 128 positions a block
  (v0, g0), (v1, g1) = step(False)(lora), step(True, 16)(lora)
  # the loss: a logit sums D products, its log-sum-exp V terms, the loss N = 128 terms; a
  # LoRA gradient sums N * D products of dhidden, each a V-term sum
  np.testing.assert_allclose(float(v1), float(v0), rtol=(64 + 32768 + 128) * U32)
  for a, r in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    _close_to_scale(a, r, terms=32768 + b * t * cfg.hidden_size)


def test_local_train_on_the_cpu_runs_the_fused_head():
  """make_local_train on the CPU: the fused head by default, its blocks from
  CPU_TRAIN_BLOCK_BYTES and the clients beside each other. Two clients' [N, V] logits are
  256 MiB here: autodiff's form (fused_head=False) holds them all for the backward, the
  fused one a few 48 MiB blocks. Both train alike."""
  cfg = preset("tiny").replace(vocab_size=65536, num_layers=1)
  lcfg = LoraConfig(rank=4, alpha=8.0)
  base = init_params(cfg, jax.random.key(0))
  g = init_lora(cfg, lcfg, jax.random.key(1))
  tx = _opt()  # Adam's eps 1e-3: a near-zero gradient entry cannot flip its update's sign
  k, e, b, t = 2, 1, 2, 256
  rng = np.random.default_rng(1)
  batches = {
      "tokens": rng.integers(0, cfg.vocab_size, (k, e, b, t)).astype(np.int32),
      "loss_mask": np.ones((k, e, b, t), np.int32),
      "segment_ids": np.ones((k, e, b, t), np.int32),
      "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (k, e, b, t)).copy(),
  }
  state = cl.init_client_state(cfg, lcfg, tx, jax.random.key(3), k, global_lora=g)
  keys = jax.random.split(jax.random.key(4), k)
  args = (base, g, state.opt_state, batches, keys)
  fused = cl.make_local_train(cfg, lcfg, tx, donate=False)
  plain = cl.make_local_train(cfg, lcfg, tx, donate=False, fused_head=False)
  assert L.cpu_train_block(cfg, k, b * t) == L.CPU_TRAIN_BLOCK_BYTES // (4 * 65536 * k) < b * t
  logits = k * b * t * cfg.vocab_size * 4
  assert _temp_bytes(plain, *args) >= logits
  assert _temp_bytes(fused, *args) < logits * 3 / 4
  out, ref = fused(*args), plain(*args)
  v, n = cfg.vocab_size, b * t  # the losses: D-, V- and N-term float32 sums reordered
  np.testing.assert_allclose(
      np.asarray(out[3]), np.asarray(ref[3]), rtol=(cfg.hidden_size + v + n) * U32
  )
  tol = _train_tol(steps=e, lr=1e-2, n=v + n * cfg.hidden_size)  # a gradient entry's sums
  for a, r in zip(jax.tree.leaves(out[1]), jax.tree.leaves(ref[1])):  # deltas
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=tol, atol=tol)


def test_the_cpu_fuses_unless_a_mesh_splits_a_clients_rows():
  from flock_jax import sharding as shd

  assert cl.fuses_head() == (jax.default_backend() == "cpu")
  assert not cl.fuses_head(False) and cl.fuses_head(True)
  with jax.set_mesh(shd.make_mesh({"clients": 2, "tensor": 4})):
    assert cl.fuses_head()
  for axis in ("data", "fsdp"):  # the blocks would cross the rows' devices
    with jax.set_mesh(shd.make_mesh({"clients": 2, axis: 4})):
      assert not cl.fuses_head()
