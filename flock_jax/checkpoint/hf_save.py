"""Writes params as a Hugging Face LlamaForCausalLM checkpoint (safetensors, sharded by size).

Output folder: config.json (transformers v5 form), generation_config.json,
`model.safetensors` or `model-0000i-of-0000n.safetensors` shards with
`model.safetensors.index.json`. Tensors are fetched from the devices one HF
tensor at a time (one layer of a stacked leaf), so host memory holds at most
one shard file's worth. The folder appears atomically (see atomic.py).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from flock_jax.checkpoint.atomic import atomic_dir
from flock_jax.checkpoint.hf_load import INDEX_FILE, SINGLE_FILE
from flock_jax.checkpoint.hf_names import hf_shape, hf_tensor_map
from flock_jax.model.config import LlamaConfig

DEFAULT_SHARD_BYTES = 5 * 2**30


def _leaf(params, path):
  for k in path:
    params = params[k]
  return params


def plan_shards(cfg: LlamaConfig, params, max_shard_bytes: int, dtype) -> list[list[str]]:
  """HF tensor names grouped into files of at most max_shard_bytes (a bigger tensor goes alone)."""
  itemsize = jnp.dtype(dtype).itemsize
  groups: list[list[str]] = [[]]
  size = 0
  for name, slot in hf_tensor_map(cfg).items():
    n = int(np.prod(hf_shape(slot, tuple(_leaf(params, slot.path).shape)))) * itemsize
    if groups[-1] and size + n > max_shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += n
  return groups


def _hf_tensor(params, slot, dtype) -> np.ndarray:
  x = _leaf(params, slot.path)
  if slot.layer is not None:
    x = x[slot.layer]
  x = np.asarray(jax.device_get(x)).astype(dtype)
  return np.ascontiguousarray(x.T if slot.transpose else x)


def generation_config(cfg: LlamaConfig) -> dict:
  eos = cfg.eos_token_id
  return {
      "_from_model_config": True,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
      "pad_token_id": cfg.pad_token_id,
  }


def save_hf_checkpoint(
    params,
    cfg: LlamaConfig,
    path: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    dtype: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> None:
  """Writes `params` (layout of flock_jax.model.llama) as a HF checkpoint folder at `path`.

  dtype: storage dtype of the files (default cfg.param_dtype). tokenizer: an
  optional transformers tokenizer saved beside the weights.
  """
  dtype = dtype or cfg.param_dtype
  np_dtype = jnp.dtype(dtype)
  tmap = hf_tensor_map(cfg)
  groups = plan_shards(cfg, params, max_shard_bytes, np_dtype)
  with atomic_dir(path, overwrite) as tmp:
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
      fname = (
          SINGLE_FILE
          if len(groups) == 1
          else (f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors")
      )
      tensors = {n: _hf_tensor(params, tmap[n], np_dtype) for n in names}
      total += sum(t.nbytes for t in tensors.values())
      save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
      weight_map.update(dict.fromkeys(names, fname))
      del tensors
    if len(groups) > 1:
      (tmp / INDEX_FILE).write_text(
          json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
      )
    hf = cfg.to_hf_dict()
    hf.pop("rope_theta", None)  # v5 form: rope settings live in rope_parameters only
    hf["torch_dtype"] = hf["dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(hf, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2))
    if tokenizer is not None:
      tokenizer.save_pretrained(str(tmp))
