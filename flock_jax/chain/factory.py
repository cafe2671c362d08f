"""`FlockFactory`: deploy many FlockTasks from one on-chain factory, and list them.

FlockTask's runtime code (~22 KB) is too large to embed in a factory
(EIP-170 caps deployed code at 24,576 bytes), so its initcode is deployed
once as an ERC-5202 blueprint and ``contracts/FlockFactory.vy`` creates tasks
with ``create_from_blueprint``. Every task of a factory shares its stake token.

    factory = FlockFactory.deploy(backend)           # token + blueprint + factory
    factory.mint(creator, params.reward_pool)        # from the deployer's fixed supply
    task = factory.create_task(params, creator)      # approves and funds the pool
    chain = factory.chain(task, num_participants=8)  # a FlockChain attached to it
    chain.enroll(stakes=100 * WEI)                   # mint, approve, stake
    roles = chain.start_round(); ...

The factory is each task's `owner`; `drain_pool(task, receiver, creator)`
forwards the owner's call for the task's creator.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from . import logs as logs_mod
from .backend import Backend, revert_reason
from .client import SUPPLY, FlockChain
from .compile import load_blueprint, load_contract
from .errors import ChainError, RevertError
from .types import TaskParams

# EIP-170: the most code a contract may hold; the blueprint holds 3 + len(initcode).
MAX_CODE_SIZE = 24_576
ERC5202_PREAMBLE = b"\xfe\x71\x00"
MAX_UINT = 2**256 - 1
GAS = {
    "deploy": 6_000_000,
    "blueprint": 8_000_000,
    "approve": 80_000,
    "transfer": 120_000,
    "drain_pool": 200_000,
}
PAGE = 256  # FlockFactory.MAX_PAGE


def blueprint_code_size(blueprint_deploy_code: str) -> int:
  """Bytes the blueprint contract will hold, from vyper's ``blueprint_bytecode``
  (a 10-byte deploy preamble followed by the code it returns)."""
  return len(bytes.fromhex(blueprint_deploy_code.removeprefix("0x"))) - 10


class FlockFactory:
  """A deployed FlockFactory on a `Backend`: create tasks, list them, attach to them."""

  def __init__(self, backend: Backend, address: str, sender: str | None = None):
    self.backend = backend
    self.w3: Web3 = backend.w3
    self.deployer: str = sender or backend.accounts[0]
    art = load_contract("FlockFactory")
    self.contract: Any = self.w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=art.abi
    )
    f = self.contract.functions
    self.token: Any = self.w3.eth.contract(
        address=f.token().call(), abi=load_contract("StakeToken").abi
    )
    self.blueprint: str = f.blueprint().call()
    self.decoder = logs_mod.EventDecoder(
        [art.abi, load_contract("FlockTask").abi, load_contract("StakeToken").abi]
    )
    self.gas_log: list[tuple[str, int, float]] = []  # (call, gas used, seconds)
    self._big_gas = min(int(self.w3.eth.get_block("latest")["gasLimit"]) - 100_000, 29_000_000)

  @property
  def address(self) -> str:
    return self.contract.address

  # ------------------------------------------------------------ deploy
  @classmethod
  def deploy(
      cls, backend: Backend, token: str | None = None, sender: str | None = None
  ) -> "FlockFactory":
    """Deploy FlockLogic, the FlockTask blueprint and a factory (and a fresh StakeToken
    whose fixed supply `sender` holds, unless `token` names one). `sender` defaults to
    account 0, which is also `FlockChain`'s deployer."""
    sender = sender or backend.accounts[0]
    gas_log: list[tuple[str, int, float]] = []

    def send(what: str, artifact: Any, args: list, gas: int, abi: list | None = None) -> str:
      t0 = time.perf_counter()
      abi = artifact.abi if abi is None else abi
      ctor = backend.w3.eth.contract(abi=abi, bytecode=artifact.bytecode).constructor(*args)
      r = backend.transact(what, ctor, sender, gas)
      gas_log.append((what, int(r["gasUsed"]), time.perf_counter() - t0))
      return r["contractAddress"]

    if token is None:
      token = send(
          "deploy StakeToken",
          load_contract("StakeToken"),
          ["FLock Stake", "FLS", SUPPLY],
          GAS["deploy"],
      )
    logic = send("deploy FlockLogic", load_contract("FlockLogic"), [], GAS["deploy"])
    bp = load_blueprint("FlockTask")
    size = blueprint_code_size(bp.bytecode)
    if size > MAX_CODE_SIZE:
      raise ChainError(
          f"deploy: the FlockTask blueprint is {size} bytes, over the EIP-170 limit of "
          f"{MAX_CODE_SIZE}; shrink contracts/FlockTask.vy's initcode"
      )
    # the blueprint's deploy code takes no arguments: it only returns 0xfe7100 + initcode
    blueprint = send("deploy FlockTask blueprint", bp, [], GAS["blueprint"], abi=[])
    code = bytes(backend.w3.eth.get_code(blueprint))
    if code[:3] != ERC5202_PREAMBLE or len(code) != size:
      raise ChainError(
          f"deploy: the blueprint at {blueprint} holds {len(code)} bytes starting "
          f"0x{code[:3].hex()}, expected {size} bytes starting 0xfe7100"
      )
    address = send(
        "deploy FlockFactory",
        load_contract("FlockFactory"),
        [token, blueprint, logic],
        GAS["deploy"],
    )
    factory = cls(backend, address, sender)
    factory.gas_log[:0] = gas_log
    return factory

  def _send(self, what: str, fn: Any, sender: str, gas: int | None = None, detail: str = "") -> Any:
    t0 = time.perf_counter()
    receipt = self.backend.transact(what, fn, sender, gas or self._big_gas, detail)
    self.gas_log.append((what, int(receipt["gasUsed"]), time.perf_counter() - t0))
    return receipt

  def mint(self, address: str, amount: int) -> None:
    """Give `address` stake tokens from the deployer's fixed supply (nobody can mint)."""
    self._send(
        "transfer", self.token.functions.transfer(address, amount), self.deployer, GAS["transfer"]
    )

  # ------------------------------------------------------------ tasks
  def create_task(
      self, params: TaskParams, creator: str | None = None, approve: bool = True
  ) -> str:
    """Create a task with `params`; `creator` (default: the deployer) pays
    ``params.reward_pool`` into its pool and must hold that many tokens.
    With `approve`, first approves the factory for exactly that amount.
    Returns the task's address. A bad parameter raises `RevertError`
    with the task constructor's message (e.g. ``init: slash_bps must be at most 10000``)."""
    creator = Web3.to_checksum_address(creator or self.deployer)
    if approve and params.reward_pool:
      self._send(
          "approve",
          self.token.functions.approve(self.address, params.reward_pool),
          creator,
          GAS["approve"],
      )
    fn = self.contract.functions.create_task(
        params.total_rounds,
        params.num_proposers,
        params.num_voters,
        params.min_stake,
        params.slash_bps,
        params.proposer_share_bps,
        params.vote_window,
        params.vote_mode,
        params.selection_mode,
        params.genesis_hash,
        params.genesis_seed,
        params.reward_pool,
    )
    r = self._send("create_task", fn, creator, detail=f"creator {creator}")
    deployed = [
        e
        for e in self.decoder.decode_all(r["logs"])
        if e["event"] == "TaskDeployed" and e["address"] == self.address
    ]
    if len(deployed) != 1:
      raise ChainError(
          f"create_task: expected one TaskDeployed event, the receipt has {len(deployed)}"
      )
    return deployed[0]["args"]["task"]

  def _call(self, fn: Any) -> Any:
    """A read-only call; a revert raises `RevertError` with the contract's message."""
    try:
      return fn.call({"from": self.deployer})
    except Exception as e:  # noqa: BLE001 - web3 and eth-tester raise different types
      if (
          isinstance(e, (ContractLogicError, Web3RPCError, ValueError))
          or type(e).__name__ == "TransactionFailed"
      ):
        raise RevertError(fn.fn_name, revert_reason(e)) from None
      raise

  @property
  def num_tasks(self) -> int:
    return self._call(self.contract.functions.num_tasks())

  def task_at(self, i: int) -> str:
    """The i-th task created (from 0)."""
    return self._call(self.contract.functions.task_at(i))

  def list_tasks(self, start: int = 0, count: int = PAGE) -> list[str]:
    """Tasks ``start .. start + count - 1`` in creation order (one call, at most 256)."""
    return list(self._call(self.contract.functions.list_tasks(start, count)))

  def tasks(self) -> list[str]:
    """Every task's address, in creation order."""
    return self._pages(self.num_tasks, lambda s: self.contract.functions.list_tasks(s, PAGE))

  def tasks_of(self, creator: str) -> list[str]:
    """The tasks `creator` created, in creation order."""
    creator = Web3.to_checksum_address(creator)
    n = self._call(self.contract.functions.num_tasks_of(creator))
    return self._pages(n, lambda s: self.contract.functions.list_tasks_of(creator, s, PAGE))

  def _pages(self, n: int, page: Any) -> list[str]:
    out: list[str] = []
    while len(out) < n:
      out += self._call(page(len(out)))
    return out

  def creator_of(self, task: str) -> str | None:
    """Who created `task` through this factory; None if it did not."""
    c = self._call(self.contract.functions.creator_of(Web3.to_checksum_address(task)))
    return None if int(c, 16) == 0 else c

  def deployed_events(self) -> list[dict]:
    """The factory's `TaskDeployed` events (task, creator, index, reward_pool), in order."""
    raw = self.w3.eth.get_logs({"address": self.address, "fromBlock": 0, "toBlock": "latest"})
    raw = sorted(raw, key=lambda lg: (int(lg["blockNumber"]), int(lg["logIndex"])))
    return self.decoder.decode_all(raw)

  def chain(self, task: str, num_participants: int) -> FlockChain:
    """A `FlockChain` attached to `task`, with participants 0..N-1 on backend
    accounts 1..N as usual; then `enroll` them (or stake one by one)."""
    if self.creator_of(task) is None:
      raise ChainError(f"chain: {task} is not a task of the factory at {self.address}")
    chain = FlockChain(self.backend, num_participants)
    chain.attach(task)
    funded = [
        e["args"]["reward_pool"]
        for e in self.deployed_events()
        if e["args"]["task"] == chain.task.address
    ]
    chain.params = dataclasses.replace(chain.params, reward_pool=funded[0] if funded else 0)
    return chain

  def drain_pool(self, task: str, receiver: str, creator: str | None = None) -> None:
    """The task's creator takes what is left of its pool once the task is closed or closable."""
    self._send(
        "drain_pool",
        self.contract.functions.drain_pool(
            Web3.to_checksum_address(task), Web3.to_checksum_address(receiver)
        ),
        Web3.to_checksum_address(creator or self.deployer),
        GAS["drain_pool"],
    )
