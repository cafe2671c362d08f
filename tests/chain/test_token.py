"""The ERC-20 stake token: transfer, approve, transferFrom, allowance, a fixed supply, events."""

import pytest

from flock_jax.chain import RevertError


def _events(chain, name):
  return [e for e in chain.last_events() if e["event"] == name]


def test_transfer_approve_transfer_from(chain):
  tok = chain.token.functions
  a, b, c = chain.addresses[:3]
  chain.mint_tokens(a, 50)
  chain._send("transfer", tok.transfer(b, 20), a, 100_000)
  assert _events(chain, "Transfer")[0]["args"] == {"sender": a, "receiver": b, "value": 20}
  assert tok.balanceOf(a).call() == 30 and tok.balanceOf(b).call() == 20
  chain._send("approve", tok.approve(c, 15), a, 100_000)
  assert _events(chain, "Approval")[0]["args"] == {"owner": a, "spender": c, "value": 15}
  assert tok.allowance(a, c).call() == 15
  chain._send("transferFrom", tok.transferFrom(a, c, 10), c, 100_000)
  assert tok.allowance(a, c).call() == 5 and tok.balanceOf(c).call() == 10
  with pytest.raises(RevertError, match="transferFrom: allowance 5 is below amount 6"):
    chain._send("transferFrom", tok.transferFrom(a, c, 6), c, 100_000)
  with pytest.raises(RevertError, match="transfer: balance 20 is below amount 21"):
    chain._send("transfer", tok.transfer(a, 21), b, 100_000)


def test_supply_is_fixed_at_deployment(chain):
  """Weakness 10: nobody, not even the deployer, can mint after deployment, and the
  supply is capped at 2**128 (a task's arithmetic cannot overflow at that supply)."""
  from flock_jax.chain.client import SUPPLY
  from flock_jax.chain.compile import load_contract

  tok = chain.token.functions
  assert tok.totalSupply().call() == SUPPLY
  assert not [f for f in chain.token.abi if f.get("name") == "mint"]
  supply = tok.totalSupply().call()
  chain.mint_tokens(chain.addresses[0], 7)  # a transfer out of the deployer's supply
  assert tok.totalSupply().call() == supply
  assert (
      sum(tok.balanceOf(a).call() for a in chain.backend.accounts)
      + sum(tok.balanceOf(c).call() for c in (chain.task.address,))
      == supply
  )
  assert tok.decimals().call() == 18 and tok.symbol().call() == "FLS"
  art = load_contract("StakeToken")
  factory = chain.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
  with pytest.raises(RevertError, match="init: supply must be at most 2\\*\\*128"):
    chain._send("deploy", factory.constructor("X", "X", 2**128 + 1), chain.deployer, 3_000_000)
