"""flock_jax/distributed.py in one process: cluster detection, the ledger shared by broadcast,
host rows of a batch, and the identities that keep a single-host run unchanged. The same
functions across two real processes: tests/scale/test_multihost.py."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from flock_jax import distributed as D
from flock_jax import sharding as S
from flock_jax.federated.ledger import LedgerError, LocalLedger


@pytest.mark.parametrize(
    "env,flags,want",
    [
        ({}, {}, ("single", None, None, None)),
        (
            {"FLOCK_COORDINATOR": "10.0.0.1:1234", "FLOCK_NUM_PROCESSES": "4", "FLOCK_PROCESS_ID": "3"},
            {},
            ("explicit", "10.0.0.1:1234", 4, 3),
        ),
        (
            {"FLOCK_NUM_PROCESSES": "4", "FLOCK_PROCESS_ID": "3"},
            {"coordinator": "h:1", "process_id": 0},
            ("explicit", "h:1", 4, 0),
        ),  # flags win over the environment
        ({"FLOCK_COORDINATOR": "h:1", "FLOCK_NUM_PROCESSES": "1", "FLOCK_PROCESS_ID": "0"}, {}, ("single", None, None, None)),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, {}, ("slurm", None, 2, 1)),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, {}, ("single", None, None, None)),
        ({"TPU_WORKER_HOSTNAMES": "a,b,c,d", "TPU_WORKER_ID": "2"}, {}, ("tpu", None, 4, 2)),
        ({"TPU_WORKER_HOSTNAMES": "a"}, {}, ("single", None, None, None)),
        ({"FLOCK_CLUSTER": "tpu"}, {}, ("tpu", None, None, None)),  # launch/pod/tpu.sh
    ],
)  # fmt: skip
def test_cluster_env(env, flags, want):
  spec = D.cluster_env(env, **flags)
  assert (spec.kind, spec.coordinator, spec.num_processes, spec.process_id) == want
  assert spec.multi == (want[0] != "single")


def test_cluster_env_errors():
  with pytest.raises(ValueError, match=r"missing \['process_id'\]"):
    D.cluster_env({}, coordinator="h:1", num_processes=2)
  with pytest.raises(ValueError, match="not in"):
    D.cluster_env({}, coordinator="h:1", num_processes=2, process_id=2)
  with pytest.raises(ValueError, match="use tpu, slurm or auto"):
    D.cluster_env({"FLOCK_CLUSTER": "k8s"})
  with pytest.raises(ValueError, match="FLOCK_NUM_PROCESSES='two'"):
    D.cluster_env({"FLOCK_NUM_PROCESSES": "two"})


def test_initialize_kwargs():
  spec = D.ClusterSpec("explicit", "h:1", 2, 1)
  assert spec.initialize_kwargs() == dict(coordinator_address="h:1", num_processes=2, process_id=1)
  assert D.ClusterSpec("slurm", None, 2, 0).initialize_kwargs() == {}  # jax reads SLURM_*
  assert D.initialize(D.ClusterSpec("single")).kind == "single"  # nothing to initialise


def test_single_process_identities():
  assert D.is_leader() and D.process_count() == 1
  tree = {"a": jax.numpy.ones(3)}
  assert D.gather(tree) is tree and D.checkpointable(tree) is tree
  obj = {"x": [1, 2]}
  assert D.broadcast(obj) is obj
  assert D.leader_only(lambda x: x + 1)(1) == 2 and D.on_leader("store") == "store"
  assert D.fetch(tree)["a"].tolist() == [1.0, 1.0, 1.0]
  assert [D._bucket(n) for n in (0, 1, 256, 257, 5000)] == [256, 256, 256, 512, 8192]


def _ledger():
  return LocalLedger(6, num_proposers=2, num_voters=2, total_rounds=2)


def test_follower_ledger_forwards_the_protocol():
  real, mirror = _ledger(), _ledger()
  shared = D.FollowerLedger(mirror)
  assert shared.num_participants == real.num_participants == 6
  assert shared.addresses() == real.addresses()
  roles = shared.start_round()
  assert roles == real.start_round()
  assert "reveal_proposals" in shared._methods  # read from the Ledger protocol itself
  assert D.unwrap(shared) is mirror and D.unwrap(real) is real


def test_follower_ledger_raises_the_leaders_error():
  shared = D.FollowerLedger(_ledger())
  shared.start_round()
  with pytest.raises(LedgerError):
    shared.reveal_proposals([5])  # nobody committed: the rules refuse
  with pytest.raises(AttributeError, match="only the Ledger protocol"):
    shared.chain
  with pytest.raises(ValueError, match="needs the real ledger"):
    D.FollowerLedger(None)


def test_process_rows_and_global_batch():
  mesh = S.make_mesh({"clients": 2, "fsdp": 4})
  shape = (2, 3, 8, 16)  # [K, E, B, T]
  sh = D.batch_sharding(mesh, shape)
  assert sh.spec == P("clients", None, "fsdp", None)
  assert D.process_rows(sh, shape) == tuple(slice(0, n) for n in shape)  # one process: all rows
  tokens = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
  out = D.global_batch({"tokens": tokens}, sh)["tokens"]
  assert out.sharding == sh and np.array_equal(np.asarray(out), tokens)
  built = D.global_batch({"tokens": shape}, sh, build=lambda k, rows: tokens[rows])["tokens"]
  assert np.array_equal(np.asarray(built), tokens)
  # A batch the axes do not divide is replicated on them, as the step's constraints do.
  assert D.batch_sharding(mesh, (2, 3, 2, 16)).spec == P("clients", None, None, None)
  one = NamedSharding(mesh, P())
  assert D.process_rows(one, (4, 4)) == (slice(0, 4), slice(0, 4))


def test_for_hosts_is_the_engine_itself_on_one_process():
  engine = object()
  assert D.for_hosts(engine) is engine


def test_checkpointable_turns_per_host_leaves_into_numpy(monkeypatch):
  """With several processes, arrays and restore targets on a single device become numpy (orbax
  cannot write or read a host-local jax.Array), arrays over the whole mesh stay."""
  mesh = S.make_mesh({"fsdp": 8})
  glob = jax.device_put(np.ones((8, 2), np.float32), NamedSharding(mesh, P("fsdp")))
  local = jax.numpy.arange(3.0)
  target = jax.ShapeDtypeStruct((4,), np.uint8, sharding=local.sharding)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  out = D.checkpointable({"g": glob, "l": local, "t": target})
  assert out["g"] is glob
  assert isinstance(out["l"], np.ndarray) and out["l"].tolist() == [0.0, 1.0, 2.0]
  assert isinstance(out["t"], np.ndarray) and out["t"].shape == (4,) and out["t"].dtype == np.uint8


class _Revert(Exception):
  """Like web3's errors: __init__ takes other arguments than the exception's args."""

  def __init__(self, call, reason):
    super().__init__(f"{call}: {reason}")
    self.reason = reason


def test_leader_error_survives_the_broadcast():
  import pickle

  e = _Revert("commit_proposal", "no round is open")
  with pytest.raises(TypeError):
    pickle.loads(pickle.dumps(e))  # why the class, args and attributes travel instead
  back = pickle.loads(pickle.dumps(D._Raised.of(e))).error()
  assert type(back) is _Revert and str(back) == str(e) and back.reason == "no round is open"


@pytest.mark.parametrize(
    "block",
    [
        (slice(1, 3), slice(None), slice(None), slice(None)),  # clients 1..2 (clients axis)
        (slice(2, 4), slice(0, 2), slice(2, 4), slice(0, 16)),  # and half of B (data axis)
    ],
)
def test_a_hosts_block_equals_that_block_of_the_whole_batch(block):
  """Each host builds its clients' rows from those clients alone (per-host data), and gets
  exactly the rows a single process would give them: the same draw, position by position."""
  from flock_jax.federated.population import synthetic_population

  pop = synthetic_population(6, seq_len=16, train_rows=12)
  idx, kw = [5, 0, 3, 2], dict(seed=3, round_index=7)
  whole = pop.train_batches(idx, 2, 4, **kw)
  part = pop.train_batches(idx, 2, 4, block=block, **kw)
  for k, v in whole.items():
    np.testing.assert_array_equal(part[k], v[block])
  hosts = D._HostPopulation(pop)
  rows = hosts.train_batches(idx, 2, 4, **kw)
  assert rows.shape == (4, 2, 4, 16)
  np.testing.assert_array_equal(rows.build(block)["tokens"], whole["tokens"][block])
  assert hosts.blocks == [((4, 2, 4, 16), block)] and hosts.num_participants == 6
