"""One FLock run over many hosts: `jax.distributed` set-up, the leader, and what it shares.

A pod slice or a GPU cluster runs one process per host (multi-controller
JAX): every process runs the same round loop on its own devices, and jitted
steps over a mesh that spans all hosts are one SPMD program. What must *not*
be done by every process is anything with a side effect outside the devices:

- Only process 0, the **leader**, talks to the chain, writes metrics, the
  adapter store, summary.json and the audit. `FollowerLedger` is the `Ledger`
  every process holds: on the leader it forwards each call to the real ledger
  and broadcasts the answer (or the `LedgerError`); followers return that
  answer. The round loop therefore runs unchanged, in lockstep, everywhere.
- Hashing and aggregation need the adapter bytes on the host: `fetch` gathers
  exactly the leaves it is given (the adapters, a few MB) with
  `process_allgather`, never the base.
- Data: `global_batch` turns a batch into one global array from the rows each
  host owns (`jax.make_array_from_process_local_data`); `process_rows` says
  which rows those are, so a host can build only them.
- Orbax checkpoints are collective: every process calls save/restore and
  writes its own shards; orbax writes the JSON item from the primary host.

`initialize` reads the cluster from flags or the environment (`cluster_env`):
explicit `--coordinator/--num_processes/--process_id` (or FLOCK_COORDINATOR,
FLOCK_NUM_PROCESSES, FLOCK_PROCESS_ID), FLOCK_CLUSTER=tpu|slurm|auto (set by
launch/pod/*: jax's own cluster detection), SLURM (srun sets SLURM_*), or a Cloud
TPU pod slice (TPU_WORKER_HOSTNAMES / TPU_WORKER_ID; jax asks the metadata
server). One process and no cluster: nothing to initialise.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import pickle
from typing import Any, Callable, Mapping

import jax
import numpy as np

from flock_jax.pytree import PyTree

# ------------------------------------------------------------------ the cluster


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How this process joins the job. kind: 'single' | 'explicit' | 'slurm' | 'tpu' | 'auto'."""

  kind: str
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  @property
  def multi(self) -> bool:
    return self.kind != "single"

  def initialize_kwargs(self) -> dict:
    """Arguments of `jax.distributed.initialize` (None: jax's own cluster detection fills it)."""
    if self.kind == "explicit":
      return dict(
          coordinator_address=self.coordinator,
          num_processes=self.num_processes,
          process_id=self.process_id,
      )
    # SLURM and Cloud TPU: jax's ClusterEnv reads SLURM_* / the TPU metadata itself.
    return {}


def _int(env: Mapping[str, str], name: str) -> int | None:
  v = env.get(name)
  if v in (None, ""):
    return None
  try:
    return int(v)
  except ValueError:
    raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def cluster_env(
    env: Mapping[str, str] | None = None,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ClusterSpec:
  """Which cluster this process is in: flags first, then FLOCK_* variables, SLURM, Cloud TPU.

  An explicit coordinator needs all three of address, process count and id; a
  single process (num_processes 1, a SLURM step of one task, one TPU host)
  needs no `jax.distributed` at all.
  """
  env = os.environ if env is None else env
  coordinator = coordinator or env.get("FLOCK_COORDINATOR") or None
  num_processes = num_processes if num_processes is not None else _int(env, "FLOCK_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _int(env, "FLOCK_PROCESS_ID")
  if coordinator or num_processes not in (None, 1) or process_id not in (None, 0):
    missing = [
        n
        for n, v in (
            ("coordinator", coordinator),
            ("num_processes", num_processes),
            ("process_id", process_id),
        )
        if v is None
    ]
    if missing:
      raise ValueError(
          f"an explicit multi-process run needs --coordinator, --num_processes and "
          f"--process_id (or FLOCK_COORDINATOR, FLOCK_NUM_PROCESSES, FLOCK_PROCESS_ID); "
          f"missing {missing}"
      )
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
    if num_processes == 1:
      return ClusterSpec("single")
    return ClusterSpec("explicit", coordinator, num_processes, process_id)
  forced = env.get("FLOCK_CLUSTER", "")
  if forced:  # set by launch/pod/*: jax's own detection (TPU metadata server, SLURM_*) fills in
    if forced not in ("tpu", "slurm", "auto"):
      raise ValueError(f"FLOCK_CLUSTER={forced!r}: use tpu, slurm or auto")
    return ClusterSpec(forced)
  ntasks = _int(env, "SLURM_NTASKS") or _int(env, "SLURM_NPROCS")
  if env.get("SLURM_JOB_ID") and ntasks and ntasks > 1:
    return ClusterSpec("slurm", None, ntasks, _int(env, "SLURM_PROCID"))
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1:
    return ClusterSpec("tpu", None, len(hosts), _int(env, "TPU_WORKER_ID"))
  return ClusterSpec("single")


def initialize(spec: ClusterSpec | None = None, **flags) -> ClusterSpec:
  """`jax.distributed.initialize` for `spec` (default: `cluster_env(**flags)`), before any
  other JAX call touches a backend. Idempotent; a single process initialises nothing."""
  spec = spec or cluster_env(**flags)
  if spec.multi and not jax.distributed.is_initialized():
    use_cpu_collectives()  # only read by the CPU backend (tests, CPU clusters)
    jax.distributed.initialize(**spec.initialize_kwargs())
  return spec


def use_cpu_collectives() -> None:
  """Cross-process collectives on CPU (tests, a CPU cluster): gloo, before the backend starts.

  CPU programs also run synchronously: with async dispatch two eager programs that both
  communicate (e.g. the scatters of `ClientState.put`, leaf after leaf) can run at once and
  pair their gloo messages differently on each process; seen as a hang in round 1 of a
  2-process run. GPU and TPU run one device's programs in order, so they are unaffected.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_cpu_enable_async_dispatch", False)


# ------------------------------------------------------------------ the leader
def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_leader() -> bool:
  """Process 0: the one that talks to the chain and writes the run's files."""
  return jax.process_index() == 0


def leader_only(fn: Callable) -> Callable:
  """`fn` runs on the leader; followers return None at once (no communication)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    return fn(*args, **kwargs) if is_leader() else None

  return wrapped


def on_leader(obj):
  """`obj` on the leader, None on followers (e.g. the adapter store, the metrics file)."""
  return obj if is_leader() else None


def _bucket(n: int) -> int:
  """Payload sizes rounded up to a power of two (>= 256): a few compiled broadcasts, not one
  per length."""
  return max(256, 1 << (max(n, 1) - 1).bit_length())


def broadcast(obj: Any = None) -> Any:
  """The leader's `obj` on every process (any picklable value; followers pass anything).

  Two collectives: the pickled length, then the bytes padded to a power of two. One process:
  `obj` itself. The payload is the leader's own pickle inside one job, so it is trusted.
  """
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils

  data = pickle.dumps(obj, protocol=5) if is_leader() else b""
  n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
  buf = np.zeros(_bucket(n), np.uint8)
  buf[: len(data)] = np.frombuffer(data, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return obj if is_leader() else pickle.loads(out[:n].tobytes())


def sync(name: str) -> None:
  """Every process waits here until all have arrived (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------ the chain
@dataclasses.dataclass
class _Raised:
  """An exception the leader's ledger raised, carried to the followers as its class, args and
  attributes (an exception whose __init__ takes other arguments than its args, like web3's,
  does not survive pickle itself)."""

  cls: type
  args: tuple
  attrs: dict

  @classmethod
  def of(cls, e: BaseException) -> "_Raised":
    attrs = {}
    for k, v in vars(e).items():
      try:
        pickle.dumps(v)
        attrs[k] = v
      except Exception:  # noqa: BLE001 - drop what cannot travel (e.g. a connection)
        pass
    return cls(type(e), tuple(e.args), attrs)

  def error(self) -> BaseException:
    err = self.cls.__new__(self.cls)
    err.args = self.args
    err.__dict__.update(self.attrs)
    return err


def _protocol_members() -> tuple[frozenset, frozenset]:
  """(methods, properties) of the Ledger protocol, read from the class itself so that a new
  protocol method is shared without touching this file."""
  from flock_jax.federated.ledger import Ledger

  methods, props = set(), set()
  for name, value in inspect.getmembers(Ledger):
    if name.startswith("_"):
      continue
    if isinstance(value, property):
      props.add(name)
    elif callable(value):
      methods.add(name)
  return frozenset(methods), frozenset(props)


class FollowerLedger:
  """The `Ledger` of a multi-host run, held by every process.

  On the leader, `inner` is the real ledger (a FlockTask on eth-tester or a
  JSON-RPC node, or the LocalLedger); every protocol call runs on it and its
  answer (roles, outcomes, block hashes, or the LedgerError it raised) is
  broadcast. Followers have `inner = None` and return the broadcast answer,
  so each process sees exactly what the chain said to the leader. Every process
  must make the same calls in the same order, which the round loop does: it
  is the same program everywhere. With one process it is the ledger itself.
  """

  def __init__(self, inner=None):
    if is_leader() and inner is None:
      raise ValueError("FollowerLedger: the leader (process 0) needs the real ledger")
    self.inner = inner if is_leader() else None
    self._methods, self._props = _protocol_members()

  def _call(self, name: str, *args, **kwargs):
    out = None
    if self.inner is not None:
      try:
        attr = getattr(self.inner, name)
        out = attr(*args, **kwargs) if name in self._methods else attr
      except Exception as e:  # noqa: BLE001 - every process raises what the leader got
        self._last_error = e
        out = _Raised.of(e)
    out = broadcast(out)
    if isinstance(out, _Raised):
      if self.inner is not None:
        raise getattr(self, "_last_error")
      raise out.error()
    return out

  def __getattr__(self, name):
    if name.startswith("_") or name == "inner":
      raise AttributeError(name)
    if name in self._props:
      return self._call(name)
    if name in self._methods:
      return functools.partial(self._call, name)
    raise AttributeError(
        f"FollowerLedger shares only the Ledger protocol; {name!r} is not in it "
        "(use `.inner` on the leader, e.g. for the audit)"
    )


def shared_ledger(make: Callable[[], Any]):
  """The ledger of this run on every process: `make()` itself with one process; with several,
  a FollowerLedger over `make()`, which only the leader calls (it deploys or attaches)."""
  if jax.process_count() == 1:
    return make()
  return FollowerLedger(make() if is_leader() else None)


def unwrap(ledger):
  """The real ledger behind a FollowerLedger (None on followers); any other ledger as is."""
  return ledger.inner if isinstance(ledger, FollowerLedger) else ledger


# ------------------------------------------------------------------ arrays
def fetch(tree: PyTree) -> PyTree:
  """Host numpy copies of `tree`'s leaves, the same on every process.

  A leaf whose shards all live on this process is copied; one that spans hosts
  (e.g. adapters split over 'fsdp' across hosts) is gathered with
  `process_allgather`. Only the leaves given travel: call it on adapters and
  updates, never on the base.
  """
  from jax.experimental import multihost_utils

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x) if isinstance(x, jax.Array) else x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def gather(tree: PyTree) -> PyTree:
  """`tree` with every leaf that spans hosts replaced by its host numpy value (`fetch`), the
  rest untouched: the identity in a single process, so single-host runs are unchanged."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(
      lambda x: fetch(x)
      if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated)
      else x,
      tree,
  )


def checkpointable(tree: PyTree) -> PyTree:
  """A run-state tree orbax can save (or restore into) from many hosts: global arrays stay (each
  host writes its shards), per-host copies (an array on one local device, equal on every host:
  G, the PRNG key, the ledger bytes) become numpy, which orbax writes once from the primary
  host; so do restore targets (ShapeDtypeStructs) on one device. Identity with one process."""
  if jax.process_count() == 1:
    return tree

  def per_host(x) -> bool:
    sharding = getattr(x, "sharding", None)
    return sharding is not None and len(sharding.device_set) < len(jax.devices())

  def one(x):
    if isinstance(x, jax.Array) and per_host(x) and x.is_fully_addressable:
      return np.asarray(x)
    if isinstance(x, jax.ShapeDtypeStruct) and per_host(x):  # a restore target: numpy back
      return np.zeros(x.shape, x.dtype)
    return x

  return jax.tree.map(one, tree)


def process_rows(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> tuple[slice, ...]:
  """The block of a global array of `shape` this process's devices hold under `sharding`
  (one slice per dimension): the rows a host has to build."""
  idx = list(sharding.addressable_devices_indices_map(tuple(shape)).values())
  out = []
  for d, n in enumerate(shape):
    lo = min((s[d].indices(n)[0] for s in idx), default=0)
    hi = max((s[d].indices(n)[1] for s in idx), default=n)
    out.append(slice(lo, hi))
  return tuple(out)


def global_batch(batch: Mapping[str, Any], sharding: jax.sharding.Sharding, build=None) -> dict:
  """{key: global jax.Array} from this host's rows only.

  `batch` maps each key to either the full global numpy array (every host may
  compute the token batch cheaply; only its block is sent to its devices) or,
  with `build`, to the global shape: then `build(key, slices)` makes just this
  host's block. Both go through `jax.make_array_from_process_local_data`.
  """
  out = {}
  for k, v in batch.items():
    shape = tuple(v) if build is not None else tuple(np.shape(v))
    rows = process_rows(sharding, shape)
    local = build(k, rows) if build is not None else np.asarray(v)[rows]
    out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(local), shape)
  return out


# ------------------------------------------------------------------ the engine
def batch_sharding(mesh, shape: tuple[int, ...]):
  """Sharding of a training batch leaf [K, E, B, T]: clients over 'clients', rows over
  ('data', 'fsdp') when they divide (as the step's own constraints do), else replicated."""
  from jax.sharding import NamedSharding, PartitionSpec as P

  from flock_jax import sharding as shd

  spec = shd.logical_to_spec(("clients", None, "batch", "length"), mesh=mesh)
  dims = []
  for axes, n in zip(spec, shape):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    dims.append(axes if n % size == 0 else None)
  return NamedSharding(mesh, P(*dims))


@dataclasses.dataclass(frozen=True)
class HostRows:
  """A local-training batch not built yet: the global shape [K, E, B, T] of each key and
  `build(block)`, which makes only `block` (one slice per dimension) of every key."""

  shape: tuple[int, int, int, int]
  build: Callable[[tuple[slice, ...]], dict]


class _HostPopulation:
  """A population whose `train_batches` returns `HostRows`: each host later builds only the
  block of the batch its devices hold (clients k0..k1, and rows of B when B is split)."""

  def __init__(self, population):
    self._population = population
    self.blocks: list[tuple[tuple[int, ...], tuple[slice, ...]]] = []  # (shape, block) built

  def _build(self, build, shape, rows):
    self.blocks.append((shape, rows))
    return build(block=rows)

  def __getattr__(self, name):
    return getattr(self._population, name)

  def train_batches(self, idx, num_steps, batch_size, *, seed, round_index):
    pop = self._population
    shape = (len(idx), num_steps, batch_size, pop.seq_len())
    build = functools.partial(
        pop.train_batches, idx, num_steps, batch_size, seed=seed, round_index=round_index
    )
    return HostRows(shape, functools.partial(self._build, build, shape))


def for_hosts(engine):
  """The engine of a multi-host run (the engine itself with one process).

  Its population hands out `HostRows`, and its `local_train` builds only this
  host's block of the batch ([K, E, B, T] split as `batch_sharding` says,
  through `jax.make_array_from_process_local_data`) and returns the deltas and
  losses gathered to every host (`gather`), ready for hashing and aggregation;
  the new adapters and optimizer states stay sharded.
  """
  if jax.process_count() == 1:
    return engine
  inner = engine.local_train

  def local_train(base, start, opt_states, batches, keys, start_stacked=False):
    if isinstance(batches, HostRows):
      if engine.mesh is None:
        batches = batches.build((slice(None),) * 4)
      else:
        sharding = batch_sharding(engine.mesh, batches.shape)
        local = batches.build(process_rows(sharding, batches.shape))
        batches = {
            k: jax.make_array_from_process_local_data(sharding, v, batches.shape)
            for k, v in local.items()
        }
    elif engine.mesh is not None:
      shape = np.shape(batches["tokens"])
      batches = global_batch(batches, batch_sharding(engine.mesh, shape))
    adapters, deltas, opt, losses = inner(
        base, start, opt_states, batches, keys, start_stacked=start_stacked
    )
    return adapters, gather(deltas), opt, gather(losses)

  return dataclasses.replace(
      engine, local_train=local_train, population=_HostPopulation(engine.population)
  )
