"""The lm head at target positions only (loss.py `capacity`, model.head_at_targets): the
same loss and gradients as the whole sequence, fewer logits, and a whole-sequence fallback
for a batch with more targets than the capacity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax import sharding as shd
from flock_jax.federated import clients as cl
from flock_jax.federated import loss as L
from flock_jax.federated.evaluation import make_heldout_loss
from flock_jax.federated.population import synthetic_population, synthetic_rows
from flock_jax.model.config import preset
from flock_jax.model.llama import init_params
from flock_jax.model.lora import LoraConfig, init_lora
from flock_jax.optim import make_optimizer
from flock_jax.run_config import default_optim

pytestmark = pytest.mark.numerics  # CI reruns these with XLA:CPU limited to AVX2

CFG = preset("tiny")
LCFG = LoraConfig(rank=4, alpha=8.0)

# Error budgets. The capped and the whole programs do the same arithmetic in another order: a
# logit sums D products, its log-sum-exp V terms, a loss up to 128 per-token terms here, and
# reordering a float32 sum of m terms moves it by at most m * u of its terms' magnitude
# (u = 2^-24, first order). A LoRA gradient sums B * T * D products (<= 4,096 here).
U32 = 2.0**-24
LOSS_TOL = (CFG.hidden_size + CFG.vocab_size + 128) * U32
GRAD_TOL = {"float32": 4096 * U32, "bfloat16": 2.0**-7}  # bf16: a flipped rounding, one ulp


@pytest.fixture(scope="module")
def setup():
  """The tiny base and an adapter with a non-zero B (every leaf gets a gradient)."""
  noisy = lambda x: x + 0.01 * jax.random.normal(jax.random.key(2), x.shape)
  return init_params(CFG, jax.random.key(0)), jax.tree.map(
      noisy, init_lora(CFG, LCFG, jax.random.key(1))
  )


def _packed_batch(rng, b, t, vocab=CFG.vocab_size):
  """[b, t] rows of two packed segments each, a prompt (no loss) in each, then padding."""
  tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
  seg = np.zeros((b, t), np.int32)
  pos = np.zeros((b, t), np.int32)
  mask = np.zeros((b, t), np.float32)
  for r in range(b):
    cut, end = rng.integers(t // 4, t // 2), rng.integers(3 * t // 4, t)
    for s, (lo, hi) in enumerate([(0, cut), (cut, end)], start=1):
      seg[r, lo:hi], pos[r, lo:hi] = s, np.arange(hi - lo)
      mask[r, lo + (hi - lo) // 3 : hi] = 1.0  # the first third of a segment is its prompt
  return {"tokens": tokens, "loss_mask": mask, "segment_ids": seg, "positions": pos}


def test_capacity_and_host_count():
  assert L.target_capacity(None, 4, 128) is None
  assert L.target_capacity(0.75, 4, 128) == 384
  assert L.target_capacity(0.7, 4, 128) == 368  # ceil(358.4) = 359 -> a multiple of 16
  assert L.target_capacity(0.97, 4, 128) is None  # 512: no fewer positions than B * T
  assert L.target_capacity(0.0, 4, 128) == L.TARGET_QUANTUM
  batch = _packed_batch(np.random.default_rng(0), 3, 32)
  _, w = L.next_token_targets({k: jnp.asarray(v) for k, v in batch.items()})
  assert L.most_targets(batch) == int((np.asarray(w) != 0).sum()) > 0
  stacked = {k: np.stack([v, v[:, ::-1] * 0]) for k, v in batch.items()}  # [2, B, T]
  assert L.most_targets(stacked) == L.most_targets(batch)


def test_take_rows_backward_is_autodiffs_scatter():
  x = jax.random.normal(jax.random.key(0), (12, 5))
  order = jax.random.permutation(jax.random.key(1), 12)
  dy = jax.random.normal(jax.random.key(2), (7, 5))
  ours = jax.vjp(lambda x: L._take_rows(x, order, 7), x)[1](dy)[0]
  ref = jax.vjp(lambda x: jnp.take(x, order[:7], axis=0), x)[1](dy)[0]
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype,chunk", [("float32", None), ("bfloat16", None), ("float32", 8)])
def test_targets_only_loss_equals_the_whole_sequence(setup, dtype, chunk):
  """Loss and LoRA gradients, packed rows with prompts and padding: the same terms summed in
  another order (float32 sums of <= 64 per-token terms: a few units of 2^-24), and in bf16
  the same bf16 hidden rows into the same float32 head. With loss_chunk (8 positions of each
  of the 2 rows: 16 gathered positions a chunk), the capacity is split into such chunks."""
  base, g = setup
  cfg = CFG.replace(dtype=dtype, param_dtype=dtype)
  base = jax.tree.map(lambda x: x.astype(dtype) if x.dtype == jnp.float32 else x, base)
  batch = {k: jnp.asarray(v) for k, v in _packed_batch(np.random.default_rng(1), 2, 32).items()}
  cap = L.target_capacity(L.most_targets(batch) / 64, 2, 32)
  assert cap is not None and cap < 64
  f = lambda c: jax.value_and_grad(
      lambda l: L.token_loss(base, l, batch, cfg, LCFG, capacity=c, chunk_size=chunk)
  )
  (l_full, g_full), (l_cap, g_cap) = f(None)(g), f(cap)(g)
  np.testing.assert_allclose(l_cap, l_full, rtol=LOSS_TOL)
  # relative to each leaf's scale; in bf16 the reordered float32 sums are rounded to bf16
  # (the logits' gradient, the hidden states' gradient), where a rounding can flip
  for a, b in zip(jax.tree.leaves(g_cap), jax.tree.leaves(g_full)):
    assert np.abs(a - b).max() <= GRAD_TOL[dtype] * np.abs(b).max(), dtype
  # a capacity that drops targets gives another loss: the comparison can fail
  assert abs(float(f(L.TARGET_QUANTUM)(g)[0]) - float(l_full)) > 1e-3


def _head_rows(jaxpr, vocab, out):
  """Rows of every matmul in `jaxpr` and its sub-jaxprs whose output is logits [B, T, vocab]
  (not the head's [D, vocab] weight gradient, which jax traces and XLA removes)."""
  for eqn in jaxpr.eqns:
    shape = eqn.outvars[0].aval.shape if eqn.outvars else ()
    if eqn.primitive.name == "dot_general" and len(shape) == 3 and shape[-1] == vocab:
      out.append(int(np.prod(shape[:-1])))
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _head_rows(sub.jaxpr, vocab, out)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _head_rows(sub, vocab, out)
  return out


def test_the_head_computes_capacity_rows_only(setup):
  """The capped training step's lm-head matmul is [capacity, V]: none is [B * T, V]."""
  base, g = setup
  batch = {k: jnp.asarray(v) for k, v in _packed_batch(np.random.default_rng(2), 2, 32).items()}
  rows = lambda c: _head_rows(
      jax.make_jaxpr(jax.grad(lambda l: L.token_loss(base, l, batch, CFG, LCFG, capacity=c)))(
          g
      ).jaxpr,
      CFG.vocab_size,
      [],
  )
  # (a custom VJP's primal and forward are both walked: the same matmul twice)
  assert set(rows(None)) == {64}
  assert set(rows(32)) == {32}


def _opt():
  return make_optimizer(default_optim(lr=1e-2, eps=1e-3, weight_decay=0.0, schedule="constant"))


def _client_batches(k, e, b, t, seed):
  rng = np.random.default_rng(seed)
  rows = [_packed_batch(rng, e * b, t) for _ in range(k)]
  return {key: np.stack([r[key].reshape(e, b, t) for r in rows]) for key in rows[0]}


def _train_tol(steps, lr, n, eps=1e-3, grad_scale=0.1):
  """test_clients' budget: a gradient entry off by n * u * its scale moves Adam's update by at
  most lr * that / eps (eps = 1e-3: with 1e-8 an entry whose gradient is ~0 could flip its
  update's sign from one last bit), over `steps` steps."""
  return steps * lr * (n * U32 * grad_scale) / eps


TOL = _train_tol(steps=2, lr=1e-2, n=2 * 32 * 64)


@pytest.mark.parametrize("fits", [True, False])
def test_local_train_runs_capped_where_batches_fit_and_whole_otherwise(setup, fits):
  """make_local_train(target_fraction=f): where every batch's targets fit f * B * T, the
  capped program; where one does not, the whole-sequence program. Both give what the
  whole-sequence function gives (a capped program run on a batch it cannot hold would drop
  targets: another loss)."""
  base, g = setup
  tx, k, e, b, t = _opt(), 2, 2, 2, 32
  batches = _client_batches(k, e, b, t, seed=3)
  need = L.most_targets(batches) / (b * t)
  fraction = need if fits else need / 2
  keys = jax.random.split(jax.random.key(4), k)
  fresh = lambda: cl.init_client_state(CFG, LCFG, tx, jax.random.key(3), k, global_lora=g)
  ref = cl.make_local_train(CFG, LCFG, tx)(base, g, fresh().opt_state, batches, keys)
  fn = cl.make_local_train(CFG, LCFG, tx, target_fraction=fraction)
  out = fn(base, g, fresh().opt_state, batches, keys)
  for a, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=TOL, atol=TOL)
  # the first step's loss, from the same adapter: only the sum's order may differ
  capped = fn.capped(base, g, fresh().opt_state, batches, keys)
  moved = float(jnp.abs(capped[3][:, 0] - ref[3][:, 0]).max() / jnp.abs(ref[3][:, 0]).max())
  assert (moved <= LOSS_TOL) if fits else (moved > 1e-3), moved


def test_heldout_loss_at_targets_on_a_split_clients_axis(setup):
  """Voters' scoring with the head at the targets, on one device and on two (voters split):
  the whole-sequence matrix, to float32 summation order."""
  base, g = setup
  adapters = jax.tree.map(lambda x: jnp.stack([x, x + 0.02]), g)
  batches = _client_batches(4, 2, 2, 32, seed=5)  # V = 4, n = 2, [2, 32]
  fraction = L.most_targets(batches) / 64
  ref = np.asarray(make_heldout_loss(CFG, LCFG)(base, adapters, batches))
  fn = make_heldout_loss(CFG, LCFG, target_fraction=fraction)
  np.testing.assert_allclose(np.asarray(fn(base, adapters, batches)), ref, rtol=LOSS_TOL)
  mesh = shd.make_mesh({"clients": 2}, devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    fn = make_heldout_loss(CFG, LCFG, target_fraction=fraction)
    np.testing.assert_allclose(np.asarray(fn(base, adapters, batches)), ref, rtol=LOSS_TOL)
  small = make_heldout_loss(CFG, LCFG, target_fraction=fraction / 2)
  np.testing.assert_allclose(np.asarray(small(base, adapters, batches)), ref, rtol=LOSS_TOL)
  assert np.abs(np.asarray(small.capped(base, adapters, batches)) - ref).max() > 1e-3


def test_population_fraction_holds_every_batch_it_draws():
  """Population.target_fraction bounds the targets of the batches its participants draw
  (training) and is tight (the synthetic rows are 3/4 targets); for the voters' and the
  reporting batches (scoring) it is their exact most."""
  pop = synthetic_population(4, seq_len=32, train_rows=12, heldout_rows=4, eval_rows=4)
  assert pop.target_fraction(4) == pytest.approx(24 / 32)  # targets at positions 7..30
  assert pop.target_fraction(4, scoring=True) == pytest.approx(24 / 32)
  rng = np.random.default_rng(0)
  pop.train = [_packed_batch(rng, int(rng.integers(2, 9)), 32) for _ in range(4)]
  frac = pop.target_fraction(4)
  cap = L.target_capacity(frac, 4, 32)
  seen = 0
  for r in range(20):
    batches = pop.train_batches(range(4), 3, 4, seed=0, round_index=r)
    seen = max(seen, L.most_targets(batches))
    assert cap is None or L.most_targets(batches) <= cap
  assert 0.8 * frac * 4 * 32 <= seen <= frac * 4 * 32, (seen, frac)
  # the voters' and the reporting batches are fixed: their most, exactly, participant by
  # participant and domain by domain
  pop.heldout = [_packed_batch(rng, int(rng.integers(1, 9)), 32) for _ in range(4)]
  exact = max(
      [L.most_targets(pop.heldout_batches([i], 2, 4)) for i in range(4)]
      + [L.most_targets(pop.eval_batches(4)[1])]
  )
  assert pop.target_fraction(4, scoring=True, num_batches=2) * 4 * 32 == exact


def _run(on: bool, **mesh):
  """The tiny run config of two rounds on the 'local' ledger, head_at_targets `on`."""
  import importlib.util
  import pathlib

  from flock_jax.run_config import from_config

  root = pathlib.Path(__file__).resolve().parents[2]
  spec = importlib.util.spec_from_file_location("flock_config", root / "configs" / "flock.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.data.seq_len, c.ledger.backend, c.eval.every = 32, "local", 1
  c.model.head_at_targets = on
  c.optim.eps = 1e-3  # the error budget's Adam (_train_tol)
  c.mesh.update(mesh)
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters = 6, 2, 3
  f.rounds, f.local_steps, f.batch_size, f.eval_batches, f.eval_batch_size = 2, 2, 4, 1, 4
  return from_config(c)


def _packed_population(seed=7):
  rng = np.random.default_rng(seed)
  pop = synthetic_population(6, seq_len=32, train_rows=8, heldout_rows=4, eval_rows=4)
  pop.train = [_packed_batch(rng, 8, 32) for _ in range(6)]
  pop.heldout = [_packed_batch(rng, 4, 32) for _ in range(6)]
  return pop


def test_rounds_with_the_head_at_targets_equal_the_whole_sequence():
  """Two FLock rounds (config.model.head_at_targets on, the default, and off) on packed
  rows with prompts: the same training losses, voters' gains, reports and global adapter,
  to float32 summation order."""
  from flock_jax.federated.engine import build, make_ledger
  from flock_jax.federated.rounds import flock_round

  pop = _packed_population()
  out = {}
  for on in (True, False):
    run = _run(on)
    engine, state = build(run, population=pop, base=init_params(run.model.cfg, jax.random.key(0)))
    assert hasattr(engine.local_train, "capped") == on
    assert hasattr(engine.heldout_loss, "capped") == on
    ledger = make_ledger(run, state.global_hash)
    ms = []
    for _ in range(2):
      state, m = flock_round(engine, state, ledger)
      ms.append(m)
    out[on] = ms, state.global_lora
  (on_m, on_g), (off_m, off_g) = out[True], out[False]
  # A gain is the difference of two losses ~6, each within LOSS_TOL of the other run's (the
  # adapters differ far less, _train_tol): where every |gain| exceeds that, no vote can flip.
  gain_tol = 2 * LOSS_TOL * 6.0
  for a, b in zip(on_m, off_m):
    assert np.abs(np.asarray(b.gains)).min() > gain_tol, b.gains
    np.testing.assert_allclose(np.asarray(a.gains), np.asarray(b.gains), rtol=0, atol=gain_tol)
    assert a.accepted == b.accepted
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=LOSS_TOL)
    for d in a.heldout_loss:
      np.testing.assert_allclose(a.heldout_loss[d], b.heldout_loss[d], rtol=LOSS_TOL)
  tol = _train_tol(steps=2 * 2, lr=1e-2, n=4 * 32 * 64)  # 2 rounds x E = 2, [4, 32] rows
  for a, b in zip(jax.tree.leaves(on_g), jax.tree.leaves(off_g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol)


def test_a_mesh_that_splits_a_clients_rows_keeps_the_whole_head():
  """The gather runs over a client's rows: on a mesh with a data or fsdp split it would
  cross devices, so there the engine keeps the head at every position; a split of the
  clients and the heads (tensor) keeps each client's rows whole, and the gather."""
  from flock_jax.federated.engine import build

  pop = _packed_population()
  for mesh, capped in (({"clients": 2, "tensor": 4}, True), ({"clients": 2, "fsdp": 4}, False)):
    run = _run(True, **mesh)
    engine, _ = build(run, population=pop, base=init_params(run.model.cfg, jax.random.key(0)))
    assert hasattr(engine.local_train, "capped") == capped, mesh


def test_the_capped_step_does_the_head_work_matmul_flops_counts():
  """XLA's cost analysis of a training step, whole sequence and capped: the difference is
  the lm head's forward and backward at the dropped positions, as
  matmul_flops(head_positions=...) counts it (a large vocabulary, so the head dominates;
  XLA also counts the softmax's elementwise work, a few FLOPs a logit against 256)."""
  from flock_jax.model.config import matmul_flops

  cfg = CFG.replace(vocab_size=4096, num_layers=1)
  base = init_params(cfg, jax.random.key(0))
  g = init_lora(cfg, LCFG, jax.random.key(1))
  tx, k, e, b, t = _opt(), 2, 1, 2, 32
  batches = _client_batches(k, e, b, t, seed=6)
  batches["tokens"] %= cfg.vocab_size
  fraction = L.most_targets(batches) / (b * t)
  cap = L.target_capacity(fraction, b, t)
  state = cl.init_client_state(cfg, LCFG, tx, jax.random.key(3), k, global_lora=g)
  keys = jax.random.split(jax.random.key(4), k)
  fn = cl.make_local_train(cfg, LCFG, tx, donate=False, target_fraction=fraction)
  cost = lambda f: f.lower(base, g, state.opt_state, batches, keys).compile().cost_analysis()
  saved = cost(fn.full)["flops"] - cost(fn.capped)["flops"]
  count = lambda h: matmul_flops(
      cfg, b, t, lora_rank=LCFG.rank, lora_targets=LCFG.targets, train=True, head_positions=h
  )
  expected = k * e * (count(None) - count(cap))
  assert expected == k * e * 2 * 2 * (b * t - cap) * cfg.hidden_size * cfg.vocab_size
  assert 0.95 < saved / expected < 1.15, (saved, expected)
