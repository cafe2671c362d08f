"""Tiny random Hugging Face Llama checkpoints on disk, shared by the checkpoint tests."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from flock_jax.model import LlamaConfig
from tests.model.hf_reference import hf_logits, random_hf_model, state_dict_numpy  # noqa: F401

# Every dimension divides a (fsdp=2, tensor=4) mesh, so the sharded load is really exercised.
TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=128,
    rope_theta=10000.0,
    bos_token_id=None,
    eos_token_id=None,
)


def tiny_cfg(**kw) -> LlamaConfig:
  return LlamaConfig(**{**TINY, **kw})


def tokens(cfg: LlamaConfig, shape=(2, 12), seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape)


def save_hf(model, path: pathlib.Path, max_shard_size=None) -> pathlib.Path:
  kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(str(path), safe_serialization=True, **kw)
  return path


def to_v4_config(path: pathlib.Path) -> dict:
  """Rewrites path/config.json in transformers-v4 form (top-level rope_theta/rope_scaling)."""
  conf = json.loads((path / "config.json").read_text())
  rope = conf.pop("rope_parameters")
  conf["rope_theta"] = rope.pop("rope_theta")
  kind = rope.pop("rope_type", "default")
  conf["rope_scaling"] = None if kind == "default" else {"rope_type": kind, **rope}
  (path / "config.json").write_text(json.dumps(conf))
  return conf


def random_lora(cfg: LlamaConfig, lcfg, seed: int = 0, clients: int | None = None) -> dict:
  """An adapter (optionally [C, ...]-stacked) with random A and nonzero random B, in numpy.

  Nonzero B, so a wrong A/B layout or scale cannot pass unnoticed; numpy, so no
  per-leaf jax compilations slow the tests down.
  """
  from flock_jax.model.lora import lora_shapes

  rng = np.random.default_rng(seed)
  lead = () if clients is None else (clients,)
  return {
      n: {k: (0.2 * rng.standard_normal(lead + s.shape)).astype(np.float32) for k, s in ab.items()}
      for n, ab in lora_shapes(cfg, lcfg).items()
  }


def our_logits(params, toks, cfg: LlamaConfig, lora=None, lcfg=None) -> np.ndarray:
  """Jitted forward (one compilation instead of many eager dispatches)."""
  import jax
  from flock_jax.model import forward

  fn = jax.jit(lambda p, t, l: forward(p, t, cfg, lora=l, lora_cfg=lcfg))
  return np.asarray(fn(params, toks, lora))
