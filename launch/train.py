"""The main job: rounds of FLock (or a baseline aggregator) on a run config.

  python launch/train.py --config=configs/flock.py:tiny --workdir=/tmp/run
  python launch/train.py --config=configs/flock.py:tiny --config.federation.vote_mode=per_proposal
  python launch/train.py --config=configs/flock.py:tiny --config.federation.mode=baseline \
      --config.federation.aggregator=krum --config.federation.aggregator_hparams=f=1

Writes to --workdir: config.json, metrics.jsonl (one JSON object per round),
checkpoints/ (the run state each config.checkpoint.every rounds, with the
ledger's round number and block hash beside it), store/ (every adapter blob
whose hash went on chain) and chain_logs.json (the task's events). With a
chain backend the run ends with an audit of the whole run from the logs and
the store (launch/audit.py does the same later).
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/flock.py:tiny", "Run config (configs/flock.py:<variant>)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics and checkpoints go.")
_RESUME = flags.DEFINE_boolean(
    "resume",
    False,
    "Continue from the latest checkpoint in --workdir, after proving it agrees "
    "with the chain (needs config.ledger.backend=jsonrpc; the task address is read from "
    "--workdir/chain.json unless config.ledger.task names it).",
)
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after",
    None,
    "Stop after this many rounds of this invocation (preemptible jobs; " "continue with --resume).",
)


class _Stop(Exception):
  pass


def main(argv):
  del argv
  import jax
  from flock_jax.checkpoint import RunCheckpointer
  from flock_jax.federated import rounds, run_state
  from flock_jax.federated.voting import candidate_bytes
  from flock_jax.federated.ledger import ChainLedger
  from flock_jax.federated.metrics import JsonlWriter
  from flock_jax.run_config import from_config

  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  config = _CONFIG.value
  run = from_config(config)  # fails here, naming the field, on a malformed config
  workdir = _WORKDIR.value
  writer = ckpt = store = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path) and not _RESUME.value:
      os.remove(path)
    writer = JsonlWriter(path)
    from flock_jax.chain import AdapterStore

    store = AdapterStore(os.path.join(workdir, "store"))
    if run.checkpoint_every:
      ckpt = RunCheckpointer(os.path.join(workdir, "checkpoints"), max_to_keep=run.checkpoint_keep)
  print(
      f"flock_jax: {run.model.preset} | mode={run.federation.mode} "
      f"vote={run.federation.vote_mode} N={run.federation.num_participants} "
      f"P={run.federation.num_proposers} V={run.federation.num_voters} "
      f"rounds={run.federation.rounds} | devices={jax.devices()}",
      flush=True,
  )

  if _RESUME.value and workdir and not config.ledger.task:
    with open(os.path.join(workdir, "chain.json")) as f:
      config.ledger.task = json.load(f)["task"]
    run = from_config(config)
  seen = {"rounds": 0}

  def on_round(state, m, ledger):
    if "ledger" not in seen and isinstance(ledger, ChainLedger) and workdir:
      with open(os.path.join(workdir, "chain.json"), "w") as f:
        json.dump({"task": ledger.chain.task.address, "rpc_url": run.ledger.rpc_url}, f)
    seen["ledger"] = ledger
    seen["rounds"] += 1
    print(m.summary(), flush=True)
    if writer:
      writer.write(m)
    if ckpt and (m.round + 1) % run.checkpoint_every == 0:
      ckpt.save(
          m.round + 1, run_state.checkpoint_tree(state), run_state.checkpoint_meta(state, m, config)
      )
    if _STOP_AFTER.value is not None and seen["rounds"] >= _STOP_AFTER.value:
      raise _Stop

  def resume(fresh):
    tree, meta = ckpt.restore(None, run_state.checkpoint_tree(fresh))
    print(
        f"resuming at round {meta['next_round']} (checkpoint of chain round "
        f"{meta['chain_round']}, block {meta['block_hash']})",
        flush=True,
    )
    return tree, meta

  if _RESUME.value and not (ckpt and ckpt.latest_step() is not None):
    raise app.UsageError(f"--resume: no checkpoint under {workdir}/checkpoints")
  try:
    metrics = rounds.run_rounds(
        run, store=store, on_round=on_round, resume=resume if _RESUME.value else None
    )
  except _Stop:
    print(f"stopped after {seen['rounds']} rounds; continue with --resume", flush=True)
    if ckpt:
      ckpt.close()
    return
  if ckpt:
    ckpt.close()
  ledger = seen.get("ledger")
  if isinstance(ledger, ChainLedger):
    from flock_jax.chain.audit import audit_chain

    if workdir:
      ledger.chain.export_logs(os.path.join(workdir, "chain_logs.json"))
    report = audit_chain(
        ledger.chain, store, aggregate=candidate_bytes, require_blobs=store is not None
    )
    print(f"audit: {report.summary()}", flush=True)
    if not report.ok:
      raise SystemExit(1)
  if not metrics:
    print(f"done: all {run.federation.rounds} rounds were already run; nothing left to run")
    return
  first, last = metrics[0], metrics[-1]
  done = f"done: held-out loss {first.mean_heldout_loss:.4f} -> {last.mean_heldout_loss:.4f}"
  if run.federation.mode == "flock":
    done += f"; accepted {sum(bool(m.accepted) for m in metrics)}/{len(metrics)} rounds"
  print(done, flush=True)
  if workdir:
    print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}")


if __name__ == "__main__":
  app.run(main)
