"""The one mapping between Hugging Face LlamaForCausalLM tensor names and our params tree."""

from __future__ import annotations

import dataclasses

import numpy as np

from flock_jax.model.config import LlamaConfig

_PROJ_HF = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_NORM_HF = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


@dataclasses.dataclass(frozen=True)
class TensorSlot:
  """Where one HF tensor goes: params[path] (at [layer] if stacked), transposed if a Linear."""

  path: tuple[str, ...]
  layer: int | None
  transpose: bool


def hf_proj_name(name: str) -> str:
  """Our projection name ('q') -> HF module suffix ('self_attn.q_proj')."""
  return _PROJ_HF[name]


def hf_tensor_map(cfg: LlamaConfig) -> dict[str, TensorSlot]:
  """Every tensor a HF checkpoint of `cfg` must hold, and where it lands."""
  m = {
      "model.embed_tokens.weight": TensorSlot(("embed",), None, False),
      "model.norm.weight": TensorSlot(("final_norm",), None, False),
  }
  if not cfg.tie_word_embeddings:
    m["lm_head.weight"] = TensorSlot(("lm_head",), None, True)
  for i in range(cfg.num_layers):
    for ours, hf in _PROJ_HF.items():
      m[f"model.layers.{i}.{hf}.weight"] = TensorSlot(("layers", ours), i, True)
    for ours, hf in _NORM_HF.items():
      m[f"model.layers.{i}.{hf}.weight"] = TensorSlot(("layers", ours), i, False)
  return m


def hf_shape(slot: TensorSlot, param_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape HF stores for a slot whose (stacked) param has `param_shape`."""
  shape = param_shape[1:] if slot.layer is not None else param_shape
  return tuple(reversed(shape)) if slot.transpose else tuple(shape)


def params_from_state_dict(state: dict[str, np.ndarray], cfg: LlamaConfig, dtype=None) -> dict:
  """Host-memory conversion of a full HF state dict (small models, tests) to params."""
  from flock_jax.model.llama import abstract_params

  abstract = abstract_params(cfg)
  out: dict = {}
  stacks: dict = {}
  for name, slot in hf_tensor_map(cfg).items():
    t = np.asarray(state[name], dtype=dtype or np.float32)
    t = t.T if slot.transpose else t
    if slot.layer is None:
      out.setdefault(slot.path[0], t) if len(slot.path) == 1 else None
    else:
      stacks.setdefault(slot.path[1], [None] * cfg.num_layers)[slot.layer] = t
  out["layers"] = {k: np.stack(v) for k, v in stacks.items()}
  assert set(out) == set(abstract), (set(out), set(abstract))
  return out
