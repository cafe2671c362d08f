"""The Llama model, its LoRA adapters, and their configuration."""

from flock_jax.model.config import ConfigError, LlamaConfig, RopeScaling, preset, PRESETS
from flock_jax.model.llama import (
    Llama,
    abstract_params,
    forward,
    forward_with_cache,
    hidden_states,
    init_cache,
    init_params,
    param_axes,
)
from flock_jax.model.lora import LoraConfig, init_client_loras, init_lora, lora_axes, merge
