"""FlockFactory: tasks created from the FlockTask blueprint, listed, funded and run."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import pytest

from flock_jax.chain import OUTCOME_ACCEPTED, WEI, FlockChain, RevertError
from flock_jax.chain.audit import audit_chain
from flock_jax.chain.backend import EthTesterBackend
from flock_jax.chain.compile import load_contract
from flock_jax.chain.factory import ERC5202_PREAMBLE, FlockFactory

from tests.chain.helpers import SMALL, STAKE, blob_hash

N = 8  # participants: backend accounts 1..8; account 0 deploys; 9 and 10 are spare creators


@pytest.fixture(scope="module")
def base_factory() -> FlockFactory:
  backend = EthTesterBackend(N + 3)
  factory = FlockFactory.deploy(backend)
  for creator in (backend.accounts[0], *backend.accounts[-2:]):
    factory.mint(creator, 5_000 * WEI)
  return factory


@pytest.fixture
def factory(base_factory: FlockFactory) -> Iterator[FlockFactory]:
  """The module's factory, reverted to its freshly deployed state after each test."""
  snap = base_factory.backend.snapshot()
  yield base_factory
  base_factory.backend.revert(snap)


def _balance(factory: FlockFactory, who: str) -> int:
  return factory.token.functions.balanceOf(who).call()


def test_factory_deploys_with_a_blueprint(factory):
  w3 = factory.w3
  code = bytes(w3.eth.get_code(factory.blueprint))
  assert (
      code[:3] == ERC5202_PREAMBLE and len(code) > 20_000
  )  # FlockTask's initcode, inert behind 0xfe
  assert factory.contract.functions.blueprint().call() == factory.blueprint
  assert factory.contract.functions.token().call() == factory.token.address
  assert (
      factory.num_tasks == 0 and factory.tasks() == [] and factory.tasks_of(factory.deployer) == []
  )
  with pytest.raises(RevertError, match="task_at: index 0 is out of range; there are 0 tasks"):
    factory.task_at(0)
  assert [name for name, _, _ in factory.gas_log[:4]] == [
      "deploy StakeToken",
      "deploy FlockLogic",
      "deploy FlockTask blueprint",
      "deploy FlockFactory",
  ]


def test_factory_refuses_a_missing_or_foreign_blueprint(factory):
  art = load_contract("FlockFactory")
  ctor = factory.w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor
  spare = factory.backend.accounts[-1]
  with pytest.raises(
      RevertError, match="init: blueprint has no code; deploy FlockTask as a blueprint first"
  ):
    factory.backend.transact(
        "deploy FlockFactory",
        ctor(factory.token.address, spare, factory.contract.functions.logic().call()),
        factory.deployer,
        3_000_000,
    )
  with pytest.raises(
      RevertError, match="init: blueprint does not start with the ERC-5202 preamble 0xfe7100"
  ):
    factory.backend.transact(
        "deploy FlockFactory",
        ctor(
            factory.token.address,
            factory.token.address,
            factory.contract.functions.logic().call(),
        ),
        factory.deployer,
        3_000_000,
    )


def test_two_tasks_are_listed_in_order_with_their_creators(factory):
  a, b = factory.deployer, factory.backend.accounts[-1]
  pa = dataclasses.replace(SMALL, total_rounds=3, num_proposers=2, reward_pool=700 * WEI)
  pb = dataclasses.replace(
      SMALL,
      total_rounds=5,
      num_proposers=3,
      reward_pool=900 * WEI,
      vote_mode=1,
      genesis_hash=b"\x11" * 32,
  )
  bal_a, bal_b = _balance(factory, a), _balance(factory, b)
  ta = factory.create_task(pa, creator=a)
  tb = factory.create_task(pb, creator=b)
  assert ta != tb
  assert factory.tasks() == [ta, tb] and factory.num_tasks == 2
  assert [factory.task_at(0), factory.task_at(1)] == [ta, tb]
  assert factory.tasks_of(a) == [ta] and factory.tasks_of(b) == [tb]
  assert factory.tasks_of(factory.backend.accounts[-2]) == []
  assert factory.creator_of(ta) == a and factory.creator_of(tb) == b
  assert factory.creator_of(factory.token.address) is None
  deployed = [e["args"] for e in factory.deployed_events() if e["event"] == "TaskDeployed"]
  assert deployed == [
      {"task": ta, "creator": a, "index": 0, "reward_pool": 700 * WEI},
      {"task": tb, "creator": b, "index": 1, "reward_pool": 900 * WEI},
  ]
  # each creator paid its own pool; the factory keeps nothing
  assert _balance(factory, a) == bal_a - 700 * WEI and _balance(factory, b) == bal_b - 900 * WEI
  assert _balance(factory, factory.address) == 0
  for task, params in ((ta, pa), (tb, pb)):
    chain = factory.chain(task, N)
    assert chain.params == params  # read back from the task, reward pool from TaskDeployed
    t = chain.totals()
    assert (
        t["pool"] == t["token_balance"] == params.reward_pool
        and t["global_hash"] == params.genesis_hash
    )
    assert chain.task.functions.owner().call() == factory.address
  with pytest.raises(RevertError, match="task_at: index 2 is out of range; there are 2 tasks"):
    factory.task_at(2)
  with pytest.raises(RevertError, match="list_tasks: start 3 is beyond the 2 tasks"):
    factory.list_tasks(3, 1)
  assert factory.list_tasks(1, 5) == [tb] and factory.list_tasks(2, 1) == []


def test_a_factory_task_runs_a_round_settles_and_conserves_tokens(factory):
  creator = factory.backend.accounts[-2]
  params = dataclasses.replace(SMALL, total_rounds=1, reward_pool=1_000 * WEI)
  task = factory.create_task(params, creator=creator)
  chain = factory.chain(task, N)
  chain.enroll(STAKE)
  assert chain.stakes() == [STAKE] * N
  supply = factory.token.functions.totalSupply().call()

  roles = chain.start_round()
  assert roles.round == 0 and roles.reward == 1_000 * WEI
  for i in roles.proposers:
    chain.propose(i, blob_hash(f"proposal {i}"))
  chain.reveal_proposals(roles.proposers)
  cand = blob_hash("candidate 0")
  for k, j in enumerate(roles.voters):
    chain.vote(j, cand, approve=k != 0)  # the first voter rejects
  out = chain.finalize()
  assert out.outcome == OUTCOME_ACCEPTED and chain.global_hash == cand == out.candidate_hash
  # R_0 = 1000 (T = 1); proposers share rho * R = 500 by stake; the two approvers
  # share the other 500; the rejecter is slashed lambda = 10% of 100 into the pool
  approvers = [j for j in roles.voters if j != roles.voters[0]]
  assert out.rewards == {
      **{i: 250 * WEI for i in roles.proposers},
      **{j: 250 * WEI for j in approvers},
  }
  assert out.slashes == {roles.voters[0]: 10 * WEI}
  b = chain.balances()
  assert (
      b.pool == 10 * WEI
      and b.total_claimable == 1_000 * WEI
      and b.total_staked == N * STAKE - 10 * WEI
  )
  assert b.token_balance == b.pool + b.total_staked + b.total_claimable

  # claims and the creator's drain move tokens out; nothing is created or lost
  for i in roles.proposers:
    assert chain.claim(i) == 250 * WEI
  with pytest.raises(RevertError, match="drain_pool: only the task's creator may drain its pool"):
    factory.drain_pool(task, creator, creator=factory.deployer)
  before = _balance(factory, creator)
  factory.drain_pool(task, creator, creator=creator)
  assert _balance(factory, creator) == before + 10 * WEI and chain.pool == 0
  t = chain.totals()
  assert t["token_balance"] == t["pool"] + t["total_staked"] + t["total_claimable"]
  holders = [factory.deployer, *factory.backend.accounts[1:], task, factory.address]
  assert sum(_balance(factory, h) for h in holders) == supply
  report = audit_chain(chain)  # the task's events replay through the Python model
  assert report.ok, report.summary()


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_proposers", 0, "init: num_proposers must be in 1..64"),
        ("num_voters", 65, "init: num_voters must be in 1..64"),
        ("slash_bps", 10_001, "init: slash_bps must be at most 10000"),
        ("total_rounds", 0, "init: total_rounds must be in 1..100000"),
    ],
)
def test_bad_parameters_revert_with_the_task_message(factory, field, value, message):
  creator = factory.deployer
  before = _balance(factory, creator)
  with pytest.raises(RevertError, match=message) as err:
    factory.create_task(dataclasses.replace(SMALL, **{field: value}), creator=creator)
  assert err.value.call == "create_task" and err.value.reason == message
  assert factory.num_tasks == 0 and factory.tasks() == [] and _balance(factory, creator) == before


def test_unfunded_creator_gets_a_clear_message(factory):
  spare = factory.backend.accounts[-1]
  with pytest.raises(
      RevertError,
      match="create_task: the factory may move 0 of the creator's tokens; "
      f"approve {SMALL.reward_pool} for the reward pool first",
  ):
    factory.create_task(SMALL, creator=spare, approve=False)
  poor = factory.backend.accounts[N]  # a participant account with no tokens
  with pytest.raises(
      RevertError, match=f"transferFrom: balance 0 is below amount {SMALL.reward_pool}"
  ):
    factory.create_task(SMALL, creator=poor)
  assert factory.num_tasks == 0


def test_create_task_costs_less_gas_than_a_direct_deploy(factory):
  factory.create_task(dataclasses.replace(SMALL, reward_pool=0))
  created = factory.gas_log[-1]
  direct = FlockChain(factory.backend, N)
  direct.deploy(dataclasses.replace(SMALL, reward_pool=0))
  deployed = next(g for g in direct.gas_log if g[0] == "deploy FlockTask")
  assert created[0] == "create_task"
  # both run the same constructor and store the same runtime code; the factory
  # call does not carry the ~24 KB initcode as calldata
  assert 0.5 * deployed[1] < created[1] < deployed[1]
