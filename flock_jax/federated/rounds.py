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

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flock_jax import distributed, faults
from flock_jax.eval import generation_report
from flock_jax.federated import committee, hashing, metrics as run_metrics, voting
from flock_jax.federated.attacks import attack_updates, evade_probe, voter_ballot
from flock_jax.federated.ledger import WEI
from flock_jax.federated.probe import memory as probe_memory, memory_threshold
from flock_jax.federated.probe import probe as behaviour_probe
from flock_jax.federated.screening import screen_flags, screened
from flock_jax.federated.aggregators import apply_delta
from flock_jax.federated.clients import ClientState, fresh_opt_state
from flock_jax.federated.engine import Engine, RunState, build, commit, make_ledger
from flock_jax.federated.ledger import Ledger, Outcome, Roles
from flock_jax.federated.metrics import RoundMetrics
from flock_jax.federated.population import PRIVATE_PROBE_SEED_OFFSET, Population
from flock_jax.federated.run_state import restore_state
from flock_jax.federated.validate import check_update
from flock_jax.model.llama import Params
from flock_jax.pytree import PyTree
from flock_jax.timing import PhaseTimer


def _hex(b: bytes | None) -> str:
  return "" if b is None else "0x" + bytes(b).hex()


@functools.partial(jax.jit, static_argnums=1)
def _unstack(tree: PyTree, k: int) -> list[PyTree]:
  """[k]-stacked tree -> k trees, in one program: eager x[i] per leaf and client was 2 k
  small programs per round on arrays split over a clients mesh (0.1 s of a SmolLM2 round on
  2 CPU devices, and where one such run aborted natively; clients.py says the same of take)."""
  return [jax.tree.map(lambda x: x[i], tree) for i in range(k)]


def _host_unstack(tree: PyTree, k: int) -> list[PyTree]:
  """[k]-stacked tree -> k trees of numpy views, after one copy off the device: what the
  protocol does next with the proposals (hash their bytes, validate them, average them in
  exact float32) is host work, and per-proposal device slices were each copied again for
  each of those (the tiny model's hash and screening: 7 of its 54 ms a round). On many hosts
  `distributed.fetch` gathers a leaf that spans them."""
  host = distributed.fetch(tree)
  return [jax.tree.map(lambda x: x[i, ...], host) for i in range(k)]  # views, 0-d too


def _host_stack(trees: Sequence[PyTree]) -> PyTree:
  """k trees (host or device leaves) -> one [k]-stacked tree of numpy arrays."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


@jax.jit
def _stack(trees: Sequence[PyTree]) -> PyTree:
  """k trees -> one [k]-stacked tree, in one program (per leaf, eager stacking dispatched
  one small program each: a third of the tiny model's scoring phase)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ------------------------------------------------------------------ shared steps
def _train(engine: Engine, state: RunState, who: Sequence[int], start_stacked=False):
  """Local training of participants `who` (PROTOCOL step 2): returns the new state with
  their rows updated, the deltas [K] and the train losses [K, E]."""
  run, fed = engine.run, engine.run.federation
  batches = engine.population.train_batches(
      who, fed.local_steps, fed.batch_size, seed=run.seed, round_index=state.round
  )
  keys = jax.random.split(jax.random.fold_in(state.key, state.round), len(who))
  if fed.client_state == "fresh":  # from G with a fresh optimizer; nothing kept per client
    opt = fresh_opt_state(engine.tx, state.global_lora, len(who))
    _, deltas, _, losses = engine.local_train(
        engine.scan_base, state.global_lora, opt, batches, keys
    )
    jax.block_until_ready(losses)
    return state, deltas, losses
  rows = state.clients.take(who)
  start = rows.adapters if start_stacked else state.global_lora
  adapters, deltas, opt, losses = engine.local_train(
      engine.scan_base, start, rows.opt_state, batches, keys, start_stacked=start_stacked
  )
  jax.block_until_ready(losses)
  clients = state.clients.put(who, ClientState(adapters, opt))
  return dataclasses.replace(state, clients=clients), deltas, losses


def _screen(engine: Engine, who: Sequence[int], deltas: PyTree, like: PyTree):
  """Apply each participant's proposer behaviour, then validate: (valid ids, their updates,
  error messages). An invalid update is dropped here and never reaches any model."""
  att = engine.run.attack
  valid_ids, valid, errors = [], [], []
  for i, d in zip(who, attack_updates(att, list(who), _unstack(deltas, len(who)))):
    err = check_update(d, like, client=i)
    if err is None:
      valid_ids.append(i)
      valid.append(d)
    else:
      errors.append(str(err))
  return valid_ids, valid, errors


def _screen_revealed(proposers, updates, revealed: dict, like: PyTree, store=None):
  """What every honest voter decides about the revealed proposals, deterministically:
  (valid ids, their updates, error messages, invalid flag per proposer). A proposal is
  invalid when its blob is missing from the store or check_update rejects it (NaN/Inf,
  wrong structure or shape); a hash two proposers revealed is a duplicate, excluded but not
  flagged (the contract excludes and slashes both itself)."""
  valid_ids, valid, errors, flags = [], [], [], []
  seen = list(revealed.values())
  for i, d in zip(proposers, updates):
    h = revealed.get(i)
    err = None
    if h is not None and seen.count(h) == 1:
      if store is not None and h not in store:
        err = f"participant {i}: the blob of its revealed proposal 0x{h.hex()} is missing"
      else:
        err = check_update(d, like, client=i)
    flags.append(err is not None)
    if err is not None:
      errors.append(str(err))
    elif h is not None and seen.count(h) == 1:
      valid_ids.append(i)
      valid.append(d)
  return valid_ids, valid, errors, tuple(flags)


def _budget_weights(engine: Engine, ledger: Ledger) -> dict[int, float] | None:
  """Each participant's share of the probe's memory budget (federation.probe_budget_by_stake:
  its current stake on chain over ledger.stake; else None, everyone's weight 1)."""
  if not engine.run.federation.probe_budget_by_stake:
    return None
  unit = engine.run.ledger.stake * WEI
  return {i: int(x) / unit for i, x in enumerate(ledger.stakes())}


def _probe_revealed(
    engine: Engine, G, proposers, valid_ids, valid, errors, flags, suspicion, weights
):
  """The behaviour probe (federation.probe, flock_jax.federated.probe) over the valid
  proposals: one whose collapse score exceeds federation.probe_threshold becomes invalid,
  like a NaN update (flagged in every honest vote: excluded, and slashed by a strict
  majority), and so does one whose proposer's summed excess (`suspicion`, the probe's memory:
  federation.probe_budget) exceeds its budget (`weights`: `_budget_weights`). Returns the
  screened (valid ids, valid, errors, flags), {proposer: score}, {proposer: the trigger tokens
  the search found, decoded} (probe 'search'; else empty) and the new sums."""
  fed = engine.run.federation
  scores, tokens, found = behaviour_probe(engine, G, valid, mode=fed.probe)
  by_id = dict(zip(valid_ids, scores.tolist()))
  over = set()
  if fed.probe_budget > 0:
    suspicion, over = probe_memory(by_id, suspicion, fed.probe_allowance, fed.probe_budget, weights)
  tok = getattr(getattr(engine.population, "prompts", None), "tokenizer", None)
  decode = lambda ids: tok.decode(list(ids)) if tok is not None else f"ids {list(ids)}"
  triggers = {} if found is None else {i: decode(f) for i, f in zip(valid_ids, found.tolist())}
  flags, errors = list(flags), list(errors)
  keep_ids, keep = [], []
  for i, d, s, t in zip(valid_ids, valid, scores.tolist(), tokens.tolist()):
    if s > fed.probe_threshold:
      flags[proposers.index(i)] = True
      where = f" (clean prompts, or prompts ending in {triggers[i]!r})" if i in triggers else ""
      errors.append(
          f"participant {i}: behaviour probe: token {decode([t])!r} gains {s:.3f} probability "
          f"at the first response token in every domain{where} against "
          f"{'G' if fed.probe == 'collapse' else 'G or the base model'} "
          f"(threshold {fed.probe_threshold})"
      )
    elif i in over:
      flags[proposers.index(i)] = True
      errors.append(
          f"participant {i}: behaviour probe's memory: its scores' excess over "
          f"{fed.probe_allowance} sums to {suspicion[i]:.3f} over the run (this round's score "
          f"{s:.3f}), over its budget {fed.probe_budget * (weights or {}).get(i, 1.0):.4g}"
      )
    else:
      keep_ids.append(i)
      keep.append(d)
  return keep_ids, keep, errors, tuple(flags), by_id, triggers, suspicion


def _private_seed(engine: Engine, who: int, round_index: int) -> tuple[int, ...]:
  """Participant who's own seed for its search's random restarts in a round (probe 'private')."""
  return (engine.run.seed, PRIVATE_PROBE_SEED_OFFSET, who, round_index)


def _private_probe(engine: Engine, G, voters, valid_ids, valid, round_index: int):
  """federation.probe='private': every honest voter runs the trigger search (probe 'search') on
  probe prompts it drew itself (Population.private_probe), its random restarts from its own
  seed (`_private_seed`). Returns flags [V, P'] (True: voter
  row flags valid proposal k; voters that are not honest run no probe and flag nothing) and
  {honest voter: {proposer: score}}."""
  fed, att = engine.run.federation, engine.run.attack
  flags = np.zeros((len(voters), len(valid)), bool)
  by_voter: dict[int, dict[int, float]] = {}
  for row, j in enumerate(voters):
    if att.voter(j) != "honest":
      continue
    arrays = engine.population.private_probe(j)
    seed = _private_seed(engine, j, round_index)
    scores, _, _ = behaviour_probe(engine, G, valid, mode="search", arrays=arrays, seed=seed)
    flags[row] = scores > fed.probe_threshold
    by_voter[j] = dict(zip(valid_ids, scores.tolist()))
  return flags, by_voter


def _heldout_by_domain(engine: Engine, lora: PyTree) -> dict[str, float]:
  names, batches = engine.population.eval_batches(engine.run.federation.eval_batch_size)
  losses = engine.heldout_loss(engine.scan_base, _stack([lora]), batches)  # [D, 1]
  return {n: float(x) for n, x in zip(names, np.asarray(losses)[:, 0])}


def _report(engine: Engine, lora: PyTree) -> tuple[dict[str, float], dict[str, Any]]:
  """The per-round report of G: held-out loss per domain, and the generation-based fields
  (accuracy, attack success; flock_jax.eval) as RoundMetrics keywords."""
  return _heldout_by_domain(engine, lora), generation_report(engine, lora)


# ------------------------------------------------------------------ voters' scoring (step 3)
def _voter_losses(engine: Engine, state: RunState, voters: Sequence[int], lora, lora_hash, held):
  """L_j(lora) for each voter j [V]: cached by (voter, adapter hash), since a voter's held-out
  batches never change. Always one [V, 1] call, so a cached value equals a recomputed one bit
  for bit (a resumed run, whose cache starts empty, scores exactly like an uninterrupted one)."""
  cache = state.loss_cache
  if lora_hash is None or any((j, lora_hash) not in cache for j in voters):
    out = np.asarray(engine.heldout_loss(engine.scan_base, _stack([lora]), held))[:, 0]
    if lora_hash is not None:
      cache.update({(j, lora_hash): float(x) for j, x in zip(voters, out)})
    return out
  return np.asarray([cache[(j, lora_hash)] for j in voters], np.float32)


def score_whole(engine, state, voters, G, candidate, cand_hash, held) -> np.ndarray:
  """Whole-candidate mode (the paper): gain_j = L_j(G_r) - L_j(C_r), [V]."""
  before = _voter_losses(engine, state, voters, G, state.global_hash, held)
  after = _voter_losses(engine, state, voters, candidate, cand_hash, held)
  return np.asarray(voting.gains(before, after))


def score_per_proposal(engine, state, voters, G, valid, held) -> np.ndarray:
  """Per-proposal mode: gain_{j,i} = L_j(G_r) - L_j(G_r + Δ_i), [V, P']."""
  before = _voter_losses(engine, state, voters, G, state.global_hash, held)
  each = _stack([jax.tree.map(lambda g, d: g + d, G, d) for d in valid])
  after = np.asarray(engine.heldout_loss(engine.scan_base, each, held))  # [V, P']
  return np.asarray(voting.per_proposal_gains(before, after))


def _candidate(G, ids, updates, addresses, mask=None, divisor=None) -> PyTree:
  """G + the mean of `updates` (of proposers `ids`; per proposal: the accepted by `mask`, over
  `divisor`) in canonical address order (voting.build_candidate)."""
  order = voting.candidate_order([addresses[i] for i in ids])
  return voting.build_candidate(G, _host_stack(list(updates)), order, mask, divisor=divisor)


def _put(store, *trees: PyTree) -> None:
  """Every blob whose hash goes on chain, into the content-addressed store (if the run has one)."""
  if store is not None:
    for t in trees:
      store.put(hashing.canonical_bytes(t))


def _report_due(engine: Engine, round_index: int) -> bool:
  """Per-domain reporting every config.eval.every rounds (and always after the last)."""
  every, last = engine.run.eval.every, engine.run.federation.rounds - 1
  return every > 0 and (round_index % every == every - 1 or round_index == last)


# ------------------------------------------------------------------ FLock round
def flock_round(
    engine: Engine, state: RunState, ledger: Ledger, store=None
) -> tuple[RunState, RoundMetrics]:
  """One FLock round, PROTOCOL.md steps 1-6 (the ledger settles).

  `store` (a flock_jax.chain.AdapterStore) receives the canonical bytes of the global
  adapter, every proposal and the candidate, named by the hashes that go on chain, so that
  the run can be audited from the logs alone.
  """
  fed, att = engine.run.federation, engine.run.attack
  per_proposal = fed.vote_mode == "per_proposal"
  timer = PhaseTimer()
  G = state.global_lora

  # 1. Role draw (on chain): the simulator reads the roles, it never decides them.
  with timer("chain"):
    gas_before = ledger.gas_used()
    roles: Roles = ledger.start_round()
    addresses = ledger.addresses()
  proposers, voters = list(roles.proposers), list(roles.voters)

  # 2. Local training from G_r; each proposer commits h_i = keccak(canonical bytes of Δ_i).
  with timer("train"):
    state, deltas, train_losses = _train(engine, state, proposers)
  faults.point("trained", roles.round)
  # Every proposer commits, an attacker's NaN or wrong-shaped update too (protocol v2).
  with timer("hash"):
    updates = attack_updates(att, proposers, _host_unstack(deltas, len(proposers)))
  evade_scales: dict[int, float] = {}
  weights = None  # each participant's share of the probe's memory budget (None: equal shares)
  if fed.probe_budget > 0:
    with timer("chain"):
      weights = _budget_weights(engine, ledger)
  if fed.probe != "none":  # the adaptive attacker shrinks its update under the voters' probe
    with timer("train"):
      for k, i in enumerate(proposers):
        if att.proposer(i) == "backdoor_evade":
          aim = fed.probe_threshold  # what passes, its own memory's budget included
          if fed.probe_budget > 0:
            own = fed.probe_budget * (weights or {}).get(i, 1.0)
            aim = memory_threshold(aim, fed.probe_allowance, own, state.suspicion.get(i, 0.0))
          updates[k], evade_scales[i], _ = evade_probe(
              engine,
              G,
              updates[k],
              aim,
              mode=fed.probe,
              owner=i,
              seed=_private_seed(engine, i, roles.round) if fed.probe == "private" else 0,
          )
  with timer("hash"):
    hashes = hashing.tree_hashes(updates)
  with timer("chain"):
    for i, h in zip(proposers, hashes):
      ledger.propose(i, h)
  faults.point("proposed", roles.round)
  # Reveal, then publish the bytes (published earlier, a hash could be copied before its commit).
  with timer("chain"):
    revealed = ledger.reveal_proposals(proposers)
  _put(store, G, *[u for i, u in zip(proposers, updates) if i in revealed])
  # Voters check every revealed proposal alike: valid ones enter the candidate, invalid ones
  # are flagged in each vote (a strict majority of voting stake excludes and slashes them).
  valid_ids, valid, errors, flags = _screen_revealed(proposers, updates, revealed, G, store)
  probe_scores: dict[int, float] = {}
  probe_triggers: dict[int, str] = {}
  private_flags, by_voter = None, {}  # probe 'private': [V, P'] and {voter: {proposer: score}}
  if fed.probe == "private" and valid:
    with timer("eval"):
      private_flags, by_voter = _private_probe(engine, G, voters, valid_ids, valid, roles.round)
    if by_voter:  # the honest voters' median score, for the report
      probe_scores = {i: float(np.median([s[i] for s in by_voter.values()])) for i in valid_ids}
  probed_out: list[tuple[int, PyTree]] = []  # passed the structural checks, not the probe
  if fed.probe not in ("none", "private") and valid:
    checked = list(zip(valid_ids, valid))
    with timer("eval"):
      valid_ids, valid, errors, flags, probe_scores, probe_triggers, suspicion = _probe_revealed(
          engine, G, proposers, valid_ids, valid, errors, flags, state.suspicion, weights
      )
    state = dataclasses.replace(state, suspicion=suspicion)
    probed_out = [(i, d) for i, d in checked if i not in valid_ids]
  # What each voter counts valid and flags: one view for the honest, others for some attackers.
  honest_view = committee.View(tuple(valid_ids), tuple(valid), tuple(flags))
  views = [
      committee.voter_view(att.voter(j), honest_view, probed_out, proposers, att.is_attacker)
      for j in voters
  ]

  # 3. Candidate in canonical (address) order; voters score it on private held-out data.
  honest, gains, cand_hash, candidate, suspect = None, [], None, None, None
  named: dict[tuple[int, ...], tuple[bytes, PyTree]] = {}  # whole mode: each view's candidate
  with timer("eval"):
    if not per_proposal:
      for v in [honest_view, *views]:  # the honest candidate first, whoever holds it
        if v.ids and v.ids not in named:
          c = _candidate(G, v.ids, v.updates, addresses)
          named[v.ids] = (hashing.tree_hash(c), c)
          _put(store, c)
    if valid:
      held = engine.population.heldout_batches(voters, fed.eval_batches, fed.eval_batch_size)
      if per_proposal:
        g = score_per_proposal(engine, state, voters, G, valid, held)
      else:
        cand_hash, candidate = named[honest_view.ids]
        g = score_whole(engine, state, voters, G, candidate, cand_hash, held)
      gains, honest = g.tolist(), np.asarray(voting.approve(g, fed.tau))
      # Optional defence: every honest voter screens the proposals alike before its vote.
      suspect = screen_flags(valid, fed.screen, fed.screen_norm_factor, fed.screen_min_cosine)
      honest = screened(honest, suspect, per_proposal)
      if private_flags is not None:  # each voter rejects what its own probe flags
        honest = honest & ~(private_flags if per_proposal else private_flags.any(axis=1))

  # 4. Vote (on chain); 5. finalize: tally and settle.
  approvals = []
  with timer("chain"):
    if revealed:  # with no valid proposal the vote only flags the invalid ones
      for row, (j, view) in enumerate(zip(voters, views)):
        fellow = np.asarray([att.is_attacker(i) for i in view.ids], bool)
        if view is honest_view and valid:
          own = honest[row]
        else:  # no honest score (none valid, or a view that only a malicious ballot reads)
          own = np.zeros(len(view.ids), bool) if per_proposal else np.False_
        ballot = voter_ballot(att.voter(j), own, fellow)
        approvals.append(None if ballot is None else np.asarray(ballot).tolist())
        if ballot is None:
          continue
        invalid = list(view.flags)
        if private_flags is not None:  # and what its own probe flagged
          for k, i in enumerate(valid_ids):
            invalid[proposers.index(i)] |= bool(private_flags[row, k])
        if per_proposal:  # bit i names roles.proposers[i]; bits of excluded proposals stay 0
          bits = [False] * len(proposers)
          for k, i in enumerate(view.ids):
            bits[proposers.index(i)] = bool(ballot[k])
          ledger.vote(j, b"\x00" * 32, bits=tuple(bits), invalid=tuple(invalid))
        else:
          name = named[view.ids][0] if view.ids else hashing.tree_hash(G)
          ledger.vote(j, name, approve=bool(ballot) and bool(view.ids), invalid=tuple(invalid))
    faults.point("voted", roles.round)
    outcome: Outcome = ledger.finalize()
    faults.point("finalized", roles.round)
    block = ledger.block_hash()
    gas_after = ledger.gas_used()
  # excluded by the committee's flags (more than half its stake)
  excluded = dict(zip(proposers, outcome.invalid or (False,) * len(proposers)))
  if private_flags is not None:
    for k, i in enumerate(valid_ids):
      if excluded[i]:
        who = [j for row, j in enumerate(voters) if private_flags[row, k]]
        errors.append(
            f"participant {i}: behaviour probe: flagged by voters {who} of {voters} on their own "
            f"prompts (scores {[round(by_voter[j][i], 3) for j in who]}; threshold "
            f"{fed.probe_threshold})"
        )

  # 6. Accepted: G_{r+1} = C_r (per proposal: G_r + mean of the accepted Δ_i, or their sum over
  # the valid proposals' number: federation.per_proposal_mean); else G stays.
  # The chain decides which proposals are valid (flagged by at most half the committee stake)
  # and which candidate is accepted: a malicious majority can make it one no honest voter named.
  prop_acc = [False] * len(proposers)
  if per_proposal and outcome.proposal_accepted is not None:
    prop_acc = list(outcome.proposal_accepted)
    ids, deltas, mask = committee.accepted_view(views, prop_acc, proposers)
    if any(mask):
      kept = [i for i in ids if not excluded[i]]
      over = len(kept) if fed.per_proposal_mean == "valid" else None
      candidate = _candidate(G, ids, deltas, addresses, mask, over)
      cand_hash = hashing.tree_hash(candidate)
      _put(store, candidate)
  elif outcome.accepted and named:
    won = [ids for ids, (h, _) in named.items() if h == outcome.global_hash]
    if not won:
      raise RuntimeError(
          f"round {roles.round}: the ledger accepted {_hex(outcome.global_hash)}, "
          f"which no voter named (the honest candidate is {_hex(cand_hash)})"
      )
    cand_hash, candidate = named[won[0]]
    prop_acc = [i in won[0] for i in proposers]
  if outcome.accepted and candidate is not None:
    G = jax.tree.map(lambda c, g: c.astype(g.dtype), candidate, G)
    if engine.mesh is None:  # built on the host: placed as build() placed the state
      G = commit(G)
    state = dataclasses.replace(state, global_lora=G, global_hash=cand_hash)

  # Valid as the chain decided: what some voter counted valid and the committee did not
  # exclude (a flagged update a malicious majority let in counts, and as accepted).
  chain_valid = [i for i in proposers if not excluded[i] and any(i in v.ids for v in views)]
  with timer("chain"):  # every participant's stake, read from the chain for the metrics
    econ = run_metrics.economics(
        ledger, outcome, att, proposers, prop_acc, chain_valid, engine.run.ledger.min_stake * WEI
    )
  with timer("report"):
    heldout, gen = _report(engine, G) if _report_due(engine, roles.round) else ({}, {})
  metrics = RoundMetrics(
      round=roles.round,
      mode="flock:per_proposal" if per_proposal else "flock",
      train_loss=float(np.mean(np.asarray(train_losses)[:, -1])),
      heldout_loss=heldout,
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
      gas_used=None if gas_after is None else gas_after - gas_before,
      extra={
          "train_loss_per_proposer": np.asarray(train_losses)[:, -1].tolist(),
          "screen_flags": suspect.tolist() if valid else [],
          "probe_scores": {str(i): x for i, x in probe_scores.items()},
          "evade_scales": {str(i): x for i, x in evade_scales.items()},
          "probe_triggers": {str(i): x for i, x in probe_triggers.items()},
          "probe_suspicion": {str(i): x for i, x in sorted(state.suspicion.items())},
          "probe_scores_by_voter": {
              str(j): {str(i): x for i, x in sc.items()} for j, sc in by_voter.items()
          },
          # each proposer's committed hash: its blob in the store, for re-scoring after the run
          "proposal_hashes": {str(i): _hex(h) for i, h in zip(proposers, hashes)},
          "asr_samples": gen.pop("asr_samples", []),
      },
      **econ,
      **gen,
      **timer.metrics(),
  )
  return dataclasses.replace(state, round=state.round + 1), metrics


# ------------------------------------------------------------------ run begin / end
def initial_metrics(engine: Engine, state: RunState) -> RoundMetrics:
  """'Round -1': the starting model's held-out loss per domain, so a run shows where it began."""
  mode = engine.run.federation.mode
  if mode == "flock" and engine.run.federation.vote_mode == "per_proposal":
    mode = "flock:per_proposal"
  elif mode == "baseline":
    mode = f"baseline:{engine.aggregator.name}"
  heldout, gen = _report(engine, state.global_lora)
  samples = gen.pop("asr_samples", [])
  return RoundMetrics(
      round=-1,
      mode=mode,
      train_loss=float("nan"),
      heldout_loss=heldout,
      global_hash=_hex(state.global_hash),
      extra={"asr_samples": samples},
      **gen,
  )


def summarize(rows: Sequence[dict], run) -> dict:
  """summary.json of a whole run (every invocation of it): the first and last held-out loss,
  the best round, accepted rounds, and the line the main job ends with."""
  first = next((r for r in rows if r["round"] == -1), rows[0])
  done = [r for r in rows if r["round"] >= 0]
  last = next((r for r in reversed(done) if r["heldout_loss"]), first)
  mean = lambda r: float(np.mean(list(r["heldout_loss"].values())))
  out = {
      "rounds": len(done),
      "heldout_loss_start": mean(first),
      "heldout_loss_final": mean(last),
      "heldout_loss_final_by_domain": last["heldout_loss"],
  }
  reported = [r for r in done if r["heldout_loss"]]
  if reported:
    best = min(reported, key=mean)
    out["best_round"], out["heldout_loss_best"] = best["round"], mean(best)
  line = f"done: held-out loss {out['heldout_loss_start']:.4f} -> {out['heldout_loss_final']:.4f}"
  if run.federation.mode == "flock":
    out["accepted_rounds"] = sum(bool(r.get("accepted")) for r in done)
    line += f"; accepted {out['accepted_rounds']}/{len(done)} rounds"
  attackers = run.attack.attackers(run.federation.num_participants)
  out.update(run_metrics.summary_extras(rows, attackers))
  if out.get("asr_final") is not None:
    line += f"; ASR {out['asr_final']:.2f}"
  out["line"] = line
  return out


# ------------------------------------------------------------------ baseline round
def _root_update(engine: Engine, state: RunState) -> PyTree:
  """FLTrust's server update: G trained on a small root set (the pooled eval rows of the
  first domain) with a fresh optimizer state."""
  fed = engine.run.federation
  root = Population([next(iter(engine.population.eval_sets.values()))], [], {})
  batches = root.train_batches(
      [0], fed.local_steps, fed.batch_size, seed=engine.run.seed, round_index=state.round
  )
  opt = fresh_opt_state(engine.tx, state.global_lora, 1)
  keys = jax.random.split(jax.random.fold_in(state.key, 10**6 + state.round), 1)
  _, delta, _, _ = engine.local_train(engine.scan_base, state.global_lora, opt, batches, keys)
  return jax.tree.map(lambda x: x[0], delta)


def baseline_round(engine: Engine, state: RunState) -> tuple[RunState, RoundMetrics]:
  """K clients (drawn with the seed) train from G; the aggregator combines the valid
  updates; G_{r+1} = G_r + aggregate. 'local' (isolated) keeps each client's own adapter."""
  run, fed = engine.run, engine.run.federation
  agg = engine.aggregator
  timer = PhaseTimer()
  rng = np.random.default_rng([run.seed, state.round, 11])
  who = sorted(
      int(i) for i in rng.choice(fed.num_participants, fed.clients_per_round, replace=False)
  )
  with timer("train"):
    state, deltas, train_losses = _train(engine, state, who, start_stacked=agg.isolated)
  G = state.global_lora
  valid_ids, valid, errors = _screen(engine, who, deltas, G)
  if fed.oracle:  # the reference that knows who attacks
    bad = [i for i in valid_ids if run.attack.is_attacker(i)]
    errors += [f"client {i}: dropped by the oracle (an attacker)" for i in bad]
    valid = [d for i, d in zip(valid_ids, valid) if i not in bad]
    valid_ids = [i for i in valid_ids if i not in bad]
  extra: dict[str, Any] = {}
  with timer("eval"):  # the aggregator's work
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
  gen: dict[str, Any] = {}
  with timer("report"):
    if agg.isolated:  # each client is judged on its own adapter and its own held-out data
      held = engine.population.heldout_batches(who, fed.eval_batches, fed.eval_batch_size)
      own = np.diag(
          np.asarray(engine.heldout_loss(engine.scan_base, state.clients.take(who).adapters, held))
      )
      heldout = {"own": float(np.mean(own))}
    elif _report_due(engine, state.round):
      heldout, gen = _report(engine, G)
    else:
      heldout = {}
  samples = gen.pop("asr_samples", [])
  g_hash = hashing.tree_hash(G)
  metrics = RoundMetrics(
      round=state.round,
      mode=f"baseline:{agg.name}",
      train_loss=float(np.mean(np.asarray(train_losses)[:, -1])),
      heldout_loss=heldout,
      clients=who,
      proposal_accepted=[i in valid_ids for i in who],
      rejected_updates=errors,
      global_hash=_hex(g_hash),
      extra={**extra, "asr_samples": samples},
      **run_metrics.attackers_in(run.attack, who, [i in valid_ids for i in who]),
      **gen,
      **timer.metrics(),
  )
  # the hash a checkpoint records (and a resume checks the restored G against)
  return dataclasses.replace(state, round=state.round + 1, global_hash=g_hash), metrics


def cannot_continue(run, ledger) -> str | None:
  """Why the next FLock round cannot start (None: it can). Fewer than P + V participants are
  still staked (the rest were ejected): the contract refuses start_round, and anyone may
  close the task (PROTOCOL.md, Liveness). The run ends there, as the task does."""
  need = run.federation.num_proposers + run.federation.num_voters
  active = ledger.active_participants()
  if active < need:
    return f"{active} participants are still staked, a round needs P + V = {need}"
  return None


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
  out = []
  with engine.mesh_context():
    for _ in range(state.round, run.federation.rounds):
      if flock and cannot_continue(run, ledger):
        break
      state, m = (
          flock_round(engine, state, ledger, store) if flock else baseline_round(engine, state)
      )
      out.append(m)
      if on_round is not None:
        on_round(state, m, ledger)
  return out
