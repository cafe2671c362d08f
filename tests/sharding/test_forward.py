"""A sharded forward equals the single-device forward; vmapped clients share one base."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from flock_jax import sharding as S
from flock_jax.model import (
    LoraConfig,
    forward,
    hidden_states,
    init_params,
    lora_axes,
    param_axes,
    preset,
)
from flock_jax.model.lora import lora_shapes

pytestmark = pytest.mark.numerics  # CI reruns these with XLA:CPU limited to AVX2

CFG = preset("tiny")  # float32, V=272, D=64, H=4, K=2, F=128, L=2
LCFG = LoraConfig(rank=4, alpha=8.0)


# numpy randomness: XLA:CPU compiles jax.random's threefry slowly (~1 s per call here).
def _tokens(shape, seed=0):
  return np.random.default_rng(seed).integers(0, CFG.vocab_size, shape, dtype=np.int32)


def _loras(num_clients):
  """[C, ...]-stacked adapters with random A and non-zero B, so that clients differ."""
  rng = np.random.default_rng(1)
  return jax.tree.map(
      lambda s: (0.1 * rng.standard_normal((num_clients,) + s.shape)).astype(s.dtype),
      lora_shapes(CFG, LCFG),
  )


MESH_DFT = {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.fixture(scope="module")
def sharded():
  """(mesh, shardings, params created directly in their shardings)."""
  mesh = S.make_mesh(MESH_DFT)
  shardings = S.tree_shardings(param_axes(CFG), mesh)
  return mesh, shardings, init_params(CFG, jax.random.key(0), shardings)


@pytest.fixture(scope="module")
def base(sharded):
  """The same values, whole, on one device."""
  return jax.device_put(sharded[2], jax.devices()[0])


def test_sharded_forward_matches_single_device(sharded, base):
  mesh, shardings, params = sharded
  assert base["layers"]["q"].sharding.is_fully_replicated
  assert params["layers"]["q"].sharding.spec == P(None, "fsdp", "tensor")
  assert params["layers"]["q"].addressable_shards[0].data.shape == (2, 32, 32)
  assert params["embed"].addressable_shards[0].data.shape == (136, 32)

  tokens = _tokens((4, 16))
  tok_sh = NamedSharding(mesh, S.logical_to_spec(("batch", "length"), mesh=mesh))
  assert tok_sh.spec == P(("data", "fsdp"), None)
  fwd = jax.jit(lambda p, t: forward(p, t, CFG), in_shardings=(shardings, tok_sh))
  logits = fwd(params, jax.device_put(tokens, tok_sh))
  want = jax.jit(lambda p, t: forward(p, t, CFG))(base, tokens)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-5, rtol=1e-5)
  # GSPMD keeps vocab on 'tensor' and the batch on 'data'; see the xfail below for 'fsdp'.
  assert logits.sharding.spec[0] in ("data", ("data", "fsdp"))
  assert logits.sharding.spec[2] == "tensor"


def test_residual_stream_batch_is_split_over_fsdp(sharded):
  mesh, shardings, params = sharded
  tok_sh = NamedSharding(mesh, P(("data", "fsdp"), None))
  fn = jax.jit(lambda p, t: hidden_states(p, t, CFG), in_shardings=(shardings, tok_sh))
  with jax.set_mesh(mesh):  # activation constraints need the mesh in context
    out = fn.lower(params, jax.ShapeDtypeStruct((4, 16), jnp.int32, sharding=tok_sh)).compile()
  spec = tuple(out.output_shardings.spec) + (None,) * 3
  assert spec[:3] == (("data", "fsdp"), None, None)


def test_vmapped_clients_match_per_client_forwards(base):
  mesh = S.make_mesh({"clients": 2, "fsdp": 2, "tensor": 2})
  base_sh = S.tree_shardings(param_axes(CFG), mesh)
  params = jax.device_put(base, base_sh)
  loras = _loras(2)
  lora_sh = S.tree_shardings(lora_axes(CFG, LCFG, clients=True), mesh)
  loras_sharded = jax.device_put(loras, lora_sh)
  assert loras_sharded["q"]["a"].sharding.spec == P("clients", None, "fsdp", None)
  tokens = _tokens((2, 2, 16))  # [clients, batch, length]
  tok_sh = NamedSharding(mesh, S.logical_to_spec(("clients", "batch", "length"), mesh=mesh))
  assert tok_sh.spec == P("clients", "fsdp", None)

  def per_client(p, lora, t):
    return forward(p, t, CFG, lora=lora, lora_cfg=LCFG)

  step = jax.jit(
      jax.vmap(per_client, in_axes=(None, 0, 0), spmd_axis_name="clients"),
      in_shardings=(base_sh, lora_sh, tok_sh),
  )
  compiled = step.lower(params, loras_sharded, jax.device_put(tokens, tok_sh)).compile()
  logits = compiled(params, loras_sharded, jax.device_put(tokens, tok_sh))
  for c in range(2):
    lora_c = jax.tree.map(lambda x: x[c], loras)
    want = jax.jit(per_client)(base, lora_c, tokens[c])
    np.testing.assert_allclose(np.asarray(logits[c]), np.asarray(want), atol=1e-5, rtol=1e-5)
  # Clients really differ (the test would not notice a shared adapter otherwise).
  assert not np.allclose(np.asarray(logits[0]), np.asarray(logits[1]), atol=1e-3)
  # Output: one client per client group, vocab on 'tensor'.
  assert logits.sharding.spec[0] == "clients"
  assert logits.sharding.spec[3] == "tensor"
  # One base, not one per client: no 'clients' axis in any base sharding, as compiled.
  base_in = compiled.input_shardings[0][0]
  for sh in jax.tree.leaves(base_in, is_leaf=lambda x: isinstance(x, NamedSharding)):
    assert "clients" not in jax.tree.leaves(tuple(sh.spec)), sh
  assert base_in["layers"]["q"].spec == P(None, "fsdp", "tensor")
  # So each device holds a quarter of the (non-norm) base: sharded fsdp*tensor = 4 ways,
  # replicated over the 2 client groups, never stacked [K, ...].
  q = params["layers"]["q"]
  assert q.shape == base["layers"]["q"].shape
  assert q.addressable_shards[0].data.size * 4 == q.size
