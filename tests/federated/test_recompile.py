"""No compilation after round 0: three tiny FLock rounds, the later two compile nothing.

Counted with jax.monitoring's backend-compile event, which fires once per XLA compilation
(a jit cache hit fires nothing). A round that changed a shape, a dtype, a static argument
or a Python-level constant of a jitted function would compile again and fail this test.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from flock_jax.federated.engine import build, make_ledger
from flock_jax.federated.population import synthetic_population
from flock_jax.federated.rounds import flock_round
from flock_jax.model.llama import init_params
from flock_jax.run_config import from_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
EVENT = "/jax/core/compile/backend_compile_duration"


def _config(vote_mode, mesh_clients=0):
  spec = importlib.util.spec_from_file_location("flock_config", ROOT / "configs" / "flock.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.data.seq_len = 16
  c.ledger.backend = "local"
  c.eval.every = 1  # per-domain reporting in every round (its first call in round 0)
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters = 6, 2, 3
  f.rounds, f.local_steps, f.batch_size, f.eval_batches, f.eval_batch_size = 3, 2, 4, 1, 4
  f.vote_mode = vote_mode
  if mesh_clients:
    c.mesh.clients, c.mesh.fsdp = mesh_clients, -1  # the rest of the devices shard the base
  return c


@pytest.mark.parametrize(
    "vote_mode, committed, mesh_clients",
    [("whole", True, 0), ("per_proposal", True, 0), ("whole", False, 0), ("whole", True, 2)],
)
def test_no_compilation_after_round_0(vote_mode, committed, mesh_clients):
  """`committed`: the base placed on a device as a loaded checkpoint is (a committed and an
  uncommitted argument are two compilations of the same function). `mesh_clients`: clients
  sharded over that many devices, the base given on one device (build places it)."""
  run = from_config(_config(vote_mode, mesh_clients))
  pop = synthetic_population(6, seq_len=16, train_rows=24, heldout_rows=4, eval_rows=8)
  base = init_params(run.model.cfg, jax.random.key(0))
  if committed:
    base = jax.device_put(base, jax.devices()[0])
  engine, state = build(run, population=pop, base=base)
  ledger = make_ledger(run, state.global_hash)
  compiles = []
  counting = [False]

  def on_event(event, duration, **kw):
    if counting[0] and event == EVENT:
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    state, m0 = flock_round(engine, state, ledger)  # round 0: compiles
    counting[0] = True
    for _ in range(2):
      state, m = flock_round(engine, state, ledger)
    jax.jit(lambda x: x * 3 + 1)(np.arange(7.0))  # the counter does see a compilation
  finally:
    counting[0] = False
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert m.heldout_loss and m0.heldout_loss  # reporting ran
  assert len(compiles) == 1, f"{len(compiles) - 1} compilations after round 0"
