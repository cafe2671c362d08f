"""`FlockChain`: the one interface the rest of flock_jax uses to talk to the chain.

Participants are named by index ``i = 0..N-1``; participant i sends from
``addresses[i]`` (= backend account ``i + 1``; account 0 is the deployer,
owner of the task and holder of the token's fixed supply). `index_of`
inverts the mapping.

Protocol v2 (docs/PROTOCOL.md): a round is start_round + draw_roles, then
four phases: proposal commit, proposal reveal, vote commit, vote reveal.
The client keeps each simulated participant's salts (derived from
`salt_secret`, so runs reproduce), so a round reads:

    chain = FlockChain.from_config({"backend": "eth_tester"}, num_participants=8)
    chain.deploy(TaskParams(total_rounds=3, num_proposers=2, num_voters=3), stakes=100 * WEI)
    roles = chain.start_round()                       # start_round, then draw_roles a block later
    for i in roles.proposers: chain.propose(i, h[i])  # commit keccak(sender, round, h, salt)
    chain.reveal_proposals(roles.proposers)           # waits for the reveal phase, reveals
    for j in roles.voters: chain.vote(j, candidate_hash, approve=True)   # commit
    outcome = chain.finalize()                        # reveals the votes, waits, finalizes
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
from .model import proposal_commitment, vote_commitment
from .types import (
    PHASE_COMMIT,
    PHASE_DONE,
    PHASE_NAMES,
    PHASE_REVEAL,
    PHASE_VOTE,
    PHASE_VOTE_REVEAL,
    VOTE_PER_PROPOSAL,
    VOTE_WHOLE,
    WEI,
    ZERO_HASH,
    Balances,
    Outcome,
    Roles,
    TaskParams,
    outcome_from_events,
)

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
    "commit_proposal": 150_000,
    "reveal_proposal": 150_000,
    "commit_vote": 150_000,
    "reveal_vote": 250_000,
    "drain_pool": 150_000,
    "close": 100_000,
}
MAX_UINT = 2**256 - 1
SUPPLY = 10**9 * WEI  # default fixed supply of a StakeToken this client deploys
SALT_SECRET = b"flock_jax simulated participants"
# The events that change a stake; each but Withdrawn (which leaves 0) carries the new stake.
_STAKE_EVENTS = ("Staked", "Unstaked", "Slashed", "Withdrawn")


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

  def __init__(self, backend: Backend, num_participants: int, salt_secret: bytes = SALT_SECRET):
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
    self._stake_mirror: dict | None = None  # stakes() kept in step with the logs
    self._big_gas = min(int(self.w3.eth.get_block("latest")["gasLimit"]) - 100_000, 29_000_000)
    self.last_receipt: Any = None  # receipt of the latest transaction sent
    self.logic: Any = None
    self.salt_secret = bytes(salt_secret)
    self._proposals: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (round, i) -> (hash, salt)
    self._ballots: dict[tuple[int, int], tuple] = (
        {}
    )  # (round, j) -> (cand, approve, bits, invalid, salt)

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
      supply: int = SUPPLY,
  ) -> None:
    """Deploy a token (its whole fixed `supply` to the deployer), FlockLogic and a task,
    fund the pool, and set participants up.

    Each participant i is given ``mint[i]`` tokens from the deployer (default: its
    stake), approves the task, and stakes ``stakes[i]`` if positive.
    """
    self.token = self._deploy("StakeToken", ["FLock Stake", "FLS", supply])
    self.logic = self._deploy("FlockLogic", [])
    self.task = self._deploy(
        "FlockTask",
        [
            self.token.address,
            self.logic.address,
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
    self.logic = self.w3.eth.contract(
        address=self._fn.logic().call(), abi=load_contract("FlockLogic").abi
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
    one a `FlockFactory` created): participant i is given ``mint[i]`` tokens
    from the deployer (default: its stake),
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
    """Give `address` stake tokens from the deployer's fixed supply (no token can be minted)."""
    self._send(
        "transfer", self.token.functions.transfer(address, amount), self.deployer, GAS["transfer"]
    )

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
  def open_round(self, sender: str | None = None) -> dict:
    """`start_round`: open the next round and freeze the participant set; returns
    the RoundStarted arguments (its block seeds the draw)."""
    r = self._send("start_round", self._fn.start_round(), sender or self.deployer)
    started = next(e["args"] for e in self._events(r) if e["event"] == "RoundStarted")
    # what this client committed in earlier (or reverted) rounds is of no use any more
    self._proposals = {k: v for k, v in self._proposals.items() if k[0] < started["round"]}
    self._ballots = {k: v for k, v in self._ballots.items() if k[0] < started["round"]}
    return started

  def draw_roles(self, sender: str | None = None) -> Roles:
    """`draw_roles` (a block after `open_round`): the roles the contract drew."""
    r = self._send("draw_roles", self._fn.draw_roles(), sender or self.deployer)
    drawn = next(e["args"] for e in self._events(r) if e["event"] == "RolesDrawn")
    started = self._last("RoundStarted")
    return self._roles(started, drawn)

  def start_round(self, sender: str | None = None) -> Roles:
    """Open the next round and draw its roles (two transactions, two blocks)."""
    self.open_round(sender)
    return self.draw_roles(sender)

  def _last(self, name: str) -> dict:
    evs = [e for e in self.events(self._round_from()) if e["event"] == name]
    if not evs:
      raise ChainError(f"no {name} event on the task yet")
    return evs[-1]["args"]

  def _round_from(self) -> int:
    """First block of the latest round (its seed block), 0 before any round."""
    return int(self._call(self._fn.seed_block()))

  def _roles(self, started: dict, drawn: dict) -> Roles:
    idx = self._index.get
    return Roles(
        round=started["round"],
        seed=as_hash(drawn["seed"]),
        global_hash=as_hash(started["global_hash"]),
        reward=started["reward"],
        deadline=drawn["commit_end"],
        proposers=tuple(idx(a, -1) for a in drawn["proposers"]),
        voters=tuple(idx(a, -1) for a in drawn["voters"]),
        proposer_addresses=tuple(drawn["proposers"]),
        voter_addresses=tuple(drawn["voters"]),
    )

  def roles(self) -> Roles:
    """Roles of the latest drawn round, read from its events."""
    return self._roles(self._last("RoundStarted"), self._last("RolesDrawn"))

  def phase(self) -> tuple[int, int]:
    """(phase, its last block) of the open round (types.PHASE_*; 0 when none is open), as
    the next transaction sees it (the pending block)."""
    ph, end = self._fn.current_phase().call({"from": self.deployer}, "pending")
    return int(ph), int(end)

  def advance_to(self, phase: int) -> None:
    """Mine empty blocks until the open round is in `phase` or later (never past a
    phase someone could still act in before `phase`)."""
    for _ in range(8):
      ph, end = self.phase()
      if ph >= phase or ph == 0:
        return
      self.mine(max(1, end - self.latest_block()[0]))
    raise ChainError(f"advance_to: the round did not reach phase {PHASE_NAMES[phase]}")

  def salt(self, i: int, round_index: int, kind: str, data: bytes = b"") -> bytes:
    """Participant i's salt for one commitment: keccak(secret ‖ address ‖ round ‖ kind ‖ data).
    Deterministic so a simulated run reproduces; a real participant draws it at random."""
    return keccak(
        self.salt_secret
        + bytes.fromhex(self._who(i)[2:])
        + round_index.to_bytes(32, "big")
        + kind.encode()
        + data
    )

  def commit_proposal(
      self,
      i: int,
      proposal_hash: bytes | str,
      salt: bytes | None = None,
      commitment=None,
      round_index: int | None = None,
  ) -> bytes:
    """Drawn proposer i commits keccak(sender ‖ round ‖ h ‖ salt); returns the salt (kept
    for `reveal_proposal`). `commitment` overrides what is sent (tests of bad commits).
    `round_index`: the open round when the caller knows it (saves a read; a wrong one makes
    the reveal fail)."""
    h = as_hash(proposal_hash)
    r = self.current_round if round_index is None else round_index
    salt = self.salt(i, r, "proposal", h) if salt is None else as_hash(salt)
    c = proposal_commitment(self._who(i), r, h, salt) if commitment is None else as_hash(commitment)
    self._send(
        "commit_proposal",
        self._fn.commit_proposal(c),
        self._who(i),
        GAS["commit_proposal"],
        f"participant {i}",
    )
    self._proposals[(r, i)] = (h, salt)
    return salt

  propose = commit_proposal

  def reveal_proposal(
      self,
      i: int,
      proposal_hash: bytes | str | None = None,
      salt: bytes | None = None,
      round_index: int | None = None,
  ) -> None:
    """Proposer i reveals its committed hash (by default the one this client committed)."""
    r = self.current_round if round_index is None else round_index
    h0, s0 = self._proposals.get((r, i), (None, None))
    h = as_hash(proposal_hash) if proposal_hash is not None else h0
    salt = as_hash(salt) if salt is not None else s0
    if h is None or salt is None:
      raise ChainError(f"reveal_proposal: participant {i} committed nothing through this client")
    self._send(
        "reveal_proposal",
        self._fn.reveal_proposal(h, salt),
        self._who(i),
        GAS["reveal_proposal"],
        f"participant {i}",
    )

  def reveal_proposals(self, ids: Sequence[int]) -> dict[int, bytes]:
    """Wait for the reveal phase, reveal each listed proposer's commitment, then wait
    for the vote phase. Returns {i: h} of every proposal revealed on chain this round."""
    self.advance_to(PHASE_REVEAL)
    r = self.current_round
    for i in ids:
      self.reveal_proposal(i, round_index=r)
    self.advance_to(PHASE_VOTE)
    return self.revealed()

  def revealed(self) -> dict[int, bytes]:
    """{participant index: hash} of the proposals revealed in the latest round."""
    r = self.current_round
    return {
        self._index.get(e["args"]["proposer"], -1): as_hash(e["args"]["proposal_hash"])
        for e in self.events(self._round_from())
        if e["event"] == "Proposed" and e["args"]["round"] == r
    }

  def commit_vote(
      self,
      i: int,
      candidate: bytes | str = ZERO_HASH,
      approve: bool = False,
      bits: int | Sequence[bool] = 0,
      invalid: int | Sequence[bool] = 0,
      salt: bytes | None = None,
      round_index: int | None = None,
  ) -> bytes:
    """Drawn voter i commits its ballot (kept with its salt for `reveal_vote`);
    `round_index` as in `commit_proposal`."""
    r = self.current_round if round_index is None else round_index
    ballot = (as_hash(candidate), bool(approve), bits_of(bits), bits_of(invalid))
    if salt is None:
      salt = self.salt(i, r, "vote")
    c = vote_commitment(self._who(i), r, *ballot, as_hash(salt))
    self._send(
        "commit_vote", self._fn.commit_vote(c), self._who(i), GAS["commit_vote"], f"participant {i}"
    )
    self._ballots[(r, i)] = (*ballot, as_hash(salt))
    return salt

  def vote(
      self,
      i: int,
      candidate_hash: bytes | str,
      approve: bool,
      invalid: int | Sequence[bool] = 0,
  ) -> None:
    """Whole mode: voter i commits approve/reject of the candidate it names."""
    self.commit_vote(i, candidate_hash, approve, 0, invalid)

  def vote_bits(
      self, i: int, bits: int | Sequence[bool], invalid: int | Sequence[bool] = 0
  ) -> None:
    """Per-proposal mode: voter i commits bit k = approve ``roles.proposers[k]``."""
    self.commit_vote(i, ZERO_HASH, False, bits, invalid)

  def reveal_vote(self, i: int, *ballot_and_salt, round_index: int | None = None) -> None:
    """Voter i reveals (candidate, approve, bits, invalid, salt); default: what it committed."""
    r = self.current_round if round_index is None else round_index
    args = ballot_and_salt or self._ballots.get((r, i))
    if not args:
      raise ChainError(f"reveal_vote: participant {i} committed nothing through this client")
    cand, approve, bits, invalid, salt = args
    self._send(
        "reveal_vote",
        self._fn.reveal_vote(as_hash(cand), bool(approve), bits, invalid, as_hash(salt)),
        self._who(i),
        GAS["reveal_vote"],
        f"participant {i}",
    )

  def reveal_votes(self, ids: Sequence[int] | None = None) -> None:
    """Wait for the vote-reveal phase; reveal the listed (default: every) vote this client
    committed in the open round."""
    self.advance_to(PHASE_VOTE_REVEAL)
    r = self.current_round
    if ids is None:
      ids = [j for (rr, j) in self._ballots if rr == r]
    for j in ids:
      self.reveal_vote(j, round_index=r)

  def finalize(self, sender: str | None = None, reveal: bool = True) -> Outcome:
    """Settle the open round: reveal the votes this client committed (unless `reveal`
    is False), wait out the remaining windows, and call `finalize`."""
    ph = self.phase()[0]
    if reveal and PHASE_COMMIT <= ph <= PHASE_VOTE_REVEAL:
      if any(rr == self.current_round for rr, _ in self._ballots):
        self.reveal_votes()
    self.advance_to(PHASE_DONE)
    return self.finalize_now(sender)

  def finalize_now(self, sender: str | None = None) -> Outcome:
    """Call `finalize` at this block (reverts unless every phase has ended)."""
    f = self._fn
    proposers = list(self._call(f.get_proposers()))
    revealed = self.revealed()
    hashes = tuple(revealed.get(self._index.get(p, -1)) for p in proposers)
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

  def close(self, sender: str | None = None) -> None:
    """Close the task (anyone: after the last round, or with fewer than P + V active)."""
    self._send("close", self._fn.close(), sender or self.deployer, GAS["close"])

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
    """Stake of every participant, by index.

    The first call reads every account at one block (N storage reads). Later calls apply
    the task's stake-changing events since that block, each of which carries the new stake
    (Staked, Unstaked, Slashed; Withdrawn leaves 0): a round's read costs its events, not
    N reads. A block that no longer has the hash it was read at (a revert or reorg), another
    task, another account list or a node that refuses the log query (some cap its block
    range) starts over with a whole read."""
    head = self.w3.eth.get_block("latest")
    number, block_hash = int(head["number"]), bytes(head["hash"])
    key = (self.task.address, self.addresses)
    m = self._stake_mirror
    if m is not None and (
        m["key"] != key
        or m["block"] > number
        or bytes(self.w3.eth.get_block(m["block"])["hash"]) != m["hash"]
    ):
      m = None
    events: list[dict] = []
    if m is not None and number > m["block"]:
      try:
        raw = self.w3.eth.get_logs(
            {
                "address": self.task.address,
                "fromBlock": m["block"] + 1,
                "toBlock": number,
                "topics": [self.decoder.topics_of(_STAKE_EVENTS)],
            }
        )
      except Exception:  # noqa: BLE001 - a node may cap eth_getLogs' range: read it all
        m = None
      else:
        raw = sorted(raw, key=lambda lg: (int(lg["blockNumber"]), int(lg["logIndex"])))
        events = self.decoder.decode_all(raw)
    if m is None:
      stakes = self._fn.accounts_of(list(self.addresses)).call({"from": self.deployer}, number)[0]
      m = {"key": key, "stakes": dict(zip(self.addresses, map(int, stakes)))}
    for e in events:
      who = e["args"]["participant"]
      if who in m["stakes"]:
        m["stakes"][who] = 0 if e["event"] == "Withdrawn" else int(e["args"]["stake"])
    m.update(block=number, hash=block_hash)
    self._stake_mirror = m
    return [m["stakes"][a] for a in self.addresses]

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

  def final_state(self) -> dict:
    """The task's state now, in `audit.state_of`'s form, plus the block it was read at and
    the token balance: every account that ever staked (from the logs) with its stake,
    claimable reward and ejection."""
    number, block_hash = self.latest_block()
    f, at = self._fn, {"from": self.deployer}
    accounts = sorted({e["args"]["participant"] for e in self.events() if e["event"] == "Staked"})
    stakes, owed, out = f.accounts_of(accounts).call(at, number) if accounts else ([], [], [])
    balance, pool, staked, claimable, next_round, round_open, g = f.totals().call(at, number)
    return {
        "block": number,
        "block_hash": "0x" + block_hash.hex(),
        "round": next_round,
        "round_open": round_open,
        "closed": f.closed().call(at, number),
        "global_hash": "0x" + bytes(g).hex(),
        "pool": pool,
        "total_staked": staked,
        "total_claimable": claimable,
        "token_balance": balance,
        "accounts": {a: [s, c, bool(e)] for a, s, c, e in zip(accounts, stakes, owed, out)},
    }

  def export_logs(self, path: str | None = None) -> dict:
    """All events plus addresses, the participant mapping and the anchor `final` (the
    chain's last block and the task's whole state there), JSON-ready; written to `path`
    when given. `flock_jax.chain.audit` reads it and checks its replay against `final`."""
    final = self.final_state()
    export = {
        "format": logs_mod.LOG_FORMAT,
        "chain_id": self.backend.chain_id,
        "token": self.token.address,
        "task": self.task.address,
        "participants": list(self.addresses),
        "latest_block": final["block"],
        "final": final,
        "events": [e for e in self.events() if e["block"] <= final["block"]],
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
