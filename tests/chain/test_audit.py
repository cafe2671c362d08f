"""The audit: an honest run is clean; tampered blobs and forged log entries are caught."""

import copy
import subprocess
import sys

import numpy as np
import pytest

from flock_jax.chain import AdapterStore, StoreError, VOTE_PER_PROPOSAL
from flock_jax.chain.audit import audit_chain, audit_export
from flock_jax.chain.logs import read_json

from tests.chain.helpers import make_chain

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def aggregate(prev: bytes, deltas: list[bytes]) -> bytes:
  """The test's candidate rule: G + mean(deltas), float32 little-endian."""
  base = np.frombuffer(prev, "<f4") if prev else np.zeros(4, "<f4")
  return (base + np.mean([np.frombuffer(d, "<f4") for d in deltas], axis=0)).astype("<f4").tobytes()


def honest_run(store: AdapterStore, vote_mode: int = 0, rounds: int = 3):
  """A run where proposers store their updates and voters the candidate."""
  chain = make_chain(vote_mode=vote_mode, total_rounds=rounds)
  prev = b""
  for r in range(rounds):
    roles = chain.start_round()
    deltas = []
    for i in roles.proposers:
      d = np.full(4, r + i / 10, "<f4").tobytes()
      deltas.append(d)
      chain.propose(i, store.put(d))
    chain.reveal_proposals(roles.proposers)
    cand = store.put(aggregate(prev, deltas))
    for k, j in enumerate(roles.voters):
      if vote_mode == VOTE_PER_PROPOSAL:
        chain.vote_bits(j, 0b11 if k else 0b01)
      else:
        chain.vote(j, cand, approve=(r != 1 or k == 0))  # round 1 is rejected
    out = chain.finalize()
    if out.accepted and vote_mode != VOTE_PER_PROPOSAL:
      prev = store.get(out.global_hash)
  return chain


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  store = AdapterStore(tmp_path_factory.mktemp("adapters"))
  chain = honest_run(store)
  return chain, store, chain.export_logs()


def test_store_round_trip(tmp_path):
  store = AdapterStore(tmp_path)
  h = store.put(b"abc")
  assert store.path(h).name == "0x" + h.hex() + ".bin" and store.get(h) == b"abc" and h in store
  store.path(h).write_bytes(b"abd")
  with pytest.raises(StoreError, match="is tampered"):
    store.get(h)
  with pytest.raises(StoreError, match="no blob"):
    store.get(b"\x01" * 32)


def test_honest_run_audits_clean(run, tmp_path):
  chain, store, export = run
  report = audit_chain(chain, store, aggregate=aggregate)
  assert report.ok, report.summary()
  assert report.rounds == 3 and report.blobs_checked >= 3 * 2 + 3
  path = tmp_path / "logs.json"
  chain.export_logs(path)
  assert read_json(path)["events"] == export["events"]
  assert audit_export(path, store, aggregate=aggregate).ok


def test_per_proposal_run_audits_clean(tmp_path):
  store = AdapterStore(tmp_path)
  chain = honest_run(store, vote_mode=VOTE_PER_PROPOSAL, rounds=2)
  report = audit_chain(chain, store)
  assert report.ok, report.summary()


def test_tampered_blob_is_caught(run, tmp_path):
  chain, store, export = run
  bad = AdapterStore(tmp_path)
  for h in store.hashes():
    bad.path(h).write_bytes(store.path(h).read_bytes())
  victim = next(e for e in export["events"] if e["event"] == "Proposed")["args"]["proposal_hash"]
  bad.path(bytes.fromhex(victim[2:])).write_bytes(b"\x00" * 16)
  report = audit_export(export, bad)
  assert not report.ok
  assert any("tampered" in m and victim[2:] in m for m in report.mismatches), report.summary()


def test_missing_blob_is_caught(run, tmp_path):
  _, store, export = run
  report = audit_export(export, AdapterStore(tmp_path))
  assert not report.ok and any("no blob" in m for m in report.mismatches)


def test_wrong_candidate_bytes_are_caught(run, tmp_path):
  chain, store, export = run
  report = audit_export(export, store, aggregate=lambda prev, deltas: aggregate(prev, deltas[:1]))
  assert any("candidate blob is not G_r + mean" in m for m in report.mismatches)


def test_flipped_vote_in_exported_logs_is_caught(run):
  _, store, export = run
  forged = copy.deepcopy(export)
  vote = next(e for e in forged["events"] if e["event"] == "Voted")
  vote["args"]["approve"] = not vote["args"]["approve"]
  report = audit_export(forged, store)
  assert not report.ok
  assert any(
      "reveal_vote: ballot and salt do not match the commitment" in m for m in report.mismatches
  ), report.summary()
  assert any("Finalized.tally" in m for m in report.mismatches), report.summary()


def test_vote_by_someone_not_drawn_is_caught(run):
  chain, store, export = run
  forged = copy.deepcopy(export)
  vote = next(e for e in forged["events"] if e["event"] == "Voted")
  drawn = next(e for e in forged["events"] if e["event"] == "RolesDrawn")["args"]
  outsider = next(a for a in chain.addresses if a not in drawn["proposers"] + drawn["voters"])
  vote["args"]["voter"] = outsider
  report = audit_export(forged, store)
  assert any(
      "reveal_vote: not a drawn voter for round 0" in m for m in report.mismatches
  ), report.summary()


def test_edited_reward_and_roles_are_caught(run):
  _, store, export = run
  forged = copy.deepcopy(export)
  rew = next(e for e in forged["events"] if e["event"] == "Rewarded")
  rew["args"]["amount"] += 1
  drawn = [e for e in forged["events"] if e["event"] == "RolesDrawn"][1]
  drawn["args"]["voters"] = drawn["args"]["voters"][::-1]
  report = audit_export(forged, store)
  assert any("Rewarded.amount" in m for m in report.mismatches)
  assert any("RolesDrawn.voters" in m for m in report.mismatches), report.summary()


def test_audit_command(run, tmp_path):
  chain, store, _ = run
  path = chain.export_logs(tmp_path / "logs.json") and tmp_path / "logs.json"
  cmd = [
      sys.executable,
      str(ROOT / "launch" / "audit.py"),
      f"--logs={path}",
      f"--store={store.root}",
  ]
  ok = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert ok.returncode == 0 and "audit OK: 3 rounds" in ok.stdout, ok.stdout + ok.stderr
  bad = subprocess.run(
      cmd[:-1] + [f"--store={tmp_path / 'empty'}"], capture_output=True, text=True, cwd=ROOT
  )
  assert bad.returncode == 1 and "audit FAILED" in bad.stdout
