"""The per-device memory plan: exact tree rows, the verdict, topologies, and XLA's AOT numbers."""

import jax
import numpy as np
import pytest

from flock_jax import memory as M
from flock_jax import sharding as S
from flock_jax.model import LoraConfig, abstract_params, preset

LCFG = LoraConfig(rank=16)


def _norm_params(cfg):
  return 2 * cfg.num_layers * cfg.hidden_size + cfg.hidden_size


@pytest.mark.parametrize(
    "spec,chips,hosts,kind",
    [
        ("8xh100", 8, 1, "h100"),
        ("h100", 1, 1, "h100"),
        ("16xh200", 16, 2, "h200"),
        ("v5p-64", 32, 8, "v5p"),
        ("v5e-256", 256, 64, "v5e"),
        ("v5litepod-16", 16, 4, "v5e"),
        ("v4-32", 16, 4, "v4"),
        ("v6e-8", 8, 2, "v6e"),
    ],
)
def test_parse_topology(spec, chips, hosts, kind):
  topo = M.parse_topology(spec)
  assert (topo.chips, topo.hosts, topo.accelerator) == (chips, hosts, M.ACCELERATORS[kind])


@pytest.mark.parametrize(
    "spec,match",
    [
        ("v5p-63", "multiple of 2"),
        ("8xh900", "unknown device"),
        ("0xh100", "positive"),
        ("v5p-abc", "unknown device"),
    ],
)
def test_parse_topology_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    M.parse_topology(spec)


def test_parse_mesh():
  assert M.parse_mesh("fsdp:4,tensor:2") == {"fsdp": 4, "tensor": 2}
  with pytest.raises(S.ShardingError, match="unknown mesh axis 'model'"):
    M.parse_mesh("model:8")
  with pytest.raises(S.ShardingError, match="not AXIS:SIZE"):
    M.parse_mesh("fsdp8")


def test_default_mesh_keeps_heads_whole():
  assert M.default_mesh_shape(M.parse_topology("8xh100"), preset("llama3_70b"))["tensor"] == 8
  v5p = M.default_mesh_shape(M.parse_topology("v5p-64"), preset("llama3_70b"))
  assert (v5p["fsdp"], v5p["tensor"]) == (8, 4)
  # SmolLM2's 9 heads: no tensor size in 2..8 divides them, so all FSDP.
  assert M.default_mesh_shape(M.parse_topology("8xh100"), preset("smollm2_135m"))["fsdp"] == 8
  assert M.check_heads(preset("smollm2_135m"), {"tensor": 2})  # warned, though 576 % 2 == 0


def test_plan_70b_on_8xh100_exact_rows():
  cfg = preset("llama3_70b")
  assert cfg.num_params() == sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(cfg))
  )
  plan = M.plan_memory(
      cfg, LCFG, M.parse_topology("8xh100"), {"fsdp": 8}, clients=4, batch=1, seq_len=2048
  )
  # bf16 base, fsdp 8: every matrix split 8 ways, the (tiny) RMSNorm weights replicated.
  norms = _norm_params(cfg)
  assert plan.row("frozen base") == (cfg.num_params() - norms) * 2 // 8 + norms * 2
  # Adapters, float32, K=4: A of q/k/v/gate/up and B of o/down split on their hidden (fsdp)
  # dim; the others' dims are heads/mlp, on 'tensor', which this mesh does not have.
  d, q, kv, f, r, L = 8192, 8192, 1024, 28672, 16, 80
  split = d // 8 * 5 + d // 8 * 2
  whole = (q + 2 * kv + 2 * f) + (q + f)
  assert plan.row("adapters") == 4 * L * r * (split + whole) * 4
  assert plan.row("optimizer") == 2 * plan.row("adapters") + 4 * 4
  assert plan.row("gradients") == plan.row("adapters")
  assert plan.verdict == "FITS" and plan.total < plan.capacity
  huge = M.plan_memory(
      cfg, LCFG, M.parse_topology("8xh100"), {"fsdp": 8}, clients=4, batch=64, seq_len=2048
  )
  assert huge.verdict == "DOES NOT FIT" and "DOES NOT FIT" in M.format_plan(huge)
  assert huge.row("frozen base") == plan.row("frozen base")


def test_plan_tiny_and_remat_ordering():
  cfg = preset("tiny")
  plans = {
      rm: M.plan_memory(
          cfg,
          LoraConfig(rank=4),
          M.parse_topology("8xh100"),
          {"fsdp": 4, "tensor": 2},
          clients=2,
          batch=4,
          seq_len=64,
          remat=rm,
      )
      for rm in ("full", "dots", "none")
  }
  assert plans["full"].row("frozen base") == (
      (cfg.num_params() - _norm_params(cfg)) * 4 // 8 + _norm_params(cfg) * 4
  )
  act = {k: p.row("activations") for k, p in plans.items()}
  assert act["full"] < act["dots"] < act["none"]
  assert "FITS" in M.format_plan(plans["full"])


def test_plan_rejects_indivisible_mesh():
  with pytest.raises(S.ShardingError, match=r"\['embed'\].*576"):
    M.plan_memory(
        preset("smollm2_135m"), LCFG, M.parse_topology("v5e-256"), {"fsdp": 128, "tensor": 2}
    )
  with pytest.raises(S.ShardingError, match="needs 16 devices, the topology has 8"):
    M.plan_memory(preset("tiny"), LCFG, M.parse_topology("8xh100"), {"fsdp": 16})


def test_aot_memory_analysis_tiny_matches_exact_rows():
  cfg, lcfg = preset("tiny", num_layers=1), LoraConfig(rank=4)
  mesh = S.make_mesh({"fsdp": 4, "tensor": 2})
  k, b, t = 2, 4, 16
  res = M.aot_memory_analysis(cfg, lcfg, mesh, clients=k, batch=b, seq_len=t)
  plan = M.plan_memory(
      cfg, lcfg, M.parse_topology("8xh100"), dict(mesh.shape), clients=k, batch=b, seq_len=t
  )
  tokens = 4 * k * (b // 4) * t * 4  # tokens, loss_mask, segment_ids, positions over fsdp
  one_adapter = plan.row("adapters") // k  # G_r: each client's start, not [K]-stacked
  exact = plan.row("frozen base") + one_adapter + plan.row("optimizer")
  # (the [K] PRNG keys feed only LoRA dropout, which is off: XLA drops the unused argument)
  assert res["argument_size_in_bytes"] == exact + tokens
  # The Adam state is donated: its output aliases it.
  assert res["alias_size_in_bytes"] == plan.row("optimizer")
  assert res["temp_size_in_bytes"] > 0
  assert res["cpu_f32_weight_copy_bytes"] == 0  # float32 model: no bf16 upcast on CPU


def test_tpu_topology_needs_libtpu():
  import importlib.util

  if importlib.util.find_spec("libtpu") is not None:
    pytest.skip("libtpu installed: the unavailable path cannot be reached")
  with pytest.raises(RuntimeError, match="libtpu is not installed"):
    M.tpu_topology_mesh(M.parse_topology("v5p-64"), {"fsdp": 32})


def test_launch_script_prints_plan(capsys):
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "launch" / "memory_plan.py"
  spec = importlib.util.spec_from_file_location("memory_plan", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert (
      mod.main(
          [
              "--model=llama3_70b",
              "--mesh=fsdp:8",
              "--device=h100",
              "--clients=1",
              "--batch=1",
              "--seq_len=2048",
              "--skip_aot",
          ]
      )
      == 0
  )
  out = capsys.readouterr().out
  assert "8 x NVIDIA H100 80GB" in out and "mesh fsdp:8" in out and "=> FITS" in out
  assert mod.main(["--model=llama3_8b", "--topology=h100", "--batch=64", "--skip_aot"]) == 0
  assert "DOES NOT FIT" in capsys.readouterr().out


def test_int8_base_counted_exactly():
  """weight_bytes=1: the seven projections at 1 byte plus a float32 scale per output channel
  (flock_jax/model/quant.py's layout), the rest in bf16; on fsdp:8 the scales of o/down
  ([L, D], D on fsdp) are split, those of q/k/v/gate/up (out dims on 'tensor') replicated."""
  cfg = preset("llama3_70b")
  topo = M.parse_topology("8xh100")
  plan16 = M.plan_memory(cfg, LCFG, topo, {"fsdp": 8}, clients=4)
  plan8 = M.plan_memory(cfg, LCFG, topo, {"fsdp": 8}, clients=4, weight_bytes=1)
  d, q, kv, f, L, V = 8192, 8192, 1024, 28672, 80, 128256
  proj = L * (d * q + 2 * d * kv + q * d + 3 * d * f)
  norms = _norm_params(cfg)
  others = cfg.num_params() - proj
  assert others == 2 * V * d + norms
  scales = L * 4 * ((q + 2 * kv + 2 * f) + 2 * d // 8)
  assert plan8.row("frozen base") == proj // 8 + (others - norms) * 2 // 8 + norms * 2 + scales
  assert plan16.row("frozen base") - plan8.row("frozen base") > 0.45 * plan16.row("frozen base")
  assert plan8.row("adapters") == plan16.row("adapters")
  assert plan8.total < plan16.total
  assert M.plan_memory(cfg, LCFG, topo, {"fsdp": 8}, weight_bytes=2).row(
      "frozen base"
  ) == plan16.row(
      "frozen base"
  )  # 2 bytes is the bf16 base itself


def test_choose_mesh_prefers_split_work_that_fits():
  cfg = preset("llama3_70b")
  v5e = M.parse_topology("v5e-256")
  default = M.plan_memory(cfg, LCFG, v5e, clients=4, batch=1, seq_len=2048)
  assert not default.fits  # fsdp:64,tensor:4 replicates 4 clients' activations
  choice = M.choose_mesh(cfg, LCFG, v5e, clients=4, batch=1, seq_len=2048)
  assert choice.fits and choice.plan.total <= choice.plan.usable
  assert choice.mesh["clients"] == 4 and choice.mesh["tensor"] == 4
  assert any("splits the step 16 ways" in r for r in choice.reasons)
  for mesh, plan, why in choice.candidates:  # nothing that fits splits the work more
    if plan is not None and plan.fits:
      assert M.work_split(mesh, 4, 1) <= M.work_split(choice.mesh, 4, 1)
  assert "*" in M.format_choice(choice)
  # Clients never split over an axis they do not divide; heads never split.
  for mesh, _, _ in choice.candidates:
    assert 4 % mesh["clients"] == 0 and cfg.num_kv_heads % mesh["tensor"] == 0


def test_choose_mesh_says_when_nothing_fits():
  choice = M.choose_mesh(
      preset("llama3_70b"), LCFG, M.parse_topology("h100"), clients=1, batch=1, seq_len=2048
  )
  assert not choice.fits and "no mesh of 1 x NVIDIA H100 80GB fits" in choice.reasons[0]


def test_launch_script_chooses_mesh(capsys):
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "launch" / "memory_plan.py"
  spec = importlib.util.spec_from_file_location("memory_plan", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  args = ["--model=llama3_70b", "--topology=v5p-64", "--clients=4", "--skip_aot"]
  assert mod.main(args + ["--choose_mesh", "--weight_bytes=1"]) == 0
  out = capsys.readouterr().out
  assert "mesh choice:" in out and "why:" in out and "float32 scale per output channel" in out
  assert "mesh clients:4" in out and "=> FITS" in out


def test_aot_int8_base_matches_the_plans_int8_row():
  """The engine's step compiled with an int8 base (cfg.quantize): XLA's argument bytes equal
  the plan's rows, whose base row counts 1 byte per projection weight plus the scales."""
  cfg = preset("tiny", num_layers=1, quantize="int8")
  lcfg = LoraConfig(rank=4)
  mesh = S.make_mesh({"fsdp": 4, "tensor": 2})
  k, b, t = 2, 4, 16
  res = M.aot_memory_analysis(cfg, lcfg, mesh, clients=k, batch=b, seq_len=t)
  plan = M.plan_memory(
      cfg, lcfg, M.parse_topology("8xh100"), dict(mesh.shape), clients=k, batch=b, seq_len=t
  )
  float_plan = M.plan_memory(
      cfg.replace(quantize="none"),
      lcfg,
      M.parse_topology("8xh100"),
      dict(mesh.shape),
      clients=k,
      batch=b,
      seq_len=t,
  )
  assert plan.row("frozen base") < float_plan.row("frozen base")  # counted as int8 by default
  tokens = 4 * k * (b // 4) * t * 4
  exact = plan.row("frozen base") + plan.row("adapters") // k + plan.row("optimizer")
  assert res["argument_size_in_bytes"] == exact + tokens
