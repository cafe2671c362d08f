"""LoRA adapters in the PEFT library's format (adapter_config.json + adapter_model.safetensors).

Our adapter {name: {'a': [L, in, r], 'b': [L, r, out]}} maps to PEFT's

  base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight  [r, in]   (= a[l].T)
  base_model.model.model.layers.{l}.self_attn.q_proj.lora_B.weight  [out, r]  (= b[l].T)

with scale lora_alpha / r (or / sqrt(r) with use_rslora), as in LoraConfig.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from flock_jax.checkpoint.atomic import atomic_dir
from flock_jax.checkpoint.errors import CheckpointError
from flock_jax.checkpoint.hf_names import hf_proj_name
from flock_jax.model.config import ConfigError, LlamaConfig
from flock_jax.model.llama import PROJECTIONS
from flock_jax.model.lora import LoraConfig, lora_shapes

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model.model.layers"


def peft_module(name: str) -> str:
  """Our projection name -> PEFT target module name ('q' -> 'q_proj')."""
  return hf_proj_name(name).split(".")[-1]


def peft_key(layer: int, name: str, which: str) -> str:
  """PEFT tensor name of layer `layer`, projection `name`, which in ('A', 'B')."""
  return f"{_PREFIX}.{layer}.{hf_proj_name(name)}.lora_{which}.weight"


def adapter_config(lcfg: LoraConfig, base_model_name_or_path: str | None = None) -> dict:
  """The adapter_config.json dict PEFT's LoraConfig reads."""
  return {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM",
      "auto_mapping": None,
      "base_model_name_or_path": base_model_name_or_path,
      "revision": None,
      "inference_mode": True,
      "r": lcfg.rank,
      "lora_alpha": lcfg.alpha,
      "lora_dropout": lcfg.dropout,
      "use_rslora": lcfg.rslora,
      "target_modules": sorted(peft_module(n) for n in lcfg.targets),
      "bias": "none",
      "fan_in_fan_out": False,
      "modules_to_save": None,
      "init_lora_weights": True,
      "layers_to_transform": None,
      "layers_pattern": None,
      "rank_pattern": {},
      "alpha_pattern": {},
      "use_dora": False,
  }


def save_peft_adapter(
    lora: dict,
    lcfg: LoraConfig,
    cfg: LlamaConfig,
    path: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> None:
  """Writes one adapter (no clients axis) as a PEFT adapter folder at `path`, atomically."""
  shapes = lora_shapes(cfg, lcfg)
  if set(lora) != set(shapes):
    raise CheckpointError(
        f"adapter has projections {sorted(lora)}, LoraConfig.targets are " f"{sorted(shapes)}"
    )
  tensors = {}
  for name, ab in lora.items():
    for k, which in (("a", "A"), ("b", "B")):
      x = np.asarray(jax.device_get(ab[k]), np.float32)
      if x.shape != shapes[name][k].shape:
        raise CheckpointError(
            f"adapter leaf {name}.{k} has shape {list(x.shape)}, expected "
            f"{list(shapes[name][k].shape)} (a clients axis must be indexed "
            f"away before export)"
        )
      for layer in range(cfg.num_layers):
        tensors[peft_key(layer, name, which)] = np.ascontiguousarray(x[layer].T)
  with atomic_dir(path, overwrite) as tmp:
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(
        json.dumps(adapter_config(lcfg, base_model_name_or_path), indent=2)
    )


def lora_config_from_peft(conf: dict, where) -> LoraConfig:
  """Our LoraConfig from an adapter_config.json dict; unsupported PEFT features raise."""
  if conf.get("peft_type") != "LORA":
    raise CheckpointError(f"{where}: peft_type {conf.get('peft_type')!r}; only LORA is supported")
  for key in (
      "use_dora",
      "layers_to_transform",
      "rank_pattern",
      "alpha_pattern",
      "modules_to_save",
  ):
    if conf.get(key):
      raise CheckpointError(f"{where}: {key}={conf[key]!r} is not supported")
  if conf.get("bias", "none") != "none":
    raise CheckpointError(f"{where}: bias={conf['bias']!r} is not supported (only 'none')")
  ours = {peft_module(n): n for n in PROJECTIONS}
  targets = conf.get("target_modules") or []
  targets = [targets] if isinstance(targets, str) else targets
  unknown = [t for t in targets if t.split(".")[-1] not in ours]
  if unknown or not targets:
    raise CheckpointError(
        f"{where}: target_modules {unknown or targets} are not Llama " f"projections {sorted(ours)}"
    )
  names = tuple(n for n in PROJECTIONS if peft_module(n) in {t.split(".")[-1] for t in targets})
  try:
    return LoraConfig(
        rank=int(conf["r"]),
        alpha=float(conf["lora_alpha"]),
        dropout=float(conf.get("lora_dropout", 0.0)),
        targets=names,
        rslora=bool(conf.get("use_rslora", False)),
    )
  except (KeyError, ConfigError) as e:
    raise CheckpointError(f"{where}: {e!r}") from e


def load_peft_adapter(path: str | os.PathLike, cfg: LlamaConfig) -> tuple[dict, LoraConfig]:
  """Reads a PEFT LoRA adapter folder for a Llama of `cfg`; returns (lora, lora_cfg).

  Every tensor is checked (present, no extras, shape) before the tree is built.
  """
  path = pathlib.Path(path)
  conf_path, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
  for p in (conf_path, weights):
    if not p.is_file():
      raise CheckpointError(
          f"{p}: missing; a PEFT adapter folder needs {ADAPTER_CONFIG} and " f"{ADAPTER_WEIGHTS}"
      )
  try:
    conf = json.loads(conf_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{conf_path}: not valid JSON ({e})") from e
  lcfg = lora_config_from_peft(conf, conf_path)
  shapes = lora_shapes(cfg, lcfg)
  try:
    with safe_open(str(weights), framework="numpy") as f:
      stored = {k: f.get_tensor(k) for k in f.keys()}
  except SafetensorError as e:
    raise CheckpointError(f"{weights}: corrupt or truncated safetensors file ({e})") from e
  # PEFT versions differ on whether the adapter name ('.default') is in the key.
  stored = {k.replace(".default.weight", ".weight"): v for k, v in stored.items()}
  lora, expected = {}, set()
  for name, sh in shapes.items():
    lora[name] = {}
    for k, which in (("a", "A"), ("b", "B")):
      per_layer = []
      for layer in range(cfg.num_layers):
        key = peft_key(layer, name, which)
        expected.add(key)
        if key not in stored:
          raise CheckpointError(f"{weights}: missing tensor {key}")
        want = tuple(reversed(sh[k].shape[1:]))
        if stored[key].shape != want:
          raise CheckpointError(
              f"{weights}: tensor {key} has shape {list(stored[key].shape)}, "
              f"expected {list(want)} for r={lcfg.rank} and this model"
          )
        per_layer.append(stored[key].T)
      lora[name][k] = np.stack(per_layer).astype(np.float32)
  extra = sorted(set(stored) - expected)
  if extra:
    raise CheckpointError(
        f"{weights}: unexpected tensor(s) {extra[:5]} (not LoRA A/B of "
        f"target_modules {sorted(peft_module(n) for n in lcfg.targets)})"
    )
  return lora, lcfg
