"""One process of a multi-host FLock run on CPU (spawned by tests/scale/test_multihost.py).

  python tests/scale/multihost_run.py --out=DIR --process_id=0 --num_processes=2 \
      --coordinator=127.0.0.1:PORT --devices=2 --mesh=fsdp:4

Runs the tiny FLock config for a few rounds on the in-process chain through
`rounds.run_rounds`, with the multi-host pieces of flock_jax/distributed.py:
the leader holds the chain and the adapter store, every process holds a
FollowerLedger. Each process writes what it saw (metrics, global hash, stakes)
to DIR/process_<i>.json. With --num_processes=1 it is the single-process reference.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))


def local_shard_reads(cfg) -> dict:
  """Builds the base on an fsdp mesh over every device of every process from a counting HF
  source: each process must read only the elements of its own shards."""
  import jax
  import numpy as np

  from flock_jax import sharding as S
  from flock_jax.checkpoint.hf_names import hf_tensor_map
  from flock_jax.checkpoint.sharded_load import DictSource, params_from_source
  from flock_jax.model.llama import abstract_params

  abstract, tensors = abstract_params(cfg), {}
  for name, slot in hf_tensor_map(cfg).items():
    leaf = abstract
    for k in slot.path:
      leaf = leaf[k]
    shape = leaf.shape[1:] if slot.layer is not None else leaf.shape
    tensors[name] = np.zeros(shape[::-1] if slot.transpose else shape, np.float32)

  class Counting(DictSource):
    count = 0

    def read(self, name, index):
      out = super().read(name, index)
      Counting.count += out.size
      return out

  mesh = S.make_mesh({"fsdp": len(jax.devices())})
  params = params_from_source(cfg, Counting(tensors), mesh, dtype=np.float32)
  replicated = sum(x.size for x in jax.tree.leaves(params) if x.sharding.is_fully_replicated)
  total = int(sum(t.size for t in tensors.values()))
  return {"read": Counting.count, "total": total, "replicated": int(replicated)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--coordinator", default=None)
  p.add_argument("--devices", type=int, default=2, help="fake CPU devices per process")
  p.add_argument("--mesh", default="clients:2,fsdp:2")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--proposers", type=int, default=2)
  p.add_argument("--backend", default="eth_tester")
  a = p.parse_args(argv)

  os.environ.pop("XLA_FLAGS", None)  # the device count comes from jax_num_cpu_devices
  import jax

  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", a.devices)
  from flock_jax import distributed as D

  D.use_cpu_collectives()
  D.initialize(coordinator=a.coordinator, num_processes=a.num_processes, process_id=a.process_id)

  from configs.flock import get_config
  from flock_jax.chain import AdapterStore
  from flock_jax.checkpoint import RunCheckpointer
  from flock_jax.federated import rounds, run_state
  from flock_jax.federated.engine import build, make_ledger
  from flock_jax.run_config import from_config

  out = pathlib.Path(a.out)
  c = get_config("tiny")
  c.federation.rounds = a.rounds
  c.federation.local_steps = 2
  c.federation.num_proposers = a.proposers
  c.data.seq_len = 192
  c.data.examples_per_domain = 48
  c.ledger.backend = a.backend
  c.checkpoint.every = 0
  c.eval.prompts_per_domain, c.eval.asr_prompts = 4, 4  # generation reports gather tokens
  c.attack.fraction, c.attack.proposer = 0.25, "backdoor"  # so ASR has a trigger to report
  mesh = dict(part.split(":") for part in a.mesh.split(",") if part)
  c.mesh = {k: int(mesh.get(k, 1)) for k in ("clients", "data", "fsdp", "tensor")}
  run = from_config(c)

  # The loop of launch/train.py: the leader alone deploys the task and writes the store;
  # every process holds a FollowerLedger and the engine's multi-host wrapper.
  engine, state = build(run)
  engine = D.for_hosts(engine)
  ledger = D.FollowerLedger(make_ledger(run, state.global_hash) if D.is_leader() else None)
  store = D.on_leader(AdapterStore(out / "store"))
  seen = []
  with engine.mesh_context():
    while state.round < run.federation.rounds:
      state, m = rounds.flock_round(engine, state, ledger, store)
      seen.append(m.to_dict())
  # Orbax is collective: every process saves its own shards of the run state.
  ckpt = RunCheckpointer(out / "checkpoints", max_to_keep=1)
  # A call the chain refuses: the leader's LedgerError is raised on every process.
  try:
    ledger.propose(0, b"\x01" * 32)
    ledger_error = None
  except Exception as e:  # noqa: BLE001 - reported, compared across processes
    ledger_error = f"{type(e).__name__}: {e}"
  read = local_shard_reads(run.model.cfg)
  tree = D.checkpointable(run_state.checkpoint_tree(state, ledger))
  ckpt.save(state.round, tree, run_state.checkpoint_meta(state, m, run, ledger))
  restored, meta = ckpt.restore(state.round, tree)
  same = jax.tree.map(
      lambda a, b: D.fetch(a).tobytes() == D.fetch(b).tobytes(),
      restored["clients"],
      tree["clients"],
  )
  ckpt.close()
  drop = lambda d: {k: v for k, v in d.items() if not k.endswith("_seconds")}
  report = {
      "process_index": D.process_index(),
      "process_count": D.process_count(),
      "devices": len(jax.devices()),
      "local_devices": len(jax.local_devices()),
      "metrics": [drop(m) for m in seen],
      "stakes": [str(s) for s in ledger.stakes()],
      "block_hash": "0x" + ledger.block_hash().hex(),
      "ledger_error": ledger_error,
      "base_elements_read": read,
      "checkpoint_roundtrip": all(jax.tree.leaves(same)),
      "checkpoint_round": meta.get("round"),
      "store_blobs": len(list((out / "store").glob("*"))) if store is not None else None,
      # (global [K, E, B, T], the block this host built) of every local-training batch
      "train_blocks": [
          [list(shape), [[r.start, r.stop] for r in rows]]
          for shape, rows in getattr(engine.population, "blocks", [])
      ],
  }
  (out / f"process_{D.process_index()}.json").write_text(json.dumps(report, indent=1))
  D.sync("done")
  return 0


if __name__ == "__main__":
  sys.exit(main())
