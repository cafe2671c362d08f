"""Run state across process boundaries: what a checkpoint holds, and resuming from one
only after proving it agrees with the chain (PROTOCOL.md step 7)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from flock_jax.federated import hashing
from flock_jax.federated.engine import RunState
from flock_jax.federated.ledger import Ledger
from flock_jax.federated.metrics import RoundMetrics


def _hex(b: bytes | None) -> str:
  return "" if b is None else "0x" + bytes(b).hex()


class ResumeError(RuntimeError):
  """A checkpoint that does not agree with the chain it claims to continue."""


def restore_state(fresh: RunState, tree: dict, meta: dict, ledger: Ledger | None) -> RunState:
  """The RunState a checkpoint holds, after proving it agrees with the ledger (PROTOCOL.md 7).

  fresh: a RunState of the same run (from `build`), giving structure and shardings.
  """
  unhex = lambda h: bytes.fromhex(h.removeprefix("0x")) if h else b"\x00" * 32
  if ledger is not None:
    bad = ledger.boundary_mismatches(
        int(meta["chain_round"]), unhex(meta["chain_global_hash"]), unhex(meta["block_hash"])
    )
    if bad:
      raise ResumeError(
          "checkpoint of round {} disagrees with the chain: {}".format(
              meta["chain_round"], "; ".join(bad)
          )
      )
  state = dataclasses.replace(
      fresh,
      round=int(meta["next_round"]),
      global_lora=tree["global_lora"],
      clients=dataclasses.replace(
          fresh.clients,
          adapters=tree["clients"]["adapters"],
          opt_state=tree["clients"]["opt_state"],
      ),
      agg_state=tree.get("agg_state", fresh.agg_state),
      key=jax.random.wrap_key_data(tree["key"]),
      global_hash=unhex(meta["global_hash"]),
  )
  if hashing.tree_hash(state.global_lora) != state.global_hash:
    raise ResumeError(
        f"checkpoint global adapter does not hash to {meta['global_hash']}: "
        "the stored arrays were altered"
    )
  return state


def checkpoint_tree(state: RunState) -> dict:
  """The arrays of a RunState, as a plain pytree for flock_jax.checkpoint.RunCheckpointer."""
  tree = {
      "global_lora": state.global_lora,
      "clients": {"adapters": state.clients.adapters, "opt_state": state.clients.opt_state},
      "key": jax.random.key_data(state.key),
  }
  if jax.tree.leaves(state.agg_state):
    tree["agg_state"] = state.agg_state
  return tree


def checkpoint_meta(state: RunState, m: RoundMetrics, config: Any = None) -> dict:
  """JSON beside the arrays: the round the state is ready for, and the chain it agrees with."""
  meta = {
      "next_round": state.round,
      "chain_round": m.round,
      "block_hash": m.block_hash,
      "global_hash": _hex(state.global_hash),
      "chain_global_hash": m.chain_global_hash,
  }
  if config is not None and hasattr(config, "to_json_best_effort"):
    meta["config"] = config.to_json_best_effort()
  return meta
