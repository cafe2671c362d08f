"""Every client's adapter and optimizer state on one leading clients axis, trained at once.

  ClientState.adapters   {name: {'a': [C, L, in, r], 'b': [C, L, r, out]}}
  ClientState.opt_state  the optax state of each client's adapter, stacked [C, ...]

The frozen base is a separate, shared argument: it is never copied per client
and has no optimizer state. `make_local_train` returns one jitted function
that runs E local steps (lax.scan) for K selected clients together
(`jax.vmap`, with `spmd_axis_name='clients'` under a mesh that has a clients
axis, so the stacked axis is laid out over that mesh axis: the DrJAX pattern).
`make_client_train` is the same computation for a single client, the
reference the vmapped path is tested (and benchmarked) against.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from flock_jax import sharding as shd
from flock_jax.federated.aggregators import fedprox_penalty
from flock_jax.federated.loss import (
    cpu_train_block,
    target_capacity,
    token_loss,
    with_target_capacity,
)
from flock_jax.model.config import LlamaConfig
from flock_jax.model.llama import Params
from flock_jax.model.lora import LoraConfig, init_lora, lora_axes
from flock_jax.pytree import PyTree


# ------------------------------------------------------------------ stacked state
@flax.struct.dataclass
class ClientState:
  """adapters [C, ...] (each client's latest own adapter) and opt_state [C, ...]."""

  adapters: PyTree
  opt_state: PyTree

  @property
  def num_clients(self) -> int:
    return jax.tree.leaves(self.adapters)[0].shape[0]

  def take(self, idx) -> "ClientState":
    """Rows `idx` (int[K]) of every leaf: the selected clients' state [K, ...]."""
    return _take(self, jnp.asarray(idx, jnp.int32))

  def put(self, idx, rows: "ClientState") -> "ClientState":
    """This state with rows `idx` replaced by `rows` [K, ...]."""
    return _put(self, jnp.asarray(idx, jnp.int32), rows)


# One program per call, not one eager gather/scatter per leaf: on a multi-process
# CPU job each eager op is its own cross-process program, and many small ones in a
# row are where 2-device-per-process runs were seen to hang (docs/scale_out.md).
# idx is traced, so a new selection of the same size never recompiles.
@jax.jit
def _take(state: ClientState, idx: jax.Array) -> ClientState:
  return jax.tree.map(lambda x: x[idx], state)


@jax.jit
def _put(state: ClientState, idx: jax.Array, rows: ClientState) -> ClientState:
  return jax.tree.map(lambda x, y: x.at[idx].set(y), state, rows)


def opt_state_axes(tx: optax.GradientTransformation, adapter_axes: PyTree, opt_abstract: PyTree):
  """Logical axes of a stacked optimizer state: parameter-shaped parts take the adapter's
  axes, the rest (step counts) ('clients',) on their leading axis."""
  names = lambda x: isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)
  return optax.tree_map_params(
      tx,
      lambda _, ax: ax,
      opt_abstract,
      adapter_axes,
      transform_non_params=lambda x: ("clients",) + (None,) * (x.ndim - 1),
      is_leaf=lambda x: names(x) or isinstance(x, jax.ShapeDtypeStruct),
  )


def client_state_shardings(
    cfg: LlamaConfig, lcfg: LoraConfig, tx: optax.GradientTransformation, num_clients: int, mesh
) -> ClientState:
  """NamedShardings of a ClientState: leading axis on the mesh 'clients' axis."""
  abstract = jax.eval_shape(
      lambda: init_client_state(cfg, lcfg, tx, jax.random.key(0), num_clients)
  )
  ad_axes = lora_axes(cfg, lcfg, clients=True)
  axes = ClientState(ad_axes, opt_state_axes(tx, ad_axes, abstract.opt_state))
  return shd.tree_shardings(axes, mesh)


def init_client_state(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    tx: optax.GradientTransformation,
    key: jax.Array,
    num_clients: int,
    global_lora: PyTree | None = None,
    mesh=None,
) -> ClientState:
  """C clients, each holding `global_lora` (default: a fresh adapter from `key`) and a fresh
  optimizer state; placed on `mesh`'s clients axis when a mesh is given."""

  def make(key):
    g = init_lora(cfg, lcfg, key) if global_lora is None else global_lora
    ad = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + x.shape), g)
    return ClientState(ad, jax.vmap(tx.init)(ad))

  if mesh is None:
    return jax.jit(make)(key)
  out = client_state_shardings(cfg, lcfg, tx, num_clients, mesh)
  return jax.jit(make, out_shardings=out)(key)


@functools.partial(jax.jit, static_argnames=("tx", "num_clients"))
def fresh_opt_state(tx: optax.GradientTransformation, global_lora: PyTree, num_clients: int):
  """[K]-stacked fresh optimizer states of K clients that start from `global_lora`
  (client_state='fresh': nothing is kept per participant between rounds)."""
  ad = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + x.shape), global_lora)
  return jax.vmap(tx.init)(ad)


# ------------------------------------------------------------------ local training
def fuses_head(fused_head: bool | None = None) -> bool:
  """Whether local training forms the lm head's gradient in its forward pass
  (loss.fused_nll_sum): as asked, or by default on the CPU, where a block's logits stay in
  cache, unless the current mesh splits a client's rows (data or fsdp > 1), which the blocks
  would cross. Accelerators keep autodiff's form."""
  if fused_head is not None:
    return fused_head
  mesh = jax.sharding.get_abstract_mesh()
  split = 1 if mesh.empty else mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
  return jax.default_backend() == "cpu" and split == 1


def _client_steps(
    base: Params,
    start: PyTree,
    opt_state: PyTree,
    batches: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    tx: optax.GradientTransformation,
    mu: float,
    chunk_size: int | None,
    target_fraction: float | None = None,
    side_by_side: int = 1,
    fused_head: bool | None = None,
):
  """One client, E steps from `start`: batches leaves [E, B, T] ->
  (adapter, delta = adapter - start, opt_state, losses [E]). `target_fraction`: the lm head
  at target_capacity(target_fraction, B, T) positions (every batch's targets must fit).
  `fused_head`: the lm head's gradient formed in its forward pass, in blocks of positions
  (`fuses_head`; None: where it pays); `side_by_side`: clients vmapped beside this one on
  its device (the blocks' size counts them)."""
  num_steps, b, t = batches["tokens"].shape
  capacity = target_capacity(target_fraction, b, t)
  fused = fuses_head(fused_head) and chunk_size is None  # loss_chunk: its own blocks
  head_block = cpu_train_block(cfg, side_by_side, capacity or b * t) if fused else None

  def step(carry, xs):
    lora, opt = carry
    batch, k = xs
    drop = k if lcfg.dropout > 0 else None

    def objective(l):
      loss = token_loss(
          base,
          l,
          batch,
          cfg,
          lcfg,
          dropout_key=drop,
          chunk_size=chunk_size,
          capacity=capacity,
          fused=fused,
          head_block=head_block,
      )
      total = (loss + fedprox_penalty(l, start, mu)) if mu > 0 else loss
      return total, loss

    (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(lora)
    updates, opt = tx.update(grads, opt, lora)
    return (optax.apply_updates(lora, updates), opt), loss

  keys = jax.random.split(key, num_steps)
  (lora, opt), losses = jax.lax.scan(step, (start, opt_state), (batches, keys))
  delta = jax.tree.map(lambda w, s: w - s, lora, start)
  return lora, delta, opt, losses


def make_local_train(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    tx: optax.GradientTransformation,
    *,
    mu: float = 0.0,
    chunk_size: int | None = None,
    donate: bool = True,
    target_fraction: float | None = None,
    fused_head: bool | None = None,
) -> Callable:
  """The jitted local training of K clients at once:

    local_train(base, start, opt_states [K], batches {key: [K, E, B, T]}, keys [K],
                start_stacked=False)
      -> (adapters [K], deltas [K] = adapters - start, opt_states [K], train_loss [K, E])

  `start` is G_r (one adapter, broadcast to every client), or with
  `start_stacked=True` a [K]-stacked adapter (each client from its own, for
  the 'local' baseline). E and K come from the batch shapes (static under jit).
  opt_states is donated (its buffers are reused for the result).

  `target_fraction` (the most weighted targets a batch of the run holds, over B*T;
  Population.target_fraction): the lm head at the targets only, wherever a call's batches
  fit (loss.with_target_capacity; the whole sequence otherwise, a second program).
  `fused_head`: see `_client_steps` (None: on the CPU).
  """

  def jitted(fraction):
    one = functools.partial(
        _client_steps,
        cfg=cfg,
        lcfg=lcfg,
        tx=tx,
        mu=mu,
        chunk_size=chunk_size,
        target_fraction=fraction,
        fused_head=fused_head,
    )

    def local_train(base, start, opt_states, batches, keys, start_stacked: bool = False):
      axis = shd.clients_axis_for(keys.shape[0])
      split = jax.sharding.get_abstract_mesh().shape["clients"] if axis else 1
      fn = jax.vmap(
          functools.partial(one, side_by_side=keys.shape[0] // split),
          in_axes=(None, 0 if start_stacked else None, 0, 0, 0),
          spmd_axis_name=axis,
      )
      return fn(base, start, opt_states, batches, keys)

    return jax.jit(
        local_train, static_argnames=("start_stacked",), donate_argnums=(2,) if donate else ()
    )

  full = jitted(None)
  if target_fraction is None:
    return full
  return with_target_capacity(jitted(target_fraction), full, target_fraction, batch_arg=3)


def make_client_train(
    cfg: LlamaConfig,
    lcfg: LoraConfig,
    tx: optax.GradientTransformation,
    *,
    mu: float = 0.0,
    chunk_size: int | None = None,
) -> Callable:
  """Jitted single-client reference: (base, start, opt_state, batches {key: [E, B, T]}, key)
  -> (adapter, delta, opt_state, losses [E])."""
  return jax.jit(
      functools.partial(_client_steps, cfg=cfg, lcfg=lcfg, tx=tx, mu=mu, chunk_size=chunk_size)
  )


def local_train_loop(
    client_train: Callable, base, start, opt_states, batches, keys, start_stacked: bool = False
):
  """The same result as `local_train`, one client at a time (a Python loop)."""
  k = keys.shape[0]
  outs = []
  for i in range(k):
    row = lambda t: jax.tree.map(lambda x: x[i], t)
    outs.append(
        client_train(
            base, row(start) if start_stacked else start, row(opt_states), row(batches), keys[i]
        )
    )
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
