"""Rounds of FLock (PROTOCOL.md "One round r") and of baseline aggregators.

`flock_round` follows the protocol step by step; the chain is the `Ledger`
(roles and outcomes come from it, never from here). `baseline_round` is
plain federated learning: K clients train and any aggregator by name combines
their updates, no ledger. `run_rounds(config)` builds everything from a run
config and runs the rounds.

State between rounds (`RunState`): the global adapter G, every participant's
stacked adapter and optimizer state (`ClientState`, [N, ...]), the
aggregator's state, and the off-chain hash of G.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax.federated import hashing, voting
from flock_jax.federated.aggregators import apply_delta
from flock_jax.federated.clients import ClientState
from flock_jax.federated.engine import Engine, RunState, build, make_ledger
from flock_jax.federated.ledger import Ledger, Outcome, Roles
from flock_jax.federated.metrics import RoundMetrics
from flock_jax.federated.population import Population
from flock_jax.federated.run_state import restore_state
from flock_jax.federated.validate import check_update
from flock_jax.model.llama import Params

PyTree = Any


def _hex(b: bytes | None) -> str:
  return "" if b is None else "0x" + bytes(b).hex()


def _unstack(tree: PyTree, k: int) -> list[PyTree]:
  return [jax.tree.map(lambda x: x[i], tree) for i in range(k)]


def _stack(trees: Sequence[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ------------------------------------------------------------------ malicious hooks
def attack_update(behaviour: str, delta: PyTree, gamma: float) -> PyTree:
  """A proposer's update after its behaviour: honest/backdoor (the data is poisoned, the
  update is what it trained), scale (model replacement, gamma * Δ), free_rider (zeros),
  nan (a NaN in the first leaf), wrong_shape (first leaf one column short)."""
  if behaviour in ("honest", "backdoor"):
    return delta
  if behaviour == "scale":
    return jax.tree.map(lambda x: x * gamma, delta)
  if behaviour == "free_rider":
    return jax.tree.map(jnp.zeros_like, delta)
  leaves, treedef = jax.tree.flatten(delta)
  if behaviour == "nan":
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
  elif behaviour == "wrong_shape":
    leaves[0] = leaves[0][..., :-1]
  else:
    raise ValueError(f"unknown proposer behaviour {behaviour!r}")
  return jax.tree.unflatten(treedef, leaves)


def voter_ballot(behaviour: str, honest: Any) -> Any:
  """What a voter sends: its honest approve bit(s), all True, all False, or None (absent)."""
  if behaviour == "honest":
    return honest
  if behaviour == "always_approve":
    return np.ones_like(honest, bool)
  if behaviour == "always_reject":
    return np.zeros_like(honest, bool)
  if behaviour == "absent":
    return None
  raise ValueError(f"unknown voter behaviour {behaviour!r}")


# ------------------------------------------------------------------ shared steps
def _train(engine: Engine, state: RunState, who: Sequence[int], start_stacked=False):
  """Local training of participants `who` (PROTOCOL step 2): returns the new state with
  their rows updated, the deltas [K] and the train losses [K, E]."""
  run, fed = engine.run, engine.run.federation
  batches = engine.population.train_batches(
      who, fed.local_steps, fed.batch_size, seed=run.seed, round_index=state.round
  )
  rows = state.clients.take(who)
  keys = jax.random.split(jax.random.fold_in(state.key, state.round), len(who))
  start = rows.adapters if start_stacked else state.global_lora
  adapters, deltas, opt, losses = engine.local_train(
      engine.base, start, rows.opt_state, batches, keys, start_stacked=start_stacked
  )
  jax.block_until_ready(losses)
  clients = state.clients.put(who, ClientState(adapters, opt))
  return dataclasses.replace(state, clients=clients), deltas, losses


def _screen(engine: Engine, who: Sequence[int], deltas: PyTree, like: PyTree):
  """Apply each participant's proposer behaviour, then validate: (valid ids, their updates,
  error messages). An invalid update is dropped here and never reaches any model."""
  att = engine.run.attack
  valid_ids, valid, errors = [], [], []
  for i, d in zip(who, _unstack(deltas, len(who))):
    d = attack_update(att.proposer(i), d, att.scale_gamma)
    err = check_update(d, like, client=i)
    if err is None:
      valid_ids.append(i)
      valid.append(d)
    else:
      errors.append(str(err))
  return valid_ids, valid, errors


def _heldout_by_domain(engine: Engine, lora: PyTree) -> dict[str, float]:
  names, batches = engine.population.eval_batches(engine.run.federation.eval_batch_size)
  losses = engine.heldout_loss(engine.base, _stack([lora]), batches)  # [D, 1]
  return {n: float(x) for n, x in zip(names, np.asarray(losses)[:, 0])}


# ------------------------------------------------------------------ FLock round
def flock_round(
    engine: Engine, state: RunState, ledger: Ledger, store=None
) -> tuple[RunState, RoundMetrics]:
  """One FLock round, PROTOCOL.md steps 1-6 (settlement is the ledger's).

  `store` (a flock_jax.chain.AdapterStore) receives the canonical bytes of the
  global adapter, every proposal and the candidate, named by the hashes that
  go on chain, so that the run can be audited from the logs alone.
  """
  fed, att = engine.run.federation, engine.run.attack
  per_proposal = fed.vote_mode == "per_proposal"
  t_round = time.perf_counter()
  G = state.global_lora

  # 1. Role draw (on chain).
  t = time.perf_counter()
  roles: Roles = ledger.start_round()
  addresses = ledger.addresses()
  t_chain = time.perf_counter() - t
  proposers, voters = list(roles.proposers), list(roles.voters)

  # 2. Local training from G_r; commit h_i = keccak(canonical bytes of Δ_i).
  t = time.perf_counter()
  state, deltas, train_losses = _train(engine, state, proposers)
  t_train = time.perf_counter() - t
  t = time.perf_counter()
  valid_ids, valid, errors = _screen(engine, proposers, deltas, G)
  hashes = [hashing.tree_hash(d) for d in valid]
  if store is not None:
    store.put(hashing.canonical_bytes(G))
    for d in valid:
      store.put(hashing.canonical_bytes(d))
  t_hash = time.perf_counter() - t
  t = time.perf_counter()
  for i, h in zip(valid_ids, hashes):
    ledger.propose(i, h)
  t_chain += time.perf_counter() - t

  # 3. Candidate in canonical (address) order; voters score it on private held-out data.
  t = time.perf_counter()
  approvals, gains, cand_hash, candidate = [], [], None, None
  if valid:
    order = voting.candidate_order([addresses[i] for i in valid_ids])
    stacked = _stack(valid)
    held = engine.population.heldout_batches(voters, fed.eval_batches, fed.eval_batch_size)
    if per_proposal:
      each = [jax.tree.map(lambda g, d: g + d, G, d) for d in valid]
      losses = np.asarray(engine.heldout_loss(engine.base, _stack([G] + each), held))  # [V, 1+P']
      g = voting.per_proposal_gains(losses[:, 0], losses[:, 1:])  # [V, P']
      gains = g.tolist()
      honest = np.asarray(voting.approve(g, fed.tau))
    else:
      candidate = voting.build_candidate(G, stacked, order)
      cand_hash = hashing.tree_hash(candidate)
      if store is not None:
        store.put(hashing.canonical_bytes(candidate))
      losses = np.asarray(engine.heldout_loss(engine.base, _stack([G, candidate]), held))  # [V, 2]
      g = voting.gains(losses[:, 0], losses[:, 1])
      gains = g.tolist()
      honest = np.asarray(voting.approve(g, fed.tau))
  t_eval = time.perf_counter() - t

  # 4. Vote (on chain); 5. finalize: tally and settle.
  t = time.perf_counter()
  if valid:
    for row, j in enumerate(voters):
      ballot = voter_ballot(att.voter(j), honest[row])
      approvals.append(None if ballot is None else np.asarray(ballot).tolist())
      if ballot is None:
        continue
      if per_proposal:  # bit i names roles.proposers[i]; bits of dropped proposals stay 0
        bits = [False] * len(proposers)
        for k, i in enumerate(valid_ids):
          bits[proposers.index(i)] = bool(ballot[k])
        ledger.vote(j, b"\x00" * 32, bits=tuple(bits))
      else:
        ledger.vote(j, cand_hash, approve=bool(ballot))
  outcome: Outcome = ledger.finalize()
  block = ledger.block_hash()
  t_chain += time.perf_counter() - t

  # Accepted: G_{r+1} = C_r; rejected: G stays.
  prop_acc = [False] * len(proposers)
  if per_proposal and valid and outcome.proposal_accepted is not None:
    prop_acc = list(outcome.proposal_accepted)
    mask = [prop_acc[proposers.index(i)] for i in valid_ids]
    if any(mask):
      candidate = voting.build_candidate(G, _stack(valid), order, mask)
      cand_hash = hashing.tree_hash(candidate)
      if store is not None:
        store.put(hashing.canonical_bytes(candidate))
  elif valid and outcome.accepted:
    prop_acc = [i in valid_ids for i in proposers]
    if outcome.global_hash is not None and outcome.global_hash != cand_hash:
      raise RuntimeError(
          f"round {roles.round}: the ledger accepted {_hex(outcome.global_hash)} "
          f"but the candidate voters scored is {_hex(cand_hash)}"
      )
  if outcome.accepted and candidate is not None:
    G = jax.tree.map(lambda c, g: c.astype(g.dtype), candidate, G)
    state = dataclasses.replace(state, global_lora=G, global_hash=cand_hash)

  metrics = RoundMetrics(
      round=roles.round,
      mode="flock:per_proposal" if per_proposal else "flock",
      train_loss=float(np.mean(np.asarray(train_losses)[:, -1])),
      heldout_loss=_heldout_by_domain(engine, G),
      accepted=bool(outcome.accepted),
      tally=int(outcome.tally),
      void=bool(outcome.void),
      proposers=proposers,
      voters=voters,
      approvals=approvals,
      gains=gains,
      proposal_accepted=prop_acc,
      rejected_updates=errors,
      candidate_hash=_hex(cand_hash),
      global_hash=_hex(state.global_hash),
      chain_global_hash=_hex(outcome.global_hash),
      block_hash=_hex(block),
      rewards=dict(outcome.rewards),
      slashes=dict(outcome.slashes),
      time_train_s=t_train,
      time_hash_s=t_hash,
      time_eval_s=t_eval,
      time_chain_s=t_chain,
      extra={"train_loss_per_proposer": np.asarray(train_losses)[:, -1].tolist()},
  )
  metrics.time_round_s = time.perf_counter() - t_round
  return dataclasses.replace(state, round=state.round + 1), metrics


# ------------------------------------------------------------------ baseline round
def _root_update(engine: Engine, state: RunState) -> PyTree:
  """FLTrust's server update: G trained on a small root set (the pooled eval rows of the
  first domain) with a fresh optimizer state."""
  fed = engine.run.federation
  root = Population([next(iter(engine.population.eval_sets.values()))], [], {})
  batches = root.train_batches(
      [0], fed.local_steps, fed.batch_size, seed=engine.run.seed, round_index=state.round
  )
  opt = jax.vmap(engine.tx.init)(_stack([state.global_lora]))
  keys = jax.random.split(jax.random.fold_in(state.key, 10**6 + state.round), 1)
  _, delta, _, _ = engine.local_train(engine.base, state.global_lora, opt, batches, keys)
  return jax.tree.map(lambda x: x[0], delta)


def baseline_round(engine: Engine, state: RunState) -> tuple[RunState, RoundMetrics]:
  """K clients (drawn with the seed) train from G; the aggregator combines the valid
  updates; G_{r+1} = G_r + aggregate. 'local' (isolated) keeps each client's own adapter."""
  run, fed = engine.run, engine.run.federation
  agg = engine.aggregator
  t_round = time.perf_counter()
  rng = np.random.default_rng([run.seed, state.round, 11])
  who = sorted(
      int(i) for i in rng.choice(fed.num_participants, fed.clients_per_round, replace=False)
  )
  t = time.perf_counter()
  state, deltas, train_losses = _train(engine, state, who, start_stacked=agg.isolated)
  t_train = time.perf_counter() - t
  G = state.global_lora
  valid_ids, valid, errors = _screen(engine, who, deltas, G)
  t = time.perf_counter()
  extra: dict[str, Any] = {}
  if valid and not agg.isolated:
    kw = {}
    if "client_ids" in agg.needs:
      kw["client_ids"] = jnp.asarray(valid_ids, jnp.int32)
    if "root_update" in agg.needs:
      kw["root_update"] = _root_update(engine, state)
    key = jax.random.fold_in(state.key, 2 * 10**6 + state.round)
    delta, agg_state, info = agg.apply(
        state.agg_state,
        G,
        _stack(valid),
        jnp.asarray(engine.population.num_train[valid_ids]),
        key,
        **kw,
    )
    G = apply_delta(G, delta)
    state = dataclasses.replace(state, global_lora=G, agg_state=agg_state)
    extra = {k: np.asarray(v).tolist() for k, v in info.items()}
  if agg.isolated:  # each client is judged on its own adapter and its own held-out data
    held = engine.population.heldout_batches(who, fed.eval_batches, fed.eval_batch_size)
    own = np.diag(
        np.asarray(engine.heldout_loss(engine.base, state.clients.take(who).adapters, held))
    )
    heldout = {"own": float(np.mean(own))}
  else:
    heldout = _heldout_by_domain(engine, G)
  t_eval = time.perf_counter() - t
  metrics = RoundMetrics(
      round=state.round,
      mode=f"baseline:{agg.name}",
      train_loss=float(np.mean(np.asarray(train_losses)[:, -1])),
      heldout_loss=heldout,
      clients=who,
      proposal_accepted=[i in valid_ids for i in who],
      rejected_updates=errors,
      global_hash=_hex(hashing.tree_hash(G)),
      time_train_s=t_train,
      time_eval_s=t_eval,
      extra=extra,
  )
  metrics.time_round_s = time.perf_counter() - t_round
  return dataclasses.replace(state, round=state.round + 1), metrics


def run_rounds(
    config,
    *,
    population: Population | None = None,
    base: Params | None = None,
    ledger: Ledger | None = None,
    store=None,
    resume: Callable[[RunState], tuple[dict, dict]] | None = None,
    on_round: Callable[[RunState, RoundMetrics, Ledger | None], None] | None = None,
) -> list[RoundMetrics]:
  """Run config.federation.rounds rounds; returns every round's metrics.

  config: a ConfigDict (configs/flock.py) or a RunConfig. FLock mode reads roles
  from `ledger` (default: the one config.ledger names, see `make_ledger`) and
  writes every blob it hashes to `store` (an AdapterStore) when given; baseline mode
  needs none. `on_round(state, metrics, ledger)` runs after each round
  (printing, JSONL, checkpoints). `resume(fresh_state) -> (tree, meta)` (e.g.
  RunCheckpointer.restore with `checkpoint_tree(fresh_state)` as target)
  continues a run after checking it agrees with `ledger`; returns the metrics
  of the remaining rounds.
  """
  from flock_jax.run_config import RunConfig, from_config

  run = config if isinstance(config, RunConfig) else from_config(config)
  engine, state = build(run, population=population, base=base)
  flock = run.federation.mode == "flock"
  if flock and ledger is None:
    ledger = make_ledger(run, state.global_hash)
  if resume is not None:
    state = restore_state(state, *resume(state), ledger if flock else None)
  ctx = jax.set_mesh(engine.mesh) if engine.mesh is not None else contextlib.nullcontext()
  out = []
  with ctx:
    for _ in range(state.round, run.federation.rounds):
      state, m = (
          flock_round(engine, state, ledger, store) if flock else baseline_round(engine, state)
      )
      out.append(m)
      if on_round is not None:
        on_round(state, m, ledger)
  return out
