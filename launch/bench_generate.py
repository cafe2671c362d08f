"""Decode speed of KV-cached `generate` against a naive loop of full forwards, same process.

  python launch/bench_generate.py --model=tiny
  python launch/bench_generate.py --model=smollm2 --batch=8 --prompt_len=32 --new_tokens=32

Both sides are greedy, jitted and warmed up (compile excluded), generate
exactly --new_tokens per row (no EOS), and start from the same random
prompts. The naive loop runs one full forward over a fixed [B, P + N] buffer
per new token (one compile; the not-yet-generated tail is masked padding).
Prints new tokens per second (batch x new tokens / wall time) and the ratio.
Run on one CPU device (the default without XLA_FLAGS).
"""

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flock_jax.timing import best_time  # noqa: E402

_MODEL = flags.DEFINE_string("model", "tiny", "tiny | small | smollm2")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows generated together.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Prompt length (rows left-padded 0..7).")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Tokens generated per row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of each (best is reported).")


def main(argv):
  del argv
  import jax
  import numpy as np
  from flock_jax.model import init_params, preset
  from flock_jax.model.generate import generate, naive_greedy

  if _MODEL.value == "smollm2":
    from flock_jax.checkpoint.smollm2 import load_smollm2

    cfg, params, _ = load_smollm2(tokenizer=False)
  else:
    cfg = preset(_MODEL.value)
    params = init_params(cfg, jax.random.key(0))
  b, p, n = _BATCH.value, _PROMPT_LEN.value, _NEW.value
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (b, p)).astype(np.int32)
  valid = np.ones((b, p), bool)
  for i in range(b):  # different amounts of left padding per row
    valid[i, : i % 8] = False

  def cached():
    out = generate(params, cfg, tokens, valid, max_new_tokens=n, eos_ids=())
    return np.asarray(out.tokens)

  def naive():
    return naive_greedy(params, cfg, tokens, valid, n)

  t0 = time.perf_counter()
  ours = cached()
  compile_s = time.perf_counter() - t0
  ref = naive()
  agree = float((ours == ref).mean())
  t_cached = best_time(cached, _REPEATS.value, warmup=False)
  t_naive = best_time(naive, _REPEATS.value, warmup=False)
  tps_c, tps_n = b * n / t_cached, b * n / t_naive
  print(
      f"model={_MODEL.value} ({cfg.num_params() / 1e6:.1f}M) batch={b} prompt={p} new={n} "
      f"device={jax.devices()[0]} (x{jax.device_count()})"
  )
  print(
      f"cached generate: {tps_c:9.1f} tokens/s  ({t_cached:.3f} s; first call with compile "
      f"{compile_s:.1f} s)"
  )
  print(f"naive forwards : {tps_n:9.1f} tokens/s  ({t_naive:.3f} s)")
  print(f"speed-up: {tps_c / tps_n:.1f}x   token agreement cached vs naive: {agree:.3f}")


if __name__ == "__main__":
  app.run(main)
