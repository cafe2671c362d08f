"""`FlockChain`: the one interface the rest of flock_jax uses to talk to the chain.

Participants are named by index ``i = 0..N-1``; participant i sends from
``addresses[i]`` (= backend account ``i + 1``; account 0 is the deployer,
owner of the task and minter of the token). `index_of` inverts the mapping.

    chain = FlockChain.from_config({"backend": "eth_tester"}, num_participants=8)
    chain.deploy(TaskParams(total_rounds=3, num_proposers=2, num_voters=3), stakes=100 * WEI)
    roles = chain.start_round()
    for i in roles.proposers: chain.propose(i, h[i])
    for j in roles.voters: chain.vote(j, candidate_hash, approve=True)
    outcome = chain.finalize()
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from eth_utils import keccak
from web3 import Web3

from . import logs as logs_mod
from .backend import Backend, connect
from .compile import load_contract
from .errors import ChainConfigError, ChainError
from .types import VOTE_WHOLE, Balances, Outcome, Roles, TaskParams, outcome_from_events

# Explicit gas limits for the frequent calls (an estimate would run each call
# twice); start_round and finalize loop over participants and get the block's.
GAS = {
    "mint": 120_000,
    "approve": 80_000,
    "transfer": 120_000,
    "fund": 150_000,
    "stake": 250_000,
    "unstake": 150_000,
    "withdraw": 150_000,
    "claim": 150_000,
    "propose": 150_000,
    "vote": 250_000,
    "vote_bits": 250_000,
    "drain_pool": 150_000,
}
MAX_UINT = 2**256 - 1


def as_hash(value: bytes | str) -> bytes:
  """A 32-byte hash from bytes or a 0x-hex string."""
  b = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
  if len(b) != 32:
    raise ValueError(f"a hash must be 32 bytes, got {len(b)}")
  return b


def bits_of(flags: int | Sequence[bool]) -> int:
  """A vote bitmask from an int or from per-proposer flags (bit i = flags[i])."""
  if isinstance(flags, int):
    return flags
  return sum(1 << i for i, f in enumerate(flags) if f)


class FlockChain:
  """A task on a chain: deploy, stake, rounds, balances and logs."""

  def __init__(self, backend: Backend, num_participants: int):
    if len(backend.accounts) < num_participants + 1:
      raise ChainConfigError(
          f"the {backend.name} chain has {len(backend.accounts)} accounts; "
          f"{num_participants} participants need {num_participants + 1} (one deployer)"
      )
    self.backend = backend
    self.w3: Web3 = backend.w3
    self.deployer: str = backend.accounts[0]
    self.addresses: tuple[str, ...] = tuple(backend.accounts[1 : num_participants + 1])
    self._index = {a: i for i, a in enumerate(self.addresses)}
    self.token: Any = None
    self.task: Any = None
    self.params: TaskParams | None = None
    self.decoder = logs_mod.EventDecoder(
        [load_contract("StakeToken").abi, load_contract("FlockTask").abi]
    )
    self.gas_log: list[tuple[str, int, float]] = []  # (call, gas used, seconds)
    self._big_gas = min(int(self.w3.eth.get_block("latest")["gasLimit"]) - 100_000, 29_000_000)
    self.last_receipt: Any = None  # receipt of the latest transaction sent

  @classmethod
  def from_config(cls, config: Mapping[str, Any], num_participants: int) -> "FlockChain":
    """Connect per ``config`` (keys: backend, rpc_url, private_keys)."""
    return cls(connect(config, num_accounts=num_participants + 1), num_participants)

  # ------------------------------------------------------------ identities
  @property
  def num_participants(self) -> int:
    return len(self.addresses)

  def index_of(self, address: str) -> int:
    """Participant index of `address` (raises KeyError for other accounts)."""
    return self._index[Web3.to_checksum_address(address)]

  def _who(self, i: int) -> str:
    if not 0 <= i < len(self.addresses):
      raise ChainError(f"participant index {i} out of range 0..{len(self.addresses) - 1}")
    return self.addresses[i]

  @property
  def _fn(self) -> Any:
    """The task's contract functions; fails clearly before deploy/attach."""
    if self.task is None:
      raise ChainError("no task deployed; call deploy() or attach() first")
    return self.task.functions

  def _send(self, what: str, fn: Any, sender: str, gas: int | None = None, detail: str = "") -> Any:
    t0 = time.perf_counter()
    receipt = self.backend.transact(what, fn, sender, gas or self._big_gas, detail)
    self.gas_log.append((what, int(receipt["gasUsed"]), time.perf_counter() - t0))
    self.last_receipt = receipt
    return receipt

  def _events(self, receipt: Any) -> list[dict]:
    return self.decoder.decode_all(receipt["logs"])

  def last_events(self) -> list[dict]:
    """Decoded events of the latest transaction sent through this object."""
    return self._events(self.last_receipt) if self.last_receipt is not None else []

  # ------------------------------------------------------------ set-up
  def deploy(
      self,
      params: TaskParams,
      stakes: int | Sequence[int] = 0,
      mint: int | Sequence[int] | None = None,
  ) -> None:
    """Deploy a token and a task, fund the pool, and set participants up.

    Each participant i is minted ``mint[i]`` tokens (default: its stake),
    approves the task, and stakes ``stakes[i]`` if positive.
    """
    self.token = self._deploy("StakeToken", ["FLock Stake", "FLS"])
    self.task = self._deploy(
        "FlockTask",
        [
            self.token.address,
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
        ],
    )
    self.params = params
    if params.reward_pool:
      self.mint_tokens(self.deployer, params.reward_pool)
      self._send(
          "approve",
          self.token.functions.approve(self.task.address, MAX_UINT),
          self.deployer,
          GAS["approve"],
      )
      self.fund(params.reward_pool)
    self.enroll(stakes, mint)

  def _deploy(self, name: str, args: list) -> Any:
    art = load_contract(name)
    factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    r = self._send(f"deploy {name}", factory.constructor(*args), self.deployer, 6_000_000)
    return self.w3.eth.contract(address=r["contractAddress"], abi=art.abi)

  def attach(self, task_address: str) -> None:
    """Use an already deployed task (e.g. when a run resumes)."""
    task_art = load_contract("FlockTask")
    self.task = self.w3.eth.contract(
        address=Web3.to_checksum_address(task_address), abi=task_art.abi
    )
    self.token = self.w3.eth.contract(
        address=self._fn.token().call(), abi=load_contract("StakeToken").abi
    )
    f = self._fn
    created = [e for e in self.events() if e["event"] == "TaskCreated"]
    g = created[0]["args"] if created else {}
    self.params = TaskParams(
        total_rounds=f.total_rounds().call(),
        num_proposers=f.num_proposers().call(),
        num_voters=f.num_voters().call(),
        min_stake=f.min_stake().call(),
        slash_bps=f.slash_bps().call(),
        proposer_share_bps=f.proposer_share_bps().call(),
        reward_pool=0,
        vote_window=f.vote_window().call(),
        vote_mode=f.vote_mode().call(),
        selection_mode=f.selection_mode().call(),
        genesis_hash=as_hash(g.get("genesis_hash", "0x" + "00" * 32)),
        genesis_seed=as_hash(g.get("genesis_seed", "0x" + "00" * 32)),
    )

  def enroll(self, stakes: int | Sequence[int], mint: int | Sequence[int] | None = None) -> None:
    """Set the participants up on the task (deployed here, or attached, e.g.
    one a `FlockFactory` created): participant i is minted ``mint[i]``
    (default: its stake; the deployer must be the token's minter),
    approves the task, and stakes ``stakes[i]`` if positive."""
    if self.task is None:
      raise ChainError("enroll: no task; call attach() first")
    n = len(self.addresses)
    stakes = [stakes] * n if isinstance(stakes, int) else list(stakes)
    mint = stakes if mint is None else ([mint] * n if isinstance(mint, int) else list(mint))
    if len(stakes) != n or len(mint) != n:
      raise ChainError(
          f"enroll: {n} participants, got {len(stakes)} stakes and {len(mint)} mint amounts"
      )
    for i, addr in enumerate(self.addresses):
      if mint[i]:
        self.mint_tokens(addr, mint[i])
      self._send(
          "approve", self.token.functions.approve(self.task.address, MAX_UINT), addr, GAS["approve"]
      )
      if stakes[i]:
        self.stake(i, stakes[i])

  def mint_tokens(self, address: str, amount: int) -> None:
    """Mint stake tokens to `address` (the deployer is the minter)."""
    self._send("mint", self.token.functions.mint(address, amount), self.deployer, GAS["mint"])

  # ------------------------------------------------------------ money
  def fund(self, amount: int, sender: str | None = None) -> None:
    """Add `amount` to the reward pool (from the deployer by default)."""
    self._send("fund", self._fn.fund(amount), sender or self.deployer, GAS["fund"])

  def stake(self, i: int, amount: int) -> None:
    """Participant i adds `amount` to its stake (registers on the first stake)."""
    self._send("stake", self._fn.stake(amount), self._who(i), GAS["stake"], f"participant {i}")

  def unstake(self, i: int, amount: int) -> None:
    """Participant i takes back `amount` of its stake."""
    self._send(
        "unstake", self._fn.unstake(amount), self._who(i), GAS["unstake"], f"participant {i}"
    )

  def withdraw(self, i: int) -> int:
    """Ejected participant i takes back what remains; returns the amount."""
    r = self._send(
        "withdraw", self._fn.withdraw(), self._who(i), GAS["withdraw"], f"participant {i}"
    )
    return next(e["args"]["amount"] for e in self._events(r) if e["event"] == "Withdrawn")

  def claim(self, i: int) -> int:
    """Participant i receives its accrued rewards; returns the amount."""
    r = self._send("claim", self._fn.claim(), self._who(i), GAS["claim"], f"participant {i}")
    return next(e["args"]["amount"] for e in self._events(r) if e["event"] == "Claimed")

  # ------------------------------------------------------------ rounds
  def start_round(self, sender: str | None = None) -> Roles:
    """Open the next round; returns the roles the contract drew."""
    r = self._send("start_round", self._fn.start_round(), sender or self.deployer)
    ev = {e["event"]: e["args"] for e in self._events(r)}
    return self._roles(ev["RoundStarted"], ev["RolesDrawn"])

  def _roles(self, started: dict, drawn: dict) -> Roles:
    idx = self._index.get
    return Roles(
        round=started["round"],
        seed=as_hash(started["seed"]),
        global_hash=as_hash(started["global_hash"]),
        reward=started["reward"],
        deadline=started["deadline"],
        proposers=tuple(idx(a, -1) for a in drawn["proposers"]),
        voters=tuple(idx(a, -1) for a in drawn["voters"]),
        proposer_addresses=tuple(drawn["proposers"]),
        voter_addresses=tuple(drawn["voters"]),
    )

  def roles(self) -> Roles:
    """Roles of the latest started round, read from its events."""
    evs = [e for e in self.events() if e["event"] in ("RoundStarted", "RolesDrawn")]
    if not evs:
      raise ChainError("roles: no round has started")
    return self._roles(evs[-2]["args"], evs[-1]["args"])

  def propose(self, i: int, proposal_hash: bytes | str) -> None:
    """Drawn proposer i commits keccak256 of its update's canonical bytes."""
    self._send(
        "propose",
        self._fn.propose(as_hash(proposal_hash)),
        self._who(i),
        GAS["propose"],
        f"participant {i}",
    )

  def vote(self, i: int, candidate_hash: bytes | str, approve: bool) -> None:
    """Drawn voter i approves or rejects the candidate it names (whole mode)."""
    self._send(
        "vote",
        self._fn.vote(as_hash(candidate_hash), bool(approve)),
        self._who(i),
        GAS["vote"],
        f"participant {i}",
    )

  def vote_bits(self, i: int, bits: int | Sequence[bool]) -> None:
    """Drawn voter i approves proposal k iff bit k is set (per-proposal mode);
    bit k names ``roles.proposers[k]`` (ascending address order)."""
    self._send(
        "vote_bits",
        self._fn.vote_bits(bits_of(bits)),
        self._who(i),
        GAS["vote_bits"],
        f"participant {i}",
    )

  def finalize(self, sender: str | None = None) -> Outcome:
    """Close the open round (all votes in, or window passed) and settle it."""
    f = self._fn
    proposers = list(self._call(f.get_proposers()))
    hashes = tuple(
        bytes(h) if any(h) else None for h in (self._call(f.current_proposal(p)) for p in proposers)
    )
    r = self._send("finalize", f.finalize(), sender or self.deployer)
    vote_mode = self.params.vote_mode if self.params is not None else VOTE_WHOLE
    return outcome_from_events(
        self._events(r),
        proposers,
        hashes,
        self._index.get,
        vote_mode,
        int(r["blockNumber"]),
        bytes(r["blockHash"]),
    )

  def mine(self, n: int = 1) -> None:
    """Mine `n` empty blocks, e.g. to pass a vote window."""
    self.backend.mine(n)

  # ------------------------------------------------------------ state
  def _call(self, fn: Any) -> Any:
    """A read-only call (naming the sender saves the provider a look-up)."""
    return fn.call({"from": self.deployer})

  @property
  def current_round(self) -> int:
    """Index of the open or last round; -1 before the first."""
    return self._call(self._fn.next_round()) - 1

  @property
  def round_open(self) -> bool:
    return self._call(self._fn.round_open())

  @property
  def global_hash(self) -> bytes:
    """Hash of the current global adapter G_r."""
    return bytes(self._call(self._fn.global_hash()))

  @property
  def pool(self) -> int:
    return self._call(self._fn.pool())

  def stake_of(self, i: int) -> int:
    return self._call(self._fn.stake_of(self._who(i)))

  def stakes(self) -> list[int]:
    """Stake of every participant, by index (for stake weighting)."""
    return list(self._call(self._fn.accounts_of(list(self.addresses)))[0])

  def claimable(self, i: int) -> int:
    return self._call(self._fn.claimable(self._who(i)))

  def is_ejected(self, i: int) -> bool:
    return self._call(self._fn.ejected(self._who(i)))

  def token_balance(self, address: str) -> int:
    return self._call(self.token.functions.balanceOf(address))

  def balances(self) -> Balances:
    """Stakes, claimable rewards and ejection of every participant, and totals."""
    stakes, owed, ejected = self._call(self._fn.accounts_of(list(self.addresses)))
    balance, pool, staked, claimable = self._call(self._fn.totals())[:4]
    return Balances(
        stakes=tuple(stakes),
        claimable=tuple(owed),
        ejected=tuple(ejected),
        pool=pool,
        total_staked=staked,
        total_claimable=claimable,
        token_balance=balance,
    )

  def totals(self) -> dict:
    """Task-wide state in one call: token_balance, pool, total_staked,
    total_claimable, next_round, round_open, global_hash."""
    keys = (
        "token_balance",
        "pool",
        "total_staked",
        "total_claimable",
        "next_round",
        "round_open",
        "global_hash",
    )
    out = dict(zip(keys, self._call(self._fn.totals())))
    out["global_hash"] = bytes(out["global_hash"])
    return out

  def latest_block(self) -> tuple[int, bytes]:
    """(number, hash) of the latest block: checkpoint it beside the run state."""
    b = self.w3.eth.get_block("latest")
    return int(b["number"]), bytes(b["hash"])

  # ------------------------------------------------------------ logs
  def events(self, from_block: int = 0) -> list[dict]:
    """Every event of the token and the task, in chain order (see `logs`)."""
    raw = self.w3.eth.get_logs(
        {
            "address": [self.token.address, self.task.address],
            "fromBlock": from_block,
            "toBlock": "latest",
        }
    )
    raw = sorted(raw, key=lambda lg: (int(lg["blockNumber"]), int(lg["logIndex"])))
    return self.decoder.decode_all(raw)

  def export_logs(self, path: str | None = None) -> dict:
    """All events plus addresses and the participant mapping, JSON-ready;
    written to `path` when given. `flock_jax.chain.audit` reads it."""
    export = {
        "format": logs_mod.LOG_FORMAT,
        "chain_id": self.backend.chain_id,
        "token": self.token.address,
        "task": self.task.address,
        "participants": list(self.addresses),
        "latest_block": self.latest_block()[0],
        "events": self.events(),
    }
    if path:
      logs_mod.write_json(path, export)
    return export

  def snapshot(self) -> Any:
    return self.backend.snapshot()

  def revert(self, snap: Any) -> None:
    self.backend.revert(snap)


def hash_bytes(data: bytes) -> bytes:
  """keccak256 of raw bytes: the hash committed on chain for a blob."""
  return keccak(data)
