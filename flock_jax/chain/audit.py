"""Audit a FLock run from its logs and its adapter store.

The audit rebuilds every round from the task's events alone, with the
Python model of the contract (`TaskModel`): it recomputes each seed and role
draw, checks every commitment against its revealed hash/ballot and salt,
checks that every action was allowed in its phase, recomputes the exclusions,
candidate, tally, outcome and every reward, slash and ejection to the wei,
and compares each with the event logged. It reads every blob the run names
(the genesis adapter, proposals, candidates) from the store and re-hashes it,
and (given `aggregate`) rebuilds each accepted candidate from G_r and the
valid proposals. A malformed blob is reported, never raised.

The replayed final state must equal the export's anchor (`final`: the chain's
last block, round, pool, totals and every account's stake, claimable reward
and ejection, written by `FlockChain.export_logs`), so deleted trailing
events, a cut-off round or an appended event all show; with a live chain the
anchor and the replay are compared with the contract itself.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Sequence

from . import logs as logs_mod
from .model import ModelRevert, TaskModel
from .store import AdapterStore, StoreError
from .settlement import REVEALED
from .types import OUTCOME_ACCEPTED, VOTE_PER_PROPOSAL, ZERO_HASH

Aggregate = Callable[[bytes, Sequence[bytes]], bytes]


@dataclasses.dataclass
class AuditReport:
  """What the audit checked and every mismatch it found."""

  rounds: int = 0
  transactions: int = 0
  events: int = 0
  blobs_checked: int = 0
  mismatches: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.mismatches

  def summary(self) -> str:
    head = (
        f"audit {'OK' if self.ok else 'FAILED'}: {self.rounds} rounds, {self.transactions} transactions, "
        f"{self.events} events, {self.blobs_checked} blobs checked, {len(self.mismatches)} mismatches"
    )
    return "\n".join([head, *("  - " + m for m in self.mismatches)])


def _h(x: str) -> bytes:
  return bytes.fromhex(x[2:])


def _diff(expected: list[dict], logged: list[dict]) -> list[str]:
  """Readable differences between expected and logged event lists."""
  out = []
  for k in range(max(len(expected), len(logged))):
    e = expected[k] if k < len(expected) else None
    g = logged[k] if k < len(logged) else None
    if e is None:
      out.append(f"unexpected {g['event']} {g['args']}")
    elif g is None:
      out.append(f"missing {e['event']} {e['args']}")
    elif e["event"] != g["event"]:
      out.append(f"expected {e['event']} {e['args']}, logged {g['event']} {g['args']}")
    else:
      for key in e["args"]:
        if e["args"][key] != g["args"].get(key):
          out.append(f"{e['event']}.{key}: expected {e['args'][key]}, logged {g['args'].get(key)}")
  return out


class _Auditor:

  def __init__(self, store: AdapterStore | None, aggregate: Aggregate | None, require_blobs: bool):
    self.store = store
    self.aggregate = aggregate
    self.require_blobs = require_blobs
    self.report = AuditReport()
    self.model: TaskModel | None = None
    self.seed_blocks: dict[int, str] = {}  # seed block number -> logged block hash
    self._started: set[int] = set()
    self._prev_global = ZERO_HASH

  def fail(self, where: str, msg: str) -> None:
    self.report.mismatches.append(f"{where}: {msg}")

  def blob(self, where: str, h: bytes) -> bytes | None:
    """Fetch and verify a blob; report it when missing or tampered."""
    if self.store is None:
      return None
    try:
      data = self.store.get(h)
    except StoreError as e:
      if self.require_blobs or h in self.store:
        self.fail(where, str(e))
      return None
    self.report.blobs_checked += 1
    return data

  def replay(self, group: list[dict]) -> None:
    m = self.model
    first = group[0]
    names = [e["event"] for e in group]
    a, block = first["args"], first["block"]
    where = f"block {block} tx {first['tx'][:10]} ({'/'.join(dict.fromkeys(names))})"
    ev = first["event"]
    if "Finalized" in names:
      where = f"round {m.current_round} finalize, " + where
      proposals = dict(m.proposals)
      expected = m.finalize(block)
    elif ev == "RoundStarted":
      expected = m.start_round(block)
      where = f"round {a['round']} start, " + where
      if a["round"] not in self._started:  # not a re-armed draw
        self._started.add(a["round"])
        self.report.rounds += 1
    elif ev == "RolesDrawn":
      where = f"round {a['round']} draw, " + where
      self.seed_blocks[m.seed_block] = a["seed_block_hash"]
      expected = m.draw_roles(_h(a["seed_block_hash"]), block)
    elif ev == "Funded":
      expected = m.fund(a["sender"], a["amount"])
    elif ev == "Staked":
      expected = m.stake_tokens(a["participant"], a["amount"])
    elif ev == "Unstaked":
      expected = m.unstake(a["participant"], a["amount"])
    elif ev == "Withdrawn":
      expected = m.withdraw(a["participant"])
    elif ev == "Claimed":
      expected = m.claim(a["participant"])
    elif ev in ("PoolDrained", "TaskClosed") and "PoolDrained" in names:
      receiver = group[-1]["args"]["receiver"]
      expected = m.drain_pool(m.owner, receiver)
    elif ev == "TaskClosed":
      expected = m.close()
    elif ev == "ProposalCommitted":
      where = f"round {a['round']} commitment of {a['proposer']}, " + where
      expected = m.commit_proposal(a["proposer"], _h(a["commitment"]), block)
    elif ev == "Proposed":
      where = f"round {a['round']} proposal of {a['proposer']}, " + where
      expected = m.reveal_proposal(a["proposer"], _h(a["proposal_hash"]), _h(a["salt"]), block)
      self.blob(where, _h(a["proposal_hash"]))
    elif ev == "VoteCommitted":
      where = f"round {a['round']} vote commitment of {a['voter']}, " + where
      expected = m.commit_vote(a["voter"], _h(a["commitment"]), block)
    elif ev == "Voted":
      where = f"round {a['round']} vote of {a['voter']}, " + where
      expected = m.reveal_vote(
          a["voter"],
          _h(a["candidate"]),
          a["approve"],
          a["bits"],
          a["invalid"],
          _h(a["salt"]),
          block,
      )
    else:
      raise ModelRevert(f"no contract call emits {names}")
    strip = [{"event": e["event"], "args": e["args"]} for e in group]
    for d in _diff(expected, strip):
      self.fail(where, d)
    if "Finalized" in names:
      fin = [e for e in expected if e["event"] == "Finalized"][0]["args"]
      self.check_candidate(where, fin, proposals)

  def check_candidate(self, where: str, fin: dict, proposals: dict) -> None:
    """Whole mode, accepted: the candidate blob must be stored, hash to its name, and
    (given `aggregate`) equal G_r + mean of the valid proposals in address order."""
    m = self.model
    if m.vote_mode == VOTE_PER_PROPOSAL or fin["outcome"] != OUTCOME_ACCEPTED:
      return
    cand = self.blob(where + " candidate", _h(fin["candidate"]))
    if cand is None or self.aggregate is None:
      return
    out = fin["invalid_bits"] | fin["duplicate_bits"]
    hashes = [
        proposals[p] for k, p in enumerate(m.proposers) if p in proposals and not out >> k & 1
    ]
    deltas = [self.blob(where + " proposal", h) for h in hashes]
    prev = b"" if self._prev_global == ZERO_HASH else self.blob(where + " G_r", self._prev_global)
    if prev is None or any(d is None for d in deltas):
      return
    try:
      rebuilt = self.aggregate(prev, deltas)
    except Exception as e:  # noqa: BLE001 - a malformed blob is a finding, not a crash
      self.fail(
          where, f"cannot rebuild the candidate from the stored blobs: {type(e).__name__}: {e}"
      )
      return
    if rebuilt != cand:
      self.fail(where, "candidate blob is not G_r + mean of the valid proposals")

  def run(self, events: list[dict], task: str | None) -> AuditReport:
    if task is None:
      created = [e for e in events if e["event"] == "TaskCreated"]
      if not created:
        self.fail("logs", "no TaskCreated event: cannot rebuild the task")
        return self.report
      task = created[0]["address"]
    mine = [e for e in events if e["address"].lower() == task.lower()]
    if not mine or mine[0]["event"] != "TaskCreated":
      self.fail("logs", "the task's first event is not TaskCreated")
      return self.report
    self.model = TaskModel.from_created(mine[0]["args"])
    self.report.events = len(mine)
    if self.model.genesis_hash != ZERO_HASH:
      self.blob("genesis", self.model.genesis_hash)
    for group in logs_mod.group_by_tx(mine[1:]):
      self.report.transactions += 1
      self._prev_global = self.model.global_hash
      try:
        self.replay(group)
      except ModelRevert as e:
        g = group[0]
        self.fail(
            f"block {g['block']} tx {g['tx'][:10]}",
            f"logged {g['event']} {g['args']} is not allowed: {e}",
        )
      except (KeyError, TypeError, ValueError, IndexError) as e:
        g = group[0]
        self.fail(f"block {g['block']} tx {g['tx'][:10]}", f"malformed event {g['event']}: {e!r}")
    return self.report


def audit_events(
    events: list[dict],
    store: AdapterStore | None = None,
    *,
    task: str | None = None,
    aggregate: Aggregate | None = None,
    require_blobs: bool = True,
) -> tuple[AuditReport, TaskModel | None]:
  """Audit a list of event records; returns the report and the rebuilt model."""
  aud = _Auditor(store, aggregate, require_blobs)
  report = aud.run(list(events), task)
  return report, aud.model


def state_of(model: TaskModel) -> dict:
  """The task-wide state and every known account's (stake, claimable, ejected), JSON-ready:
  what `FlockChain.export_logs` writes as its anchor and what the audit replays."""
  accounts = sorted(set(model.stake) | set(model.claimable) | set(model.ejected))
  return {
      "round": model.next_round,
      "round_open": model.round_open,
      "closed": model.closed,
      "global_hash": "0x" + model.global_hash.hex(),
      "pool": model.pool,
      "total_staked": model.total_staked,
      "total_claimable": model.total_claimable,
      "accounts": {
          a: [model.stake.get(a, 0), model.claimable.get(a, 0), a in model.ejected]
          for a in accounts
      },
  }


def compare_state(report: AuditReport, replayed: dict, anchor: dict, what: str) -> None:
  """Every difference between the replayed state and `anchor` becomes a mismatch."""
  for key in (
      "round",
      "round_open",
      "closed",
      "global_hash",
      "pool",
      "total_staked",
      "total_claimable",
  ):
    if key in anchor and anchor[key] != replayed[key]:
      report.mismatches.append(
          f"state: {key} is {anchor[key]} in {what}, the logs give {replayed[key]}"
      )
  got, want = anchor.get("accounts", {}), replayed["accounts"]
  for a in sorted(set(got) | set(want)):
    g, w = got.get(a, [0, 0, False]), want.get(a, [0, 0, False])
    for name, x, y in zip(("stake", "claimable", "ejected"), g, w):
      if x != y:
        report.mismatches.append(f"state: {name} of {a} is {x} in {what}, the logs give {y}")


def audit_export(
    export: dict | str | pathlib.Path, store: AdapterStore | None = None, **kw: Any
) -> AuditReport:
  """Audit an export written by `FlockChain.export_logs` (a dict or a JSON path), and
  check the replayed final state against its anchor (`final`)."""
  if not isinstance(export, dict):
    export = logs_mod.read_json(export)
  report, model = audit_events(export["events"], store, task=export.get("task"), **kw)
  final = export.get("final")
  if final is None:
    report.mismatches.append(
        "export: no final state anchor ('final'); cannot tell a truncated or extended log"
    )
  elif model is not None:
    compare_state(report, state_of(model), final, "the export's final state")
    last = max((e["block"] for e in export["events"]), default=0)
    if last > final.get("block", 0):
      report.mismatches.append(
          f"export: an event at block {last} is after the anchored final block {final.get('block')}"
      )
  return report


def audit_chain(chain: Any, store: AdapterStore | None = None, **kw: Any) -> AuditReport:
  """Audit a live `FlockChain` from its logs, then compare the rebuilt state with the
  contract's (every account, pool, totals, token balance) and each seed block's hash."""
  aud = _Auditor(store, kw.get("aggregate"), kw.get("require_blobs", True))
  report = aud.run(chain.events(), chain.task.address)
  model, seed_blocks = aud.model, aud.seed_blocks
  if model is None:
    return report
  live = chain.final_state()
  compare_state(report, state_of(model), live, "the contract")
  accounted = model.pool + model.total_staked + model.total_claimable
  if live["token_balance"] != accounted:
    report.mismatches.append(
        f"state: token balance {live['token_balance']} != pool + stakes + claimable {accounted}"
    )
  for number, logged in sorted(seed_blocks.items()):
    actual = "0x" + bytes(chain.w3.eth.get_block(number)["hash"]).hex()
    if actual != logged:
      report.mismatches.append(
          f"state: the draw used {logged} as the hash of seed block {number}; the chain has {actual}"
      )
  return report
