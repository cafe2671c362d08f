"""Audit a FLock run: rebuild every round from the chain's logs and check the adapter store.

From an exported log file (`FlockChain.export_logs`):

    python launch/audit.py --logs=runs/x/chain_logs.json --store=runs/x/adapters

From a live JSON-RPC node:

    python launch/audit.py --rpc_url=http://127.0.0.1:8545 --task=0x... --store=runs/x/adapters

It runs every check the in-run audit runs: the replay of every event through the
contract's Python model, every blob (genesis, proposals, candidates) re-hashed, every
accepted candidate rebuilt from G_r and the valid proposals (--recompute), and the
replayed final state against the export's anchor (or the live contract). A malformed
blob is reported as a mismatch. Exit status 0 when the audit is clean, 1 when it finds one.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

# Runnable from a checkout without installing it (the other launch scripts do the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flock_jax.chain import AdapterStore, FlockChain
from flock_jax.chain.audit import audit_chain, audit_export

flags.DEFINE_string("logs", None, "Exported chain log JSON (FlockChain.export_logs).")
flags.DEFINE_string(
    "store", None, "Adapter store directory (<hash>.bin files); omit to skip blob checks."
)
flags.DEFINE_string(
    "rpc_url", None, "Audit a live task on this JSON-RPC node instead of a log file."
)
flags.DEFINE_string("task", None, "Task contract address (with --rpc_url).")
flags.DEFINE_boolean("require_blobs", True, "Report blobs missing from the store as mismatches.")
flags.DEFINE_boolean(
    "recompute", True, "Rebuild every accepted candidate from G_r and the valid proposals."
)


def main(argv: list[str]) -> int:
  del argv
  f = flags.FLAGS
  store = AdapterStore(f.store) if f.store else None
  kw = {"require_blobs": f.require_blobs}
  if f.recompute and store is not None:  # the same candidate rule as the in-run audit
    from flock_jax.federated.voting import candidate_bytes

    kw["aggregate"] = candidate_bytes
  if f.rpc_url:
    if not f.task:
      raise app.UsageError("--rpc_url needs --task=<task contract address>")
    chain = FlockChain.from_config({"backend": "jsonrpc", "rpc_url": f.rpc_url}, num_participants=0)
    chain.attach(f.task)
    report = audit_chain(chain, store, **kw)
  elif f.logs:
    report = audit_export(f.logs, store, **kw)
  else:
    raise app.UsageError("give --logs=<export.json> or --rpc_url=<url> --task=<address>")
  print(report.summary())
  return 0 if report.ok else 1


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
