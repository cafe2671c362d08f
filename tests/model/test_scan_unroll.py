"""LlamaConfig.scan_unroll: decoder layers per iteration of the scanned stack. Any value
computes the same function as the plain scan (1); num_layers or more leaves no loop."""

import jax
import numpy as np
import pytest

from flock_jax.federated.loss import token_loss
from flock_jax.model import forward
from flock_jax.model.config import ConfigError, preset
from flock_jax.model.llama import init_params
from flock_jax.model.lora import LoraConfig, init_lora
from flock_jax.model.quant import prepare_base
from tests.model.test_mixed_precision import U_BF16, _batch, rel_rms
from tests.model.test_parity import tiny

pytestmark = pytest.mark.numerics  # CI reruns these with XLA:CPU limited to AVX2

L = 5
U_F32 = 2.0**-24


def _logits_and_grads(unroll: int, dtype: str = "float32"):
  cfg32 = tiny(num_layers=L)
  base32 = init_params(cfg32, jax.random.key(0))
  cfg, base = prepare_base(cfg32.replace(dtype=dtype, param_dtype=dtype), cfg32, base32)
  cfg = cfg.replace(scan_unroll=unroll)
  lcfg = LoraConfig(rank=4, alpha=8.0)
  lora = init_lora(cfg, lcfg, jax.random.key(1))
  lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)
  batch = _batch(cfg, seed=3)
  logits = jax.jit(lambda l: forward(base, batch["tokens"], cfg, lora=l, lora_cfg=lcfg))(lora)
  grads = jax.jit(jax.grad(lambda l: token_loss(base, l, batch, cfg, lcfg)))(lora)
  flat = np.concatenate([np.ravel(np.asarray(g, np.float32)) for g in jax.tree.leaves(grads)])
  return np.asarray(logits, np.float32), flat


@pytest.mark.parametrize("unroll", [2, L, 8])  # partial (with a remainder), full, past L
def test_unrolled_stack_computes_the_scanned_function(unroll):
  ref_logits, ref_grads = _logits_and_grads(1)
  logits, grads = _logits_and_grads(unroll)
  # Only the order of float32 elementwise work may differ: a few roundings a layer.
  budget = 16 * np.sqrt(L) * U_F32
  assert rel_rms(logits, ref_logits) <= budget
  assert rel_rms(grads, ref_grads) <= 4 * budget  # the backward rounds about twice as often


def test_unrolled_bf16_stack_on_the_cpu():
  """The bf16 base's scanned weights travel as integer bits on the CPU
  (llama._weights_as_bits); unrolled, they must still be read as the same weights."""
  ref_logits, ref_grads = _logits_and_grads(1, "bfloat16")
  logits, grads = _logits_and_grads(3, "bfloat16")
  k = 2 * L  # bf16 roundings whose placement XLA may move (its excess precision), a layer
  assert rel_rms(logits, ref_logits) <= 3 * np.sqrt(k) * U_BF16 / np.sqrt(3)
  assert rel_rms(grads, ref_grads) <= 6 * np.sqrt(k) * U_BF16 / np.sqrt(3)


def _whiles(unroll: int) -> int:
  cfg = tiny(num_layers=L, scan_unroll=unroll)
  base = init_params(cfg, jax.random.key(0))
  tokens = np.zeros((1, 8), np.int32)
  hlo = jax.jit(lambda p: forward(p, tokens, cfg)).lower(base).compile().as_text()
  return hlo.count(" while(")


def test_full_unroll_leaves_no_loop():
  assert _whiles(1) == 1  # the scanned stack
  assert _whiles(L) == 0


def test_tiny_preset_is_unrolled():
  cfg = preset("tiny")
  assert cfg.scan_unroll >= cfg.num_layers


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_scan_unroll_is_refused_by_name(bad):
  with pytest.raises(ConfigError, match="scan_unroll="):
    tiny(scan_unroll=bad)
