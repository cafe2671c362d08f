"""The chain as the simulator sees it: the `Ledger` protocol and its two implementations.

The round function (flock_jax/federated/rounds.py) talks to the chain only
through `Ledger`: it reads the roles the chain drew, commits hashes, casts
votes and reads the outcome. It never decides roles or outcomes itself.

- `ChainLedger` drives the FlockTask contract through `flock_jax.chain.FlockChain`
  (in-process eth-tester, or any JSON-RPC node).
- `LocalLedger` runs the same rules without an EVM, through the chain
  package's `TaskModel` (the Python model of contracts/FlockTask.vy that the
  contract is tested against event by event), for fast tests and sweeps.

Both return the chain's `Roles` and `Outcome` (flock_jax/chain/types.py).
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from eth_utils import keccak, to_checksum_address

from flock_jax.chain import model as task_model
from flock_jax.chain.types import (
    SELECT_STAKE,
    SELECT_UNIFORM,
    VOTE_PER_PROPOSAL,
    VOTE_WHOLE,
    WEI,
    ZERO_HASH,
    Outcome,
    Roles,
    TaskParams,
    outcome_from_events,
)

__all__ = [
    "WEI",
    "ZERO_HASH",
    "Ledger",
    "LedgerError",
    "LocalLedger",
    "ChainLedger",
    "Roles",
    "Outcome",
    "default_addresses",
]


@runtime_checkable
class Ledger(Protocol):
  """What the off-chain engine needs from the chain."""

  @property
  def num_participants(self) -> int:
    ...

  def addresses(self) -> list[str]:
    ...

  def stakes(self) -> np.ndarray:
    ...

  def start_round(self) -> Roles:
    ...

  def propose(self, i: int, h: bytes) -> None:
    ...

  def vote(
      self,
      j: int,
      candidate_hash: bytes,
      approve: bool | None = None,
      bits: tuple[bool, ...] | None = None,
  ) -> None:
    ...

  def finalize(self) -> Outcome:
    ...

  def block_hash(self) -> bytes:
    ...

  def boundary_mismatches(
      self, chain_round: int, global_hash: bytes, block_hash: bytes
  ) -> list[str]:
    ...

  def dump_state(self) -> bytes:
    """What a checkpoint must carry to continue on this ledger in a new process: the whole
    state of an in-process ledger, b'' when the chain outlives the process (a node)."""
    ...


def _boundary(
    what: str,
    current_round: int,
    round_open: bool,
    global_hash: bytes,
    chain_round: int,
    want_global: bytes,
) -> list[str]:
  out = []
  if round_open or current_round != chain_round:
    out.append(
        f"{what} is at round {current_round}{' (open)' if round_open else ''}, the "
        f"checkpoint was taken after round {chain_round} was finalized"
    )
  if global_hash != want_global:
    out.append(
        f"{what} global hash is 0x{global_hash.hex()}, the checkpoint names "
        f"0x{want_global.hex()}"
    )
  return out


class LedgerError(RuntimeError):
  """A call the contract would revert: says which call, who, and why."""


_LOCAL_MAGIC, _CHAIN_MAGIC = b"FLL1", b"FLC1"


class _SafeUnpickler(pickle.Unpickler):
  """Loads only plain data and flock_jax's own classes: a checkpoint is data, never code."""

  _MODULES = ("builtins", "collections", "numpy", "flock_jax.")

  def find_class(self, module, name):
    if module.startswith(self._MODULES) and not (module == "builtins" and name in _UNSAFE):
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a ledger state")


_UNSAFE = frozenset({"eval", "exec", "compile", "open", "__import__", "getattr", "setattr"})


def default_addresses(n: int, salt: bytes = b"flock_jax participant") -> list[str]:
  """n distinct deterministic 20-byte addresses."""
  return [to_checksum_address(keccak(salt + i.to_bytes(32, "big"))[-20:]) for i in range(n)]


def _ballot_args(per_proposal: bool, j: int, candidate_hash, approve, bits, n_props: int):
  """Validates a vote's arguments for the task's mode; returns the contract call's argument."""
  if per_proposal:
    if bits is None or len(bits) != n_props:
      raise LedgerError(
          f"vote: per-proposal mode needs {n_props} bits from participant {j}, " f"got {bits}"
      )
    return sum(1 << i for i, b in enumerate(bits) if b)
  if approve is None or candidate_hash in (None, ZERO_HASH):
    raise LedgerError(
        f"vote: whole-candidate mode needs a candidate hash and approve from " f"participant {j}"
    )
  return bool(approve)


class LocalLedger:
  """The FlockTask rules in process (no EVM): stakes, draw, commits, votes, settlement.

  Amounts are integer token base units. Token conservation holds after every
  call: `token_balance() == pool + sum(stakes) + sum(claimable)`.
  """

  def __init__(
      self,
      num_participants: int,
      *,
      num_proposers: int,
      num_voters: int,
      total_rounds: int,
      stakes: Sequence[int] | int = 100 * WEI,
      min_stake: int = 10 * WEI,
      slash_bps: int = 1_000,
      proposer_share_bps: int = 5_000,
      reward_pool: int = 1_000 * WEI,
      per_proposal: bool = False,
      stake_weighted_draw: bool = False,
      genesis_hash: bytes = ZERO_HASH,
      genesis_seed: bytes = TaskParams.genesis_seed,
      addresses: Sequence[str] | None = None,
  ):
    n = num_participants
    if num_proposers < 1 or num_voters < 1 or num_proposers + num_voters > n:
      raise LedgerError(
          f"need 1 <= P, 1 <= V and P + V <= N; got P={num_proposers}, " f"V={num_voters}, N={n}"
      )
    addrs = list(addresses) if addresses is not None else default_addresses(n)
    if len(addrs) != n or len({a.lower() for a in addrs}) != n:
      raise LedgerError(f"need {n} distinct addresses, got {addrs}")
    self._addresses = [to_checksum_address(a) for a in addrs]
    self._index = {a.lower(): i for i, a in enumerate(self._addresses)}
    st = [int(stakes)] * n if isinstance(stakes, (int, np.integer)) else [int(s) for s in stakes]
    if len(st) != n or any(s < 0 for s in st):
      raise LedgerError(f"stakes must be {n} non-negative integers, got {st}")
    self.per_proposal = per_proposal
    self.model = task_model.TaskModel(
        token="0x" + "00" * 20,
        owner="0x" + "00" * 19 + "01",
        total_rounds=total_rounds,
        num_proposers=num_proposers,
        num_voters=num_voters,
        min_stake=min_stake,
        slash_bps=slash_bps,
        proposer_share_bps=proposer_share_bps,
        vote_window=2**62,
        vote_mode=VOTE_PER_PROPOSAL if per_proposal else VOTE_WHOLE,
        selection_mode=SELECT_STAKE if stake_weighted_draw else SELECT_UNIFORM,
        genesis_hash=bytes(genesis_hash),
        genesis_seed=bytes(genesis_seed),
    )
    self.block_number = 0
    self.events: list[dict] = []
    self._do(self.model.fund, self.model.owner, int(reward_pool)) if reward_pool else None
    for a, s in zip(self._addresses, st):
      if s > 0:  # participants below the minimum are never registered, so never drawn
        self._do(self.model.stake_tokens, a, s) if s >= min_stake else None

  def _do(self, action, *args, block: bool = False) -> list[dict]:
    self.block_number += 1
    try:
      evs = action(*args, self.block_number) if block else action(*args)
    except task_model.ModelRevert as e:
      raise LedgerError(str(e)) from None
    self.events.extend(evs)
    return evs

  def _idx(self, address: str, default: int = -1) -> int:
    return self._index.get(address.lower(), default)

  # ---------------------------------------------------------------- views
  @property
  def num_participants(self) -> int:
    return len(self._addresses)

  def addresses(self) -> list[str]:
    return list(self._addresses)

  def stakes(self) -> np.ndarray:
    """Current stakes [N] as Python ints (object array: token units exceed int64)."""
    return np.array([self.model.stake.get(a, 0) for a in self._addresses], dtype=object)

  @property
  def pool(self) -> int:
    return self.model.pool

  @property
  def claimable(self) -> list[int]:
    return [self.model.claimable.get(a, 0) for a in self._addresses]

  @property
  def ejected(self) -> list[bool]:
    return [a in self.model.ejected for a in self._addresses]

  def token_balance(self) -> int:
    """Tokens the task holds: what was funded and staked, less withdrawals (none here)."""
    return sum(e["args"]["amount"] for e in self.events if e["event"] in ("Funded", "Staked"))

  def block_hash(self) -> bytes:
    """A deterministic stand-in for the latest block hash."""
    return keccak(
        b"block" + self.block_number.to_bytes(32, "big") + self.model.seed + self.model.global_hash
    )

  def boundary_mismatches(
      self, chain_round: int, global_hash: bytes, block_hash: bytes
  ) -> list[str]:
    """Why a checkpoint taken at this round boundary does not match this ledger ([] if it does)."""
    m = self.model
    out = _boundary(
        "the ledger", m.current_round, m.round_open, m.global_hash, chain_round, global_hash
    )
    if self.block_hash() != block_hash:
      out.append(
          f"the ledger's latest block is 0x{self.block_hash().hex()}, the checkpoint "
          f"names 0x{block_hash.hex()}"
      )
    return out

  def dump_state(self) -> bytes:
    """The whole ledger (the rules' state, events, block number) as bytes."""
    return _LOCAL_MAGIC + pickle.dumps(self.__dict__, protocol=5)

  @classmethod
  def from_state(cls, data: bytes) -> "LocalLedger":
    """The LocalLedger `dump_state` saved."""
    if not data.startswith(_LOCAL_MAGIC):
      raise LedgerError("the saved ledger state is not a LocalLedger's (bad magic)")
    try:
      d = _SafeUnpickler(io.BytesIO(data[len(_LOCAL_MAGIC) :])).load()
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
      raise LedgerError(f"the saved LocalLedger state is broken ({e})") from None
    ledger = cls.__new__(cls)
    ledger.__dict__.update(d)
    return ledger

  # ---------------------------------------------------------------- round
  def start_round(self) -> Roles:
    started, drawn = (e["args"] for e in self._do(self.model.start_round, block=True))
    h = lambda x: bytes.fromhex(x[2:])
    return Roles(
        round=started["round"],
        seed=h(started["seed"]),
        global_hash=h(started["global_hash"]),
        reward=started["reward"],
        deadline=started["deadline"],
        proposers=tuple(self._idx(a) for a in drawn["proposers"]),
        voters=tuple(self._idx(a) for a in drawn["voters"]),
        proposer_addresses=tuple(drawn["proposers"]),
        voter_addresses=tuple(drawn["voters"]),
    )

  def propose(self, i: int, h: bytes) -> None:
    self._do(self.model.propose, self._addresses[i], bytes(h), block=True)

  def vote(
      self,
      j: int,
      candidate_hash: bytes = ZERO_HASH,
      approve: bool | None = None,
      bits: tuple[bool, ...] | None = None,
  ) -> None:
    arg = _ballot_args(
        self.per_proposal, j, candidate_hash, approve, bits, len(self.model.proposers)
    )
    if self.per_proposal:
      self._do(self.model.vote_bits, self._addresses[j], arg, block=True)
    else:
      self._do(self.model.vote, self._addresses[j], bytes(candidate_hash), arg, block=True)

  def finalize(self) -> Outcome:
    proposers = list(self.model.proposers)
    hashes = [self.model.proposals.get(p) for p in proposers]
    if len(self.model.ballots) < len(self.model.voters):  # wait out the vote window
      self.block_number = max(self.block_number, self.model.deadline)
    evs = self._do(self.model.finalize, block=True)
    return outcome_from_events(
        evs,
        proposers,
        hashes,
        self._idx,
        self.model.vote_mode,
        self.block_number,
        self.block_hash(),
    )


class ChainLedger:
  """`Ledger` over a deployed FlockTask (`flock_jax.chain.FlockChain`)."""

  def __init__(self, chain):
    self.chain = chain
    self.per_proposal = chain.params.vote_mode == VOTE_PER_PROPOSAL
    self._num_proposers = chain.params.num_proposers

  @classmethod
  def deploy(
      cls,
      backend_config: dict,
      num_participants: int,
      params: TaskParams,
      stakes: int | Sequence[int],
  ) -> "ChainLedger":
    from flock_jax.chain import FlockChain

    chain = FlockChain.from_config(backend_config, num_participants)
    chain.deploy(params, stakes=stakes)
    return cls(chain)

  @classmethod
  def attach(cls, backend_config: dict, num_participants: int, task: str) -> "ChainLedger":
    """A ledger over a FlockTask deployed earlier (a resumed run)."""
    from flock_jax.chain import FlockChain

    chain = FlockChain.from_config(backend_config, num_participants)
    chain.attach(task)
    return cls(chain)

  @classmethod
  def from_state(cls, backend_config: dict, num_participants: int, data: bytes) -> "ChainLedger":
    """The ledger `dump_state` saved: the in-process chain rebuilt block for block, or the
    same task on the node (which kept its own state)."""
    if not data.startswith(_CHAIN_MAGIC):
      raise LedgerError("the saved ledger state is not a ChainLedger's (bad magic)")
    n = int.from_bytes(data[4:8], "big")
    try:
      head = json.loads(data[8 : 8 + n])
    except ValueError as e:
      raise LedgerError(f"the saved ChainLedger state is broken ({e})") from None
    config = dict(backend_config)
    if head["backend"] == "eth_tester":
      config["state"] = data[8 + n :]
    ledger = cls.attach(config, num_participants, head["task"])
    ledger._resume_round = head.get("roles")
    return ledger

  def dump_state(self) -> bytes:
    backend = self.chain.backend
    head = {"backend": backend.name, "task": self.chain.task.address}
    body = backend.dump_state() if backend.name == "eth_tester" else b""
    raw = json.dumps(head).encode()
    return _CHAIN_MAGIC + len(raw).to_bytes(4, "big") + raw + body

  @property
  def num_participants(self) -> int:
    return self.chain.num_participants

  def addresses(self) -> list[str]:
    return list(self.chain.addresses)

  def stakes(self) -> np.ndarray:
    return np.array(self.chain.stakes(), dtype=object)

  @property
  def pool(self) -> int:
    return self.chain.pool

  @property
  def claimable(self) -> list[int]:
    return list(self.chain.balances().claimable)

  def token_balance(self) -> int:
    """The task contract's balance of the stake token."""
    return self.chain.balances().token_balance

  def start_round(self) -> Roles:
    self._roles = self.chain.start_round()
    self._votes = 0
    return self._roles

  def propose(self, i: int, h: bytes) -> None:
    self.chain.propose(i, h)

  def vote(
      self,
      j: int,
      candidate_hash: bytes = ZERO_HASH,
      approve: bool | None = None,
      bits: tuple[bool, ...] | None = None,
  ) -> None:
    arg = _ballot_args(
        self.per_proposal, j, candidate_hash, approve, bits, len(self._roles.proposers)
    )
    if self.per_proposal:
      self.chain.vote_bits(j, arg)
    else:
      self.chain.vote(j, candidate_hash, arg)
    self._votes += 1

  def finalize(self) -> Outcome:
    if self._votes < len(self._roles.voters):  # a drawn voter stayed silent: wait out the window
      self.chain.mine(max(0, self._roles.deadline - self.chain.latest_block()[0] + 1))
    return self.chain.finalize()

  def block_hash(self) -> bytes:
    return self.chain.latest_block()[1]

  def boundary_mismatches(
      self, chain_round: int, global_hash: bytes, block_hash: bytes
  ) -> list[str]:
    """Why a checkpoint taken at this round boundary does not match the chain ([] if it does)."""
    c = self.chain
    out = _boundary(
        "the chain", c.current_round, c.round_open, c.global_hash, chain_round, global_hash
    )
    try:
      c.w3.eth.get_block(block_hash)
    except Exception:  # noqa: BLE001 (web3 raises BlockNotFound or a provider error)
      out.append(f"the chain has no block 0x{block_hash.hex()} that the checkpoint names")
    return out
