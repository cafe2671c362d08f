"""Loads a llama.cpp GGUF Llama (quantized or not) into our params, config and tokenizer.

Quantized tensors are dequantized to float32 with the `gguf` package. llama.cpp's
converter permutes the rows of attn_q / attn_k (per head, from HF's
rotate-half layout to interleaved pairs); `unpermute_qk` undoes it exactly as
transformers' GGUF loader does, so the result is the HF checkpoint the GGUF
was made from (up to quantization).
"""

from __future__ import annotations

import functools
import os
import pathlib
import re

import numpy as np

from flock_jax.checkpoint.errors import CheckpointError
from flock_jax.checkpoint.hf_load import TensorInfo, validate_tensors
from flock_jax.checkpoint.sharded_load import params_from_source
from flock_jax.model.config import ConfigError, LlamaConfig, RopeScaling
from flock_jax.sharding import LOGICAL_AXIS_RULES

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def hf_name(gguf_name: str) -> str | None:
  """llama.cpp tensor name -> HF name, e.g. 'blk.3.attn_q.weight' ->
  'model.layers.3.self_attn.q_proj.weight'; None if it has no Llama counterpart."""
  if gguf_name in _GLOBAL:
    return _GLOBAL[gguf_name]
  m = _BLOCK_RE.fullmatch(gguf_name)
  if m and m.group(2) in _BLOCK:
    return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.weight"
  return None


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """HF [n_head*Dh, in] -> llama.cpp row order (its convert_hf_to_gguf `permute`)."""
  return (
      w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of permute_qk: llama.cpp row order -> HF [n_head*Dh, in]."""
  return (
      w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def _f32(x) -> float:
  # GGUF stores float32; print-then-parse gives back the decimal the converter wrote (1e-05).
  return float(str(np.float32(x)))


class GGUFFile:
  """An open GGUF file: metadata fields and tensors by HF name."""

  def __init__(self, path: str | os.PathLike):
    import gguf

    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise CheckpointError(f"{self.path}: no such GGUF file")
    try:
      self.reader = gguf.GGUFReader(str(self.path))
    except Exception as e:  # noqa: BLE001 (ValueError, IndexError, ... on bad bytes)
      raise CheckpointError(
          f"{self.path}: corrupt or truncated GGUF file " f"({type(e).__name__}: {e})"
      ) from e
    self.tensors = {}
    for t in self.reader.tensors:
      name = hf_name(t.name)
      if name is None:
        raise CheckpointError(
            f"{self.path}: tensor {t.name} has no Llama counterpart"
            + (
                " (llama3 rope_freqs scaling is not supported)"
                if t.name == "rope_freqs.weight"
                else ""
            )
        )
      self.tensors[name] = t

  def field(self, key: str, default=None):
    f = self.reader.fields.get(key)
    return default if f is None else f.contents()

  def config(self) -> LlamaConfig:
    arch = self.field("general.architecture")
    if arch != "llama":
      raise CheckpointError(
          f"{self.path}: general.architecture={arch!r}; only 'llama' is supported"
      )
    a = lambda k, d=None: self.field(f"llama.{k}", d)  # noqa: E731
    try:
      heads = int(a("attention.head_count"))
      hidden = int(a("embedding_length"))
      head_dim = a("attention.key_length") or a("rope.dimension_count")
      vocab = a("vocab_size") or int(self.tensors["model.embed_tokens.weight"].shape[1])
      stype = a("rope.scaling.type", "none")
      scaling = (
          RopeScaling(kind="linear", factor=_f32(a("rope.scaling.factor")))
          if stype == "linear"
          else RopeScaling()
      )
      if stype not in ("none", "linear"):
        raise CheckpointError(f"{self.path}: rope scaling {stype!r} is not supported")
      return LlamaConfig(
          vocab_size=int(vocab),
          hidden_size=hidden,
          intermediate_size=int(a("feed_forward_length")),
          num_layers=int(a("block_count")),
          num_heads=heads,
          num_kv_heads=int(a("attention.head_count_kv", heads)),
          head_dim=None if head_dim in (None, hidden // heads) else int(head_dim),
          rms_norm_eps=_f32(a("attention.layer_norm_rms_epsilon", 1e-5)),
          rope_theta=_f32(a("rope.freq_base", 10000.0)),
          rope_scaling=scaling,
          max_position_embeddings=int(a("context_length", 2048)),
          tie_word_embeddings="lm_head.weight" not in self.tensors,
          bos_token_id=self.field("tokenizer.ggml.bos_token_id"),
          eos_token_id=self.field("tokenizer.ggml.eos_token_id"),
          pad_token_id=self.field("tokenizer.ggml.padding_token_id"),
      )
    except (TypeError, KeyError, ConfigError) as e:
      raise CheckpointError(
          f"{self.path}: cannot build a Llama config from its metadata "
          f"({type(e).__name__}: {e})"
      ) from e

  def infos(self) -> dict[str, TensorInfo]:
    """Logical (dequantized) shapes in HF orientation, for validate_tensors."""
    return {
        n: TensorInfo(self.path, tuple(int(d) for d in reversed(t.shape)), "F32")
        for n, t in self.tensors.items()
    }


class GGUFSource:
  """Dequantizes tensors on demand; caches one stacked leaf's worth (all layers of a projection)."""

  def __init__(self, gf: GGUFFile, cfg: LlamaConfig):
    self.gf, self.cfg = gf, cfg
    self.full = functools.lru_cache(maxsize=cfg.num_layers + 1)(self._full)

  def _full(self, name: str) -> np.ndarray:
    import gguf

    t = self.gf.tensors[name]
    try:
      w = gguf.dequantize(t.data, t.tensor_type)
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
          f"{self.gf.path}: cannot dequantize tensor {t.name} " f"({t.tensor_type.name}): {e}"
      ) from e
    w = np.asarray(w, np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
    if name.endswith("self_attn.q_proj.weight"):
      w = unpermute_qk(w, self.cfg.num_heads)
    elif name.endswith("self_attn.k_proj.weight"):
      w = unpermute_qk(w, self.cfg.num_kv_heads)
    return w

  def read(self, name, index):
    return self.full(name)[index]


def load_gguf_tokenizer(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
  """The transformers tokenizer (with chat template) held in a GGUF file.

  Building it from the GGUF takes seconds; with cache_dir it is saved there
  once (tokenizer.json + tokenizer_config.json) and reloaded from there after.
  """
  from transformers import AutoTokenizer
  from flock_jax.checkpoint.atomic import atomic_dir

  path = pathlib.Path(path)
  if cache_dir is not None and (pathlib.Path(cache_dir) / "tokenizer.json").is_file():
    return AutoTokenizer.from_pretrained(str(cache_dir))
  try:
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(
        f"{path}: cannot build a tokenizer from its metadata " f"({type(e).__name__}: {e})"
    ) from e
  if cache_dir is not None:
    with atomic_dir(cache_dir, overwrite=True) as tmp:
      tok.save_pretrained(str(tmp))
  return tok


def load_gguf(
    path: str | os.PathLike,
    mesh=None,
    dtype: str | None = None,
    rules=LOGICAL_AXIS_RULES,
    tokenizer: bool = True,
    tokenizer_cache: str | os.PathLike | None = None,
):
  """Loads a GGUF Llama: returns (cfg, params sharded on `mesh`, tokenizer or None).

  dtype: storage dtype of params (default float32: the dequantized values are
  exact in float32). Tensors are validated against the metadata before any
  array is allocated; bad input raises CheckpointError naming file and tensor.
  """
  gf = GGUFFile(path)
  cfg = gf.config()
  validate_tensors(cfg, gf.infos(), None, gf.path, "the GGUF metadata")
  cfg = cfg.replace(param_dtype=dtype or "float32")
  params = params_from_source(cfg, GGUFSource(gf, cfg), mesh, cfg.param_dtype, rules)
  tok = load_gguf_tokenizer(gf.path, tokenizer_cache) if tokenizer else None
  return cfg, params, tok
