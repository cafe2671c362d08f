"""Orbax run checkpoints: adapters + optimizer state + JSON meta, sharded, atomic, checked."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flock_jax.checkpoint import CheckpointError, RunCheckpointer
from flock_jax.checkpoint.run_state import lora_config_from_meta, lora_config_meta
from flock_jax.model import LoraConfig, lora_axes
from flock_jax.sharding import make_mesh, tree_shardings
from tests.checkpoint.helpers import random_lora, tiny_cfg

CFG, LCFG = tiny_cfg(), LoraConfig(rank=4, targets=("q", "v", "down"))
META = {"round": 3, "block_hash": "0x" + "ab" * 32, "lora_config": lora_config_meta(LCFG)}


def client_state(mesh, seed=0):
  """Two clients' adapters (nonzero B) and their AdamW states, sharded clients x fsdp."""
  shardings = tree_shardings(lora_axes(CFG, LCFG, clients=True), mesh)
  lora = jax.device_put(random_lora(CFG, LCFG, seed, clients=2), shardings)
  return {"lora": lora, "opt": _opt_state(lora)}


@jax.jit
def _opt_state(lora):
  """AdamW state after one step: nonzero moments, count 1."""
  opt = optax.adamw(1e-3)
  return opt.update(jax.tree.map(jnp.sin, lora), opt.init(lora), lora)[1]


def assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def mesh():
  return make_mesh({"clients": 2, "fsdp": 4})


def test_roundtrip_on_2x4_mesh_and_onto_other_sharding(tmp_path, mesh):
  state = client_state(mesh)
  ck = RunCheckpointer(tmp_path / "run", max_to_keep=2)
  assert ck.latest_step() is None
  for step in (1, 2, 3):
    ck.save(step, state, {**META, "round": step})
  assert ck.steps() == [2, 3] and ck.latest_step() == 3  # max_to_keep dropped step 1

  got, meta = ck.restore(abstract_state=jax.eval_shape(lambda: state))
  assert meta == {**META, "round": 3}
  assert_same(got, state)
  assert got["lora"]["q"]["a"].sharding == state["lora"]["q"]["a"].sharding
  assert got["lora"]["q"]["a"].sharding.spec[0] == "clients"
  assert lora_config_from_meta(meta) == LCFG

  # Restore onto another mesh and layout: all 8 devices on fsdp, clients replicated.
  other = make_mesh({"fsdp": 8})
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=jax.sharding.NamedSharding(other, jax.sharding.PartitionSpec())
      ),
      state,
  )
  got2, _ = RunCheckpointer(tmp_path / "run").restore(2, target)
  assert_same(got2, state)
  assert got2["lora"]["v"]["b"].sharding.mesh.shape["fsdp"] == 8

  # No target: every leaf on one device, same values (used by launch/export.py).
  got3, _ = ck.restore(3)
  np.testing.assert_array_equal(
      np.asarray(got3["lora"]["down"]["b"]), np.asarray(state["lora"]["down"]["b"])
  )


def test_interrupted_save_is_ignored(tmp_path, mesh):
  state = client_state(mesh)
  ck = RunCheckpointer(tmp_path / "run", max_to_keep=3)
  ck.save(1, state, META)
  # What a crash mid-save leaves: orbax's temporary folder for a later step, half written.
  tmp = tmp_path / "run" / "2.orbax-checkpoint-tmp-1700000000"
  shutil.copytree(tmp_path / "run" / "1", tmp)
  for f in tmp.rglob("commit_success.txt"):
    f.unlink()
  ck2 = RunCheckpointer(tmp_path / "run")
  assert ck2.steps() == [1]
  got, meta = ck2.restore(abstract_state=state)
  assert meta["round"] == 3
  assert_same(got, state)


# orbax's reader thread reports "Event loop is closed" after the failed read; harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate_arrays", "delete_state", "delete_meta"])
def test_broken_step_raises_checkpoint_error(tmp_path, mesh, damage):
  state = client_state(mesh)
  run = tmp_path / "run"
  RunCheckpointer(run).save(5, state, META)
  step = run / "5"
  if damage == "truncate_arrays":
    files = [p for p in (step / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
      p.write_bytes(p.read_bytes()[:16])
  elif damage == "delete_state":
    shutil.rmtree(step / "state")
  else:
    shutil.rmtree(step / "meta")
  with (
      RunCheckpointer(run) as ck,
      pytest.raises(CheckpointError, match=r"run/5: checkpoint step 5 is broken"),
  ):
    ck.restore(5, jax.eval_shape(lambda: state))


def test_missing_step_and_bad_meta(tmp_path):
  ck = RunCheckpointer(tmp_path / "run")
  with pytest.raises(CheckpointError, match="no completed checkpoint to restore"):
    ck.restore()
  tree = {"w": jnp.arange(4.0)}
  ck.save(1, tree, {"round": 1})
  with pytest.raises(CheckpointError, match=r"no completed checkpoint for step 7; have \[1\]"):
    ck.restore(7)
  with pytest.raises(CheckpointError, match="step 1 already exists"):
    ck.save(1, tree, {"round": 1})
  with pytest.raises(CheckpointError, match="lora_config"):
    lora_config_from_meta(ck.restore_meta(1), where=pathlib.Path("x"))
