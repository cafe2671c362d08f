"""The ERC-20 stake token: transfer, approve, transferFrom, allowance, mint, events."""

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


def test_only_minter_mints(chain):
  tok = chain.token.functions
  supply = tok.totalSupply().call()
  with pytest.raises(RevertError, match="mint: only the minter may mint"):
    chain._send("mint", tok.mint(chain.addresses[0], 1), chain.addresses[0], 100_000)
  chain.mint_tokens(chain.addresses[0], 7)
  assert tok.totalSupply().call() == supply + 7
  assert tok.decimals().call() == 18 and tok.symbol().call() == "FLS"
