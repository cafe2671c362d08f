"""Audit a FLock run from its logs and its adapter store.

The audit rebuilds every round from the task's events alone, with the
Python model of the contract (`TaskModel`): it recomputes each seed and role
draw, checks that every proposal and vote was allowed, recomputes the
candidate, tally, outcome and every reward, slash and ejection to the wei,
and compares each with the event logged. It then recomputes the keccak256
of every blob the run names (proposals, candidates) from the store. Given a
live chain, it also compares the final balances with the contract's state.

A tampered blob, a forged or edited event (e.g. a flipped vote in an
exported JSON) or a vote inconsistent with the logged tally each shows up as
a mismatch in the report.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Sequence

from . import logs as logs_mod
from .model import ModelRevert, TaskModel
from .store import AdapterStore, StoreError
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
    self._proposal_blobs: dict[str, bytes] = {}

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
    if "Finalized" in names:
      expected = m.finalize(block)
      where = f"round {m.current_round} finalize, " + where
    elif first["event"] == "RoundStarted":
      expected = m.start_round(block)
      where = f"round {a['round']} start, " + where
      self.report.rounds += 1
    elif first["event"] == "Funded":
      expected = m.fund(a["sender"], a["amount"])
    elif first["event"] == "Staked":
      expected = m.stake_tokens(a["participant"], a["amount"])
    elif first["event"] == "Unstaked":
      expected = m.unstake(a["participant"], a["amount"])
    elif first["event"] == "Withdrawn":
      expected = m.withdraw(a["participant"])
    elif first["event"] == "Claimed":
      expected = m.claim(a["participant"])
    elif first["event"] == "PoolDrained":
      expected = m.drain_pool(m.owner, a["receiver"])
    elif first["event"] == "Proposed":
      where = f"round {a['round']} proposal of {a['proposer']}, " + where
      expected = m.propose(a["proposer"], _h(a["proposal_hash"]), block)
      data = self.blob(where, _h(a["proposal_hash"]))
      if data is not None:
        self._proposal_blobs[a["proposer"]] = data
    elif first["event"] == "Voted":
      where = f"round {a['round']} vote of {a['voter']}, " + where
      if m.vote_mode == VOTE_PER_PROPOSAL:
        expected = m.vote_bits(a["voter"], a["bits"], block)
      else:
        expected = m.vote(a["voter"], _h(a["candidate"]), a["approve"], block)
    else:
      raise ModelRevert(f"no contract call emits {names}")
    strip = [{"event": e["event"], "args": e["args"]} for e in group]
    for d in _diff(expected, strip):
      self.fail(where, d)
    if "Finalized" in names:
      self.check_candidate(where, [e for e in expected if e["event"] == "Finalized"][0]["args"])

  def check_candidate(self, where: str, fin: dict) -> None:
    """Whole mode: the candidate blob must be stored, hash to its name, and
    (given `aggregate`) equal G_r + mean of the proposals."""
    m = self.model
    if m.vote_mode == VOTE_PER_PROPOSAL or fin["candidate"] == "0x" + ZERO_HASH.hex():
      self._proposal_blobs = {}
      return
    cand = self.blob(where + " candidate", _h(fin["candidate"]))
    if cand is not None and self.aggregate is not None and fin["outcome"] == OUTCOME_ACCEPTED:
      prev = (
          self.blob(where + " previous global", self._prev_global)
          if self._prev_global != ZERO_HASH
          else b""
      )
      deltas = [self._proposal_blobs[p] for p in m.proposers if p in self._proposal_blobs]
      if prev is not None and len(deltas) == len(m.proposals):
        if self.aggregate(prev, deltas) != cand:
          self.fail(where, "candidate blob is not G_r + mean of the proposals")
    self._proposal_blobs = {}

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
      except (KeyError, TypeError, ValueError) as e:
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


def audit_export(
    export: dict | str | pathlib.Path, store: AdapterStore | None = None, **kw: Any
) -> AuditReport:
  """Audit an export written by `FlockChain.export_logs` (a dict or a JSON path)."""
  if not isinstance(export, dict):
    export = logs_mod.read_json(export)
  report, _ = audit_events(export["events"], store, task=export.get("task"), **kw)
  return report


def audit_chain(chain: Any, store: AdapterStore | None = None, **kw: Any) -> AuditReport:
  """Audit a live `FlockChain` from its logs, then compare the rebuilt
  balances with the contract's state and the token balance."""
  report, model = audit_events(chain.events(), store, task=chain.task.address, **kw)
  if model is None:
    return report
  b = chain.balances()
  if b.pool != model.pool:
    report.mismatches.append(f"state: pool is {b.pool}, the logs give {model.pool}")
  for i, addr in enumerate(chain.addresses):
    for name, got, want in (
        ("stake", b.stakes[i], model.stake.get(addr, 0)),
        ("claimable", b.claimable[i], model.claimable.get(addr, 0)),
        ("ejected", b.ejected[i], addr in model.ejected),
    ):
      if got != want:
        report.mismatches.append(f"state: {name} of participant {i} is {got}, the logs give {want}")
  accounted = model.pool + model.total_staked + model.total_claimable
  if b.token_balance != accounted:
    report.mismatches.append(
        f"state: token balance {b.token_balance} != pool + stakes + claimable {accounted}"
    )
  if chain.global_hash != model.global_hash:
    report.mismatches.append("state: global hash differs from the one the logs give")
  return report
