"""The JSON-RPC backend against a real node: a hardhat 2 dev node (Prague) on loopback.

Needs Node.js and ``npm ci`` (or ``npm install``) run in tests/chain/hardhat;
skipped, with the reason, when either is missing.
"""

import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import pytest
from eth_account import Account
from web3 import Web3

from flock_jax.chain import FlockChain, RevertError, TaskParams, WEI
from flock_jax.chain.audit import audit_chain

from tests.chain import attacks
from tests.chain.helpers import SMALL, blob_hash

HARDHAT = pathlib.Path(__file__).resolve().parent / "hardhat"
pytestmark = pytest.mark.hardhat


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def node_url(tmp_path_factory):
  if not shutil.which("node") or not shutil.which("npx"):
    pytest.skip("hardhat test needs Node.js: `node`/`npx` not found on PATH")
  if not (HARDHAT / "node_modules" / "hardhat").is_dir():
    pytest.skip(f"hardhat not installed: run `npm ci` in {HARDHAT}")
  port = _free_port()
  log_path = tmp_path_factory.mktemp("hardhat") / "node.log"
  log = open(log_path, "w")  # noqa: SIM115 - closed in teardown
  proc = subprocess.Popen(
      ["npx", "hardhat", "node", "--hostname", "127.0.0.1", "--port", str(port)],
      cwd=HARDHAT,
      stdout=log,
      stderr=subprocess.STDOUT,
      start_new_session=True,
  )
  url = f"http://127.0.0.1:{port}"
  w3 = Web3(Web3.HTTPProvider(url))
  try:
    for _ in range(600):
      if proc.poll() is not None:
        pytest.fail(f"hardhat node exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
      try:
        w3.eth.block_number
        break
      except Exception:  # noqa: BLE001 - not up yet
        time.sleep(0.1)
    else:
      pytest.fail("hardhat node did not answer within 60 s")
    yield url
  finally:
    os.killpg(proc.pid, signal.SIGTERM)  # the node and its children, started above
    proc.wait(timeout=20)
    log.close()


def _round(chain: FlockChain):
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"p{i}"))
  chain.reveal_proposals(roles.proposers)
  for j in roles.voters:
    chain.vote(j, blob_hash("candidate"), True)
  return roles, chain.finalize()


def test_deploy_and_round_over_http(node_url):
  chain = FlockChain.from_config({"backend": "jsonrpc", "rpc_url": node_url}, num_participants=6)
  chain.deploy(
      TaskParams(
          total_rounds=2, num_proposers=2, num_voters=3, vote_window=20, reward_pool=100 * WEI
      ),
      stakes=50 * WEI,
  )
  roles, out = _round(chain)
  assert out.accepted and chain.global_hash == blob_hash("candidate")
  assert set(out.rewards) == set(roles.proposers) | set(roles.voters)
  assert chain.balances().conserved
  with pytest.raises(RevertError, match="finalize: no round is open"):
    chain.finalize()
  with pytest.raises(RevertError, match="commit_proposal: no round is open"):
    chain.propose(roles.proposers[0], blob_hash("late"))
  assert audit_chain(chain).ok


def test_local_keys_sign(node_url):
  w3 = Web3(Web3.HTTPProvider(node_url))
  keys = [Account.create() for _ in range(7)]
  for k in keys:
    w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": k.address, "value": 10**18})
  chain = FlockChain.from_config(
      {"backend": "jsonrpc", "rpc_url": node_url, "private_keys": [k.key.hex() for k in keys]},
      num_participants=6,
  )
  assert chain.deployer == keys[0].address
  chain.deploy(
      TaskParams(
          total_rounds=1, num_proposers=2, num_voters=2, vote_window=20, reward_pool=10 * WEI
      ),
      stakes=20 * WEI,
  )
  assert chain.stakes() == [20 * WEI] * 6  # the whole read; later ones follow the node's logs
  roles = chain.start_round()
  with pytest.raises(
      RevertError, match="commit_vote: round 0 is in phase 2, this call needs phase 4"
  ):
    chain.vote(roles.voters[0], blob_hash("c"), True)
  out = chain.finalize()  # waits out the commit window: nobody proposed
  assert out.void and set(out.slashes) == set(roles.proposers)
  assert chain.stakes() == list(chain.balances().stakes) != [20 * WEI] * 6
  assert audit_chain(chain).ok


@pytest.mark.parametrize("name", sorted(attacks.MAIN))
def test_attacks_on_the_node(node_url, name):
  """Issue 8's main attacks against v2 on a real JSON-RPC node (see tests/chain/attacks.py)."""
  scenario, overrides = attacks.MAIN[name]
  chain = FlockChain.from_config({"backend": "jsonrpc", "rpc_url": node_url}, num_participants=8)
  chain.deploy(dataclasses.replace(SMALL, **overrides), stakes=100 * WEI)
  scenario(chain)
  assert chain.balances().conserved
  report = audit_chain(chain)
  assert report.ok, report.summary()
