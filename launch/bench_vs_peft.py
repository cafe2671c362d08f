"""LoRA training throughput against the peer to beat: Hugging Face + PEFT in PyTorch.

  python launch/bench_vs_peft.py [--preset=smollm2_135m] [--clients=4] [--steps=2]
                                 [--batch=4] [--seq=128] [--threads=2]

Same architecture (random weights: speed does not depend on their values),
same LoRA (rank 8, alpha 16, all 7 projections, AdamW), same token batches,
same work: K clients x E local steps x [B, T] tokens, all tokens in the loss.
  peft      transformers LlamaForCausalLM + peft, a Python loop over K
            adapters (one PeftModel, `set_adapter` per client, one AdamW each)
  flock_jax the engine's jitted `local_train`: K clients vmapped in one call
Prints training tokens/s of both and the ratio, in one process, on the CPU
(JAX on one device; torch with --threads intra-op threads).

  python launch/bench_vs_peft.py --device=gpu [--preset=llama3_8b] [--clients=1]
                                 [--batch=4] [--seq=2048] [--peak_tflops=989]

On one accelerator (no torch peer): tokens/s and MFU of the flock_jax LoRA step in
bf16, MFU against the nominal dense bf16 peak (--peak_tflops; H100/H200 SXM: 989) and
against an 8192^2 bf16 matmul measured in the same run. Last line: JSON.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flock_jax.timing import best_time, use_one_cpu_device  # noqa: E402

if "--device=gpu" not in sys.argv:
  use_one_cpu_device()


from absl import app, flags  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "smollm2_135m", "Model preset (flock_jax.model.config).")
_K = flags.DEFINE_integer("clients", 4, "Clients K.")
_E = flags.DEFINE_integer("steps", 2, "Local steps E per client.")
_B = flags.DEFINE_integer("batch", 4, "Batch size B.")
_T = flags.DEFINE_integer("seq", 128, "Sequence length T.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads.")
_REPS = flags.DEFINE_integer("reps", 1, "Timed repetitions after a warm-up.")
_CHUNK = flags.DEFINE_integer("chunk", 0, "flock_jax loss sequence chunk (0 = whole sequence).")
_SKIP_PEFT = flags.DEFINE_boolean("skip_peft", False, "Time flock_jax only (to compare settings).")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "cpu: vs PEFT; gpu: MFU only.")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "--device=gpu: nominal dense bf16 peak.")
_LAYERS = flags.DEFINE_integer("layers", 0, "Override the preset's num_layers (0: keep).")
_ATTN = flags.DEFINE_enum(
    "attention", "xla", ["xla", "cudnn"], "--device=gpu: LlamaConfig.attention (cudnn: fused)."
)
_REMAT = flags.DEFINE_enum(
    "remat", "", ["", "none", "dots", "full"], "--device=gpu: override the preset's remat."
)
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Compute dtype. bfloat16: flock_jax computes and stores the base in bf16 (f32 accumulation,"
    " f32 LoRA masters and AdamW state); torch runs under CPU autocast(bfloat16).",
)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def gpu_mfu():
  """tokens/s and MFU of K clients x E LoRA steps of the preset in bf16 on one accelerator."""
  import json

  import jax
  import jax.numpy as jnp
  import numpy as np

  from flock_jax.federated import clients as cl
  from flock_jax.model.config import matmul_flops, preset
  from flock_jax.model.llama import init_params
  from flock_jax.model.lora import LoraConfig, init_lora
  from flock_jax.optim import make_optimizer
  from flock_jax.run_config import default_optim

  preset_name = "llama3_8b" if _PRESET.value == "smollm2_135m" else _PRESET.value
  cfg = preset(preset_name, dtype="bfloat16", param_dtype="bfloat16", attention=_ATTN.value)
  if _REMAT.value:
    cfg = cfg.replace(remat=_REMAT.value)
  if _LAYERS.value:
    cfg = cfg.replace(num_layers=_LAYERS.value)
  k, e, b, t = _K.value, _E.value, _B.value, _T.value
  lcfg = LoraConfig(rank=8, alpha=16.0)
  tx = make_optimizer(default_optim(name="adamw", lr=1e-3, weight_decay=0.0))
  base = init_params(cfg, jax.random.key(0))
  g = init_lora(cfg, lcfg, jax.random.key(1))
  state = cl.init_client_state(cfg, lcfg, tx, jax.random.key(2), k, global_lora=g)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (k, e, b, t)).astype(np.int32)
  ones = np.ones_like(tokens)
  batches = {
      "tokens": jnp.asarray(tokens),
      "loss_mask": jnp.asarray(ones, jnp.float32),
      "segment_ids": jnp.asarray(ones),
      "positions": jnp.asarray(np.broadcast_to(np.arange(t, dtype=np.int32), tokens.shape)),
  }
  keys = jax.random.split(jax.random.key(3), k)
  local_train = cl.make_local_train(cfg, lcfg, tx, donate=False, chunk_size=_CHUNK.value or None)
  step = lambda: jax.block_until_ready(local_train(base, g, state.opt_state, batches, keys))
  secs = best_time(step, max(_REPS.value, 3))
  x = jnp.ones((8192, 8192), jnp.bfloat16)
  mm = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
  t_mm = best_time(lambda: mm(x).block_until_ready(), 5)
  peak_measured = 2 * 8192**3 / t_mm
  flops = k * e * matmul_flops(cfg, b, t, lora_rank=8, lora_targets=lcfg.targets, train=True)
  mfu = flops / secs / (_PEAK.value * 1e12)
  print(
      f"{preset_name} ({cfg.num_layers} layers) bf16 on {jax.devices()[0].device_kind}: K={k} x "
      f"E={e} x [{b}, {t}], remat={cfg.remat}, attention={cfg.attention}: "
      f"{k * e * b * t / secs:,.0f} tokens/s, "
      f"{flops / secs / 1e12:.0f} TFLOP/s = {100 * mfu:.1f}% MFU of {_PEAK.value:.0f} TFLOP/s "
      f"({100 * flops / secs / peak_measured:.1f}% of the measured matmul peak "
      f"{peak_measured / 1e12:.0f} TFLOP/s)"
  )
  print(
      json.dumps(
          {
              "model": preset_name,
              "device": jax.devices()[0].device_kind,
              "attention": cfg.attention,
              "remat": cfg.remat,
              "batch": [k, e, b, t],
              "tokens_per_s": round(k * e * b * t / secs, 1),
              "mfu": round(mfu, 4),
              "matmul_peak_tflops": round(peak_measured / 1e12, 1),
          }
      )
  )


def main(argv):
  del argv
  if _DEVICE.value == "gpu":
    return gpu_mfu()
  import jax
  import jax.numpy as jnp
  import numpy as np
  import peft
  import torch
  import transformers

  from flock_jax.federated import clients as cl
  from flock_jax.model.config import preset
  from flock_jax.model.llama import init_params, scan_ready
  from flock_jax.model.lora import LoraConfig, init_lora
  from flock_jax.optim import make_optimizer
  from flock_jax.run_config import default_optim

  torch.set_num_threads(_THREADS.value)
  bf16 = _DTYPE.value == "bfloat16"
  cfg = preset(_PRESET.value)
  if bf16:
    cfg = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
  k, e, b, t = _K.value, _E.value, _B.value, _T.value
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (k, e, b, t)).astype(np.int32)
  n_tok = k * e * b * t

  # --- Hugging Face + PEFT, a loop over clients
  hf = cfg.to_hf_dict()
  for key in ("architectures", "model_type", "torch_dtype"):
    hf.pop(key)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).float()
  pcfg = peft.LoraConfig(
      r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM"
  )
  pm = peft.get_peft_model(model, pcfg, adapter_name="c0")
  for i in range(1, k):
    pm.add_adapter(f"c{i}", pcfg)
  opts = []
  for i in range(k):
    params = [p for n, p in pm.named_parameters() if f".c{i}." in n]
    opts.append(torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0))
  pm.train()
  tt = torch.as_tensor(tokens, dtype=torch.long)

  def run_peft():
    for i in range(k):
      pm.set_adapter(f"c{i}")
      for s in range(e):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
          out = pm(input_ids=tt[i, s], labels=tt[i, s])
        out.loss.backward()
        opts[i].step()
        opts[i].zero_grad(set_to_none=True)

  # --- flock_jax, K clients vmapped in one jitted call
  lcfg = LoraConfig(rank=8, alpha=16.0)
  tx = make_optimizer(default_optim(name="adamw", lr=1e-3, weight_decay=0.0))
  base = scan_ready(init_params(cfg, jax.random.key(0)), cfg)  # as the engine holds it
  g = init_lora(cfg, lcfg, jax.random.key(1))
  state = cl.init_client_state(cfg, lcfg, tx, jax.random.key(2), k, global_lora=g)
  ones = np.ones_like(tokens)
  batches = {
      "tokens": jnp.asarray(tokens),
      "loss_mask": jnp.asarray(ones, jnp.float32),
      "segment_ids": jnp.asarray(ones),
      "positions": jnp.asarray(np.broadcast_to(np.arange(t, dtype=np.int32), tokens.shape)),
  }
  keys = jax.random.split(jax.random.key(3), k)
  local_train = cl.make_local_train(cfg, lcfg, tx, donate=False, chunk_size=_CHUNK.value or None)

  def run_jax():
    jax.block_until_ready(local_train(base, g, state.opt_state, batches, keys))

  print(
      f"{_PRESET.value}: K={k} clients x E={e} steps x [{b}, {t}] tokens, LoRA r=8 on "
      f"{len(TARGETS)} projections, AdamW, {_DTYPE.value}; torch threads={_THREADS.value}, "
      f"jax devices={jax.devices()}",
      flush=True,
  )
  t_jax = best_time(run_jax, _REPS.value)
  print(
      f"flock_jax vmap : {n_tok / t_jax:8.1f} training tokens/s ({t_jax:.2f} s; loss chunk "
      f"{_CHUNK.value or 'none'})",
      flush=True,
  )
  if _SKIP_PEFT.value:
    return
  t_peft = best_time(run_peft, _REPS.value)
  print(f"HF + PEFT loop : {n_tok / t_peft:8.1f} training tokens/s ({t_peft:.2f} s)", flush=True)
  print(f"ratio flock_jax / peft: {t_peft / t_jax:.2f}x")


if __name__ == "__main__":
  app.run(main)
