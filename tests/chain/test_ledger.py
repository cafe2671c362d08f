"""The round loop's view of v2 (`Ledger`): LocalLedger and ChainLedger run the same phases,
keep the salts, report invalid and duplicate exclusions, and continue after dump/load."""

import pytest
from eth_utils import keccak

from flock_jax.chain import TaskParams, WEI
from flock_jax.chain.audit import audit_chain
from flock_jax.federated.ledger import ChainLedger, LedgerError, LocalLedger


def _ledgers():
  params = TaskParams(total_rounds=4, num_proposers=2, num_voters=3, vote_window=6)
  return {
      "local": lambda: LocalLedger(8, num_proposers=2, num_voters=3, total_rounds=4),
      "eth_tester": lambda: ChainLedger.deploy({"backend": "eth_tester"}, 8, params, 100 * WEI),
  }


def _round(ledger, r, withhold=False, invalid_second=False):
  roles = ledger.start_round()
  for i in roles.proposers:
    ledger.propose(i, keccak(text=f"{r} {i}"))
  listed = roles.proposers[:1] if withhold else roles.proposers
  revealed = ledger.reveal_proposals(listed)
  assert set(revealed) == set(listed)
  flags = (False, invalid_second and not withhold)
  for j in roles.voters:
    ledger.vote(j, keccak(text=f"cand {r}"), approve=True, invalid=flags)
  return roles, ledger.finalize()


@pytest.mark.parametrize("kind", ["local", "eth_tester"])
def test_ledger_rounds_and_resume(kind):
  ledger = _ledgers()[kind]()
  roles, out = _round(ledger, 0)
  assert out.accepted and out.slashes == {} and out.invalid == (False, False)
  roles, out = _round(ledger, 1, invalid_second=True)
  bad = roles.proposers[1]
  assert out.accepted and out.invalid == (False, True) and set(out.slashes) == {bad}
  assert out.proposal_accepted == (True, False)
  data = ledger.dump_state()
  again = (
      LocalLedger.from_state(data)
      if kind == "local"
      else ChainLedger.from_state({"backend": "eth_tester"}, 8, data)
  )
  roles, out = _round(again, 2, withhold=True)  # the second proposer withholds its reveal
  assert out.accepted and set(out.slashes) == {roles.proposers[1]}
  if kind == "eth_tester":
    report = audit_chain(again.chain)
    assert report.ok, report.summary()
  else:
    assert again.token_balance() == again.pool + sum(again.stakes()) + sum(again.claimable)


def test_ledger_vote_arguments_are_checked():
  ledger = LocalLedger(8, num_proposers=2, num_voters=3, total_rounds=2)
  roles = ledger.start_round()
  for i in roles.proposers:
    ledger.propose(i, keccak(text=f"{i}"))
  ledger.reveal_proposals(roles.proposers)
  with pytest.raises(LedgerError, match="invalid needs one flag per proposer"):
    ledger.vote(roles.voters[0], keccak(text="c"), approve=True, invalid=(True,))
  with pytest.raises(LedgerError, match="whole-candidate mode needs a candidate hash"):
    ledger.vote(roles.voters[0], b"\x00" * 32, approve=True)
  with pytest.raises(LedgerError, match="reveal_proposals: participant"):
    ledger.reveal_proposals([roles.voters[0]])
