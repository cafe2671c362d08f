"""LoRA adapters as a pytree separate from the frozen base (Hu et al. 2021).

  lora = {name: {'a': [L, in, r], 'b': [L, r, out]} for name in cfg.targets}

The forward adds `(alpha / r) * B(A(dropout(x)))` to each target projection
(flock_jax/model/llama.py). B starts at zero, so a fresh adapter leaves the
base model's output unchanged. A is initialised as in PEFT (Kaiming-uniform
with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))). Client stacks put a leading
clients axis on every leaf: [C, L, in, r].
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from flock_jax.model.config import ConfigError, LlamaConfig
from flock_jax.model.llama import PROJECTIONS, Params, projection_dims


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = PROJECTIONS
  rslora: bool = False  # scale alpha/sqrt(r) (Kalajdzievski 2023) instead of alpha/r
  dtype: str = "float32"

  def __post_init__(self):
    bad = set(self.targets) - set(PROJECTIONS)
    if bad or not self.targets:
      raise ConfigError(f"LoRA targets {sorted(bad) or '()'} invalid; choose from {PROJECTIONS}")
    if self.rank <= 0:
      raise ConfigError(f"LoRA rank must be positive, got {self.rank}")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def lora_shapes(cfg: LlamaConfig, lcfg: LoraConfig) -> dict:
  dims = projection_dims(cfg)
  dt = jnp.dtype(lcfg.dtype)
  return {
      n: {
          "a": jax.ShapeDtypeStruct((cfg.num_layers, dims[n][0], lcfg.rank), dt),
          "b": jax.ShapeDtypeStruct((cfg.num_layers, lcfg.rank, dims[n][1]), dt),
      }
      for n in lcfg.targets
  }


def lora_axes(cfg: LlamaConfig, lcfg: LoraConfig, clients: bool = False) -> dict:
  """Logical axis names of the adapter tree (with a leading 'clients' axis if asked)."""
  dims = projection_dims(cfg)
  lead = ("clients",) if clients else ()
  return {
      n: {
          "a": lead + ("layers", dims[n][2], "lora_rank"),
          "b": lead + ("layers", "lora_rank", dims[n][3]),
      }
      for n in lcfg.targets
  }


def init_lora(cfg: LlamaConfig, lcfg: LoraConfig, key: jax.Array) -> dict:
  """A fresh adapter: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
  out = {}
  for i, (name, sh) in enumerate(lora_shapes(cfg, lcfg).items()):
    bound = 1.0 / math.sqrt(sh["a"].shape[1])
    out[name] = {
        "a": jax.random.uniform(
            jax.random.fold_in(key, i), sh["a"].shape, sh["a"].dtype, -bound, bound
        ),
        "b": jnp.zeros(sh["b"].shape, sh["b"].dtype),
    }
  return out


def init_client_loras(cfg: LlamaConfig, lcfg: LoraConfig, key: jax.Array, num_clients: int):
  """[C, ...]-stacked fresh adapters, one independent A per client."""
  return jax.vmap(lambda k: init_lora(cfg, lcfg, k))(jax.random.split(key, num_clients))


def delta_weights(lora: dict, lcfg: LoraConfig) -> dict:
  """name -> scale * A @ B  [L, in, out] in float32."""
  return {
      n: lcfg.scale
      * jnp.einsum("lir,lro->lio", ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
      for n, ab in lora.items()
  }


def merge(params: Params, lora: dict, lcfg: LoraConfig) -> Params:
  """Base params with W + (alpha/r) A B folded in (for export); dtype of W kept."""
  layers = dict(params["layers"])
  for n, dw in delta_weights(lora, lcfg).items():
    w = layers[n]
    layers[n] = (w.astype(jnp.float32) + dw).astype(w.dtype)
  return {**params, "layers": layers}
