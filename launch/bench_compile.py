"""Compile time of the round's two programs against depth: flat, since the layers are scanned.

  python launch/bench_compile.py [--depths=2,8,30] [--preset=smollm2_135m] [--dtype=float32]

For each depth L (the preset with num_layers=L), traces, lowers and compiles the engine's
jitted `local_train` (K clients x E steps) and `heldout_loss` (V voters x M candidates)
from abstract shapes only (nothing is allocated or run). One `lax.scan` over the stacked
layers means the program holds one layer body whatever L is: compile time should not grow
with depth. Last line: JSON {depth: {"train_s", "heldout_s"}}.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flock_jax.timing import use_one_cpu_device  # noqa: E402

use_one_cpu_device()

import json  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

_DEPTHS = flags.DEFINE_list("depths", ["2", "8", "30"], "Numbers of layers.")
_PRESET = flags.DEFINE_string("preset", "smollm2_135m", "Model preset.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_K = flags.DEFINE_integer("clients", 4, "Clients K (and voters V).")
_E = flags.DEFINE_integer("steps", 2, "Local steps E.")
_B = flags.DEFINE_integer("batch", 4, "Batch size B.")
_T = flags.DEFINE_integer("seq", 128, "Sequence length T.")


def _timed(fn):
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp

  from flock_jax.federated.clients import init_client_state, make_local_train
  from flock_jax.federated.evaluation import make_heldout_loss
  from flock_jax.model.config import preset
  from flock_jax.model.llama import abstract_params
  from flock_jax.model.lora import LoraConfig, init_lora
  from flock_jax.optim import make_optimizer
  from flock_jax.run_config import default_optim

  k, e, b, t = _K.value, _E.value, _B.value, _T.value
  lcfg = LoraConfig(rank=8, alpha=16.0)
  tx = make_optimizer(default_optim(lr=1e-3))
  batch = lambda *lead: {
      "tokens": jax.ShapeDtypeStruct(lead + (b, t), jnp.int32),
      "loss_mask": jax.ShapeDtypeStruct(lead + (b, t), jnp.float32),
      "segment_ids": jax.ShapeDtypeStruct(lead + (b, t), jnp.int32),
      "positions": jax.ShapeDtypeStruct(lead + (b, t), jnp.int32),
  }
  print(f"{_PRESET.value} {_DTYPE.value}: K={k} E={e} [B, T]=[{b}, {t}]; devices={jax.devices()}")
  print(f"{'layers':>6} {'train trace+lower':>18} {'train compile':>14} {'heldout total':>14}")
  out = {}
  for depth in map(int, _DEPTHS.value):
    cfg = preset(_PRESET.value, num_layers=depth, dtype=_DTYPE.value, param_dtype=_DTYPE.value)
    base = abstract_params(cfg)
    g = jax.eval_shape(lambda: init_lora(cfg, lcfg, jax.random.key(0)))
    st = jax.eval_shape(lambda: init_client_state(cfg, lcfg, tx, jax.random.key(0), k))
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), k))
    # fresh jitted functions each depth: nothing comes from jax's in-memory caches
    lt = make_local_train(cfg, lcfg, tx, donate=False)
    lowered, t_lower = _timed(lambda: lt.lower(base, g, st.opt_state, batch(k, e), keys))
    _, t_comp = _timed(lowered.compile)
    cand = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2,) + x.shape, x.dtype), g)
    hl = make_heldout_loss(cfg, lcfg)
    _, t_held = _timed(lambda: hl.lower(base, cand, batch(k, 1)).compile())
    out[depth] = {"train_s": round(t_lower + t_comp, 2), "heldout_s": round(t_held, 2)}
    print(f"{depth:>6} {t_lower:>17.2f}s {t_comp:>13.2f}s {t_held:>13.2f}s", flush=True)
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
