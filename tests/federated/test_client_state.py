"""federation.client_state='fresh': every round trains from G with a fresh optimizer and keeps
nothing per participant, so the run state does not grow with N; 'persistent' (the default)
keeps each participant's adapter and AdamW state across rounds.

Round 0 is the same computation in both (every client starts with a fresh optimizer); later
rounds differ only through the optimizer state a participant carried. A fresh-mode run
checkpointed and resumed ends where the uninterrupted one does.
"""

import jax
import numpy as np
import pytest

from flock_jax.federated.engine import build
from flock_jax.federated.population import synthetic_population
from flock_jax.federated.rounds import run_rounds
from flock_jax.model.llama import init_params
from flock_jax.run_config import RunConfigError, from_config, load_config

N = 6


def _config(client_state="fresh", n=N, **fed):
  c = load_config("tiny")
  c.data.seq_len = 16
  c.ledger.backend = "local"
  c.checkpoint.every = 0
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters, f.clients_per_round = n, 2, 2, 2
  f.rounds, f.local_steps, f.batch_size, f.eval_batches, f.eval_batch_size = 3, 2, 4, 1, 4
  f.client_state = client_state
  for k, v in fed.items():
    f[k] = v
  return c


@pytest.fixture(scope="module")
def world():
  base = init_params(from_config(_config()).model.cfg, jax.random.key(0))
  pop = synthetic_population(N, seq_len=16, train_rows=24, heldout_rows=4, eval_rows=8)
  return base, pop


@pytest.mark.parametrize("mode", ["flock", "baseline"])
def test_fresh_matches_persistent_in_round_0_then_differs(world, mode):
  base, pop = world
  runs = {
      cs: run_rounds(_config(cs, mode=mode), population=pop, base=base)
      for cs in ("fresh", "persistent")
  }
  fresh, kept = runs["fresh"], runs["persistent"]
  assert fresh[0].global_hash == kept[0].global_hash  # the same first round, bit for bit
  # A later round differs once a participant trains again with its carried AdamW state.
  again = [
      r
      for r in range(1, 3)
      if set(kept[r].proposers or kept[r].clients)
      & {i for m in kept[:r] for i in (m.proposers or m.clients)}
  ]
  assert again, "no participant trained twice in 3 rounds"
  assert fresh[-1].global_hash != kept[-1].global_hash


def test_fresh_state_does_not_grow_with_participants():
  n = 400
  run = from_config(_config(n=n))
  pop = synthetic_population(n, seq_len=16, train_rows=8, heldout_rows=4, eval_rows=4)
  _, state = build(run, population=pop, base=init_params(run.model.cfg, jax.random.key(0)))
  assert sum(x.size for x in jax.tree.leaves(state.clients)) == 0
  kept = from_config(_config("persistent", n=n))
  _, full = build(kept, population=pop, base=init_params(kept.model.cfg, jax.random.key(0)))
  lora = sum(x.size for x in jax.tree.leaves(full.global_lora))
  # adapter + AdamW mu and nu per participant, plus the step counters
  assert sum(x.size for x in jax.tree.leaves(full.clients)) >= 3 * n * lora


def test_fresh_run_resumes_where_it_stopped(world, tmp_path):
  from flock_jax.checkpoint import RunCheckpointer
  from flock_jax.federated.run_state import checkpoint_meta, checkpoint_tree

  base, pop = world
  full = run_rounds(_config(), population=pop, base=base)
  ck, seen = RunCheckpointer(tmp_path / "ck"), {}

  class Stop(Exception):
    pass

  def stop_after_round_1(state, m, ledger):
    seen["ledger"] = ledger
    if m.round == 1:
      ck.save(2, checkpoint_tree(state), checkpoint_meta(state, m))
      raise Stop

  with pytest.raises(Stop):
    run_rounds(_config(), population=pop, base=base, on_round=stop_after_round_1)
  _, fresh = build(from_config(_config()), population=pop, base=base)
  tree, meta = ck.restore(2, checkpoint_tree(fresh))
  rest = run_rounds(
      _config(),
      population=pop,
      base=base,
      ledger=seen["ledger"],
      resume=lambda _: (tree, meta),
  )
  assert [m.round for m in rest] == [2] and rest[0].global_hash == full[-1].global_hash
  np.testing.assert_allclose(rest[0].train_loss, full[-1].train_loss, rtol=0, atol=0)


def test_isolated_clients_need_persistent_state():
  with pytest.raises(RunConfigError, match=r"client_state='fresh' with aggregator='local'"):
    from_config(_config(mode="baseline", aggregator="local"))
  with pytest.raises(RunConfigError, match=r"config\.federation\.client_state='kept'"):
    from_config(_config("kept"))
