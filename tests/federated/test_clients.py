"""Stacked (vmapped) client training and voter evaluation equal their per-client loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax import sharding as shd
from flock_jax.federated import clients as cl
from flock_jax.federated.evaluation import heldout_loss_loop, make_heldout_loss
from flock_jax.federated.loss import token_loss
from flock_jax.federated.population import synthetic_rows
from flock_jax.model.config import preset
from flock_jax.model.llama import init_params
from flock_jax.model.lora import LoraConfig, init_lora
from flock_jax.optim import make_optimizer
from flock_jax.run_config import default_optim

pytestmark = pytest.mark.numerics  # CI reruns these with XLA:CPU limited to AVX2

CFG = preset("tiny")
LCFG = LoraConfig(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def setup():
  base = init_params(CFG, jax.random.key(0))
  g = init_lora(CFG, LCFG, jax.random.key(1))
  # a non-zero B so that every adapter leaf gets a gradient from the first step
  g = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(2), x.shape), g)
  return base, g


def _batches(k, e, b, t, seed=0):
  rng = np.random.default_rng(seed)
  rows = [synthetic_rows(rng, e * b, t, 64, 1 + i % 3) for i in range(k)]
  return {key: np.stack([r[key].reshape(e, b, t) for r in rows]) for key in rows[0]}


def _close(a, b, tol=1e-5):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(
        np.asarray(x), np.asarray(y), atol=tol, rtol=tol, err_msg=jax.tree_util.keystr(path)
    )


# Error budget of vmapped vs looped training (both fp32; vmap reorders the batched
# reductions, so results agree to rounding, not bit for bit). A gradient entry is a sum of
# n <= B*T*hidden = 2*16*64 = 2048 products: its rounding error is at most n*u*sum|terms|
# with u = 2**-24, i.e. <= 1.3e-4 of the gradient scale (<= ~0.1 here) = 1.3e-5. Adam turns a
# gradient error dg into an update error <= lr * dg / eps_adam, so the test uses eps_adam = 1e-3
# (with the default 1e-8, an entry whose gradient is ~0 can flip the sign of its update: a
# difference of lr from one last bit). Per step: 1e-2 * 1.3e-5 / 1e-3 = 1.3e-4; over E = 2
# steps 2.6e-4. A real bug (a client given another's data or state) moves entries by ~lr = 1e-2.
LR, ADAM_EPS, E_STEPS = 1e-2, 1e-3, 2
TRAIN_TOL = E_STEPS * LR * (2048 * 2.0**-24 * 0.1) / ADAM_EPS


def test_vmapped_local_train_equals_loop(setup):
  mu = 0.1  # FedProx term on: the proximal centre is the global adapter
  base, g = setup
  tx = make_optimizer(
      default_optim(lr=LR, eps=ADAM_EPS, grad_clip=1.0, weight_decay=0.0, schedule="constant")
  )
  k, e = 3, E_STEPS
  state = cl.init_client_state(CFG, LCFG, tx, jax.random.key(3), k, global_lora=g)
  batches = _batches(k, e, 2, 16)
  keys = jax.random.split(jax.random.key(4), k)
  loop_opt = jax.tree.map(jnp.copy, state.opt_state)  # local_train donates its opt_states
  vm = cl.make_local_train(CFG, LCFG, tx, mu=mu)(base, g, state.opt_state, batches, keys)
  lp = cl.local_train_loop(
      cl.make_client_train(CFG, LCFG, tx, mu=mu), base, g, loop_opt, batches, keys
  )
  adapters, deltas, opt, losses = vm
  assert losses.shape == (k, e)
  _close(adapters, lp[0], TRAIN_TOL)
  _close(deltas, lp[1], TRAIN_TOL)
  _close(opt, lp[2], TRAIN_TOL)  # Adam moments move by (1 - b) * dg, below the update's bound
  _close(losses, lp[3], TRAIN_TOL)  # loss is smooth in the adapter: same order as the update
  # deltas are trained - global, and training moved every client
  _close(deltas, jax.tree.map(lambda a, s: a - s, adapters, jax.tree.map(lambda x: x[None], g)))
  assert all(float(jnp.abs(d[i]).max()) > 0 for d in jax.tree.leaves(deltas) for i in range(k))
  # clients saw different data, so their adapters differ
  a0 = jax.tree.leaves(adapters)[1]
  assert float(jnp.abs(a0[0] - a0[1]).max()) > 1e-6


def test_local_train_on_clients_mesh_matches_single_device(setup):
  base, g = setup
  # SGD: the mesh splits the batch over 'data', which reorders float sums; Adam's
  # g/sqrt(v) would blow those last-bit differences up on near-zero gradients.
  tx = make_optimizer(
      default_optim(name="sgd", lr=1e-1, momentum=0.0, grad_clip=1.0, schedule="constant")
  )
  k = 4
  batches = _batches(k, 1, 2, 16, seed=1)
  keys = jax.random.split(jax.random.key(5), k)
  ref_state = cl.init_client_state(CFG, LCFG, tx, jax.random.key(3), k, global_lora=g)
  ref = cl.make_local_train(CFG, LCFG, tx, donate=False)(
      base, g, ref_state.opt_state, batches, keys
  )
  mesh = shd.make_mesh({"clients": 4, "data": 2})
  state = cl.init_client_state(CFG, LCFG, tx, jax.random.key(3), k, global_lora=g, mesh=mesh)
  spec = jax.tree.leaves(state.adapters)[0].sharding.spec
  assert spec[0] == "clients"
  with jax.set_mesh(mesh):
    out = cl.make_local_train(CFG, LCFG, tx, donate=False)(base, g, state.opt_state, batches, keys)
  _close(out[0], ref[0])
  _close(out[3], ref[3])


def test_chunked_loss_and_grad_equal_full(setup):
  base, g = setup
  batch = {k: v[0, 0] for k, v in _batches(1, 1, 2, 20).items()}
  f = lambda lora, c: token_loss(base, lora, batch, CFG, LCFG, chunk_size=c)
  full, gfull = jax.value_and_grad(f)(g, None)
  chunked, gch = jax.value_and_grad(f)(g, 8)  # 20 is not a multiple of 8: padded chunk
  np.testing.assert_allclose(float(full), float(chunked), rtol=1e-6)
  _close(gch, gfull, tol=1e-6)
  # the mask decides which positions count
  b2 = dict(batch, loss_mask=np.zeros_like(batch["loss_mask"]))
  assert float(token_loss(base, g, b2, CFG, LCFG)) == 0.0


def test_heldout_loss_vmapped_equals_loop(setup):
  base, g = setup
  m = 3
  adapters = jax.vmap(lambda k: init_lora(CFG, LCFG, k))(jax.random.split(jax.random.key(6), m))
  adapters = jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.key(7), x.shape), adapters
  )
  batches = _batches(2, 2, 2, 16, seed=2)  # V=2 voters, n=2 batches, B=2
  batches["loss_mask"][1, 1] = 0.0  # a weight-0 batch must not count
  vm = make_heldout_loss(CFG, LCFG)(base, adapters, batches)
  lp = heldout_loss_loop(CFG, LCFG, base, adapters, batches)
  assert vm.shape == (2, m)
  np.testing.assert_allclose(np.asarray(vm), np.asarray(lp), rtol=1e-5, atol=1e-6)
  # voter 1's loss only covers its first batch
  one = jax.tree.map(lambda x: x[0], adapters)
  b10 = {k: v[1, 0] for k, v in batches.items()}
  np.testing.assert_allclose(
      float(vm[1, 0]), float(token_loss(base, one, b10, CFG, LCFG)), rtol=1e-5
  )
  assert len(set(np.round(np.asarray(vm[0]), 6))) == m  # candidates are told apart


def test_cpu_scoring_in_blocks_equals_the_whole_sequence():
  """On the CPU the scoring loss runs its lm head over blocks of positions when the
  vocabulary is large (evaluation.cpu_score_chunk): the same [V, M] losses as the loop
  reference, which computes each whole sequence at once. On a split clients axis the block
  counts the rows of one device."""
  from flock_jax.federated.evaluation import CPU_SCORE_BLOCK_BYTES, cpu_score_chunk

  cfg = CFG.replace(vocab_size=49152, num_layers=1)  # SmolLM2's vocabulary
  tokens = CPU_SCORE_BLOCK_BYTES // (4 * cfg.vocab_size)
  assert cpu_score_chunk(cfg, 16, 64) == tokens // 16 < 64  # the 16 rows below
  assert cpu_score_chunk(CFG, 4, 64) is None  # the tiny vocabulary: one block
  base = init_params(cfg, jax.random.key(0))
  lora = init_lora(cfg, LCFG, jax.random.key(1))
  adapters = jax.tree.map(
      lambda x: jnp.stack(
          [x + 0.02 * i * jax.random.normal(jax.random.key(i), x.shape) for i in range(2)]
      ),
      lora,
  )
  batches = _batches(4, 1, 2, 64, seed=4)  # V=4, n=1, B=2, T=64: 16 rows, 8 a device
  rng = np.random.default_rng(5)
  batches["tokens"] = rng.integers(0, cfg.vocab_size, batches["tokens"].shape).astype(np.int32)
  batches["loss_mask"][..., :5] = 0.0
  ref = np.asarray(heldout_loss_loop(cfg, LCFG, base, adapters, batches))
  out = np.asarray(make_heldout_loss(cfg, LCFG)(base, adapters, batches))
  mesh = shd.make_mesh({"clients": 2}, devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    split = np.asarray(make_heldout_loss(cfg, LCFG)(base, adapters, batches))
  # float32 sums of <= 128 per-token losses ~11 in another order: a few units of 2^-24 each
  for got in (out, split):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)
  assert abs(ref[0, 0] - ref[0, 1]) > 1e-3  # candidates are told apart


@pytest.mark.parametrize("voters,candidates", [(4, 2), (3, 2)])
def test_heldout_loss_splits_voters_over_the_clients_axis(setup, voters, candidates):
  """Under a mesh with a split clients axis, scoring is divided over its devices: by voter,
  or by candidate when the axis does not divide V. Host (numpy) batches, as rounds pass
  them: without spmd_axis_name every device scored every voter (the program replicated).
  Each device's program does half the FLOPs; the [V, M] result is whole on every device
  (every host of a multi-host job reads it)."""
  base, g = setup
  adapters = jax.tree.map(lambda x: jnp.stack([x + 0.01 * i for i in range(candidates)]), g)
  batches = _batches(voters, 1, 2, 16, seed=3)
  fn = make_heldout_loss(CFG, LCFG)
  ref = fn(base, adapters, batches)
  one = fn.lower(base, adapters, batches).compile().cost_analysis()["flops"]
  mesh = shd.make_mesh({"clients": 2}, devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    fn = make_heldout_loss(CFG, LCFG)
    out = fn(base, adapters, batches)
    each = fn.lower(base, adapters, batches).compile().cost_analysis()["flops"]
  assert 0.45 < each / one < 0.55, (each, one)
  assert out.sharding.is_fully_replicated
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_local_train_splits_clients_given_host_inputs(setup):
  """The clients of one local_train call are divided over the clients axis even when every
  input arrives replicated (a fresh optimizer state, host batches)."""
  base, g = setup
  tx = make_optimizer(default_optim(name="sgd", lr=1e-1, momentum=0.0, schedule="constant"))
  k = 4
  batches = _batches(k, 1, 2, 16, seed=4)
  keys = jax.random.split(jax.random.key(8), k)
  opt = cl.fresh_opt_state(tx, g, k)
  mesh = shd.make_mesh({"clients": 2}, devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    _, deltas, _, losses = cl.make_local_train(CFG, LCFG, tx, donate=False)(
        base, g, opt, batches, keys
    )
  assert losses.sharding.shard_shape(losses.shape)[0] == k // 2
  leaf = jax.tree.leaves(deltas)[0]
  assert leaf.sharding.shard_shape(leaf.shape)[0] == k // 2
