"""Default chain configuration (an `ml_collections.ConfigDict`).

Fields:
  backend: "eth_tester" (in-process, default) or "jsonrpc".
  rpc_url: the node's URL for "jsonrpc", e.g. "http://127.0.0.1:8545".
  private_keys: hex keys to sign with locally on "jsonrpc" (empty: use the
    node's unlocked accounts). Account 0 deploys; account i+1 is participant i.
  task: `TaskParams` fields (see flock_jax/chain/types.py); vote_mode may be
    "whole" or "per_proposal", selection_mode "uniform" or "stake".
  stake: initial stake of every participant, in token units (wei).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from .types import TaskParams


def get_config() -> ml_collections.ConfigDict:
  """The chain section of a run config: ``config.chain = get_config()``."""
  cfg = ml_collections.ConfigDict()
  cfg.backend = "eth_tester"
  cfg.rpc_url = ""
  cfg.private_keys = ()
  task = {}
  for f in dataclasses.fields(TaskParams):
    v = f.default
    task[f.name] = "0x" + v.hex() if isinstance(v, bytes) else v
  task["vote_mode"] = "whole"
  task["selection_mode"] = "uniform"
  cfg.task = ml_collections.ConfigDict(task)
  cfg.stake = 100 * 10**18
  return cfg
