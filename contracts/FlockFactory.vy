#pragma version ^0.4.3
"""
@title FlockFactory
@notice Creates FlockTask instances from an on-chain blueprint, funds their
        reward pool from the creator, and lists them (all tasks in creation
        order, and each creator's tasks).
@dev    FlockTask's runtime code (~22 KB) cannot be embedded in a factory
        (EIP-170: 24,576 bytes), so its initcode lives in an ERC-5202
        blueprint contract deployed once; `create_from_blueprint` copies it
        (skipping the 3-byte preamble) and runs the constructor.
        Every task shares the factory's stake token. The factory is each
        task's `owner`, so the pool of a finished task is drained through
        `drain_pool(task, receiver)` by the task's creator.
        The factory holds no tokens between transactions: `create_task`
        pulls the reward pool from the creator and passes it on with `fund`.
"""

from ethereum.ercs import IERC20

interface FlockTask:
    def fund(amount: uint256): nonpayable
    def drain_pool(receiver: address): nonpayable

MAX_PAGE: constant(uint256) = 256  # addresses returned by one listing call
ERC5202_PREAMBLE: constant(bytes3) = 0xFE7100  # EIP-5202 magic (0xFE71) + version 0

event TaskDeployed:
    task: indexed(address)
    creator: indexed(address)
    index: uint256        # position in the factory's list, from 0
    reward_pool: uint256  # tokens moved from the creator into the task's pool

token: public(immutable(IERC20))
blueprint: public(immutable(address))
logic: public(immutable(address))  # the FlockLogic every task of this factory calls

num_tasks: public(uint256)
creator_of: public(HashMap[address, address])  # zero for an address this factory did not create
num_tasks_of: public(HashMap[address, uint256])
_tasks: HashMap[uint256, address]
_tasks_of: HashMap[address, HashMap[uint256, address]]


@deploy
def __init__(token_: IERC20, blueprint_: address, logic_: address):
    """@notice A factory of FlockTasks paid in `token_`, built from the FlockTask blueprint `blueprint_`,
               each using the FlockLogic contract `logic_`."""
    assert logic_.is_contract, "init: logic has no code; deploy FlockLogic first"
    assert token_.address != empty(address), "init: token is the zero address"
    assert blueprint_.codesize > 3, "init: blueprint has no code; deploy FlockTask as a blueprint first"
    assert convert(slice(blueprint_.code, 0, 3), bytes3) == ERC5202_PREAMBLE, \
        "init: blueprint does not start with the ERC-5202 preamble 0xfe7100"
    token = token_
    blueprint = blueprint_
    logic = logic_


# ---------------------------------------------------------------- listing

@internal
@view
def _page(n: uint256, start: uint256, count: uint256, what: String[16]) -> (uint256, uint256):
    """@dev Clamp [start, start + count) to [0, n) and MAX_PAGE; returns (start, end)."""
    assert start <= n, concat(what, ": start ", uint2str(start), " is beyond the ", uint2str(n), " tasks")
    end: uint256 = min(n, start + min(count, MAX_PAGE))
    return start, end


@external
@view
def task_at(i: uint256) -> address:
    """@notice The i-th task created (from 0)."""
    assert i < self.num_tasks, concat("task_at: index ", uint2str(i), " is out of range; there are ",
                                      uint2str(self.num_tasks), " tasks")
    return self._tasks[i]


@external
@view
def task_of(creator: address, k: uint256) -> address:
    """@notice The k-th task `creator` created (from 0)."""
    n: uint256 = self.num_tasks_of[creator]
    assert k < n, concat("task_of: index ", uint2str(k), " is out of range; the creator has ",
                         uint2str(n), " tasks")
    return self._tasks_of[creator][k]


@external
@view
def list_tasks(start: uint256, count: uint256) -> DynArray[address, MAX_PAGE]:
    """@notice Tasks start .. start + count - 1 in creation order (at most 256, fewer at the end)."""
    a: uint256 = 0
    b: uint256 = 0
    a, b = self._page(self.num_tasks, start, count, "list_tasks")
    out: DynArray[address, MAX_PAGE] = []
    for i: uint256 in range(a, b, bound=MAX_PAGE):
        out.append(self._tasks[i])
    return out


@external
@view
def list_tasks_of(creator: address, start: uint256, count: uint256) -> DynArray[address, MAX_PAGE]:
    """@notice `creator`'s tasks start .. start + count - 1 in creation order (at most 256)."""
    a: uint256 = 0
    b: uint256 = 0
    a, b = self._page(self.num_tasks_of[creator], start, count, "list_tasks_of")
    out: DynArray[address, MAX_PAGE] = []
    for i: uint256 in range(a, b, bound=MAX_PAGE):
        out.append(self._tasks_of[creator][i])
    return out


# ---------------------------------------------------------------- creating and closing tasks

@external
@nonreentrant
def create_task(
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
    reward_pool: uint256,
) -> address:
    """
    @notice Create a FlockTask (parameters as its constructor's) and fund its
            pool with `reward_pool` tokens of the caller, who must first
            approve this factory for that amount. Returns the task's address.
    @dev    A constructor revert (bad parameters) is re-raised with its own
            message, e.g. "init: slash_bps must be at most 10000".
    """
    if reward_pool > 0:
        allowed: uint256 = staticcall token.allowance(msg.sender, self)
        assert allowed >= reward_pool, concat(
            "create_task: the factory may move ", uint2str(allowed), " of the creator's tokens; approve ",
            uint2str(reward_pool), " for the reward pool first")
    task: address = create_from_blueprint(
        blueprint, token, logic, total_rounds, num_proposers, num_voters, min_stake, slash_bps,
        proposer_share_bps, vote_window, vote_mode, selection_mode, genesis_hash, genesis_seed,
        code_offset=3)
    i: uint256 = self.num_tasks
    self._tasks[i] = task
    self.num_tasks = i + 1
    self.creator_of[task] = msg.sender
    k: uint256 = self.num_tasks_of[msg.sender]
    self._tasks_of[msg.sender][k] = task
    self.num_tasks_of[msg.sender] = k + 1
    if reward_pool > 0:
        # through the factory, so that the task's pool accounting sees the tokens
        assert extcall token.transferFrom(msg.sender, self, reward_pool), "create_task: transferFrom failed"
        assert extcall token.approve(task, reward_pool), "create_task: approve failed"
        extcall FlockTask(task).fund(reward_pool)
    log TaskDeployed(task=task, creator=msg.sender, index=i, reward_pool=reward_pool)
    return task


@external
@nonreentrant
def drain_pool(task: address, receiver: address):
    """@notice The creator of `task` takes what is left in its pool once the task is closed (or closable)."""
    creator: address = self.creator_of[task]
    assert creator != empty(address), "drain_pool: not a task of this factory"
    assert msg.sender == creator, "drain_pool: only the task's creator may drain its pool"
    extcall FlockTask(task).drain_pool(receiver)
