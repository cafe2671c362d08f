"""Rounds on the tiny model with a learnable synthetic task: FedAvg and FLock learn;
invalid updates, rejecting voters and free riders never reach the global model."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.federated.ledger import WEI, LocalLedger
from flock_jax.federated.population import synthetic_population
from flock_jax.federated.engine import build, make_ledger
from flock_jax.federated.rounds import run_rounds
from flock_jax.model.llama import init_params
from flock_jax.run_config import from_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
N, P, V = 6, 2, 3


def _config(**overrides):
  spec = importlib.util.spec_from_file_location("flock_config", ROOT / "configs" / "flock.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("tiny")
  c.data.seq_len = 16
  # a wider random init lets the frozen lm head express the task: loss falls in a few steps
  c.model.overrides = {"initializer_range": 0.1}
  c.optim.lr = 1e-2
  f = c.federation
  f.num_participants, f.num_proposers, f.num_voters, f.clients_per_round = N, P, V, P
  f.rounds, f.local_steps, f.batch_size, f.eval_batches, f.eval_batch_size = 3, 3, 4, 1, 4
  for dotted, value in overrides.items():
    sec, key = dotted.split(".")
    c[sec][key] = value
  return c


@pytest.fixture(scope="module")
def world():
  run = from_config(_config())
  base = init_params(run.model.cfg, jax.random.key(0))
  pop = synthetic_population(N, seq_len=16, train_rows=24, heldout_rows=4, eval_rows=8)
  return base, pop


def _run(world, ledger=None, **overrides):
  base, pop = world
  return run_rounds(_config(**overrides), population=pop, base=base, ledger=ledger)


def _initial_hash(world, **overrides):
  base, pop = world
  _, state = build(from_config(_config(**overrides)), population=pop, base=base)
  return state.global_hash


def test_fedavg_baseline_loss_falls(world):
  ms = _run(world, **{"federation.mode": "baseline", "federation.aggregator": "fedavg"})
  assert [m.mode for m in ms] == ["baseline:fedavg"] * 3
  assert ms[-1].mean_heldout_loss < ms[0].mean_heldout_loss - 0.05
  assert ms[-1].mean_heldout_loss < 5.4  # log(272) = 5.61 for the untrained model
  assert len(ms[0].clients) == P


def test_flock_loss_falls_and_ledger_agrees(world):
  """The mechanism, whatever the draw: honest voters approve exactly when their gain clears
  tau; the chain accepts exactly what the approving majority named and settles by side. Round
  0 (from a random init) is a large improvement for every voter, a margin no last bit flips."""
  ms = _run(world)
  assert ms[0].accepted and min(ms[0].gains) > 0.05
  prev = None
  for m in ms:
    assert len(m.proposers) == P and len(m.voters) == V
    assert not set(m.proposers) & set(m.voters)
    assert m.approvals == [bool(g >= 0.0) for g in m.gains]  # tau = 0, honest voters
    if m.accepted:
      assert m.chain_global_hash == m.global_hash == m.candidate_hash
      assert all(m.rewards.get(i, 0) > 0 for i in m.proposers)
      assert not any(m.slashes.get(j, 0) for j, a in zip(m.voters, m.approvals) if a)
    else:
      assert prev is None or m.global_hash == prev.global_hash
      assert not any(m.slashes.get(j, 0) for j, a in zip(m.voters, m.approvals) if not a)
    prev = m


def test_invalid_updates_are_dropped_and_global_unchanged(world):
  # every participant proposes garbage: half NaN, half one column short
  beh = ",".join(f"{i}:{'nan' if i % 2 else 'wrong_shape'}" for i in range(N))
  ms = _run(world, **{"attack.behaviours": beh, "federation.rounds": 1})
  m = ms[0]
  assert len(m.rejected_updates) == P
  for i, msg in zip(m.proposers, m.rejected_updates):
    assert f"client {i}" in msg
    assert ("NaN" in msg) if i % 2 else ("shape" in msg)
    assert "'" in msg  # the leaf path is quoted, e.g. 'down/a'
  assert m.void and not m.accepted
  assert m.global_hash == "0x" + _initial_hash(world).hex()
  assert all(m.slashes.get(i, 0) > 0 for i in m.proposers)  # slashed: no proposal


def test_invalid_update_among_honest_never_reaches_global(world):
  bad = (0, 1, 2)
  ms = _run(world, **{"attack.behaviours": "0:nan,1:nan,2:nan", "federation.rounds": 3})
  assert any(i in bad for m in ms for i in m.proposers)  # the draw gave an attacker a turn
  for m in ms:
    assert len(m.rejected_updates) == sum(i in bad for i in m.proposers)
    if m.accepted:  # only the valid proposals entered the candidate
      assert m.proposal_accepted == [i not in bad for i in m.proposers]
    else:
      assert not any(m.proposal_accepted)
    assert all(m.slashes.get(i, 0) > 0 for i in m.proposers if i in bad)
    assert np.isfinite(m.mean_heldout_loss)
    assert m.attacker_proposals == m.attacker_accepted == 0  # valid attacker proposals only


def test_a_baseline_counts_valid_attacker_updates_only(world):
  """FedAvg drops an invalid update as FLock does; attacker_proposals counts the valid ones
  (none here), as in a FLock round, and rejected_updates names each dropped client."""
  bad = (0, 1, 2)
  ms = _run(
      world,
      **{"attack.behaviours": "0:nan,1:nan,2:nan", "federation.rounds": 3,
         "federation.mode": "baseline", "federation.aggregator": "fedavg"},
  )  # fmt: skip
  assert any(i in bad for m in ms for i in m.clients)
  for m in ms:
    assert [int(e.split()[1][:-1]) for e in m.rejected_updates] == [
        i for i in m.clients if i in bad
    ]
    assert m.attacker_proposals == m.attacker_accepted == 0
    assert m.proposal_accepted == [i not in bad for i in m.clients]
    assert np.isfinite(m.mean_heldout_loss)


def test_rejecting_majority_keeps_global(world):
  beh = ",".join(f"{i}:always_reject" for i in range(N))
  ledger = LocalLedger(
      N,
      num_proposers=P,
      num_voters=V,
      total_rounds=3,
      stakes=100 * WEI,
      genesis_hash=_initial_hash(world),
  )
  ms = _run(world, ledger, **{"attack.behaviours": beh, "federation.rounds": 2})
  g0 = "0x" + _initial_hash(world).hex()
  for m in ms:
    assert not m.accepted and not m.void
    assert m.tally < 0
    assert m.global_hash == g0 and m.chain_global_hash == g0
    assert all(m.slashes.get(i, 0) > 0 for i in m.proposers)  # rejected proposals slashed
  assert ms[0].tally == -V * 100 * WEI  # every voter rejected, all stakes equal
  assert ms[0].mean_heldout_loss == pytest.approx(ms[1].mean_heldout_loss)
  assert ledger.token_balance() == 1000 * WEI + N * 100 * WEI  # conserved


@pytest.mark.numerics
def test_per_proposal_drops_free_riders_and_nan(world):
  """Asserts the mechanism, not outcomes a last bit can flip: a free rider's gain is
  L(G) - L(G + 0) = 0 up to rounding (|gain| << tau), so every honest voter rejects it; each
  proposal's acceptance is exactly the stake-weighted tally of the recorded ballots; and each
  ballot is (gain >= tau) wherever the gain is farther than a rounding budget from tau."""
  tau, budget = 1e-4, 1e-5  # fp32 loss ~4, rounding of a mean over 64 tokens << 1e-5
  beh = "0:free_rider,1:free_rider,2:nan"
  ms = _run(
      world,
      **{
          "attack.behaviours": beh,
          "federation.vote_mode": "per_proposal",
          "federation.tau": tau,
          "federation.rounds": 3,
      },
  )
  seen_bad = honest_accepted = 0
  for m in ms:
    assert m.mode == "flock:per_proposal"
    # The NaN update is dropped before proposing; two free riders drawn together reveal the same
    # (zero) update, a duplicate that the contract excludes and slashes on both sides. Which
    # rounds draw them together depends on G's hash, so on the machine's last bits.
    pair = {0, 1} <= set(m.proposers)
    valid = [i for i in m.proposers if i != 2 and not (pair and i in (0, 1))]
    assert len(m.rejected_updates) == sum(i == 2 for i in m.proposers)
    if pair:
      seen_bad += 2
      assert not any(m.proposal_accepted) and not m.gains
      assert all(m.slashes.get(i, 0) > 0 for i in (0, 1)), m.slashes
    gains = np.asarray(m.gains)  # [V, valid proposals]
    for k, i in enumerate(valid):
      col = gains[:, k] if gains.size else np.zeros(0)
      for row, ballot in enumerate(m.approvals):
        if abs(col[row] - tau) > budget:
          assert bool(ballot[k]) == (col[row] >= tau), (m.round, i, col[row])
      # equal stakes: accepted iff approvals >= rejections among cast ballots (ties accept)
      yes = sum(bool(b[k]) for b in m.approvals if b is not None)
      no = sum(not b[k] for b in m.approvals if b is not None)
      assert m.proposal_accepted[m.proposers.index(i)] == (yes >= no and yes > 0), (m.round, i)
      if i in (0, 1):
        seen_bad += 1
        assert np.all(np.abs(col) < budget), f"free rider {i} has gains {col}"
        assert not m.proposal_accepted[m.proposers.index(i)]
      else:
        honest_accepted += m.proposal_accepted[m.proposers.index(i)]
    if 2 in m.proposers:
      seen_bad += 1
      assert not m.proposal_accepted[m.proposers.index(2)]
  assert seen_bad > 0  # the draw did give the attackers a turn
  assert honest_accepted > 0  # round 0's honest gains are ~0.5 >> tau


@pytest.mark.parametrize("backend", ["local", "eth_tester"])
def test_make_ledger_draws_disjoint_roles(world, backend):
  c = _config()
  c.ledger.backend = backend
  run = from_config(c)
  ledger = make_ledger(run, b"\x01" * 32)
  for _ in range(3):
    roles = ledger.start_round()
    assert len(set(roles.proposers) | set(roles.voters)) == P + V
    addrs = ledger.addresses()
    assert [int(addrs[i], 16) for i in roles.proposers] == sorted(
        int(addrs[i], 16) for i in roles.proposers
    )
    ledger.finalize()  # void: nothing proposed, nothing slashed
  assert ledger.token_balance() == sum(ledger.stakes()) + ledger.pool + sum(ledger.claimable)


@pytest.mark.parametrize("vote_mode", ["whole", "per_proposal"])
def test_rounds_on_chain_agree_with_run_state_and_audit(world, tmp_path, vote_mode):
  """The default backend runs the contracts on eth-tester: the chain's round, global
  hash and block agree with the run's, the audit of logs + store is clean, and a
  tampered blob is caught."""
  from flock_jax.chain import AdapterStore
  from flock_jax.chain.audit import audit_chain, audit_export
  from flock_jax.federated.ledger import ChainLedger
  from flock_jax.federated.voting import candidate_bytes

  base, pop = world
  store = AdapterStore(tmp_path / "store")
  seen, blocks = {}, []

  def on_round(s, m, l):
    seen.update(state=s, ledger=l)
    blocks.append(l.chain.latest_block()[0])

  ms = run_rounds(
      _config(**{"federation.vote_mode": vote_mode}),
      population=pop,
      base=base,
      store=store,
      on_round=on_round,
  )
  ledger, state = seen["ledger"], seen["state"]
  assert isinstance(ledger, ChainLedger)
  chain = ledger.chain
  # Gas of a round: the receipts of every transaction mined in that round's blocks.
  w3 = chain.w3
  assert ms[0].gas_used > 0
  for r in (1, 2):
    mined = sum(
        int(w3.eth.get_transaction_receipt(tx)["gasUsed"])
        for b in range(blocks[r - 1] + 1, blocks[r] + 1)
        for tx in w3.eth.get_block(b)["transactions"]
    )
    assert ms[r].gas_used == mined > 0, (r, ms[r].gas_used, mined)
  assert chain.current_round == ms[-1].round == 2 and not chain.round_open
  assert ms[-1].block_hash == "0x" + chain.latest_block()[1].hex()
  assert any(m.accepted for m in ms)
  if vote_mode == "whole":  # per-proposal commits a chained hash instead (docs/chain.md)
    assert chain.global_hash == state.global_hash
  assert ms[-1].chain_global_hash == "0x" + chain.global_hash.hex()
  assert chain.balances().conserved

  report = audit_chain(chain, store, aggregate=candidate_bytes)
  assert report.ok, report.summary()
  assert report.rounds == 3 and report.blobs_checked >= 3

  logs = chain.export_logs(str(tmp_path / "logs.json"))
  victim = bytes.fromhex(
      next(e["args"]["proposal_hash"] for e in logs["events"] if e["event"] == "Proposed")[2:]
  )
  data = bytearray(store.path(victim).read_bytes())
  data[-1] ^= 1
  store.path(victim).write_bytes(bytes(data))
  bad = audit_export(logs, store, aggregate=candidate_bytes)
  assert not bad.ok
  assert any(victim.hex() in m for m in bad.mismatches), bad.mismatches


class _Stop(Exception):
  pass


def test_resume_continues_on_the_same_chain_and_refuses_a_mismatch(world, tmp_path):
  """PROTOCOL.md step 7: a run checkpointed at a round boundary resumes on the chain
  it ran on and ends exactly where an uninterrupted run ends; a checkpoint that
  disagrees with the chain is refused with the reason."""
  from flock_jax.checkpoint import RunCheckpointer
  from flock_jax.federated.run_state import ResumeError, checkpoint_meta, checkpoint_tree

  base, pop = world
  full = run_rounds(_config(), population=pop, base=base)
  ck = RunCheckpointer(tmp_path / "ck")
  seen = {}

  def stop_after_round_1(state, m, ledger):
    seen["ledger"] = ledger
    if m.round == 1:
      ck.save(2, checkpoint_tree(state), checkpoint_meta(state, m))
      raise _Stop  # the process dies at the boundary

  with pytest.raises(_Stop):
    run_rounds(_config(), population=pop, base=base, on_round=stop_after_round_1)
  ledger = seen["ledger"]
  _, fresh = build(from_config(_config()), population=pop, base=base)
  tree, meta = ck.restore(2, checkpoint_tree(fresh))
  assert meta["chain_round"] == 1 and meta["next_round"] == 2

  bad = dict(meta, chain_global_hash="0x" + "11" * 32)
  with pytest.raises(ResumeError, match="global hash"):
    run_rounds(_config(), population=pop, base=base, ledger=ledger, resume=lambda _: (tree, bad))

  rest = run_rounds(
      _config(), population=pop, base=base, ledger=ledger, resume=lambda _: (tree, meta)
  )
  assert [m.round for m in rest] == [2]
  assert rest[0].global_hash == full[-1].global_hash
  assert rest[0].mean_heldout_loss == pytest.approx(full[-1].mean_heldout_loss, abs=1e-6)
  with pytest.raises(ResumeError, match="is at round 2"):  # the chain has moved on
    run_rounds(_config(), population=pop, base=base, ledger=ledger, resume=lambda _: (tree, meta))


def test_run_rounds_stops_when_the_task_runs_out_of_participants(world):
  """Voters always reject and one slash ejects: after round 0 fewer than P + V participants
  are staked, so no further round starts (the contract would refuse it)."""
  base, pop = world
  c = _config(**{"ledger.min_stake": 95, "ledger.backend": "local"})
  c.attack.fraction, c.attack.voter = 1.0, "always_reject"
  seen = {}
  ms = run_rounds(c, population=pop, base=base, on_round=lambda s, m, l: seen.update(ledger=l))
  assert [m.round for m in ms] == [0] and ms[0].accepted is False
  assert seen["ledger"].active_participants() == N - P < P + V


@pytest.mark.parametrize("mean", ["accepted", "valid"])
def test_per_proposal_g_moves_by_the_accepted_sum_over_the_configured_count(world, tmp_path, mean):
  """PROTOCOL.md step 6, per-proposal votes: G_{r+1} = G_r + (sum of the accepted Δ_i) / m, m the
  number accepted (per_proposal_mean='accepted') or the number of valid proposals ('valid': a
  rejected proposal counts as a zero update, so an update accepted alone is not taken at full
  weight). A free rider, rejected, shares rounds with accepted honest updates."""
  from flock_jax.chain import AdapterStore
  from flock_jax.federated import hashing

  base, pop = world
  config = _config(
      **{
          "attack.behaviours": "0:free_rider,1:free_rider",
          "federation.vote_mode": "per_proposal",
          "federation.tau": 1e-4,
          "federation.rounds": 4,
          "federation.per_proposal_mean": mean,
          "ledger.backend": "local",
      }
  )
  store = AdapterStore(tmp_path / "store")
  _, state = build(from_config(config), population=pop, base=base)
  globals_ = [state.global_lora]
  ms = run_rounds(
      config,
      population=pop,
      base=base,
      store=store,
      on_round=lambda s, m, l: globals_.append(s.global_lora),
  )
  like = globals_[0]
  read = lambda h: hashing.tree_from_canonical_bytes(store.get(bytes.fromhex(h[2:])), like=like)
  partial = 0
  for r, m in enumerate(ms):
    accepted = [
        read(m.extra["proposal_hashes"][str(i)])
        for i, ok in zip(m.proposers, m.proposal_accepted)
        if ok
    ]
    count = {"accepted": len(accepted), "valid": len(m.proposers)}[mean]
    partial += 0 < len(accepted) < len(m.proposers)
    for g0, g1, *ds in zip(
        jax.tree.leaves(globals_[r]),
        jax.tree.leaves(globals_[r + 1]),
        *map(jax.tree.leaves, accepted),
    ):
      want = np.asarray(g0, np.float32) + (
          sum(np.asarray(d, np.float32) for d in ds) / count if ds else 0
      )
      np.testing.assert_allclose(np.asarray(g1), want, rtol=0, atol=1e-6)
  assert partial > 0  # some round accepted part of its proposals: the two counts differ there


def test_the_oracle_drops_exactly_the_attackers_updates(world):
  """federation.oracle (baseline mode) drops every drawn attacker's update before FedAvg: a run
  whose attackers replace the model (scale) ends at the same G, round by round, as one whose
  attackers' updates are invalid (NaN: dropped by validation); without the oracle the
  model-replacement run differs. In FLock mode the oracle is refused, naming the field."""
  base = {"federation.mode": "baseline", "federation.aggregator": "fedavg",
          "federation.rounds": 3}  # fmt: skip
  bad = (0, 1, 2)
  scale = ",".join(f"{i}:scale" for i in bad)
  nan = ",".join(f"{i}:nan" for i in bad)
  oracle = _run(world, **base, **{"attack.behaviours": scale, "federation.oracle": True})
  dropped = _run(world, **base, **{"attack.behaviours": nan})
  plain = _run(world, **base, **{"attack.behaviours": scale})
  assert any(i in bad for m in oracle for i in m.clients)
  assert [m.global_hash for m in oracle] == [m.global_hash for m in dropped]
  assert [m.global_hash for m in plain] != [m.global_hash for m in oracle]
  for m in oracle:
    assert m.proposal_accepted == [i not in bad for i in m.clients]
    assert m.attacker_accepted == 0
    assert [e for e in m.rejected_updates if "oracle" in e] == [
        f"client {i}: dropped by the oracle (an attacker)" for i in m.clients if i in bad
    ]
  with pytest.raises(ValueError, match=r"federation\.oracle=True needs mode 'baseline'"):
    from_config(_config(**{"federation.oracle": True}))


def test_proposals_come_off_the_device_once_and_stay_the_same():
  """rounds._host_unstack: numpy views of one device_get, equal to per-client device slices
  (so to their hashes); _host_stack restacks them; an attacker's NaN lands on a host leaf."""
  from flock_jax.federated import hashing
  from flock_jax.federated.attacks import attack_update
  from flock_jax.federated.rounds import _host_stack, _host_unstack, _unstack

  tree = {"a": jax.random.normal(jax.random.key(0), (3, 4, 5)), "b": {"c": jnp.arange(3.0)}}
  host, dev = _host_unstack(tree, 3), _unstack(tree, 3)
  for h, d in zip(host, dev):
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(h))
    assert hashing.tree_hash(h) == hashing.tree_hash(d)
  restacked = _host_stack(host)
  for x, y in zip(jax.tree.leaves(restacked), jax.tree.leaves(tree)):
    np.testing.assert_array_equal(x, np.asarray(y))
  poisoned = attack_update("nan", host[1], 1.0)
  assert np.isnan(np.asarray(jax.tree.leaves(poisoned)[0])).sum() == 1
  assert not np.isnan(np.asarray(jax.tree.leaves(host[1])[0])).any()  # the original untouched
