"""Logits parity with Hugging Face's PyTorch LlamaForCausalLM on random tiny configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.checkpoint.hf_names import params_from_state_dict
from flock_jax.model import LlamaConfig, RopeScaling, forward
from flock_jax.model.llama import default_positions
from tests.model.hf_reference import hf_logits, random_hf_model, state_dict_numpy

pytestmark = pytest.mark.numerics  # CI reruns these with XLA:CPU limited to AVX2

CASES = {
    "gqa_kv1_untied": dict(num_kv_heads=1, tie_word_embeddings=False),
    "gqa_kv2_tied": dict(num_kv_heads=2, tie_word_embeddings=True),
    "mha_llama3_rope": dict(
        num_kv_heads=4,
        rope_scaling=RopeScaling(
            kind="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "kv2_linear_rope_headdim": dict(
        num_kv_heads=2, head_dim=24, rope_scaling=RopeScaling(kind="linear", factor=2.0)
    ),
}


def tiny(**kw) -> LlamaConfig:
  base = dict(
      vocab_size=97,
      hidden_size=64,
      intermediate_size=96,
      num_layers=3,
      num_heads=4,
      num_kv_heads=2,
      rope_theta=10000.0,
      max_position_embeddings=128,
      rms_norm_eps=1e-5,
      bos_token_id=None,
      eos_token_id=None,
  )
  base.update(kw)
  return LlamaConfig(**base)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hf(case):
  cfg = tiny(**CASES[case])
  model = random_hf_model(cfg, seed=1)
  params = jax.tree.map(jnp.asarray, params_from_state_dict(state_dict_numpy(model), cfg))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 40))
  ours = np.asarray(jax.jit(lambda p, t: forward(p, t, cfg))(params, tokens))
  ref = hf_logits(model, tokens)
  assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()


def test_padding_mask_matches_hf():
  """Right padding via segment ids equals HF's attention_mask on the real tokens."""
  cfg = tiny()
  model = random_hf_model(cfg, seed=2)
  params = params_from_state_dict(state_dict_numpy(model), cfg)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16))
  mask = np.ones_like(tokens)
  mask[1, 10:] = 0
  ours = np.asarray(forward(params, tokens, cfg, segment_ids=jnp.asarray(mask)))
  ref = hf_logits(model, tokens, mask)
  assert np.abs(ours[0] - ref[0]).max() <= 1e-4
  assert np.abs(ours[1, :10] - ref[1, :10]).max() <= 1e-4


def test_packed_segments_equal_separate_sequences():
  cfg = tiny()
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=3)), cfg)
  rng = np.random.default_rng(2)
  a, b = rng.integers(0, cfg.vocab_size, (1, 7)), rng.integers(0, cfg.vocab_size, (1, 9))
  packed = np.concatenate([a, b, np.zeros((1, 4), np.int64)], axis=1)
  seg = np.array([[1] * 7 + [2] * 9 + [0] * 4])
  out = np.asarray(forward(params, packed, cfg, segment_ids=seg))
  np.testing.assert_allclose(out[:, :7], np.asarray(forward(params, a, cfg)), atol=1e-5)
  np.testing.assert_allclose(out[:, 7:16], np.asarray(forward(params, b, cfg)), atol=1e-5)
  np.testing.assert_array_equal(
      np.asarray(default_positions(jnp.asarray(seg)))[0, 5:9], [5, 6, 0, 1]
  )


def test_bfloat16_close_to_float32():
  cfg = tiny()
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=4)), cfg)
  tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 12))
  f32 = np.asarray(forward(params, tokens, cfg))
  bf = np.asarray(
      forward(
          jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params),
          tokens,
          cfg.replace(dtype="bfloat16", param_dtype="bfloat16"),
      )
  )
  assert np.abs(bf - f32).max() < 0.1 * np.abs(f32).max() + 0.05
  assert np.abs(bf - f32).max() > 0  # really ran in reduced precision


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_same_gradients(remat):
  cfg = tiny()
  params = params_from_state_dict(state_dict_numpy(random_hf_model(cfg, seed=5)), cfg)
  tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 12))
  loss = lambda p, c: forward(p, tokens, c).mean()
  g0 = jax.grad(loss)(params, cfg)
  g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg.replace(remat=remat))
  for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
