"""The chain as the simulator sees it: the `Ledger` protocol and its two implementations.

The round function (flock_jax/federated/rounds.py) talks to the chain only
through `Ledger`: it reads the roles the chain drew, commits hashes, reveals
them, commits votes and reads the outcome. It never decides roles or
outcomes itself. Protocol v2 (docs/PROTOCOL.md):

    roles = ledger.start_round()             # start_round + draw_roles
    ledger.propose(i, h)                     # commit (the ledger keeps the salt)
    revealed = ledger.reveal_proposals(ids)  # each listed proposer reveals; {i: h} as on chain
    ledger.vote(j, candidate_hash, approve=..., bits=..., invalid=...)   # commit
    outcome = ledger.finalize()              # reveals the votes, waits out windows, settles

A proposer that withholds its reveal is simply not listed in `reveal_proposals`.

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
    PHASE_DONE,
    PHASE_REVEAL,
    PHASE_VOTE,
    PHASE_VOTE_REVEAL,
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

  def reveal_proposals(self, ids: Sequence[int]) -> dict[int, bytes]:
    ...

  def vote(
      self,
      j: int,
      candidate_hash: bytes,
      approve: bool | None = None,
      bits: tuple[bool, ...] | None = None,
      invalid: tuple[bool, ...] | None = None,
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

  def gas_used(self) -> int | None:
    """Gas of every transaction this process sent through the ledger so far (None: no EVM)."""
    ...

  def active_participants(self) -> int:
    """Accounts that can still be drawn: staked at least the minimum and not ejected."""
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


def _ballot_args(
    per_proposal: bool, j: int, candidate_hash, approve, bits, invalid, n_props: int
) -> tuple[bytes, bool, int, int]:
  """Validates a vote's arguments for the task's mode; returns the ballot
  (candidate, approve, bits, invalid) that is committed and later revealed."""
  if invalid is not None and len(invalid) != n_props:
    raise LedgerError(
        f"vote: invalid needs one flag per proposer ({n_props}) from participant {j}, got {invalid}"
    )
  inv = sum(1 << i for i, b in enumerate(invalid or ()) if b)
  if per_proposal:
    if bits is None or len(bits) != n_props:
      raise LedgerError(
          f"vote: per-proposal mode needs {n_props} bits from participant {j}, got {bits}"
      )
    return ZERO_HASH, False, sum(1 << i for i, b in enumerate(bits) if b), inv
  if approve is None or candidate_hash in (None, ZERO_HASH):
    raise LedgerError(
        f"vote: whole-candidate mode needs a candidate hash and approve from participant {j}"
    )
  return bytes(candidate_hash), bool(approve), 0, inv


class LocalLedger:
  """The FlockTask rules in process (no EVM): stakes, draw, commit-reveal, votes, settlement.

  Blocks are counted, not mined: waiting out a phase window moves the block
  number to the window's end. The hash of block n (which seeds a draw) is a
  deterministic stand-in, keccak of n and the state it follows.

  Amounts are integer token base units. Token conservation holds after every
  call: `token_balance() == pool + sum(stakes) + sum(claimable)`.
  """

  WINDOW = 1_000  # blocks per phase; only the order of events matters here

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
        vote_window=self.WINDOW,
        vote_mode=VOTE_PER_PROPOSAL if per_proposal else VOTE_WHOLE,
        selection_mode=SELECT_STAKE if stake_weighted_draw else SELECT_UNIFORM,
        genesis_hash=bytes(genesis_hash),
        genesis_seed=bytes(genesis_seed),
    )
    self.block_number = 0
    self.events: list[dict] = []
    self._salts: dict[tuple[int, int], tuple] = {}  # (round, i) -> what it committed, and its salt
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

  def gas_used(self) -> None:
    return None  # the FlockTask rules in Python: no EVM, no gas

  def active_participants(self) -> int:
    return len(self.model.participants)

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
  def _block_hash_of(self, n: int) -> bytes:
    return keccak(b"flock_jax local block" + n.to_bytes(32, "big") + self.model.global_hash)

  def _salt(self, i: int, kind: str) -> bytes:
    r = self.model.current_round
    return keccak(
        b"flock_jax local salt"
        + self._addresses[i].encode()
        + r.to_bytes(32, "big")
        + kind.encode()
    )

  def _wait(self, phase: int) -> None:
    """Let blocks pass until the open round is in `phase` or later."""
    for _ in range(8):
      ph, end = self.model.phase_at(self.block_number + 1)
      if ph >= phase or ph == 0:
        return
      self.block_number = max(self.block_number, end)

  def start_round(self) -> Roles:
    (started,) = (e["args"] for e in self._do(self.model.start_round, block=True))
    seed_hash = self._block_hash_of(self.model.seed_block)
    (drawn,) = (e["args"] for e in self._do(self.model.draw_roles, seed_hash, block=True))
    h = lambda x: bytes.fromhex(x[2:])
    return Roles(
        round=started["round"],
        seed=h(drawn["seed"]),
        global_hash=h(started["global_hash"]),
        reward=started["reward"],
        deadline=drawn["commit_end"],
        proposers=tuple(self._idx(a) for a in drawn["proposers"]),
        voters=tuple(self._idx(a) for a in drawn["voters"]),
        proposer_addresses=tuple(drawn["proposers"]),
        voter_addresses=tuple(drawn["voters"]),
    )

  def propose(self, i: int, h: bytes) -> None:
    """Commit proposer i's hash (the ledger keeps the salt for its reveal)."""
    r, a, salt = self.model.current_round, self._addresses[i], self._salt(i, "proposal")
    c = task_model.proposal_commitment(a, r, bytes(h), salt)
    self._do(self.model.commit_proposal, a, c, block=True)
    self._salts[(r, i)] = (bytes(h), salt)

  def reveal_proposals(self, ids: Sequence[int]) -> dict[int, bytes]:
    r = self.model.current_round
    self._wait(PHASE_REVEAL)
    for i in ids:
      if (r, i) not in self._salts:
        raise LedgerError(f"reveal_proposals: participant {i} committed nothing in round {r}")
      h, salt = self._salts[(r, i)]
      self._do(self.model.reveal_proposal, self._addresses[i], h, salt, block=True)
    self._wait(PHASE_VOTE)
    return {self._idx(a): h for a, h in self.model.proposals.items()}

  def vote(
      self,
      j: int,
      candidate_hash: bytes = ZERO_HASH,
      approve: bool | None = None,
      bits: tuple[bool, ...] | None = None,
      invalid: tuple[bool, ...] | None = None,
  ) -> None:
    """Commit voter j's ballot (revealed by `finalize`)."""
    ballot = _ballot_args(
        self.per_proposal, j, candidate_hash, approve, bits, invalid, len(self.model.proposers)
    )
    r, a, salt = self.model.current_round, self._addresses[j], self._salt(j, "vote")
    c = task_model.vote_commitment(a, r, *ballot, salt)
    self._do(self.model.commit_vote, a, c, block=True)
    self._salts[(r, j)] = (*ballot, salt)

  def finalize(self) -> Outcome:
    m = self.model
    r = m.current_round
    proposers = list(m.proposers)
    self._wait(PHASE_VOTE_REVEAL)
    if m.phase_at(self.block_number + 1)[0] == PHASE_VOTE_REVEAL:
      for j, v in enumerate(self._addresses):
        if v in m.voters and v in m.commitments and (r, j) in self._salts:
          self._do(m.reveal_vote, v, *self._salts[(r, j)], block=True)
    self._wait(PHASE_DONE)
    hashes = [m.proposals.get(p) for p in proposers]
    evs = self._do(m.finalize, block=True)
    self._salts = {k: v for k, v in self._salts.items() if k[0] != r}
    return outcome_from_events(
        evs,
        proposers,
        hashes,
        self._idx,
        m.vote_mode,
        self.block_number,
        self.block_hash(),
    )


class ChainLedger:
  """`Ledger` over a deployed FlockTask (`flock_jax.chain.FlockChain`)."""

  def __init__(self, chain):
    self.chain = chain
    self.per_proposal = chain.params.vote_mode == VOTE_PER_PROPOSAL
    self._num_proposers = chain.params.num_proposers
    self._roles: Roles | None = None  # the round drawn through this ledger

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

  def gas_used(self) -> int:
    return sum(gas for _, gas, _ in self.chain.gas_log)

  def active_participants(self) -> int:
    # Listed <=> stake >= min_stake: a slash below it ejects, and an ejected account cannot
    # stake again. The stakes come from the log-synced mirror (no N-account read a round).
    floor = self.chain.params.min_stake
    return sum(1 for s in self.chain.stakes() if s >= floor)

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
    return self._roles

  def propose(self, i: int, h: bytes) -> None:
    r = self._roles.round if self._roles else None
    self.chain.commit_proposal(i, h, round_index=r)

  def reveal_proposals(self, ids: Sequence[int]) -> dict[int, bytes]:
    return self.chain.reveal_proposals(ids)

  def vote(
      self,
      j: int,
      candidate_hash: bytes = ZERO_HASH,
      approve: bool | None = None,
      bits: tuple[bool, ...] | None = None,
      invalid: tuple[bool, ...] | None = None,
  ) -> None:
    ballot = _ballot_args(
        self.per_proposal, j, candidate_hash, approve, bits, invalid, len(self._roles.proposers)
    )
    self.chain.commit_vote(j, *ballot, round_index=self._roles.round)

  def finalize(self) -> Outcome:
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
