#pragma version ^0.4.3
#pragma optimize codesize
"""
@title FlockTask (protocol v2)
@notice One FLock training task (docs/PROTOCOL.md): stake, a per-round role
        draw from a seed fixed after the participant set is frozen, then four
        phases with their own windows (proposal commit, proposal reveal, vote
        commit, vote reveal), finalize and settle. Only hashes go on chain;
        adapters live in a content-addressed store.
@dev    Rounds are numbered 0..T-1. Token conservation holds after every
        transaction: token.balanceOf(self) == pool + total_staked + total_claimable.
        The draw and the settlement arithmetic live in FlockLogic (pure), so
        that this contract fits EIP-170. docs/chain.md documents each rule.
"""

from ethereum.ercs import IERC20

interface FlockLogic:
    def pick(seed: bytes32, weights: DynArray[uint256, 1024], n: uint256, need: uint256) -> DynArray[uint256, 128]: pure
    def settle(vote_mode: uint256, reward: uint256, rho: uint256, lam: uint256, global_hash: bytes32,
               p_state: DynArray[uint256, 64], p_hash: DynArray[bytes32, 64], p_stake: DynArray[uint256, 64],
               v_state: DynArray[uint256, 64], v_stake: DynArray[uint256, 64], v_cand: DynArray[bytes32, 64],
               v_approve: DynArray[bool, 64], v_bits: DynArray[uint256, 64], v_invalid: DynArray[uint256, 64]
               ) -> (bytes32[2], uint256[7], int256, DynArray[uint256, 256], DynArray[uint256, 256],
                     DynArray[int256, 64]): pure
    def check_params(total_rounds: uint256, num_proposers: uint256, num_voters: uint256, min_stake: uint256,
                     slash_bps: uint256, proposer_share_bps: uint256, vote_window: uint256, vote_mode: uint256,
                     selection_mode: uint256) -> bool: pure

MAX_PARTICIPANTS: constant(uint256) = 1024
MAX_PROPOSERS: constant(uint256) = 64
MAX_VOTERS: constant(uint256) = 64
MAX_ROLES: constant(uint256) = 128
MAX_HOLDINGS: constant(uint256) = 2 ** 128  # pool + stakes + claimable: no product of two amounts overflows
BPS: constant(uint256) = 10000

VOTE_PER_PROPOSAL: constant(uint256) = 1
SELECT_STAKE: constant(uint256) = 1

# phases of the open round
DRAW: constant(uint256) = 1         # started, set frozen, waiting for draw_roles
COMMIT: constant(uint256) = 2       # proposers commit keccak(sender, round, hash, salt)
REVEAL: constant(uint256) = 3       # proposers reveal (hash, salt)
VOTE: constant(uint256) = 4         # voters commit keccak(sender, round, ballot, salt)
VOTE_REVEAL: constant(uint256) = 5  # voters reveal
DONE: constant(uint256) = 6         # finalize may run

event TaskCreated:
    token: indexed(address)
    owner: indexed(address)
    logic: address
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
    global_hash: bytes32
    reward: uint256
    seed_block: uint256

event RolesDrawn:
    round: indexed(uint256)
    seed: bytes32
    seed_block_hash: bytes32
    proposers: DynArray[address, MAX_PROPOSERS]
    voters: DynArray[address, MAX_VOTERS]
    commit_end: uint256

event ProposalCommitted:
    round: indexed(uint256)
    proposer: indexed(address)
    commitment: bytes32

event Proposed:
    round: indexed(uint256)
    proposer: indexed(address)
    proposal_hash: bytes32
    salt: bytes32

event VoteCommitted:
    round: indexed(uint256)
    voter: indexed(address)
    commitment: bytes32

event Voted:
    round: indexed(uint256)
    voter: indexed(address)
    candidate: bytes32
    approve: bool
    bits: uint256
    invalid: uint256
    salt: bytes32
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
    invalid_bits: uint256
    duplicate_bits: uint256
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

event TaskClosed:
    pool: uint256
    active: uint256

event PoolDrained:
    receiver: indexed(address)
    amount: uint256

token: public(IERC20)
logic: public(FlockLogic)
owner: public(address)
total_rounds: public(uint256)
num_proposers: public(uint256)
num_voters: public(uint256)
min_stake: public(uint256)
slash_bps: public(uint256)
proposer_share_bps: public(uint256)
vote_window: public(uint256)   # blocks each phase lasts
vote_mode: public(uint256)
selection_mode: public(uint256)

pool: public(uint256)
total_staked: public(uint256)
total_claimable: public(uint256)
closed: public(bool)

participants: public(DynArray[address, MAX_PARTICIPANTS])  # active accounts (stake >= min, not ejected)
index_plus_one: public(HashMap[address, uint256])  # 0 = not listed
stake_of: public(HashMap[address, uint256])
claimable: public(HashMap[address, uint256])
ejected: public(HashMap[address, bool])

next_round: public(uint256)   # rounds started so far
round_open: public(bool)
seed: public(bytes32)          # seed of the latest drawn round (genesis seed before round 0)
global_hash: public(bytes32)   # hash of the global adapter G_r
round_reward: public(uint256)
seed_block: public(uint256)    # the block whose hash seeds the open round's draw
phase: uint256                 # stored phase; `current_phase()` applies the windows
phase_end: uint256             # last block of the stored phase
num_commits: uint256
num_proposals: public(uint256)
num_vote_commits: uint256
num_votes: public(uint256)

proposers: DynArray[address, MAX_PROPOSERS]  # ascending address order
voters: DynArray[address, MAX_VOTERS]        # draw order
role_tag: HashMap[address, uint256]          # (round + 1) * 4 + role
commit_tag: HashMap[address, uint256]        # round + 1 once committed
reveal_tag: HashMap[address, uint256]        # round + 1 once revealed
commitment_of: public(HashMap[address, bytes32])
proposal_of: public(HashMap[address, bytes32])
ballot_cand: HashMap[address, bytes32]
ballot_approve: HashMap[address, bool]
ballot_bits: HashMap[address, uint256]
ballot_invalid: HashMap[address, uint256]


@deploy
def __init__(
    token: IERC20,
    logic: FlockLogic,
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
    assert logic.address.is_contract, "init: logic is not a contract"
    ok: bool = staticcall logic.check_params(total_rounds, num_proposers, num_voters, min_stake, slash_bps, proposer_share_bps,
                                  vote_window, vote_mode, selection_mode)
    self.token = token
    self.logic = logic
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
    log TaskCreated(token=token.address, owner=msg.sender, logic=logic.address, total_rounds=total_rounds,
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


@internal
@view
def _phase() -> (uint256, uint256):
    """(phase, its last block) at this block: a window that has passed moves the round on."""
    ph: uint256 = self.phase
    end: uint256 = self.phase_end
    w: uint256 = self.vote_window
    for _: uint256 in range(4):
        if ph < COMMIT or ph == DONE or block.number <= end:
            break
        if (ph == COMMIT and self.num_commits == 0) or (ph == REVEAL and self.num_proposals == 0) or (
                ph == VOTE and self.num_vote_commits == 0):
            ph = DONE
        else:
            ph += 1
        end += w
    return ph, end


@external
@view
def current_phase() -> (uint256, uint256):
    """@notice (phase, last block of it) of the open round: 0 none, 1 draw, 2 commit, 3 reveal,
               4 vote commit, 5 vote reveal, 6 done (finalize may run)."""
    if not self.round_open:
        return 0, 0
    return self._phase()


# ---------------------------------------------------------------- money in and out

@internal
def _pull(sender: address, amount: uint256):
    assert extcall self.token.transferFrom(sender, self, amount), "token: transferFrom failed"


@internal
def _push(receiver: address, amount: uint256):
    assert extcall self.token.transfer(receiver, amount), "token: transfer failed"


@internal
@view
def _check_free(who: address, what: String[16]):
    """Membership changes wait while a draw is pending (the set is frozen) and while `who` is drawn."""
    if self.round_open:
        r: uint256 = self.next_round - 1
        assert self.phase != DRAW, concat(
            what, ": the roles of round ", uint2str(r), " are being drawn; wait for draw_roles")
        assert self.role_tag[who] // 4 != r + 1, concat(
            what, ": drawn for the open round ", uint2str(r), "; wait until it is finalized")


@internal
def _unlist(who: address):
    """Swap-remove `who` from the active list (its last entry takes its place)."""
    k: uint256 = self.index_plus_one[who]
    if k == 0:
        return
    last: address = self.participants[len(self.participants) - 1]
    self.participants[k - 1] = last
    self.index_plus_one[last] = k
    self.participants.pop()
    self.index_plus_one[who] = 0


@internal
@view
def _check_room(amount: uint256):
    assert self.pool + self.total_staked + self.total_claimable + amount <= MAX_HOLDINGS, "the task would hold over 2**128 token units"


@external
def fund(amount: uint256):
    """@notice Add `amount` tokens to the reward pool (anyone may, until the task closes)."""
    assert amount > 0, "fund: amount is zero"
    assert not self.closed, "fund: the task is closed"
    self._check_room(amount)
    self._pull(msg.sender, amount)
    self.pool += amount
    log Funded(sender=msg.sender, amount=amount, pool=self.pool)


@external
def stake(amount: uint256):
    """@notice Add `amount` to the caller's stake; the first stake (>= min_stake) lists the caller."""
    assert amount > 0, "stake: amount is zero"
    assert not self.closed, "stake: the task is closed"
    assert not self.ejected[msg.sender], "stake: participant is ejected; withdraw the remainder"
    self._check_free(msg.sender, "stake")
    self._check_room(amount)
    new: uint256 = self.stake_of[msg.sender] + amount
    assert new >= self.min_stake, concat(
        "stake: stake ", uint2str(new), " is below the minimum stake ", uint2str(self.min_stake))
    if self.index_plus_one[msg.sender] == 0:
        assert len(self.participants) < MAX_PARTICIPANTS, "stake: participant limit of 1024 reached"
        self.participants.append(msg.sender)
        self.index_plus_one[msg.sender] = len(self.participants)
    self._pull(msg.sender, amount)
    self.stake_of[msg.sender] = new
    self.total_staked += amount
    log Staked(participant=msg.sender, index=self.index_plus_one[msg.sender] - 1, amount=amount, stake=new)


@external
def unstake(amount: uint256):
    """@notice Take back `amount` of stake; what remains must be 0 (the caller leaves the list) or >= min_stake."""
    assert not self.ejected[msg.sender], "unstake: participant is ejected; call withdraw"
    have: uint256 = self.stake_of[msg.sender]
    assert have > 0, "unstake: not a participant"
    assert amount > 0, "unstake: amount is zero"
    assert amount <= have, concat("unstake: amount ", uint2str(amount), " exceeds stake ", uint2str(have))
    self._check_free(msg.sender, "unstake")
    left: uint256 = have - amount
    assert left == 0 or left >= self.min_stake, concat(
        "unstake: remaining stake ", uint2str(left), " would be below the minimum ",
        uint2str(self.min_stake), "; unstake all or less")
    self.stake_of[msg.sender] = left
    self.total_staked -= amount
    if left == 0:
        self._unlist(msg.sender)
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


@internal
def _close(what: String[16]):
    if self.closed:
        return
    assert not self.round_open, concat(what, ": round ", uint2str(self.next_round - 1), " is open; finalize it first")
    need: uint256 = self.num_proposers + self.num_voters
    assert self.next_round == self.total_rounds or len(self.participants) < need, concat(
        what, ": rounds remain and enough participants are active")
    self.closed = True
    log TaskClosed(pool=self.pool, active=len(self.participants))


@external
def close():
    """@notice Anyone may close the task after its last round, or when fewer than P + V participants are active."""
    assert not self.closed, "close: the task is already closed"
    self._close("close")


@external
def drain_pool(receiver: address):
    """@notice The owner takes what is left in the pool of a closed (or closable) task."""
    assert msg.sender == self.owner, "drain_pool: only the owner may drain the pool"
    self._close("drain_pool")
    amount: uint256 = self.pool
    self.pool = 0
    self._push(receiver, amount)
    log PoolDrained(receiver=receiver, amount=amount)


# ---------------------------------------------------------------- round start and draw

@external
def start_round():
    """@notice Open the next round (anyone may): freeze the participant set; the block of this
               call seeds the draw, which `draw_roles` does in a later block."""
    r: uint256 = self.next_round
    assert not self.closed, "start_round: the task is closed"
    if self.round_open:
        # re-arm a draw whose seed block has left the 256-block window of `blockhash`
        assert self.phase == DRAW and block.number > self.seed_block + 256, concat(
            "start_round: round ", uint2str(r - 1), " is still open; finalize it first")
        self.seed_block = block.number
        self.phase_end = block.number + 256
        log RoundStarted(round=r - 1, global_hash=self.global_hash, reward=self.round_reward, seed_block=block.number)
        return
    assert r < self.total_rounds, concat("start_round: all ", uint2str(self.total_rounds), " rounds are done")
    need: uint256 = self.num_proposers + self.num_voters
    assert len(self.participants) >= need, concat(
        "start_round: ", uint2str(len(self.participants)), " active participants, need P + V = ", uint2str(need),
        "; call close")
    self.next_round = r + 1
    self.round_open = True
    self.phase = DRAW
    self.seed_block = block.number
    self.phase_end = block.number + 256  # the last block draw_roles can read the seed block's hash
    self.round_reward = self.pool // (self.total_rounds - r)
    self.num_commits = 0
    self.num_proposals = 0
    self.num_vote_commits = 0
    self.num_votes = 0
    log RoundStarted(round=r, global_hash=self.global_hash, reward=self.round_reward, seed_block=block.number)


@external
def draw_roles():
    """@notice Draw the open round's roles (anyone may, in a later block than start_round):
               seed_r = keccak256(seed_{r-1} ‖ uint256(r) ‖ blockhash(seed_block))."""
    assert self.round_open and self.phase == DRAW, "draw_roles: no draw is pending; call start_round"
    r: uint256 = self.next_round - 1
    b: uint256 = self.seed_block
    assert block.number > b, "draw_roles: wait one block after start_round"
    assert block.number <= b + 256, "draw_roles: the seed block is over 256 blocks old; call start_round to re-arm"
    bh: bytes32 = blockhash(b)
    seed: bytes32 = keccak256(concat(self.seed, convert(r, bytes32), bh))
    n_p: uint256 = self.num_proposers
    weights: DynArray[uint256, MAX_PARTICIPANTS] = []  # none: uniform, without reading N accounts
    if self.selection_mode == SELECT_STAKE:
        for a: address in self.participants:
            weights.append(self.stake_of[a])
    picked: DynArray[uint256, MAX_ROLES] = staticcall self.logic.pick(seed, weights, len(self.participants), n_p + self.num_voters)
    tag: uint256 = (r + 1) * 4
    props: DynArray[address, MAX_PROPOSERS] = []
    for k: uint256 in range(n_p, bound=MAX_PROPOSERS):
        # insertion sort by address, so bit i of a vote names proposers[i]
        a: address = self.participants[picked[k]]
        props.append(a)
        i: uint256 = k
        for _: uint256 in range(k, bound=MAX_PROPOSERS):
            if convert(props[i - 1], uint256) < convert(a, uint256):
                break
            props[i] = props[i - 1]
            i -= 1
        props[i] = a
        self.role_tag[a] = tag + 1
    vots: DynArray[address, MAX_VOTERS] = []
    for k: uint256 in range(n_p, n_p + self.num_voters, bound=MAX_VOTERS):
        a: address = self.participants[picked[k]]
        vots.append(a)
        self.role_tag[a] = tag + 2
    self.proposers = props
    self.voters = vots
    self.seed = seed
    self.phase = COMMIT
    self.phase_end = block.number + self.vote_window
    log RolesDrawn(round=r, seed=seed, seed_block_hash=bh, proposers=props, voters=vots, commit_end=self.phase_end)


# ---------------------------------------------------------------- commit and reveal

@internal
def _enter(what: String[16], want: uint256, role: uint256, role_name: String[8]) -> uint256:
    """Check the caller may act in phase `want` now; store the phase; return the round."""
    assert self.round_open, concat(what, ": no round is open")
    r: uint256 = self.next_round - 1
    ph: uint256 = 0
    end: uint256 = 0
    ph, end = self._phase()
    self.phase = ph
    self.phase_end = end
    assert self.role_tag[msg.sender] == (r + 1) * 4 + role, concat(
        what, ": not a drawn ", role_name, " for round ", uint2str(r))
    assert ph == want, concat(
        what, ": round ", uint2str(r), " is in phase ", uint2str(ph), ", this call needs phase ", uint2str(want))
    return r


@internal
def _close_phase_if(done: bool):
    """A phase in which everyone who could act has acted ends at this block."""
    if done:
        self.phase_end = block.number


@external
def commit_proposal(commitment: bytes32):
    """@notice A drawn proposer commits keccak256(sender ‖ uint256(round) ‖ proposal_hash ‖ salt)."""
    r: uint256 = self._enter("commit_proposal", COMMIT, 1, "proposer")
    assert self.commit_tag[msg.sender] != r + 1, concat("commit_proposal: already committed in round ", uint2str(r))
    assert commitment != empty(bytes32), "commit_proposal: commitment is zero"
    self.commit_tag[msg.sender] = r + 1
    self.commitment_of[msg.sender] = commitment
    self.num_commits += 1
    self._close_phase_if(self.num_commits == self.num_proposers)
    log ProposalCommitted(round=r, proposer=msg.sender, commitment=commitment)


@external
def reveal_proposal(proposal_hash: bytes32, salt: bytes32):
    """@notice Reveal the committed proposal hash (its blob must be in the adapter store by now)."""
    r: uint256 = self._enter("reveal_proposal", REVEAL, 1, "proposer")
    assert self.commit_tag[msg.sender] == r + 1, concat("reveal_proposal: nothing committed in round ", uint2str(r))
    assert self.reveal_tag[msg.sender] != r + 1, concat("reveal_proposal: already revealed in round ", uint2str(r))
    assert proposal_hash != empty(bytes32), "reveal_proposal: proposal hash is zero"
    c: bytes32 = keccak256(concat(convert(msg.sender, bytes20), convert(r, bytes32), proposal_hash, salt))
    assert c == self.commitment_of[msg.sender], "reveal_proposal: hash and salt do not match the commitment"
    self.reveal_tag[msg.sender] = r + 1
    self.proposal_of[msg.sender] = proposal_hash
    self.num_proposals += 1
    self._close_phase_if(self.num_proposals == self.num_commits)
    log Proposed(round=r, proposer=msg.sender, proposal_hash=proposal_hash, salt=salt)


@external
def commit_vote(commitment: bytes32):
    """@notice A drawn voter commits keccak256(sender ‖ round ‖ candidate ‖ approve ‖ bits ‖ invalid ‖ salt)."""
    r: uint256 = self._enter("commit_vote", VOTE, 2, "voter")
    assert self.commit_tag[msg.sender] != r + 1, concat("commit_vote: already committed in round ", uint2str(r))
    assert commitment != empty(bytes32), "commit_vote: commitment is zero"
    self.commit_tag[msg.sender] = r + 1
    self.commitment_of[msg.sender] = commitment
    self.num_vote_commits += 1
    self._close_phase_if(self.num_vote_commits == len(self.voters))
    log VoteCommitted(round=r, voter=msg.sender, commitment=commitment)


@external
def reveal_vote(candidate: bytes32, approve: bool, bits: uint256, invalid: uint256, salt: bytes32):
    """
    @notice Reveal a committed vote. Whole mode: `candidate` and `approve` (bits = 0).
            Per-proposal mode: bit i of `bits` approves proposers[i] (candidate = 0).
            Both: bit i of `invalid` flags proposers[i]'s revealed proposal as invalid.
    """
    r: uint256 = self._enter("reveal_vote", VOTE_REVEAL, 2, "voter")
    assert self.commit_tag[msg.sender] == r + 1, concat("reveal_vote: nothing committed in round ", uint2str(r))
    assert self.reveal_tag[msg.sender] != r + 1, concat("reveal_vote: already revealed in round ", uint2str(r))
    n: uint256 = len(self.proposers)
    assert bits >> n == 0 and invalid >> n == 0, concat(
        "reveal_vote: a bit is set beyond the ", uint2str(n), " proposers")
    if self.vote_mode == VOTE_PER_PROPOSAL:
        assert candidate == empty(bytes32) and not approve, "reveal_vote: per-proposal mode takes bits, not a candidate"
    else:
        assert candidate != empty(bytes32) and bits == 0, "reveal_vote: whole mode takes a nonzero candidate and no bits"
    c: bytes32 = keccak256(concat(convert(msg.sender, bytes20), convert(r, bytes32), candidate,
                                  convert(convert(approve, uint256), bytes32), convert(bits, bytes32),
                                  convert(invalid, bytes32), salt))
    assert c == self.commitment_of[msg.sender], "reveal_vote: ballot and salt do not match the commitment"
    self.reveal_tag[msg.sender] = r + 1
    self.ballot_cand[msg.sender] = candidate
    self.ballot_approve[msg.sender] = approve
    self.ballot_bits[msg.sender] = bits
    self.ballot_invalid[msg.sender] = invalid
    self.num_votes += 1
    self._close_phase_if(self.num_votes == self.num_vote_commits)
    log Voted(round=r, voter=msg.sender, candidate=candidate, approve=approve, bits=bits, invalid=invalid,
              salt=salt, weight=self.stake_of[msg.sender])


# ---------------------------------------------------------------- finalize and settle

@internal
def _state(who: address, tag: uint256) -> uint256:
    if self.reveal_tag[who] == tag:
        return 2
    if self.commit_tag[who] == tag:
        return 1
    return 0


@external
def finalize():
    """@notice Close the open round once every phase has ended (anyone may, once) and settle it."""
    assert self.round_open, "finalize: no round is open"
    r: uint256 = self.next_round - 1
    ph: uint256 = 0
    end: uint256 = 0
    ph, end = self._phase()
    assert ph == DONE, concat("finalize: round ", uint2str(r), " is in phase ", uint2str(ph),
                              " until block ", uint2str(end))
    self.round_open = False
    self.phase = 0
    tag: uint256 = r + 1
    props: DynArray[address, MAX_PROPOSERS] = self.proposers
    vots: DynArray[address, MAX_VOTERS] = self.voters
    p_state: DynArray[uint256, MAX_PROPOSERS] = []
    p_hash: DynArray[bytes32, MAX_PROPOSERS] = []
    p_stake: DynArray[uint256, MAX_PROPOSERS] = []
    for p: address in props:
        p_state.append(self._state(p, tag))
        p_hash.append(self.proposal_of[p])
        p_stake.append(self.stake_of[p])
    v_state: DynArray[uint256, MAX_VOTERS] = []
    v_stake: DynArray[uint256, MAX_VOTERS] = []
    v_cand: DynArray[bytes32, MAX_VOTERS] = []
    v_approve: DynArray[bool, MAX_VOTERS] = []
    v_bits: DynArray[uint256, MAX_VOTERS] = []
    v_invalid: DynArray[uint256, MAX_VOTERS] = []
    for v: address in vots:
        v_state.append(self._state(v, tag))
        v_stake.append(self.stake_of[v])
        v_cand.append(self.ballot_cand[v])
        v_approve.append(self.ballot_approve[v])
        v_bits.append(self.ballot_bits[v])
        v_invalid.append(self.ballot_invalid[v])
    hashes: bytes32[2] = empty(bytes32[2])
    nums: uint256[7] = empty(uint256[7])
    tally: int256 = 0
    ops: DynArray[uint256, 256] = []
    amounts: DynArray[uint256, 256] = []
    tallies: DynArray[int256, MAX_PROPOSERS] = []
    hashes, nums, tally, ops, amounts, tallies = staticcall self.logic.settle(
        self.vote_mode, self.round_reward, self.proposer_share_bps, self.slash_bps, self.global_hash,
        p_state, p_hash, p_stake, v_state, v_stake, v_cand, v_approve, v_bits, v_invalid)
    n_p: uint256 = len(props)
    for k: uint256 in range(len(ops), bound=256):
        op: uint256 = ops[k]
        idx: uint256 = op >> 16
        who: address = empty(address)
        if idx < n_p:
            who = props[idx]
        else:
            who = vots[idx - n_p]
        amount: uint256 = amounts[k]
        if (op >> 8) & 255 == 1:
            self.claimable[who] += amount
            self.total_claimable += amount
            self.pool -= amount
            log Rewarded(round=r, participant=who, amount=amount, role=op & 255)
        else:
            left: uint256 = self.stake_of[who] - amount
            self.stake_of[who] = left
            self.total_staked -= amount
            self.pool += amount
            log Slashed(round=r, participant=who, amount=amount, stake=left, reason=op & 255)
            if left < self.min_stake and not self.ejected[who]:
                self.ejected[who] = True
                self._unlist(who)
                log Ejected(round=r, participant=who, stake=left)
    self.global_hash = hashes[1]
    log Finalized(round=r, outcome=nums[0], candidate=hashes[0], global_hash=hashes[1], tally=tally,
                  approve_stake=nums[1], reject_stake=nums[2], num_proposals=self.num_proposals,
                  num_votes=self.num_votes, accepted_bits=nums[3], invalid_bits=nums[4],
                  duplicate_bits=nums[5], tallies=tallies)
