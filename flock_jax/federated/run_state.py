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
      )
      if "clients" in tree
      else fresh.clients,
      agg_state=tree.get("agg_state", fresh.agg_state),
      key=jax.random.wrap_key_data(tree["key"]),
      global_hash=unhex(meta["global_hash"]),
      suspicion={int(i): float(x) for i, x in meta.get("probe_suspicion", {}).items()},
  )
  if jax.process_count() == 1:  # placed as the fresh state is, so nothing compiles again
    place = lambda new, old: (
        jax.device_put(new, old.sharding) if getattr(old, "committed", False) else new
    )
    state = dataclasses.replace(
        state,
        global_lora=jax.tree.map(place, state.global_lora, fresh.global_lora),
        clients=jax.tree.map(place, state.clients, fresh.clients),
    )
  if hashing.tree_hash(state.global_lora) != state.global_hash:
    raise ResumeError(
        f"checkpoint global adapter does not hash to {meta['global_hash']}: "
        "the stored arrays were altered"
    )
  return state


def checkpoint_tree(state: RunState, ledger: Ledger | None = None) -> dict:
  """The arrays of a RunState, as a plain pytree for flock_jax.checkpoint.RunCheckpointer; with
  an in-process ledger, its whole state as bytes (uint8 [n]) under 'ledger', so that the run
  state and the chain state are written (and restored) together, atomically."""
  import numpy as np

  tree = {"global_lora": state.global_lora, "key": jax.random.key_data(state.key)}
  if state.clients.num_clients:  # client_state='fresh' keeps none (orbax saves no empty array)
    tree["clients"] = {"adapters": state.clients.adapters, "opt_state": state.clients.opt_state}
  if jax.tree.leaves(state.agg_state):
    tree["agg_state"] = state.agg_state
  if ledger is not None:
    tree["ledger"] = np.frombuffer(ledger.dump_state() or b"\x00", np.uint8).copy()
  return tree


def restore_target(ckpt, step: int, fresh: RunState) -> dict:
  """The restore target of a checkpoint step: the fresh state's structure and shardings, and
  the saved ledger bytes' length (it differs per step)."""
  target = checkpoint_tree(fresh)
  saved = ckpt.abstract_state(step)
  if isinstance(saved, dict) and "ledger" in saved:
    target["ledger"] = saved["ledger"]
  return target


def checkpoint_meta(
    state: RunState, m: RoundMetrics | None, run: Any = None, ledger: Ledger | None = None
) -> dict:
  """JSON beside the arrays: the round the state is ready for, the chain it agrees with (the
  round just finalized, -1 before the first), and what `launch/export.py --run` needs."""
  meta = {
      "next_round": state.round,
      "chain_round": m.round if m is not None else -1,
      "block_hash": m.block_hash
      if m is not None
      else _hex(ledger.block_hash() if ledger else None),
      "global_hash": _hex(state.global_hash),
      "chain_global_hash": m.chain_global_hash if m is not None else _hex(state.global_hash),
  }
  if state.suspicion:  # the probe's memory (federation.probe_budget): JSON floats round-trip
    meta["probe_suspicion"] = {str(i): x for i, x in sorted(state.suspicion.items())}
  if run is not None:
    from flock_jax.checkpoint.run_state import LORA_CONFIG_KEY, lora_config_meta

    meta[LORA_CONFIG_KEY] = lora_config_meta(run.lora)
    meta["model"] = {"preset": run.model.preset, "weights": run.model.weights, "seed": run.seed}
  return meta
