"""What a run is made of: the `Engine` (config, frozen base, compiled functions, data),
the `RunState` that changes round to round, and `build`, which makes both from a
run config; `make_ledger` makes the chain the config names."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax

from flock_jax.federated import hashing
from flock_jax.federated.aggregators import Aggregator, get_aggregator
from flock_jax.federated.clients import ClientState, init_client_state, make_local_train
from flock_jax.federated.evaluation import make_heldout_loss
from flock_jax.federated.ledger import WEI, ChainLedger, Ledger, LocalLedger
from flock_jax.federated.population import Population
from flock_jax.model.llama import Params, scan_ready
from flock_jax.model.lora import init_lora
from flock_jax.model.quant import prepare_base
from flock_jax.optim import make_optimizer
from flock_jax.pytree import PyTree


@dataclasses.dataclass
class Engine:
  """What stays fixed during a run: the config, the frozen base, compiled functions, data."""

  run: Any  # flock_jax.run_config.RunConfig
  base: Params
  population: Population
  local_train: Callable
  heldout_loss: Callable
  tx: Any
  aggregator: Aggregator | None
  mesh: Any = None
  # The base as local_train and heldout_loss take it (llama.scan_ready: on the CPU in 16-bit
  # compute its layer stacks packed once per run); `base` itself everywhere else.
  scan_base: Params | None = None

  def __post_init__(self):
    if self.scan_base is None:
      self.scan_base = self.base

  def mesh_context(self):
    """`jax.set_mesh(mesh)` when the run has a mesh, else a no-op context."""
    import contextlib

    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()


@dataclasses.dataclass
class RunState:
  round: int
  global_lora: PyTree
  clients: ClientState
  agg_state: PyTree
  key: jax.Array
  global_hash: bytes
  # (voter, adapter hash) -> that voter's held-out loss of that adapter; a pure cache (its
  # values are recomputed bit for bit when missing), so it is not checkpointed.
  loss_cache: dict = dataclasses.field(default_factory=dict)
  # participant -> its probe scores' summed excess over the run (federation.probe_budget;
  # flock_jax.federated.probe.memory): checkpointed with the round
  suspicion: dict = dataclasses.field(default_factory=dict)


def load_model(run, mesh=None):
  """(LlamaConfig, base params, tokenizer or None) for run.model."""
  from flock_jax import sharding as shd
  from flock_jax.model.llama import init_params, param_axes

  m = run.model
  cfg, tok = m.cfg, None
  if not m.weights:
    shardings = None if mesh is None else shd.tree_shardings(param_axes(cfg), mesh)
    base = init_params(cfg, jax.random.key(run.seed), shardings)
  elif m.weights == "smollm2":
    from flock_jax.checkpoint.smollm2 import load_smollm2

    cfg, base, tok = load_smollm2(mesh=mesh, tokenizer=not m.tokenizer)
  elif m.weights.startswith("gguf:"):
    from flock_jax.checkpoint.gguf_load import load_gguf

    cfg, base, tok = load_gguf(m.weights[5:], mesh=mesh, tokenizer=not m.tokenizer)
  else:
    from flock_jax.checkpoint.hf_load import load_hf_checkpoint

    cfg, base = load_hf_checkpoint(m.weights[3:], mesh=mesh)
    if not m.tokenizer:
      from flock_jax.data.tokenizer import load_tokenizer

      tok = load_tokenizer(m.weights[3:])
  if m.tokenizer:
    from flock_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(m.tokenizer)
  if tok is not None and len(tok) > cfg.vocab_size:
    raise ValueError(
        f"the tokenizer has {len(tok)} tokens but the model's vocab_size is "
        f"{cfg.vocab_size}; set config.model.overrides.vocab_size >= {len(tok)}"
    )
  return cfg, base, tok


def make_ledger(run, genesis_hash: bytes) -> Ledger:
  """The ledger run.ledger names: the FlockTask contract on eth-tester or a JSON-RPC node,
  or the same rules without an EVM ('local'). Token amounts in base units."""
  fed, lg = run.federation, run.ledger
  kw = dict(
      num_proposers=fed.num_proposers,
      num_voters=fed.num_voters,
      total_rounds=fed.rounds,
      min_stake=lg.min_stake * WEI,
      slash_bps=round(lg.slash_fraction * 10_000),
      proposer_share_bps=round(lg.proposer_share * 10_000),
      reward_pool=lg.reward_pool * WEI,
      genesis_hash=genesis_hash,
  )
  stakes = [s * WEI for s in run.attack.stakes(fed.num_participants, lg.stake)]
  if lg.backend == "local":
    return LocalLedger(
        fed.num_participants,
        stakes=stakes,
        per_proposal=fed.vote_mode == "per_proposal",
        stake_weighted_draw=lg.stake_weighted_draw,
        **kw,
    )
  from flock_jax.chain.types import TaskParams

  params = TaskParams(
      vote_window=lg.vote_window,
      vote_mode=1 if fed.vote_mode == "per_proposal" else 0,
      selection_mode=1 if lg.stake_weighted_draw else 0,
      **kw,
  )
  backend = {"backend": lg.backend, "rpc_url": lg.rpc_url}
  if lg.task:
    return ChainLedger.attach(backend, fed.num_participants, lg.task)
  return ChainLedger.deploy(backend, fed.num_participants, params, stakes=stakes)


def restore_ledger(run, tree: dict, meta: dict, workdir=None) -> Ledger:
  """The ledger a checkpoint continues on: an in-process ledger (LocalLedger, eth-tester) rebuilt
  from the bytes saved in the checkpoint; on a JSON-RPC node the same task, attached again (its
  address from config.ledger.task or the workdir's chain.json)."""
  import json

  import numpy as np

  from flock_jax.federated.ledger import LedgerError

  lg, n = run.ledger, run.federation.num_participants
  data = np.asarray(tree.get("ledger", np.zeros(0, np.uint8)), np.uint8).tobytes()
  if lg.backend == "local":
    return LocalLedger.from_state(data)
  backend = {"backend": lg.backend, "rpc_url": lg.rpc_url}
  if lg.backend == "eth_tester":
    return ChainLedger.from_state(backend, n, data)
  task = lg.task
  if not task and workdir is not None and (workdir / "chain.json").exists():
    task = json.loads((workdir / "chain.json").read_text())["task"]
  if not task:
    raise LedgerError(
        "resume on a JSON-RPC node: the task address is unknown; set --config.ledger.task=0x... "
        "(the FlockTask this run deployed)"
    )
  from flock_jax.federated.rejoin import RejoinLedger  # replays or rejoins what the node moved on

  return RejoinLedger(ChainLedger.attach(backend, n, task).chain, int(meta["next_round"]))


@functools.lru_cache(maxsize=8)
def compiled_functions(
    cfg, lcfg, optim, mu: float, chunk: int | None, fractions: tuple = (None, None)
):
  """(optimizer, jitted local_train, jitted heldout_loss), shared by runs with equal configs
  so that a second run (a test, a sweep) reuses the compilation cache. `fractions`: the
  training and the scoring batches' target fractions (Population.target_fraction; None:
  the lm head at every position)."""
  tx = make_optimizer(optim)
  return (
      tx,
      make_local_train(cfg, lcfg, tx, mu=mu, chunk_size=chunk, target_fraction=fractions[0]),
      make_heldout_loss(cfg, lcfg, chunk_size=chunk, target_fraction=fractions[1]),
  )


def build(run, *, population: Population | None = None, base: Params | None = None):
  """(Engine, initial RunState) for a RunConfig. `population`/`base` override the config's."""
  from flock_jax import sharding as shd

  mesh = shd.make_mesh(run.mesh) if run.mesh else None
  cfg = run.model.cfg
  if base is None:
    cfg, base, tok = load_model(run, mesh)
    if population is None:
      if tok is None:
        raise ValueError("config.model.tokenizer is empty and the weights carry no tokenizer")
      population = build_population_from(run, tok)
  elif population is None:
    raise ValueError("build(base=...) needs population=... too")
  elif mesh is not None:  # a base loaded elsewhere: placed by the same rules as a loaded one
    from flock_jax.model.llama import param_axes

    base = jax.device_put(base, shd.tree_shardings(param_axes(cfg), mesh))
  # the configured numerics (dtype, param_dtype, remat, int8 base) over the loaded shapes
  cfg, base = prepare_base(run.model.cfg, cfg, base)
  if mesh is None:
    base = commit(base)
  fed = run.federation
  agg = get_aggregator(fed.aggregator, fed.aggregator_hparams)  # flock mode: only fedprox's mu
  mu = run.optim.prox_mu or float(agg.hparams.get("mu", 0.0) if agg.name == "fedprox" else 0.0)
  lcfg = run.lora
  fractions = (None, None)
  # The lm head where a target is (prompts and padding skipped): it gathers each client's
  # batch across its rows, so not on a mesh that splits those rows (data, fsdp), where the
  # gather would cross devices; a large model's head is a small share of its step there.
  splits_rows = mesh is not None and mesh.shape["data"] * mesh.shape["fsdp"] > 1
  if run.model.head_at_targets and not splits_rows:
    fractions = (
        population.target_fraction(fed.batch_size),
        population.target_fraction(fed.eval_batch_size, scoring=True, num_batches=fed.eval_batches),
    )
  tx, local_train, heldout_loss = compiled_functions(
      cfg, lcfg, run.optim, mu, run.model.loss_chunk or None, fractions
  )
  engine = Engine(
      run=run,
      base=base,
      scan_base=scan_ready(base, cfg),
      population=population,
      local_train=local_train,
      heldout_loss=heldout_loss,
      tx=tx,
      aggregator=agg,
      mesh=mesh,
  )
  key = jax.random.key(run.seed)
  g0 = init_lora(cfg, lcfg, jax.random.fold_in(key, 1))
  kept = population.num_participants if fed.client_state == "persistent" else 0
  clients = init_client_state(cfg, lcfg, tx, key, kept, global_lora=g0, mesh=mesh)
  if mesh is None:
    g0, clients = commit((g0, clients))
  state = RunState(
      round=0,
      global_lora=g0,
      clients=clients,
      agg_state=agg.init(g0),
      key=jax.random.fold_in(key, 2),
      global_hash=hashing.tree_hash(g0),
  )
  return engine, state


def commit(tree: PyTree) -> PyTree:
  """`tree` committed to the default device (one-device runs; a mesh places arrays itself).

  A jitted function compiles once per placement of its arguments: an uncommitted G in
  round 0 and a committed one (computed from the committed base) in round 1 compiled
  local_train twice. The base, G and the client state all start committed instead,
  everything computed from them stays so, and what the round builds on the host (the
  accepted candidate) is committed too."""
  return jax.device_put(tree, jax.local_devices()[0])


def build_population_from(run, tokenizer) -> Population:
  from flock_jax.federated.population import build_population

  return build_population(run, tokenizer)
