"""The chain as the simulator sees it: a small `Ledger` protocol, and `LocalLedger`.

The round function (flock_jax/federated/rounds.py) talks to the chain only
through `Ledger`: it reads the roles the chain drew, commits hashes, casts
votes and reads the outcome. It never decides roles or outcomes itself.

`LocalLedger` is a pure-Python stand-in, a line-by-line port of the rules of
contracts/FlockTask.vy (PROTOCOL.md steps 1, 5, 6 and per-proposal voting):

- rounds are numbered 0..T-1; `seed_r = keccak256(seed_{r-1} || uint256(r) || globalHash_r)`;
- pick k of the P + V roles: `x = keccak256(seed_r || uint256(k))`, index
  `x % m` into the active participants (stake >= s_min, not ejected, in
  index order), removed by swapping in the last; the first P are the
  proposers (listed in ascending address order), the next V the voters;
- whole-candidate tally over the votes naming the round's candidate (the
  hash named by the most voting stake, earliest first on a tie); votes
  naming another hash are wrong votes; accept iff S >= 0; void (no outcome,
  nothing paid) when no proposal or no vote came;
- settlement in integer token units, lambda and rho in basis points; the
  per-proposal global hash is the chain `g = keccak256(g || h_i)` over the
  accepted proposals' hashes, as on chain.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from eth_utils import keccak

BPS = 10_000
WEI = 10**18
ZERO_HASH = b"\x00" * 32


@dataclasses.dataclass(frozen=True)
class Roles:
  """Round `round`'s roles: participant indices; proposers in ascending address order."""
  round: int
  proposers: tuple[int, ...]
  voters: tuple[int, ...]
  seed: bytes
  global_hash: bytes = ZERO_HASH
  reward: int = 0


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What finalize decided. `proposal_accepted[i]` refers to roles.proposers[i]."""
  round: int
  accepted: bool
  tally: int
  global_hash: bytes | None
  proposal_accepted: tuple[bool, ...] | None = None
  void: bool = False
  proposal_tallies: tuple[int, ...] = ()
  rewards: dict = dataclasses.field(default_factory=dict)
  slashes: dict = dataclasses.field(default_factory=dict)
  ejected: tuple[int, ...] = ()


@runtime_checkable
class Ledger(Protocol):
  """What the off-chain engine needs from the chain (flock_jax/chain implements it too)."""

  @property
  def num_participants(self) -> int: ...

  def addresses(self) -> list[str]: ...

  def stakes(self) -> np.ndarray: ...

  def start_round(self) -> Roles: ...

  def propose(self, i: int, h: bytes) -> None: ...

  def vote(self, j: int, candidate_hash: bytes, approve: bool | None = None,
           bits: tuple[bool, ...] | None = None) -> None: ...

  def finalize(self) -> Outcome: ...

  def block_hash(self) -> bytes: ...


class LedgerError(RuntimeError):
  """A call the contract would revert: says which call, who, and why."""


def _u256(x: int) -> bytes:
  return int(x).to_bytes(32, "big")


def default_addresses(n: int, salt: bytes = b"flock_jax participant") -> list[str]:
  """n distinct deterministic 20-byte addresses (checksum-free lowercase hex)."""
  return ["0x" + keccak(salt + _u256(i))[-20:].hex() for i in range(n)]


class LocalLedger:
  """In-process FlockTask: stakes, role draw, commits, votes, tally and settlement.

  Amounts are integer token base units (18 decimals by default). Token
  conservation holds after every call: `token_balance() == pool + sum(stakes)
  + sum(claimable)`.
  """

  def __init__(self, num_participants: int, *, num_proposers: int, num_voters: int,
               total_rounds: int, stakes: Sequence[int] | int = 100 * WEI,
               min_stake: int = 10 * WEI, slash_bps: int = 1_000,
               proposer_share_bps: int = 5_000, reward_pool: int = 1_000 * WEI,
               per_proposal: bool = False, stake_weighted_draw: bool = False,
               genesis_hash: bytes = ZERO_HASH,
               genesis_seed: bytes = b"flock_jax genesis seed".ljust(32, b"\x00"),
               addresses: Sequence[str] | None = None):
    n = num_participants
    if num_proposers < 1 or num_voters < 1 or num_proposers + num_voters > n:
      raise LedgerError(f"need 1 <= P, 1 <= V and P + V <= N; got P={num_proposers}, "
                        f"V={num_voters}, N={n}")
    self._addresses = list(addresses) if addresses is not None else default_addresses(n)
    if len(self._addresses) != n or len(set(a.lower() for a in self._addresses)) != n:
      raise LedgerError(f"need {n} distinct addresses, got {self._addresses}")
    st = [int(stakes)] * n if isinstance(stakes, (int, np.integer)) else [int(s) for s in stakes]
    if len(st) != n or any(s < 0 for s in st):
      raise LedgerError(f"stakes must be {n} non-negative integers, got {st}")
    self.P, self.V, self.T = num_proposers, num_voters, total_rounds
    self.min_stake, self.slash_bps, self.rho_bps = min_stake, slash_bps, proposer_share_bps
    self.per_proposal, self.stake_weighted = per_proposal, stake_weighted_draw
    self.stake_of = st
    self.claimable = [0] * n
    self.ejected = [s < min_stake for s in st]
    self.pool = int(reward_pool)
    self.seed = bytes(genesis_seed)
    self.global_hash = bytes(genesis_hash)
    self.next_round = 0
    self.round_open = False
    self.block_number = 0
    self.events: list[tuple] = []
    self._roles: Roles | None = None
    self._proposals: dict[int, bytes] = {}
    self._ballots: dict[int, tuple[bytes, bool, int]] = {}

  # ---------------------------------------------------------------- views
  @property
  def num_participants(self) -> int:
    return len(self._addresses)

  def addresses(self) -> list[str]:
    return list(self._addresses)

  def stakes(self) -> np.ndarray:
    """Current stakes [N] as Python ints (object array: token units exceed int64)."""
    return np.array(self.stake_of, dtype=object)

  def token_balance(self) -> int:
    return self.pool + sum(self.stake_of) + sum(self.claimable)

  def block_hash(self) -> bytes:
    """A deterministic stand-in for the latest block hash."""
    return keccak(b"block" + _u256(self.block_number) + self.seed + self.global_hash)

  def _tx(self, *event):
    self.block_number += 1
    self.events.append(event)

  # ---------------------------------------------------------------- round
  def _draw(self, seed: bytes) -> list[int]:
    cands = [i for i in range(self.num_participants)
             if self.stake_of[i] >= self.min_stake and not self.ejected[i]]
    weights = [self.stake_of[i] for i in cands]
    need = self.P + self.V
    if len(cands) < need:
      raise LedgerError(f"start_round: {len(cands)} active participants, need P + V = {need}")
    total = sum(weights)
    picked = []
    for k in range(need):
      x = int.from_bytes(keccak(seed + _u256(k)), "big")
      m = len(cands)
      j = x % m
      if self.stake_weighted:
        target, acc = x % total, 0
        for i in range(m):
          acc += weights[i]
          if acc > target:
            j = i
            break
        total -= weights[j]
      picked.append(cands[j])
      cands[j], weights[j] = cands[m - 1], weights[m - 1]
      cands.pop()
      weights.pop()
    return picked

  def start_round(self) -> Roles:
    r = self.next_round
    if self.round_open:
      raise LedgerError(f"start_round: round {r - 1} is still open; finalize it first")
    if r >= self.T:
      raise LedgerError(f"start_round: all {self.T} rounds are done")
    seed = keccak(self.seed + _u256(r) + self.global_hash)
    picked = self._draw(seed)
    addr = lambda i: int(self._addresses[i], 16)
    proposers = tuple(sorted(picked[:self.P], key=addr))
    voters = tuple(picked[self.P:])
    self.seed, self.next_round, self.round_open = seed, r + 1, True
    reward = self.pool // (self.T - r)
    self._roles = Roles(r, proposers, voters, seed, self.global_hash, reward)
    self._proposals, self._ballots = {}, {}
    self._tx("RoundStarted", r, seed, proposers, voters)
    return self._roles

  def _open(self, what: str) -> Roles:
    if not self.round_open or self._roles is None:
      raise LedgerError(f"{what}: no round is open")
    return self._roles

  def propose(self, i: int, h: bytes) -> None:
    roles = self._open("propose")
    if i not in roles.proposers:
      raise LedgerError(f"propose: participant {i} is not a drawn proposer of round {roles.round}")
    if i in self._proposals:
      raise LedgerError(f"propose: participant {i} already proposed in round {roles.round}")
    if len(h) != 32 or h == ZERO_HASH:
      raise LedgerError(f"propose: participant {i} sent a bad hash {h!r}")
    self._proposals[i] = bytes(h)
    self._tx("Proposed", roles.round, i, h)

  def vote(self, j: int, candidate_hash: bytes = ZERO_HASH, approve: bool | None = None,
           bits: tuple[bool, ...] | None = None) -> None:
    roles = self._open("vote")
    if j not in roles.voters:
      raise LedgerError(f"vote: participant {j} is not a drawn voter of round {roles.round}")
    if j in self._ballots:
      raise LedgerError(f"vote: participant {j} already voted in round {roles.round}")
    if self.per_proposal:
      if bits is None or len(bits) != len(roles.proposers):
        raise LedgerError(f"vote: per-proposal mode needs {len(roles.proposers)} bits from "
                          f"participant {j}, got {bits}")
      mask = sum(1 << i for i, b in enumerate(bits) if b)
      self._ballots[j] = (ZERO_HASH, False, mask)
    else:
      if approve is None or candidate_hash in (None, ZERO_HASH):
        raise LedgerError(f"vote: whole-candidate mode needs a candidate hash and approve from "
                          f"participant {j}")
      self._ballots[j] = (bytes(candidate_hash), bool(approve), 0)
    self._tx("Voted", roles.round, j, candidate_hash, approve, bits)

  # ---------------------------------------------------------------- settle
  def _slash(self, who: int, amount: int, slashes: dict, ejected: list):
    self.stake_of[who] -= amount
    self.pool += amount
    slashes[who] = slashes.get(who, 0) + amount
    if self.stake_of[who] < self.min_stake and not self.ejected[who]:
      self.ejected[who] = True
      ejected.append(who)

  def _reward(self, who: int, amount: int, rewards: dict):
    if amount:
      self.claimable[who] += amount
      self.pool -= amount
      rewards[who] = rewards.get(who, 0) + amount

  def finalize(self) -> Outcome:
    roles = self._open("finalize")
    self.round_open = False
    out = self._settle_per_proposal(roles) if self.per_proposal else self._settle_whole(roles)
    self._tx("Finalized", out)
    return out

  def _settle_whole(self, roles: Roles) -> Outcome:
    lam, reward = self.slash_bps, roles.reward
    rewards, slashes, ejected = {}, {}, []
    weight: dict[bytes, int] = {}
    leader, lead_w = ZERO_HASH, 0
    for v in roles.voters:  # the candidate: most voting stake, earliest on a tie
      if v in self._ballots:
        h = self._ballots[v][0]
        weight[h] = weight.get(h, 0) + self.stake_of[v]
        if weight[h] > lead_w:
          leader, lead_w = h, weight[h]
    void = not self._proposals or not self._ballots
    kinds, stakes, yes, no = [], [], 0, 0
    for v in roles.voters:
      s = self.stake_of[v]
      stakes.append(s)
      b = self._ballots.get(v)
      if b is None:
        kinds.append(0)
      elif b[0] != leader:
        kinds.append(3)
      elif b[1]:
        kinds.append(1)
        yes += s
      else:
        kinds.append(2)
        no += s
    tally = yes - no
    accepted = not void and tally >= 0
    p_stakes = [self.stake_of[p] if p in self._proposals else 0 for p in roles.proposers]
    p_total = sum(p_stakes)
    p_pot = reward * self.rho_bps // BPS
    for p, ps in zip(roles.proposers, p_stakes):
      if ps == 0:
        self._slash(p, self.stake_of[p] * lam // BPS, slashes, ejected)
      elif accepted:
        self._reward(p, p_pot * ps // p_total, rewards)
      elif not void:
        self._slash(p, ps * lam // BPS, slashes, ejected)
    v_pot, win_total, win_kind = (reward - p_pot, yes, 1) if accepted else (reward, no, 2)
    for v, k, s in zip(roles.voters, kinds, stakes):
      if k == 0:
        if self._proposals:
          self._slash(v, s * lam // BPS, slashes, ejected)
      elif k == 3:
        self._slash(v, s * lam // BPS, slashes, ejected)
      elif void:
        pass
      elif k == win_kind:
        self._reward(v, v_pot * s // win_total, rewards)
      else:
        self._slash(v, s * lam // BPS, slashes, ejected)
    if accepted:
      self.global_hash = leader
    return Outcome(roles.round, accepted, tally, self.global_hash, None, void, (),
                   rewards, slashes, tuple(ejected))

  def _settle_per_proposal(self, roles: Roles) -> Outcome:
    lam = self.slash_bps
    n = len(self._proposals)
    void = n == 0 or not self._ballots
    share = roles.reward // n if n else 0
    p_pot = share * self.rho_bps // BPS
    rewards, slashes, ejected = {}, {}, []
    stakes = [self.stake_of[v] for v in roles.voters]
    voted = [v in self._ballots for v in roles.voters]
    bitss = [self._ballots[v][2] if v in self._ballots else 0 for v in roles.voters]
    earn, wrong = [0] * len(roles.voters), [0] * len(roles.voters)
    tallies, accepted_bits, g = [], [], self.global_hash
    for i, p in enumerate(roles.proposers):
      if p not in self._proposals:
        tallies.append(0)
        accepted_bits.append(False)
        self._slash(p, self.stake_of[p] * lam // BPS, slashes, ejected)
        continue
      yes = sum(s for s, ok, b in zip(stakes, voted, bitss) if ok and (b >> i) & 1)
      no = sum(s for s, ok, b in zip(stakes, voted, bitss) if ok and not (b >> i) & 1)
      t = yes - no
      tallies.append(t)
      if void:
        accepted_bits.append(False)
        continue
      ok_i = t >= 0
      accepted_bits.append(ok_i)
      pot, win_total = share - p_pot, yes
      if ok_i:
        g = keccak(g + self._proposals[p])
        self._reward(p, p_pot, rewards)
      else:
        pot, win_total = share, no
        self._slash(p, self.stake_of[p] * lam // BPS, slashes, ejected)
      for j in range(len(roles.voters)):
        if voted[j]:
          if bool((bitss[j] >> i) & 1) == ok_i:
            earn[j] += pot * stakes[j] // win_total
          else:
            wrong[j] += 1
    for j, v in enumerate(roles.voters):
      if not voted[j]:
        if n > 0:
          self._slash(v, stakes[j] * lam // BPS, slashes, ejected)
        continue
      self._reward(v, earn[j], rewards)
      if wrong[j]:
        self._slash(v, stakes[j] * lam * wrong[j] // (BPS * n), slashes, ejected)
    any_ok = any(accepted_bits)
    if not void and any_ok:
      self.global_hash = g
    return Outcome(roles.round, (not void) and any_ok, sum(tallies), self.global_hash,
                   tuple(accepted_bits), void, tuple(tallies), rewards, slashes, tuple(ejected))
