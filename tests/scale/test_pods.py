"""configs/pods.py: every 70B pod config builds and validates, and its mesh is the one the
memory plan chooses, which fits the device's stated memory."""

import pytest

from configs import pods
from flock_jax import memory as M
from flock_jax.model import preset
from flock_jax.run_config import from_config


@pytest.mark.parametrize(
    "variant", ["v5p-64", "v5e-256", "8xh100", "16xh100", "16xh100,llama31_70b", "8xh100,int8"]
)
def test_pod_config_builds_with_the_plans_mesh(variant):
  run = from_config(pods.get_config(variant))
  topo = M.parse_topology(variant.split(",")[0])
  batch, choice = pods.plan(variant)
  assert choice.fits
  mesh = {a: run.mesh.get(a, 1) for a in ("clients", "data", "fsdp", "tensor")}
  assert mesh == choice.mesh
  assert mesh["clients"] * mesh["data"] * mesh["fsdp"] * mesh["tensor"] == topo.chips
  assert run.federation.num_proposers % mesh["clients"] == 0  # K clients split evenly
  assert run.federation.batch_size == batch
  assert run.model.cfg.remat == "full" and run.model.loss_chunk == pods.LOSS_CHUNK
  assert run.model.preset == ("llama31_70b" if "llama31" in variant else "llama3_70b")
  # The stated memory: recompute the plan for the config as built, independently of the choice.
  assert run.model.cfg.quantize == ("int8" if "int8" in variant else "none")
  plan = M.plan_memory(
      preset(run.model.preset).replace(remat="full", quantize=run.model.cfg.quantize),
      run.lora,
      topo,
      mesh,
      clients=run.federation.num_proposers,
      batch=run.federation.batch_size,
      seq_len=run.data.seq_len,
      logits_chunk=run.model.loss_chunk,
  )
  assert plan.total == choice.plan.total
  assert plan.total <= 0.9 * topo.accelerator.hbm_gib * M.GiB


def test_v5e_needs_the_plans_mesh():
  """On v5e-256 the default layout (tensor in a host, fsdp across) does not fit: the config's
  mesh is the plan's choice, not a guess."""
  run = from_config(pods.get_config("v5e-256"))
  topo = M.parse_topology("v5e-256")
  cfg = preset("llama3_70b").replace(remat="full")
  default = M.plan_memory(
      cfg,
      run.lora,
      topo,
      None,
      clients=4,
      batch=run.federation.batch_size,
      seq_len=2048,
      logits_chunk=pods.LOSS_CHUNK,
  )
  assert not default.fits and run.mesh.get("clients", 1) > 1


def test_pod_config_errors():
  with pytest.raises(ValueError, match="unknown topology"):
    pods.get_config("v9-8")
  with pytest.raises(ValueError, match="unknown part"):
    pods.get_config("v5p-64,llama2")


def test_int8_base_lets_the_plan_pick_a_cheaper_mesh_or_batch():
  """On 8 x H100 the int8 base frees half the base's memory; the plan's total drops by it."""
  _, bf16 = pods.plan("8xh100")
  _, int8 = pods.plan("8xh100,int8")
  assert int8.plan.row("frozen base") < 0.55 * bf16.plan.row("frozen base")
  assert int8.plan.total < bf16.plan.total
