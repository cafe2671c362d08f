"""The main job: rounds of FLock (or a baseline aggregator) on a run config.

  python launch/train.py --config=configs/flock.py:tiny --workdir=runs/tiny
  python launch/train.py --config=configs/flock.py:tiny --config.federation.vote_mode=per_proposal
  python launch/train.py --config=configs/flock.py:tiny --config.federation.mode=baseline \
      --config.federation.aggregator=krum --config.federation.aggregator_hparams=f=1
  python launch/train.py --config=configs/flock.py:tiny --show_config

A run is never lost. Run the same command again in the same --workdir and it continues from
the latest checkpoint, whatever killed it (SIGKILL included) and wherever: the in-process
chain (eth-tester) and the LocalLedger are saved inside every checkpoint and continue block for
block; on a JSON-RPC node the task is attached again and the checkpoint proven against it. A
workdir holding a run with another config is refused, naming the differing fields;
--overwrite moves it aside. See flock_jax/workdir.py for the folder's layout.

Multi-host (a TPU pod slice, a SLURM job, or --coordinator/--num_processes/--process_id):
every host runs this same command; process 0 alone talks to the chain and writes the workdir's
files, every host writes its shards of the checkpoints (--workdir must be shared storage).
See docs/scale_out.md and flock_jax/distributed.py.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flock_jax.cli import define_config, run_main  # noqa: E402

_CONFIG = define_config(
    "config", "configs/flock.py:tiny", "Run config (configs/flock.py:<variant>)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run lives (metrics, checkpoints, ...).")
_RESUME = flags.DEFINE_boolean(
    "resume",
    False,
    "Require an existing run in --workdir and continue it (without the flag a run in --workdir "
    "with the same config is continued too; this only makes a missing run an error).",
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Start again: move the run in --workdir aside to <workdir>.old-<k>."
)
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after",
    None,
    "Stop after this many rounds of this invocation (preemptible jobs); the same command "
    "continues the run.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "Multi-host: host:port of process 0 (else FLOCK_COORDINATOR, SLURM, TPU)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_SHOW_CONFIG = flags.DEFINE_boolean(
    "show_config", False, "Print the resolved config, every field with its meaning, and exit."
)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "flock.py"
    )
    spec = importlib.util.spec_from_file_location("flock_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    print(mod.describe(config))
    return
  import jax

  from flock_jax import distributed as D

  D.initialize(
      coordinator=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
  )
  from flock_jax import faults
  from flock_jax.checkpoint import RunCheckpointer
  from flock_jax.federated import rounds, run_state
  from flock_jax.federated.metrics import progress_bar
  from flock_jax.federated.engine import build, make_ledger, restore_ledger
  from flock_jax.federated.ledger import ChainLedger
  from flock_jax.run_config import from_config
  from flock_jax.workdir import Workdir, WorkdirError

  from flock_jax.cli import info_logging

  info_logging()  # our INFO records on stderr, other libraries' from WARNING up
  run = from_config(config)  # fails here, naming the field, on a malformed config
  wd = Workdir(_WORKDIR.value) if _WORKDIR.value else None
  lead = D.is_leader()  # process 0 writes the workdir's files; every process its shards
  status = D.broadcast(wd.check(config, overwrite=_OVERWRITE.value) if wd and lead else "new")
  if _RESUME.value and status not in ("continue", "extend"):
    raise WorkdirError(f"--resume: --workdir={_WORKDIR.value} holds no run to continue")
  if wd and status == "continue" and wd.summary_path.exists():
    s = json.loads(wd.summary_path.read_text())
    if "ended_early" in s:
      e = s["ended_early"]
      print(f"done: the task ended before round {e['round']}: {e['reason']}; nothing left to run")
    else:
      print(f"done: all {run.federation.rounds} rounds were already run; nothing left to run")
    print(s["line"])
    return

  engine, state = build(run)  # loads and checks the model before anything is written
  engine = D.for_hosts(engine)
  print(
      f"flock_jax: {run.model.preset} | mode={run.federation.mode} "
      f"vote={run.federation.vote_mode} N={run.federation.num_participants} "
      f"P={run.federation.num_proposers} V={run.federation.num_voters} "
      f"rounds={run.federation.rounds} | ledger={run.ledger.backend} | devices={jax.devices()}",
      flush=True,
  )
  flock = run.federation.mode == "flock"
  store = ckpt = None
  if wd:
    if lead:
      wd.start(config, status)
      if status == "extend":
        print(f"extending the run to {run.federation.rounds} rounds", flush=True)
    D.sync("workdir")
    from flock_jax.chain import AdapterStore

    store = D.on_leader(AdapterStore(wd / "store"))
    if run.checkpoint_every:
      ckpt = RunCheckpointer(wd / "checkpoints", max_to_keep=run.checkpoint_keep)

  # Restore (continuing) or start: the ledger comes back with the state it had at that boundary.
  ledger = None
  if ckpt is not None and ckpt.latest_step() is not None:
    step = ckpt.latest_step()
    tree, meta = ckpt.restore(step, D.checkpointable(run_state.restore_target(ckpt, step, state)))
    if flock:
      ledger = D.shared_ledger(lambda: restore_ledger(run, tree, meta, wd))
    state = run_state.restore_state(state, tree, meta, ledger)
    print(
        f"resuming at round {state.round} (checkpoint of chain round {meta['chain_round']}, "
        f"block {meta['block_hash'] or '-'})",
        flush=True,
    )
  else:
    if flock:
      ledger = D.shared_ledger(lambda: make_ledger(run, state.global_hash))
      chain = D.unwrap(ledger)
      if isinstance(chain, ChainLedger):
        logging.info("FlockTask deployed at %s", chain.chain.task.address)
      if wd and isinstance(chain, ChainLedger):
        wd.write_json(
            "chain.json", {"task": chain.chain.task.address, "rpc_url": run.ledger.rpc_url}
        )
    if ckpt is not None:  # round 0's boundary: the deployed chain and the initial state
      ckpt.save(
          0,
          D.checkpointable(run_state.checkpoint_tree(state, ledger)),
          run_state.checkpoint_meta(state, None, run, ledger),
      )

  rows = D.broadcast(wd.metrics_rows(before_round=state.round) if wd and lead else [])
  if wd and lead:
    wd.rewrite_metrics(rows)  # rows of rounds about to be rerun (after a kill) go
  events = None
  if run.tensorboard and wd and lead:
    from flock_jax.tensorboard import EventWriter

    events = EventWriter(wd / "tensorboard")
  if not rows:  # round -1: where the run began
    m0 = rounds.initial_metrics(engine, state)
    print(m0.summary(), flush=True)
    rows = [m0.to_dict()]
    if wd and lead:
      wd.rewrite_metrics(rows)
    if events:
      events.write_row(rows[0])

  ran, started, ended = 0, time.perf_counter(), None
  with engine.mesh_context():
    while state.round < run.federation.rounds:
      if _STOP_AFTER.value is not None and ran >= _STOP_AFTER.value:
        print(f"stopped after {ran} rounds; run the same command to continue", flush=True)
        return
      reason = rounds.cannot_continue(run, ledger) if flock else None
      if reason:
        ended = {"round": state.round, "reason": reason}
        print(f"the task ended before round {state.round}: {reason}", flush=True)
        break
      if flock:
        state, m = rounds.flock_round(engine, state, ledger, store)
      else:
        state, m = rounds.baseline_round(engine, state)
      ran += 1
      print(m.summary(), flush=True)
      left = run.federation.rounds - state.round  # ETA from this invocation's rounds
      print(progress_bar(ran, ran + left, time.perf_counter() - started, "rounds"), flush=True)
      rows.append(m.to_dict())
      if wd and lead:
        wd.append_metrics(rows[-1])
      if events:
        events.write_row(rows[-1])
      faults.point("metrics", m.round)
      if ckpt is not None and (
          state.round % run.checkpoint_every == 0 or state.round == run.federation.rounds
      ):
        faults.point("checkpoint", m.round)
        logging.info("checkpoint of round %d -> %s", m.round, ckpt.directory)
        ckpt.save(
            state.round,
            D.checkpointable(run_state.checkpoint_tree(state, ledger)),
            run_state.checkpoint_meta(state, m, run, ledger),
        )
  if ckpt is not None:
    ckpt.close()

  ok = True
  chain = D.unwrap(ledger)  # the leader's; None on the other processes
  if isinstance(chain, ChainLedger):
    from flock_jax.chain.audit import audit_chain
    from flock_jax.federated.voting import candidate_bytes

    if wd:
      chain.chain.export_logs(str(wd / "chain_logs.json"))
    report = audit_chain(
        chain.chain, store, aggregate=candidate_bytes, require_blobs=store is not None
    )
    print(f"audit: {report.summary()}", flush=True)
    ok = report.ok
  ok = D.broadcast(ok)
  summary = rounds.summarize(rows, run)
  if ended:
    summary["ended_early"] = ended
  print(summary["line"], flush=True)
  if wd and lead:
    wd.write_json("summary.json", summary)
    print(f"metrics: {wd.metrics_path}")
  if not ok:
    raise SystemExit(1)


if __name__ == "__main__":
  run_main(main)
