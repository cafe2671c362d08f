"""K clients' local training: one vmapped jitted call vs a Python loop over clients.

  python launch/bench_clients.py [--ks=4,16,64] [--steps=2] [--batch=4] [--seq=64] [--reps=3]

Same tiny model, same tokens, same optimizer, same E local steps in both:
  vmapped  flock_jax.federated.clients.make_local_train: all K clients in one program
  loop     make_client_train (one client's E steps, jitted once) called K times
Prints training tokens/s of both and the ratio. Runs on ONE CPU device (fake
CPU devices share the same cores, see the project's STACK notes).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flock_jax.timing import best_time, use_one_cpu_device  # noqa: E402

use_one_cpu_device()


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from flock_jax.federated import clients as cl  # noqa: E402
from flock_jax.federated.population import synthetic_rows  # noqa: E402
from flock_jax.model.config import preset  # noqa: E402
from flock_jax.model.llama import init_params  # noqa: E402
from flock_jax.model.lora import LoraConfig, init_lora  # noqa: E402
from flock_jax.optim import make_optimizer  # noqa: E402
from flock_jax.run_config import default_optim  # noqa: E402

_KS = flags.DEFINE_list("ks", ["4", "16", "64"], "Numbers of clients K.")
_STEPS = flags.DEFINE_integer("steps", 2, "Local steps E per client.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size B per step.")
_SEQ = flags.DEFINE_integer("seq", 64, "Sequence length T.")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions (after one warm-up).")
_PRESET = flags.DEFINE_string("preset", "tiny", "Model preset.")
_CHUNK = flags.DEFINE_integer("chunk", 0, "Loss sequence chunk (0 = whole sequence).")


def main(argv):
  del argv
  cfg = preset(_PRESET.value)
  lcfg = LoraConfig(rank=8, alpha=16.0)
  tx = make_optimizer(default_optim(lr=1e-3))
  base = init_params(cfg, jax.random.key(0))
  g = init_lora(cfg, lcfg, jax.random.key(1))
  e, b, t = _STEPS.value, _BATCH.value, _SEQ.value
  chunk = _CHUNK.value or None
  vm = cl.make_local_train(cfg, lcfg, tx, chunk_size=chunk, donate=False)
  one = cl.make_client_train(cfg, lcfg, tx, chunk_size=chunk)
  print(
      f"devices={jax.devices()} model={_PRESET.value} LoRA r=8 all projections; "
      f"E={e} B={b} T={t} loss_chunk={chunk}; best of {_REPS.value}"
  )
  print(f"{'K':>4} {'vmapped tok/s':>14} {'loop tok/s':>12} {'ratio':>7}")
  for k in map(int, _KS.value):
    rng = np.random.default_rng(k)
    rows = [synthetic_rows(rng, e * b, t, 256, 1 + i % 7) for i in range(k)]
    batches = {
        key: jnp.asarray(np.stack([r[key].reshape(e, b, t) for r in rows])) for key in rows[0]
    }
    state = cl.init_client_state(cfg, lcfg, tx, jax.random.key(2), k, global_lora=g)
    keys = jax.random.split(jax.random.key(3), k)
    row = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
    per_client = [(row(state.opt_state, i), row(batches, i), keys[i]) for i in range(k)]

    def run_vmapped():
      jax.block_until_ready(vm(base, g, state.opt_state, batches, keys))

    def run_loop():
      jax.block_until_ready([one(base, g, o, bt, kk) for o, bt, kk in per_client])

    tokens = k * e * b * t
    tv, tl = best_time(run_vmapped, _REPS.value), best_time(run_loop, _REPS.value)
    print(f"{k:>4} {tokens / tv:>14,.0f} {tokens / tl:>12,.0f} {tl / tv:>6.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
