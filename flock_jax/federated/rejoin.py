"""Continue a run on a JSON-RPC node after a kill anywhere, even when the chain moved on.

A node outlives the process: a run killed after a round was finalized but before its
checkpoint, or in the middle of a round, restarts from a checkpoint that is behind the chain.
`RejoinLedger` lets the same round loop continue from there:

- a round the chain already finalized is replayed: the off-chain work is recomputed (the run
  is deterministic) and every commitment it would send is checked against the one on chain
  (a mismatch means the restarted run is not the run that committed: it stops, saying so);
  roles, reveals and the outcome are read from the round's events, nothing is sent;
- the open round is rejoined: roles come from the chain, a participant whose commitment or
  reveal is already on chain does not send it again (its salt is re-derived: salts are a
  function of the client's secret, the participant, the round and the data), what is missing
  is sent while its phase is open, then the round is finalized;
- from the next round on it is a plain ChainLedger.

Salts, ballots and proposals are the ones the uninterrupted run would have made, so the
chain ends in the state that run would have left, except for what time alone decides on a
live node (block hashes, hence later draws, and windows that passed while the run was down).
"""

from __future__ import annotations

from typing import Sequence

from flock_jax.chain.model import proposal_commitment, vote_commitment
from flock_jax.chain.types import (
    PHASE_COMMIT,
    PHASE_REVEAL,
    PHASE_VOTE,
    PHASE_VOTE_REVEAL,
    ZERO_HASH,
    Outcome,
    Roles,
    outcome_from_events,
)
from flock_jax.federated.ledger import ChainLedger, LedgerError, _ballot_args

LIVE, OPEN, DONE = "live", "open", "done"


def _h(x) -> bytes:
  return x if isinstance(x, bytes) else bytes.fromhex(str(x).removeprefix("0x"))


class RejoinLedger(ChainLedger):
  """A ChainLedger that replays finalized rounds and rejoins the open one (see module doc)."""

  def __init__(self, chain, next_round: int):
    super().__init__(chain)
    self.next_round = int(next_round)  # the round the run plays next
    self.mode = LIVE
    self._evs: list[dict] = []

  # ---------------------------------------------------------------- helpers
  def _round_events(self, r: int) -> list[dict]:
    return [e for e in self.chain.events() if e["args"].get("round") == r]

  def _first(self, name: str, r: int | None = None) -> dict | None:
    evs = self._evs if r is None else self._round_events(r)
    return next((e for e in evs if e["event"] == name), None)

  def _by_sender(self, name: str, key: str) -> dict[str, dict]:
    return {e["args"][key].lower(): e["args"] for e in self._evs if e["event"] == name}

  def _addr(self, i: int) -> str:
    return self.chain.addresses[i]

  # ---------------------------------------------------------------- checkpoint vs chain
  def boundary_mismatches(
      self, chain_round: int, global_hash: bytes, block_hash: bytes
  ) -> list[str]:
    """[] when the checkpoint is at the chain's boundary, or behind it on the chain's own
    history (round `chain_round` finalized with this global hash, later rounds on chain)."""
    exact = super().boundary_mismatches(chain_round, global_hash, block_hash)
    if not exact:
      return []
    c = self.chain
    if c.current_round <= chain_round:
      return exact
    if chain_round < 0:
      created = next((e for e in c.events() if e["event"] == "TaskCreated"), None)
      had = _h(created["args"]["genesis_hash"]) if created else None
    else:
      fin = self._first("Finalized", chain_round)
      had = _h(fin["args"]["global_hash"]) if fin else None
    if had != global_hash:
      return exact + [
          f"and the chain's global hash after round {chain_round} was "
          f"{'0x' + had.hex() if had else 'never set'}, not the checkpoint's"
      ]
    return []

  # ---------------------------------------------------------------- the round
  def start_round(self) -> Roles:
    c, r = self.chain, self.next_round
    now, is_open = c.current_round, c.round_open
    if r > now or (r == now and not is_open and self._first("Finalized", r) is None):
      self.mode = LIVE
      return super().start_round()
    self.mode = OPEN if (r == now and is_open) else DONE
    self._evs = self._round_events(r)
    started, drawn = self._first("RoundStarted"), self._first("RolesDrawn")
    if started is None:
      raise LedgerError(f"resume: round {r} is on chain but has no RoundStarted event")
    if drawn is None:  # killed between start_round and draw_roles
      roles = self.chain.draw_roles()
      self._evs = self._round_events(r)
    else:
      roles = self.chain._roles(started["args"], drawn["args"])
    self._roles = roles
    return roles

  def propose(self, i: int, h: bytes) -> None:
    if self.mode == LIVE:
      return super().propose(i, h)
    r, addr = self.next_round, self._addr(i)
    salt = self.chain.salt(i, r, "proposal", h)
    on_chain = self._by_sender("ProposalCommitted", "proposer").get(addr.lower())
    if on_chain is not None:
      if _h(on_chain["commitment"]) != proposal_commitment(addr, r, h, salt):
        raise LedgerError(
            f"resume: participant {i}'s recomputed proposal of round {r} (0x{h.hex()}) is not "
            "the one it committed on chain: this is not the run that committed (another config "
            "or code?); continue it with what made it, or start a new run elsewhere"
        )
      self.chain._proposals[(r, i)] = (h, salt)
    elif self.mode == OPEN and self.chain.phase()[0] == PHASE_COMMIT:
      super().propose(i, h)

  def reveal_proposals(self, ids: Sequence[int]) -> dict[int, bytes]:
    if self.mode == LIVE:
      return super().reveal_proposals(ids)
    if self.mode == OPEN:
      c = self.chain
      c.advance_to(PHASE_REVEAL)
      done = c.revealed()
      if c.phase()[0] == PHASE_REVEAL:
        for i in ids:
          if i not in done and (self.next_round, i) in c._proposals:
            c.reveal_proposal(i)
      c.advance_to(PHASE_VOTE)
      self._evs = self._round_events(self.next_round)
    index = {a.lower(): k for k, a in enumerate(self.chain.addresses)}
    return {
        index.get(e["args"]["proposer"].lower(), -1): _h(e["args"]["proposal_hash"])
        for e in self._evs
        if e["event"] == "Proposed"
    }

  def vote(
      self,
      j: int,
      candidate_hash: bytes = ZERO_HASH,
      approve: bool | None = None,
      bits: tuple[bool, ...] | None = None,
      invalid: tuple[bool, ...] | None = None,
  ) -> None:
    if self.mode == LIVE:
      return super().vote(j, candidate_hash, approve, bits, invalid)
    from flock_jax.chain.client import as_hash, bits_of

    r, addr = self.next_round, self._addr(j)
    cand, ok, b, inv = _ballot_args(
        self.per_proposal, j, candidate_hash, approve, bits, invalid, len(self._roles.proposers)
    )
    ballot = (as_hash(cand), bool(ok), bits_of(b), bits_of(inv))
    salt = self.chain.salt(j, r, "vote")
    on_chain = self._by_sender("VoteCommitted", "voter").get(addr.lower())
    if on_chain is not None:
      if _h(on_chain["commitment"]) != vote_commitment(addr, r, *ballot, salt):
        raise LedgerError(
            f"resume: participant {j}'s recomputed ballot of round {r} is not the one it "
            "committed on chain: this is not the run that voted (another config or code?)"
        )
      self.chain._ballots[(r, j)] = (*ballot, salt)
    elif self.mode == OPEN and self.chain.phase()[0] == PHASE_VOTE:
      self.chain.commit_vote(j, *ballot)

  def finalize(self) -> Outcome:
    r = self.next_round
    self.next_round += 1
    if self.mode == LIVE:
      return super().finalize()
    c = self.chain
    if self.mode == OPEN:
      if c.phase()[0] <= PHASE_VOTE_REVEAL:
        c.advance_to(PHASE_VOTE_REVEAL)
        revealed = {
            e["args"]["voter"].lower() for e in self._round_events(r) if e["event"] == "Voted"
        }
        if c.phase()[0] == PHASE_VOTE_REVEAL:
          for rr, j in list(c._ballots):
            if rr == r and self._addr(j).lower() not in revealed:
              c.reveal_vote(j)
      out = c.finalize(reveal=False)
      self.mode = LIVE
      return out
    # DONE: the outcome as the chain recorded it
    self.mode = LIVE
    fin = self._first("Finalized")
    if fin is None:
      raise LedgerError(f"resume: round {r} has no Finalized event")
    drawn = self._first("RolesDrawn")["args"]
    proposers = list(drawn["proposers"])
    revealed = {
        e["args"]["proposer"].lower(): _h(e["args"]["proposal_hash"])
        for e in self._evs
        if e["event"] == "Proposed"
    }
    block = c.w3.eth.get_block(fin["block"])
    self._done_block = bytes(block["hash"])
    index = {a.lower(): k for k, a in enumerate(c.addresses)}
    return outcome_from_events(
        self._evs,
        proposers,
        tuple(revealed.get(p.lower()) for p in proposers),
        lambda a, d=-1: index.get(a.lower(), d),
        c.params.vote_mode if c.params is not None else 0,
        int(fin["block"]),
        self._done_block,
    )

  def block_hash(self) -> bytes:
    """The block the last finalize was mined in (a replayed round: the recorded one)."""
    done = getattr(self, "_done_block", None)
    if done is not None:
      self._done_block = None
      return done
    return super().block_hash()
