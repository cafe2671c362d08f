"""Llama architecture hyper-parameters, presets, and Hugging Face config.json parsing."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(ValueError):
  """A model configuration that cannot describe a Llama we support."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling. kind: 'default' | 'linear' | 'llama3' (Llama 3.1 long context)."""

  kind: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and numerics of a Llama decoder.

  Attributes mirror Hugging Face's LlamaConfig; `dtype` is the compute dtype,
  `param_dtype` the storage dtype of the frozen base; `remat` is one of
  'none' | 'full' | 'dots' (save matmul outputs, recompute the rest);
  `quantize` 'int8' stores the decoder projections of the frozen base as int8
  with per-channel scales (flock_jax/model/quant.py), 'none' keeps param_dtype;
  `attention` 'xla' computes attention as two einsums and a float32 softmax (any backend),
  'cudnn' as cuDNN's fused flash attention (GPU, bf16/fp16 compute; the training and
  scoring path only, on right-padded rows of one sequence each (no packing); decoding
  with a KV cache stays on 'xla'). `scan_unroll` is the number of decoder layers per
  iteration of the scanned layer stack (lax.scan's unroll): 1 keeps compile time flat in
  depth; num_layers (or more) unrolls the stack into straight-line code, which pays for a few small
  layers (no loop, no per-layer slicing of stacked weights and residuals).
  """

  vocab_size: int = 256
  hidden_size: int = 64
  intermediate_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int | None = None
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling = RopeScaling()
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  pad_token_id: int | None = None
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  quantize: str = "none"
  attention: str = "xla"
  scan_unroll: int = 1

  def __post_init__(self):
    if self.hidden_size <= 0 or self.num_layers <= 0 or self.vocab_size <= 0:
      raise ConfigError(f"sizes must be positive: {self}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise ConfigError(
          f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
          "set head_dim explicitly"
      )
    if self.attention_bias or self.mlp_bias:
      raise ConfigError("attention_bias/mlp_bias are not supported (no Llama checkpoint uses them)")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ConfigError(f"{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}")
    if self.remat not in ("none", "full", "dots"):
      raise ConfigError(f"remat={self.remat!r}; expected 'none', 'full' or 'dots'")
    if self.quantize not in ("none", "int8"):
      raise ConfigError(f"quantize={self.quantize!r}; expected 'none' or 'int8'")
    if self.attention not in ("xla", "cudnn"):
      raise ConfigError(f"attention={self.attention!r}; expected 'xla' or 'cudnn'")
    if self.attention == "cudnn" and self.dtype not in ("bfloat16", "float16"):
      raise ConfigError(
          f"attention='cudnn' needs dtype bfloat16 or float16 (cuDNN's fused attention has no "
          f"float32 kernel); got dtype={self.dtype!r}"
      )
    if (
        isinstance(self.scan_unroll, bool)
        or not isinstance(self.scan_unroll, int)
        or self.scan_unroll < 1
    ):
      raise ConfigError(
          f"scan_unroll={self.scan_unroll!r}; expected a positive int (decoder layers per scan"
          f" iteration; >= num_layers unrolls the stack fully)"
      )
    if self.rope_scaling.kind not in ("default", "linear", "llama3"):
      raise ConfigError(f"rope_scaling kind {self.rope_scaling.kind!r} is not supported")

  @property
  def dim_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def q_dim(self) -> int:
    return self.num_heads * self.dim_head

  @property
  def kv_dim(self) -> int:
    return self.num_kv_heads * self.dim_head

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def storage_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def eos_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def replace(self, **kw) -> "LlamaConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    d, f, l = self.hidden_size, self.intermediate_size, self.num_layers
    per_layer = d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d + 3 * d * f + 2 * d
    head = 0 if self.tie_word_embeddings else d * self.vocab_size
    return self.vocab_size * d + l * per_layer + d + head

  # ------------------------------------------------------------------ HF I/O
  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **overrides) -> "LlamaConfig":
    """Builds a config from a Hugging Face config.json dict (transformers v4 or v5 form).

    v4 checkpoints carry `rope_theta` and `rope_scaling` at top level; v5 writes
    `rope_parameters: {rope_theta, rope_type, ...}`. Both are read.
    """
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type not in (None, "llama") or (archs and "LlamaForCausalLM" not in archs):
      raise ConfigError(
          f"unsupported architecture model_type={model_type!r} architectures={archs}; "
          "flock_jax loads LlamaForCausalLM checkpoints only"
      )
    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rtype = rope.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    src = rope if rope.get("rope_type") not in (None, "default") else legacy
    if rtype == "default":
      scaling = RopeScaling()
    elif rtype == "linear":
      scaling = RopeScaling(kind="linear", factor=float(src["factor"]))
    elif rtype == "llama3":
      scaling = RopeScaling(
          kind="llama3",
          factor=float(src["factor"]),
          low_freq_factor=float(src.get("low_freq_factor", 1.0)),
          high_freq_factor=float(src.get("high_freq_factor", 4.0)),
          original_max_position_embeddings=int(src.get("original_max_position_embeddings", 8192)),
      )
    else:
      raise ConfigError(f"rope_type {rtype!r} is not supported (default, linear, llama3)")
    eos = hf.get("eos_token_id")
    kw = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    if kw["head_dim"] == kw["hidden_size"] // kw["num_heads"]:
      kw["head_dim"] = None
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self) -> dict[str, Any]:
    """The transformers-v5 config.json for this model (rope in `rope_parameters`)."""
    rs = self.rope_scaling
    rope = {"rope_theta": self.rope_theta, "rope_type": rs.kind}
    if rs.kind == "linear":
      rope["factor"] = rs.factor
    elif rs.kind == "llama3":
      rope.update(
          factor=rs.factor,
          low_freq_factor=rs.low_freq_factor,
          high_freq_factor=rs.high_freq_factor,
          original_max_position_embeddings=rs.original_max_position_embeddings,
      )
    eos = self.eos_token_id
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.dim_head,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope,
        "rope_theta": self.rope_theta,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": self.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "pad_token_id": self.pad_token_id,
        "initializer_range": self.initializer_range,
        "torch_dtype": self.param_dtype,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "use_cache": True,
    }

  @classmethod
  def from_hf_file(cls, path: str | os.PathLike, **overrides) -> "LlamaConfig":
    with open(path) as f:
      try:
        hf = json.load(f)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    try:
      return cls.from_hf_dict(hf, **overrides)
    except KeyError as e:
      raise ConfigError(f"{path}: missing required field {e}") from e


# ---------------------------------------------------------------- presets
LLAMA3_ROPE = RopeScaling(
    kind="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)

PRESETS: dict[str, LlamaConfig] = {
    # Random tiny models for tests and the default job (byte-level tokenizer vocab).
    "tiny": LlamaConfig(
        vocab_size=272,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=512,
        scan_unroll=2,  # two small layers: straight-line code (bench_round: training -15%)
        bos_token_id=None,
        eos_token_id=None,
    ),
    "small": LlamaConfig(
        vocab_size=272,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
    ),
    "smollm2_135m": LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
    "llama3_8b": LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        bos_token_id=128000,
        eos_token_id=(128001, 128009),
        dtype="bfloat16",
        param_dtype="bfloat16",
        remat="dots",
    ),
    "llama3_70b": LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        bos_token_id=128000,
        eos_token_id=(128001, 128009),
        dtype="bfloat16",
        param_dtype="bfloat16",
        remat="full",
    ),
}
PRESETS["llama31_8b"] = PRESETS["llama3_8b"].replace(
    rope_scaling=LLAMA3_ROPE, max_position_embeddings=131072
)
PRESETS["llama31_70b"] = PRESETS["llama3_70b"].replace(
    rope_scaling=LLAMA3_ROPE, max_position_embeddings=131072
)


def preset(name: str, **overrides) -> LlamaConfig:
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------- model FLOPs
def matmul_flops(
    cfg: LlamaConfig,
    batch: int,
    seq: int,
    *,
    lora_rank: int = 0,
    lora_targets: tuple[str, ...] = (),
    train: bool = False,
    head_positions: int | None = None,
) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward on [batch, seq] tokens, or of one LoRA
  training step (train=True) with a frozen base. `head_positions`: the lm head at that many
  of the batch's positions (its targets only: model.head_at_targets; default all).

  Counted: the seven projections, attention's QK^T and PV over the full [seq, seq] square
  (no causal halving: the kernels compute it), the lm head at every position, LoRA's two
  skinny matmuls per target. A training step adds the backward: dx through every matmul
  (the same count as the forward), dQ/dK/dV of attention (twice the forward's), and LoRA's
  dA and dB; never dW of the frozen base or of the lm head. This is the useful work that
  benchmarks divide by seconds and by a measured matmul peak.
  """
  n = batch * seq
  d, f = cfg.hidden_size, cfg.intermediate_size
  dims = {
      "q": (d, cfg.q_dim),
      "k": (d, cfg.kv_dim),
      "v": (d, cfg.kv_dim),
      "o": (cfg.q_dim, d),
      "gate": (d, f),
      "up": (d, f),
      "down": (f, d),
  }
  proj = sum(i * o for i, o in dims.values())
  attn = 2 * 2 * batch * seq * seq * cfg.q_dim  # QK^T and PV per layer
  lora = sum(lora_rank * (dims[t][0] + dims[t][1]) for t in lora_targets)
  fwd_layers = cfg.num_layers * (2 * n * proj + attn + 2 * n * lora)
  head = 2 * (n if head_positions is None else head_positions) * d * cfg.vocab_size
  if not train:
    return float(fwd_layers + head)
  bwd = cfg.num_layers * (2 * n * proj + 2 * attn + 2 * 2 * n * lora) + head
  return float(fwd_layers + head + bwd)
