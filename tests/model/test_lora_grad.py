"""The LoRA branch's hand-written backward equals autodiff through the merged weight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.model import LlamaConfig, forward, init_params
from flock_jax.model.lora import LoraConfig, init_lora, merge

pytestmark = pytest.mark.numerics  # CI reruns these with XLA:CPU limited to AVX2


@pytest.mark.parametrize("targets", [("q", "k", "v", "o", "gate", "up", "down"), ("q", "v")])
def test_lora_gradients_equal_autodiff_of_merged_weights(targets):
  cfg = LlamaConfig(
      vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2
  )
  lcfg = LoraConfig(rank=4, alpha=8.0, targets=targets)
  params = init_params(cfg, jax.random.key(0))
  lora = init_lora(cfg, lcfg, jax.random.key(1))
  lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 10)))
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(3, 10, cfg.vocab_size)), jnp.float32)

  def ours(l):
    return jnp.sum(forward(params, tokens, cfg, lora=l, lora_cfg=lcfg) * weights)

  def merged(l):  # W + s A B, differentiated by JAX alone
    return jnp.sum(forward(merge(params, l, lcfg), tokens, cfg) * weights)

  np.testing.assert_allclose(ours(lora), merged(lora), rtol=1e-5)
  g_ours, g_ref = jax.grad(ours)(lora), jax.grad(merged)(lora)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g_ours)[0], jax.tree.leaves(g_ref)):
    assert float(jnp.abs(b).max()) > 0, path
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path)
    )
  # and the gradient flowing back into the activations (through dx) is right too
  emb_ours = jax.grad(
      lambda p: jnp.sum(forward(p, tokens, cfg, lora=lora, lora_cfg=lcfg) * weights)
  )(params)["embed"]
  emb_ref = jax.grad(lambda p: jnp.sum(forward(merge(p, lora, lcfg), tokens, cfg) * weights))(
      params
  )["embed"]
  np.testing.assert_allclose(np.asarray(emb_ours), np.asarray(emb_ref), rtol=2e-4, atol=2e-6)
