"""Checkpoint I/O: Hugging Face safetensors, PEFT adapters, GGUF, and orbax run state.

load_hf_checkpoint(path_or_repo, mesh) -> (cfg, params)     hf_load.py
save_hf_checkpoint(params, cfg, path)                       hf_save.py
save_peft_adapter / load_peft_adapter                       peft_adapter.py
load_gguf(path, mesh) -> (cfg, params, tokenizer)           gguf_load.py
load_smollm2(mesh) -> (cfg, params, tokenizer)              smollm2.py
RunCheckpointer(dir, max_to_keep): save / restore / latest  run_state.py
HF tensor names <-> params slots                            hf_names.py
"""

from flock_jax.checkpoint.errors import CheckpointError
from flock_jax.checkpoint.gguf_load import load_gguf, load_gguf_tokenizer
from flock_jax.checkpoint.hf_load import load_hf_checkpoint
from flock_jax.checkpoint.hf_names import params_from_state_dict
from flock_jax.checkpoint.hf_save import save_hf_checkpoint
from flock_jax.checkpoint.peft_adapter import load_peft_adapter, save_peft_adapter
from flock_jax.checkpoint.run_state import RunCheckpointer
from flock_jax.checkpoint.smollm2 import load_smollm2, smollm2_gguf_path

__all__ = [
    "CheckpointError",
    "RunCheckpointer",
    "load_gguf",
    "load_gguf_tokenizer",
    "load_hf_checkpoint",
    "load_peft_adapter",
    "load_smollm2",
    "params_from_state_dict",
    "save_hf_checkpoint",
    "save_peft_adapter",
    "smollm2_gguf_path",
]
