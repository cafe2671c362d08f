"""Builds random Hugging Face PyTorch Llamas, the reference our numerics are checked against."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from flock_jax.model.config import LlamaConfig


def hf_config(cfg: LlamaConfig) -> transformers.LlamaConfig:
  d = cfg.to_hf_dict()
  d.pop("architectures"), d.pop("model_type"), d.pop("torch_dtype")
  return transformers.LlamaConfig(**d)


def random_hf_model(cfg: LlamaConfig, seed: int = 0) -> transformers.LlamaForCausalLM:
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(hf_config(cfg)).eval()
  with torch.no_grad():  # default init leaves norms at 1: perturb so they are tested too
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    out = model(
        input_ids=torch.as_tensor(tokens, dtype=torch.long),
        attention_mask=None
        if attention_mask is None
        else torch.as_tensor(attention_mask, dtype=torch.long),
    )
  return out.logits.float().numpy()
