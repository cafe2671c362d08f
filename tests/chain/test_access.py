"""Access control and bad input: every revert becomes a clear `RevertError`."""

import pytest

from flock_jax.chain import (
    ChainConfigError,
    ChainConnectionError,
    ChainError,
    FlockChain,
    RevertError,
    TaskParams,
    WEI,
)
from flock_jax.chain.client import GAS

from tests.chain.helpers import blob_hash, make_chain


def test_stake_rules(chain):
  with pytest.raises(RevertError, match="stake: amount is zero"):
    chain.stake(0, 0)
  outsider = chain.backend.accounts[-1]  # an account that never staked
  with pytest.raises(RevertError, match="unstake: not a participant"):
    chain._send("unstake", chain.task.functions.unstake(1), outsider, GAS["unstake"])
  with pytest.raises(RevertError, match="unstake: amount is zero"):
    chain.unstake(0, 0)
  with pytest.raises(RevertError, match=f"unstake: amount {101 * WEI} exceeds stake {100 * WEI}"):
    chain.unstake(0, 101 * WEI)
  with pytest.raises(
      RevertError, match=f"unstake: remaining stake {5 * WEI} would be below the minimum {10 * WEI}"
  ):
    chain.unstake(0, 95 * WEI)
  chain.unstake(0, 100 * WEI)
  assert chain.stake_of(0) == 0
  with pytest.raises(
      RevertError, match=f"stake: stake {5 * WEI} is below the minimum stake {10 * WEI}"
  ):
    chain.stake(0, 5 * WEI)


def test_first_stake_below_minimum_and_unfunded():
  chain = make_chain(6, stakes=[100 * WEI] * 5 + [0], mint=100 * WEI)
  with pytest.raises(
      RevertError, match=f"stake: stake {WEI} is below the minimum stake {10 * WEI}"
  ) as e:
    chain.stake(5, WEI)
  assert e.value.call == "stake" and "participant 5" in str(e.value)
  with pytest.raises(RevertError, match="transferFrom: balance"):
    chain.stake(5, 1000 * WEI)
  chain.stake(5, 10 * WEI)
  assert chain.task.functions.participants(5).call() == chain.addresses[5]


def test_drawn_participants_cannot_move_stake(chain):
  roles = chain.start_round()
  with pytest.raises(
      RevertError, match="unstake: drawn for the open round 0; wait until it is finalized"
  ):
    chain.unstake(roles.voters[0], 10 * WEI)
  with pytest.raises(
      RevertError, match="stake: drawn for the open round 0; wait until it is finalized"
  ):
    chain.stake(roles.proposers[0], 10 * WEI)
  free = next(i for i in range(8) if i not in roles.proposers + roles.voters)
  chain.unstake(free, 10 * WEI)


def test_too_few_active_participants():
  chain = make_chain(6, total_rounds=2)
  chain.unstake(0, 100 * WEI)
  chain.unstake(1, 100 * WEI)
  with pytest.raises(
      RevertError, match=r"start_round: 4 active participants, need P \+ V = 5; call close"
  ):
    chain.start_round()


def test_owner_only_drain(chain):
  with pytest.raises(RevertError, match="drain_pool: only the owner may drain the pool"):
    chain._send(
        "drain_pool",
        chain.task.functions.drain_pool(chain.addresses[0]),
        chain.addresses[0],
        100_000,
    )
  with pytest.raises(
      RevertError, match="drain_pool: rounds remain and enough participants are active"
  ):
    chain._send(
        "drain_pool", chain.task.functions.drain_pool(chain.deployer), chain.deployer, 100_000
    )


def test_bad_constructor_arguments():
  chain = FlockChain.from_config({"backend": "eth_tester"}, 2)
  with pytest.raises(RevertError, match="init: num_voters must be in 1..64"):
    chain.deploy(TaskParams(num_voters=0))
  with pytest.raises(RevertError, match="init: slash_bps must be at most 10000"):
    chain.deploy(TaskParams(slash_bps=10_001))


def test_client_errors():
  with pytest.raises(ChainConfigError, match="unknown chain.backend 'ganache'"):
    FlockChain.from_config({"backend": "ganache"}, 2)
  with pytest.raises(ChainConfigError, match="needs chain.rpc_url"):
    FlockChain.from_config({"backend": "jsonrpc"}, 2)
  with pytest.raises(
      ChainConnectionError, match="cannot reach a JSON-RPC node at http://127.0.0.1:9"
  ):
    FlockChain.from_config({"backend": "jsonrpc", "rpc_url": "http://127.0.0.1:9"}, 2)
  chain = FlockChain.from_config({"backend": "eth_tester"}, 3)
  with pytest.raises(ChainError, match=r"no task deployed; call deploy\(\) or attach\(\) first"):
    chain.start_round()
  with pytest.raises(ChainError, match="participant index 3 out of range 0..2"):
    chain._who(3)
  assert chain.index_of(chain.addresses[2]) == 2 and chain.addresses[0] == chain.backend.accounts[1]


def test_hash_arguments_checked(chain):
  roles = chain.start_round()
  with pytest.raises(ValueError, match="a hash must be 32 bytes, got 3"):
    chain.propose(roles.proposers[0], b"abc")
  chain.propose(roles.proposers[0], "0x" + blob_hash("p").hex())


def test_config_section_builds_params_and_chain():
  from flock_jax.chain.config import get_config
  from flock_jax.chain.types import SELECT_STAKE, VOTE_PER_PROPOSAL

  cfg = get_config()
  cfg.task.vote_mode = "per_proposal"
  cfg.task.selection_mode = "stake"
  params = TaskParams.from_mapping(cfg.task)
  assert params.vote_mode == VOTE_PER_PROPOSAL and params.selection_mode == SELECT_STAKE
  assert params.genesis_seed == TaskParams().genesis_seed
  chain = FlockChain.from_config(cfg, num_participants=2)
  assert chain.backend.name == "eth_tester" and len(chain.addresses) == 2
