#pragma version ^0.4.3
"""
@title FlockTask
@notice One FLock training task (shared/PROTOCOL.md): stake, a per-round role
        draw from the on-chain seed, propose, vote, finalize and settle.
        Only hashes go on chain; adapters live in a content-addressed store.
@dev    Rounds are numbered 0..T-1. Token conservation holds after every
        transaction: token.balanceOf(self) == pool + total_staked + total_claimable.
        Every state change emits an event, so the run can be rebuilt from logs
        (flock_jax/chain/audit.py does so). docs/chain.md documents each rule.
"""

from ethereum.ercs import IERC20

MAX_PARTICIPANTS: constant(uint256) = 1024
MAX_PROPOSERS: constant(uint256) = 128
MAX_VOTERS: constant(uint256) = 128
MAX_ROLES: constant(uint256) = 256  # MAX_PROPOSERS + MAX_VOTERS
BPS: constant(uint256) = 10000

VOTE_WHOLE: constant(uint256) = 0         # paper: one vote on the whole candidate
VOTE_PER_PROPOSAL: constant(uint256) = 1  # extension: one approve bit per proposal
SELECT_UNIFORM: constant(uint256) = 0
SELECT_STAKE: constant(uint256) = 1

ROLE_PROPOSER: constant(uint256) = 1
ROLE_VOTER: constant(uint256) = 2

OUTCOME_ACCEPTED: constant(uint256) = 1
OUTCOME_REJECTED: constant(uint256) = 2
OUTCOME_VOID: constant(uint256) = 3  # no proposal or no vote: nothing to judge

SLASH_NO_PROPOSAL: constant(uint256) = 1
SLASH_REJECTED_PROPOSAL: constant(uint256) = 2
SLASH_NO_VOTE: constant(uint256) = 3
SLASH_WRONG_VOTE: constant(uint256) = 4
SLASH_WRONG_CANDIDATE: constant(uint256) = 5

struct Ballot:
    tag: uint256        # round + 1 once cast in that round
    candidate: bytes32  # whole-candidate mode: the candidate hash named
    approve: bool       # whole-candidate mode
    bits: uint256       # per-proposal mode: bit i approves proposers[i]

event TaskCreated:
    token: indexed(address)
    owner: indexed(address)
    total_rounds: uint256
    num_proposers: uint256
    num_voters: uint256
    min_stake: uint256
    slash_bps: uint256
    proposer_share_bps: uint256
    vote_window: uint256
    vote_mode: uint256
    selection_mode: uint256
    genesis_hash: bytes32
    genesis_seed: bytes32

event Funded:
    sender: indexed(address)
    amount: uint256
    pool: uint256

event Staked:
    participant: indexed(address)
    index: uint256
    amount: uint256
    stake: uint256

event Unstaked:
    participant: indexed(address)
    amount: uint256
    stake: uint256

event RoundStarted:
    round: indexed(uint256)
    seed: bytes32
    global_hash: bytes32
    reward: uint256
    deadline: uint256

event RolesDrawn:
    round: indexed(uint256)
    proposers: DynArray[address, MAX_PROPOSERS]
    voters: DynArray[address, MAX_VOTERS]

event Proposed:
    round: indexed(uint256)
    proposer: indexed(address)
    proposal_hash: bytes32

event Voted:
    round: indexed(uint256)
    voter: indexed(address)
    candidate: bytes32
    approve: bool
    bits: uint256
    weight: uint256

event Finalized:
    round: indexed(uint256)
    outcome: uint256
    candidate: bytes32
    global_hash: bytes32
    tally: int256
    approve_stake: uint256
    reject_stake: uint256
    num_proposals: uint256
    num_votes: uint256
    accepted_bits: uint256
    tallies: DynArray[int256, MAX_PROPOSERS]

event Rewarded:
    round: indexed(uint256)
    participant: indexed(address)
    amount: uint256
    role: uint256

event Slashed:
    round: indexed(uint256)
    participant: indexed(address)
    amount: uint256
    stake: uint256
    reason: uint256

event Ejected:
    round: indexed(uint256)
    participant: indexed(address)
    stake: uint256

event Claimed:
    participant: indexed(address)
    amount: uint256

event Withdrawn:
    participant: indexed(address)
    amount: uint256

event PoolDrained:
    receiver: indexed(address)
    amount: uint256

token: public(IERC20)
owner: public(address)
total_rounds: public(uint256)
num_proposers: public(uint256)
num_voters: public(uint256)
min_stake: public(uint256)
slash_bps: public(uint256)
proposer_share_bps: public(uint256)
vote_window: public(uint256)
vote_mode: public(uint256)
selection_mode: public(uint256)

pool: public(uint256)
total_staked: public(uint256)
total_claimable: public(uint256)

participants: public(DynArray[address, MAX_PARTICIPANTS])
index_plus_one: public(HashMap[address, uint256])  # 0 = never staked
stake_of: public(HashMap[address, uint256])
claimable: public(HashMap[address, uint256])
ejected: public(HashMap[address, bool])

next_round: public(uint256)   # rounds started so far
round_open: public(bool)
seed: public(bytes32)          # seed of the latest round (genesis seed before round 0)
global_hash: public(bytes32)   # hash of the global adapter G_r
round_reward: public(uint256)
deadline: public(uint256)      # last block at which propose and vote are accepted
num_proposals: public(uint256)
num_votes: public(uint256)
leader: public(bytes32)        # candidate hash named by the most voting stake
leader_weight: public(uint256)

proposers: DynArray[address, MAX_PROPOSERS]  # ascending address order
voters: DynArray[address, MAX_VOTERS]        # draw order
role_tag: HashMap[address, uint256]          # (round + 1) * 4 + role
proposal_tag: HashMap[address, uint256]      # round + 1 once proposed
proposal_of: public(HashMap[address, bytes32])
ballot_of: public(HashMap[address, Ballot])
candidate_weight: HashMap[uint256, HashMap[bytes32, uint256]]


@deploy
def __init__(
    token: IERC20,
    total_rounds: uint256,
    num_proposers: uint256,
    num_voters: uint256,
    min_stake: uint256,
    slash_bps: uint256,
    proposer_share_bps: uint256,
    vote_window: uint256,
    vote_mode: uint256,
    selection_mode: uint256,
    genesis_hash: bytes32,
    genesis_seed: bytes32,
):
    """@notice Create a task; fund its reward pool afterwards with `fund`."""
    assert total_rounds > 0, "init: total_rounds must be positive"
    assert num_proposers > 0 and num_proposers <= MAX_PROPOSERS, "init: num_proposers must be in 1..128"
    assert num_voters > 0 and num_voters <= MAX_VOTERS, "init: num_voters must be in 1..128"
    assert min_stake > 0, "init: min_stake must be positive"
    assert slash_bps <= BPS, "init: slash_bps must be at most 10000"
    assert proposer_share_bps <= BPS, "init: proposer_share_bps must be at most 10000"
    assert vote_window > 0, "init: vote_window must be positive"
    assert vote_mode <= VOTE_PER_PROPOSAL, "init: vote_mode must be 0 (whole) or 1 (per proposal)"
    assert selection_mode <= SELECT_STAKE, "init: selection_mode must be 0 (uniform) or 1 (stake)"
    self.token = token
    self.owner = msg.sender
    self.total_rounds = total_rounds
    self.num_proposers = num_proposers
    self.num_voters = num_voters
    self.min_stake = min_stake
    self.slash_bps = slash_bps
    self.proposer_share_bps = proposer_share_bps
    self.vote_window = vote_window
    self.vote_mode = vote_mode
    self.selection_mode = selection_mode
    self.global_hash = genesis_hash
    self.seed = genesis_seed
    log TaskCreated(token=token.address, owner=msg.sender, total_rounds=total_rounds,
                    num_proposers=num_proposers, num_voters=num_voters, min_stake=min_stake,
                    slash_bps=slash_bps, proposer_share_bps=proposer_share_bps,
                    vote_window=vote_window, vote_mode=vote_mode, selection_mode=selection_mode,
                    genesis_hash=genesis_hash, genesis_seed=genesis_seed)


# ---------------------------------------------------------------- views

@external
@view
def get_proposers() -> DynArray[address, MAX_PROPOSERS]:
    """@notice Proposers of the latest round, ascending by address."""
    return self.proposers


@external
@view
def get_voters() -> DynArray[address, MAX_VOTERS]:
    """@notice Voters of the latest round, in draw order."""
    return self.voters


@external
@view
def get_participants() -> DynArray[address, MAX_PARTICIPANTS]:
    """@notice Every account that ever staked, in registration order."""
    return self.participants


@external
@view
def accounts_of(who: DynArray[address, MAX_PARTICIPANTS]) -> (
        DynArray[uint256, MAX_PARTICIPANTS], DynArray[uint256, MAX_PARTICIPANTS], DynArray[bool, MAX_PARTICIPANTS]):
    """@notice Stake, claimable reward and ejection of each address, in one call."""
    stakes: DynArray[uint256, MAX_PARTICIPANTS] = []
    owed: DynArray[uint256, MAX_PARTICIPANTS] = []
    out: DynArray[bool, MAX_PARTICIPANTS] = []
    for a: address in who:
        stakes.append(self.stake_of[a])
        owed.append(self.claimable[a])
        out.append(self.ejected[a])
    return stakes, owed, out


@external
@view
def totals() -> (uint256, uint256, uint256, uint256, uint256, bool, bytes32):
    """@notice (token balance, pool, total_staked, total_claimable, next_round, round_open, global_hash)."""
    return (staticcall self.token.balanceOf(self), self.pool, self.total_staked, self.total_claimable,
            self.next_round, self.round_open, self.global_hash)


@external
@view
def current_proposal(proposer: address) -> bytes32:
    """@notice The hash `proposer` committed in the latest round (zero if none)."""
    if self.proposal_tag[proposer] == self.next_round:
        return self.proposal_of[proposer]
    return empty(bytes32)


@external
@view
def accounted() -> uint256:
    """@notice pool + total_staked + total_claimable: must equal the token balance."""
    return self.pool + self.total_staked + self.total_claimable


# ---------------------------------------------------------------- money in and out

@internal
def _pull(sender: address, amount: uint256):
    assert extcall self.token.transferFrom(sender, self, amount), "token: transferFrom failed"


@internal
def _push(receiver: address, amount: uint256):
    assert extcall self.token.transfer(receiver, amount), "token: transfer failed"


@internal
@view
def _assert_not_drawn(who: address, what: String[16]):
    if self.round_open:
        r: uint256 = self.next_round - 1
        assert self.role_tag[who] // 4 != r + 1, concat(
            what, ": drawn for the open round ", uint2str(r), "; wait until it is finalized")


@external
def fund(amount: uint256):
    """@notice Add `amount` tokens to the reward pool (anyone may)."""
    assert amount > 0, "fund: amount is zero"
    self._pull(msg.sender, amount)
    self.pool += amount
    log Funded(sender=msg.sender, amount=amount, pool=self.pool)


@external
def stake(amount: uint256):
    """@notice Add `amount` to the caller's stake; the first stake registers the caller."""
    assert amount > 0, "stake: amount is zero"
    assert not self.ejected[msg.sender], "stake: participant is ejected; withdraw the remainder"
    self._assert_not_drawn(msg.sender, "stake")
    new: uint256 = self.stake_of[msg.sender] + amount
    assert new >= self.min_stake, concat(
        "stake: stake ", uint2str(new), " is below the minimum stake ", uint2str(self.min_stake))
    if self.index_plus_one[msg.sender] == 0:
        assert len(self.participants) < MAX_PARTICIPANTS, "stake: participant limit reached"
        self.participants.append(msg.sender)
        self.index_plus_one[msg.sender] = len(self.participants)
    self._pull(msg.sender, amount)
    self.stake_of[msg.sender] = new
    self.total_staked += amount
    log Staked(participant=msg.sender, index=self.index_plus_one[msg.sender] - 1, amount=amount, stake=new)


@external
def unstake(amount: uint256):
    """@notice Take back `amount` of stake; what remains must be 0 or at least min_stake."""
    assert self.index_plus_one[msg.sender] != 0, "unstake: not a participant"
    assert not self.ejected[msg.sender], "unstake: participant is ejected; call withdraw"
    assert amount > 0, "unstake: amount is zero"
    have: uint256 = self.stake_of[msg.sender]
    assert amount <= have, concat("unstake: amount ", uint2str(amount), " exceeds stake ", uint2str(have))
    self._assert_not_drawn(msg.sender, "unstake")
    left: uint256 = have - amount
    assert left == 0 or left >= self.min_stake, concat(
        "unstake: remaining stake ", uint2str(left), " would be below the minimum ",
        uint2str(self.min_stake), "; unstake all or less")
    self.stake_of[msg.sender] = left
    self.total_staked -= amount
    self._push(msg.sender, amount)
    log Unstaked(participant=msg.sender, amount=amount, stake=left)


@external
def withdraw():
    """@notice An ejected participant takes back what remains of its stake."""
    assert self.ejected[msg.sender], "withdraw: participant is not ejected; use unstake"
    amount: uint256 = self.stake_of[msg.sender]
    assert amount > 0, "withdraw: nothing left to withdraw"
    self.stake_of[msg.sender] = 0
    self.total_staked -= amount
    self._push(msg.sender, amount)
    log Withdrawn(participant=msg.sender, amount=amount)


@external
def claim():
    """@notice Transfer the caller's accrued rewards to it."""
    amount: uint256 = self.claimable[msg.sender]
    assert amount > 0, "claim: nothing to claim"
    self.claimable[msg.sender] = 0
    self.total_claimable -= amount
    self._push(msg.sender, amount)
    log Claimed(participant=msg.sender, amount=amount)


@external
def drain_pool(receiver: address):
    """@notice After the last round, the owner may take what is left in the pool."""
    assert msg.sender == self.owner, "drain_pool: only the owner may drain the pool"
    assert self.next_round == self.total_rounds and not self.round_open, "drain_pool: rounds remain"
    amount: uint256 = self.pool
    self.pool = 0
    self._push(receiver, amount)
    log PoolDrained(receiver=receiver, amount=amount)


# ---------------------------------------------------------------- role draw

@internal
@view
def _draw(seed: bytes32) -> DynArray[address, MAX_ROLES]:
    """
    @notice Draw P + V distinct active participants; the first P are proposers.
    @dev    Pick k uses keccak256(seed, k) as a uint256. Uniform: index = x % m.
            Stake-weighted: the first candidate whose running stake sum
            exceeds x % total. The pick is removed by swapping in the last
            candidate (so the order of the remaining list is deterministic).
    """
    cands: DynArray[address, MAX_PARTICIPANTS] = []
    weights: DynArray[uint256, MAX_PARTICIPANTS] = []
    total: uint256 = 0
    s_min: uint256 = self.min_stake
    for i: uint256 in range(len(self.participants), bound=MAX_PARTICIPANTS):
        p: address = self.participants[i]
        s: uint256 = self.stake_of[p]
        if s >= s_min and not self.ejected[p]:
            cands.append(p)
            weights.append(s)
            total += s
    need: uint256 = self.num_proposers + self.num_voters
    assert len(cands) >= need, concat(
        "start_round: ", uint2str(len(cands)), " active participants, need P + V = ", uint2str(need))
    weighted: bool = self.selection_mode == SELECT_STAKE
    picked: DynArray[address, MAX_ROLES] = []
    for k: uint256 in range(need, bound=MAX_ROLES):
        x: uint256 = convert(keccak256(concat(seed, convert(k, bytes32))), uint256)
        m: uint256 = len(cands)
        j: uint256 = x % m
        if weighted:
            target: uint256 = x % total
            acc: uint256 = 0
            for i: uint256 in range(m, bound=MAX_PARTICIPANTS):
                acc += weights[i]
                if acc > target:
                    j = i
                    break
            total -= weights[j]
        picked.append(cands[j])
        cands[j] = cands[m - 1]
        weights[j] = weights[m - 1]
        cands.pop()
        weights.pop()
    return picked


@external
def start_round():
    """@notice Open the next round: derive its seed and draw its roles (anyone may)."""
    r: uint256 = self.next_round
    assert not self.round_open, concat("start_round: round ", uint2str(r - 1), " is still open; finalize it first")
    assert r < self.total_rounds, concat("start_round: all ", uint2str(self.total_rounds), " rounds are done")
    seed: bytes32 = keccak256(concat(self.seed, convert(r, bytes32), self.global_hash))
    picked: DynArray[address, MAX_ROLES] = self._draw(seed)
    n_p: uint256 = self.num_proposers
    tag: uint256 = (r + 1) * 4

    props: DynArray[address, MAX_PROPOSERS] = []
    for k: uint256 in range(n_p, bound=MAX_PROPOSERS):
        # insertion sort by address, so bit i of a vote names proposers[i]
        a: address = picked[k]
        props.append(a)
        i: uint256 = k
        for _: uint256 in range(k, bound=MAX_PROPOSERS):
            if convert(props[i - 1], uint256) < convert(a, uint256):
                break
            props[i] = props[i - 1]
            i -= 1
        props[i] = a
    vots: DynArray[address, MAX_VOTERS] = []
    for k: uint256 in range(n_p, n_p + self.num_voters, bound=MAX_VOTERS):
        vots.append(picked[k])
        self.role_tag[picked[k]] = tag + ROLE_VOTER
    for a: address in props:
        self.role_tag[a] = tag + ROLE_PROPOSER

    self.proposers = props
    self.voters = vots
    self.seed = seed
    self.next_round = r + 1
    self.round_open = True
    self.round_reward = self.pool // (self.total_rounds - r)
    self.deadline = block.number + self.vote_window
    self.num_proposals = 0
    self.num_votes = 0
    self.leader = empty(bytes32)
    self.leader_weight = 0
    log RoundStarted(round=r, seed=seed, global_hash=self.global_hash, reward=self.round_reward, deadline=self.deadline)
    log RolesDrawn(round=r, proposers=props, voters=vots)


# ---------------------------------------------------------------- propose and vote

@internal
@view
def _open_round(what: String[16]) -> uint256:
    assert self.round_open, concat(what, ": no round is open")
    return self.next_round - 1


@external
def propose(proposal_hash: bytes32):
    """@notice A drawn proposer commits the keccak256 hash of its adapter update."""
    r: uint256 = self._open_round("propose")
    assert self.role_tag[msg.sender] == (r + 1) * 4 + ROLE_PROPOSER, concat(
        "propose: not a drawn proposer for round ", uint2str(r))
    assert self.proposal_tag[msg.sender] != r + 1, concat("propose: already proposed in round ", uint2str(r))
    assert block.number <= self.deadline, concat(
        "propose: the window of round ", uint2str(r), " closed at block ", uint2str(self.deadline))
    assert self.num_votes == 0, concat("propose: voting has started in round ", uint2str(r))
    assert proposal_hash != empty(bytes32), "propose: proposal hash is zero"
    self.proposal_tag[msg.sender] = r + 1
    self.proposal_of[msg.sender] = proposal_hash
    self.num_proposals += 1
    log Proposed(round=r, proposer=msg.sender, proposal_hash=proposal_hash)


@internal
def _check_voter(what: String[16]) -> uint256:
    r: uint256 = self._open_round(what)
    assert self.role_tag[msg.sender] == (r + 1) * 4 + ROLE_VOTER, concat(
        what, ": not a drawn voter for round ", uint2str(r))
    assert self.ballot_of[msg.sender].tag != r + 1, concat(what, ": already voted in round ", uint2str(r))
    assert block.number <= self.deadline, concat(
        what, ": the window of round ", uint2str(r), " closed at block ", uint2str(self.deadline))
    assert self.num_proposals > 0, concat(what, ": no proposals yet in round ", uint2str(r))
    return r


@external
def vote(candidate: bytes32, approve: bool):
    """
    @notice Whole-candidate mode: a drawn voter approves or rejects the candidate
            it names. The round's candidate is the hash named by the most
            voting stake (earliest wins a tie); votes naming another hash
            count as wrong votes.
    """
    assert self.vote_mode == VOTE_WHOLE, "vote: this task uses per-proposal voting; call vote_bits"
    r: uint256 = self._check_voter("vote")
    assert candidate != empty(bytes32), "vote: candidate hash is zero"
    weight: uint256 = self.stake_of[msg.sender]
    self.ballot_of[msg.sender] = Ballot(tag=r + 1, candidate=candidate, approve=approve, bits=0)
    self.num_votes += 1
    w: uint256 = self.candidate_weight[r][candidate] + weight
    self.candidate_weight[r][candidate] = w
    if w > self.leader_weight:
        self.leader = candidate
        self.leader_weight = w
    log Voted(round=r, voter=msg.sender, candidate=candidate, approve=approve, bits=0, weight=weight)


@external
def vote_bits(bits: uint256):
    """
    @notice Per-proposal mode: bit i approves proposers[i] (ascending address
            order). Bits of proposers that did not propose are ignored.
    """
    assert self.vote_mode == VOTE_PER_PROPOSAL, "vote_bits: this task uses whole-candidate voting; call vote"
    r: uint256 = self._check_voter("vote_bits")
    assert bits >> len(self.proposers) == 0, concat(
        "vote_bits: a bit is set beyond the ", uint2str(len(self.proposers)), " proposers")
    weight: uint256 = self.stake_of[msg.sender]
    self.ballot_of[msg.sender] = Ballot(tag=r + 1, candidate=empty(bytes32), approve=False, bits=bits)
    self.num_votes += 1
    log Voted(round=r, voter=msg.sender, candidate=empty(bytes32), approve=False, bits=bits, weight=weight)


# ---------------------------------------------------------------- finalize and settle

@internal
def _slash(r: uint256, who: address, amount: uint256, reason: uint256):
    left: uint256 = self.stake_of[who] - amount
    self.stake_of[who] = left
    self.total_staked -= amount
    self.pool += amount
    log Slashed(round=r, participant=who, amount=amount, stake=left, reason=reason)
    if left < self.min_stake and not self.ejected[who]:
        self.ejected[who] = True
        log Ejected(round=r, participant=who, stake=left)


@internal
def _reward(r: uint256, who: address, amount: uint256, role: uint256):
    if amount == 0:
        return
    self.claimable[who] += amount
    self.total_claimable += amount
    self.pool -= amount
    log Rewarded(round=r, participant=who, amount=amount, role=role)


@external
def finalize():
    """
    @notice Close the open round once all drawn voters voted or its window has
            passed (anyone may, once), tally, and settle rewards and slashes.
    """
    r: uint256 = self._open_round("finalize")
    n_votes: uint256 = self.num_votes
    assert n_votes == len(self.voters) or block.number > self.deadline, concat(
        "finalize: round ", uint2str(r), " has ", uint2str(n_votes), " of ", uint2str(len(self.voters)),
        " votes and its window closes at block ", uint2str(self.deadline))
    self.round_open = False
    if self.vote_mode == VOTE_WHOLE:
        self._settle_whole(r)
    else:
        self._settle_per_proposal(r)


@internal
def _settle_whole(r: uint256):
    """@dev PROTOCOL.md step 6, one vote on the whole candidate."""
    tag: uint256 = r + 1
    lam: uint256 = self.slash_bps
    reward: uint256 = self.round_reward
    props: DynArray[address, MAX_PROPOSERS] = self.proposers
    vots: DynArray[address, MAX_VOTERS] = self.voters
    cand: bytes32 = self.leader
    void: bool = self.num_proposals == 0 or self.num_votes == 0

    # tally over the votes that name the round's candidate
    tally: int256 = 0
    yes: uint256 = 0
    no: uint256 = 0
    kinds: DynArray[uint256, MAX_VOTERS] = []  # 0 none, 1 approve, 2 reject, 3 other candidate
    stakes: DynArray[uint256, MAX_VOTERS] = []
    for v: address in vots:
        b: Ballot = self.ballot_of[v]
        s: uint256 = self.stake_of[v]
        stakes.append(s)
        if b.tag != tag:
            kinds.append(0)
        elif b.candidate != cand:
            kinds.append(3)
        elif b.approve:
            kinds.append(1)
            yes += s
        else:
            kinds.append(2)
            no += s
    tally = convert(yes, int256) - convert(no, int256)
    accepted: bool = not void and tally >= 0

    # proposers: paid in proportion to stake when accepted, slashed otherwise
    p_stakes: DynArray[uint256, MAX_PROPOSERS] = []
    p_total: uint256 = 0
    for p: address in props:
        s: uint256 = 0
        if self.proposal_tag[p] == tag:
            s = self.stake_of[p]
        p_stakes.append(s)
        p_total += s
    p_pot: uint256 = reward * self.proposer_share_bps // BPS
    for i: uint256 in range(len(props), bound=MAX_PROPOSERS):
        p: address = props[i]
        if p_stakes[i] == 0:
            self._slash(r, p, self.stake_of[p] * lam // BPS, SLASH_NO_PROPOSAL)
        elif accepted:
            self._reward(r, p, p_pot * p_stakes[i] // p_total, ROLE_PROPOSER)
        elif not void:
            self._slash(r, p, p_stakes[i] * lam // BPS, SLASH_REJECTED_PROPOSAL)

    # voters: the side that matches the outcome shares its pot by stake
    v_pot: uint256 = reward - p_pot
    win_total: uint256 = yes
    win_kind: uint256 = 1
    if not accepted:
        v_pot = reward
        win_total = no
        win_kind = 2
    for i: uint256 in range(len(vots), bound=MAX_VOTERS):
        v: address = vots[i]
        k: uint256 = kinds[i]
        s: uint256 = stakes[i]
        if k == 0:
            if self.num_proposals > 0:
                self._slash(r, v, s * lam // BPS, SLASH_NO_VOTE)
        elif k == 3:
            self._slash(r, v, s * lam // BPS, SLASH_WRONG_CANDIDATE)
        elif void:
            pass
        elif k == win_kind:
            self._reward(r, v, v_pot * s // win_total, ROLE_VOTER)
        else:
            self._slash(r, v, s * lam // BPS, SLASH_WRONG_VOTE)

    no_tallies: DynArray[int256, MAX_PROPOSERS] = []
    outcome: uint256 = OUTCOME_VOID
    if accepted:
        outcome = OUTCOME_ACCEPTED
        self.global_hash = cand
    elif not void:
        outcome = OUTCOME_REJECTED
    log Finalized(round=r, outcome=outcome, candidate=cand, global_hash=self.global_hash, tally=tally,
                  approve_stake=yes, reject_stake=no, num_proposals=self.num_proposals,
                  num_votes=self.num_votes, accepted_bits=convert(accepted, uint256), tallies=no_tallies)


@internal
def _settle_per_proposal(r: uint256):
    """
    @dev Per-proposal extension: each proposal has its own stake-weighted tally
         and an equal share R_r // n of the round reward. A voter wrong on w of
         the n proposals is slashed lambda * s * w / n. The new global hash is
         the chain hash g = keccak256(g, h_i) over accepted h_i in proposer order.
    """
    tag: uint256 = r + 1
    lam: uint256 = self.slash_bps
    props: DynArray[address, MAX_PROPOSERS] = self.proposers
    vots: DynArray[address, MAX_VOTERS] = self.voters
    n: uint256 = self.num_proposals
    void: bool = n == 0 or self.num_votes == 0
    share: uint256 = 0
    if n > 0:
        share = self.round_reward // n
    p_pot: uint256 = share * self.proposer_share_bps // BPS

    stakes: DynArray[uint256, MAX_VOTERS] = []
    bitss: DynArray[uint256, MAX_VOTERS] = []
    voted: DynArray[bool, MAX_VOTERS] = []
    for v: address in vots:
        b: Ballot = self.ballot_of[v]
        stakes.append(self.stake_of[v])
        bitss.append(b.bits)
        voted.append(b.tag == tag)
    earn: DynArray[uint256, MAX_VOTERS] = []
    wrong: DynArray[uint256, MAX_VOTERS] = []
    for v: address in vots:
        earn.append(0)
        wrong.append(0)

    tallies: DynArray[int256, MAX_PROPOSERS] = []
    accepted_bits: uint256 = 0
    g: bytes32 = self.global_hash
    for i: uint256 in range(len(props), bound=MAX_PROPOSERS):
        p: address = props[i]
        if self.proposal_tag[p] != tag:
            tallies.append(0)
            self._slash(r, p, self.stake_of[p] * lam // BPS, SLASH_NO_PROPOSAL)
            continue
        yes: uint256 = 0
        no: uint256 = 0
        for j: uint256 in range(len(vots), bound=MAX_VOTERS):
            if voted[j]:
                if (bitss[j] >> i) & 1 == 1:
                    yes += stakes[j]
                else:
                    no += stakes[j]
        t: int256 = convert(yes, int256) - convert(no, int256)
        tallies.append(t)
        if void:
            continue
        ok: bool = t >= 0
        pot: uint256 = share - p_pot
        win_total: uint256 = yes
        if ok:
            accepted_bits |= 1 << i
            g = keccak256(concat(g, self.proposal_of[p]))
            self._reward(r, p, p_pot, ROLE_PROPOSER)
        else:
            pot = share
            win_total = no
            self._slash(r, p, self.stake_of[p] * lam // BPS, SLASH_REJECTED_PROPOSAL)
        for j: uint256 in range(len(vots), bound=MAX_VOTERS):
            if voted[j]:
                if ((bitss[j] >> i) & 1 == 1) == ok:
                    earn[j] += pot * stakes[j] // win_total
                else:
                    wrong[j] += 1

    for j: uint256 in range(len(vots), bound=MAX_VOTERS):
        v: address = vots[j]
        if not voted[j]:
            if n > 0:
                self._slash(r, v, stakes[j] * lam // BPS, SLASH_NO_VOTE)
            continue
        self._reward(r, v, earn[j], ROLE_VOTER)
        if wrong[j] > 0:
            self._slash(r, v, stakes[j] * lam * wrong[j] // (BPS * n), SLASH_WRONG_VOTE)

    outcome: uint256 = OUTCOME_VOID
    if not void:
        outcome = OUTCOME_REJECTED
        if accepted_bits != 0:
            outcome = OUTCOME_ACCEPTED
            self.global_hash = g
    log Finalized(round=r, outcome=outcome, candidate=g, global_hash=self.global_hash, tally=0,
                  approve_stake=0, reject_stake=0, num_proposals=n, num_votes=self.num_votes,
                  accepted_bits=accepted_bits, tallies=tallies)
