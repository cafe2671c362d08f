"""Hugging Face safetensors import (sharded, tensor by tensor) and export, against transformers."""

import json

import jax
import numpy as np
import pytest
import transformers
from jax.sharding import PartitionSpec as P

from flock_jax.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from flock_jax.checkpoint.sharded_load import DictSource, params_from_source
from flock_jax.model import RopeScaling, forward
from flock_jax.model.llama import param_axes
from flock_jax.sharding import make_mesh, tree_specs
from tests.checkpoint.helpers import (
    hf_logits,
    random_hf_model,
    save_hf,
    state_dict_numpy,
    tiny_cfg,
    to_v4_config,
    tokens,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def mesh():
  return make_mesh({"fsdp": 2, "tensor": 4})


def _logits(params, cfg, toks):
  return np.asarray(jax.jit(lambda p, t: forward(p, t, cfg))(params, toks))


def _roundtrip(tmp_path, model, cfg, mesh, hf_shard=None, out_shard_bytes=2**30):
  """import -> our logits == HF; export -> transformers reload logits == HF. Returns diffs."""
  src = save_hf(model, tmp_path / "hf", hf_shard)
  got_cfg, params = load_hf_checkpoint(src, mesh=mesh)
  assert got_cfg == cfg
  toks = tokens(cfg)
  ref = hf_logits(model, toks)
  d_import = np.abs(_logits(params, got_cfg, toks) - ref).max()
  out = tmp_path / "out"
  save_hf_checkpoint(params, got_cfg, out, max_shard_bytes=out_shard_bytes)
  reloaded = transformers.LlamaForCausalLM.from_pretrained(str(out)).eval()
  d_export = np.abs(hf_logits(reloaded, toks) - ref).max()
  assert d_import <= TOL and d_export <= TOL, (d_import, d_export)
  return params, out


def test_single_file_roundtrip_sharded(tmp_path, mesh):
  cfg = tiny_cfg()
  params, out = _roundtrip(tmp_path, random_hf_model(cfg, seed=1), cfg, mesh)
  specs = tree_specs(param_axes(cfg), mesh=mesh)
  assert params["layers"]["q"].sharding.spec == specs["layers"]["q"] == P(None, "fsdp", "tensor")
  assert params["embed"].sharding.spec == P("tensor", "fsdp")
  assert sorted(p.name for p in out.iterdir()) == [
      "config.json",
      "generation_config.json",
      "model.safetensors",
  ]
  conf = json.loads((out / "config.json").read_text())
  assert "rope_parameters" in conf and "rope_theta" not in conf  # v5 form


def test_multi_shard_tied_roundtrip(tmp_path, mesh):
  cfg = tiny_cfg(tie_word_embeddings=True, num_layers=3)
  _, out = _roundtrip(
      tmp_path, random_hf_model(cfg, seed=2), cfg, mesh, hf_shard="40KB", out_shard_bytes=60_000
  )
  assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
  index = json.loads((out / "model.safetensors.index.json").read_text())
  files = sorted(out.glob("model-*-of-*.safetensors"))
  assert len(files) > 2 and set(index["weight_map"].values()) == {f.name for f in files}
  assert "lm_head.weight" not in index["weight_map"]
  assert all(f.stat().st_size <= 60_000 + 8_000 for f in files)  # + header; no tensor > 60 kB


def test_v4_config_json_with_llama3_rope(tmp_path, mesh):
  rope = RopeScaling(kind="llama3", factor=8.0, original_max_position_embeddings=16)
  cfg = tiny_cfg(rope_scaling=rope, rope_theta=50000.0)
  model = random_hf_model(cfg, seed=3)
  src = save_hf(model, tmp_path / "hf")
  conf = to_v4_config(src)
  assert conf["rope_theta"] == 50000.0 and "rope_parameters" not in conf
  got_cfg, params = load_hf_checkpoint(src, mesh=mesh)
  assert got_cfg == cfg
  toks = tokens(cfg, (1, 40))
  assert np.abs(_logits(params, got_cfg, toks) - hf_logits(model, toks)).max() <= TOL


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
  import torch

  cfg = tiny_cfg()
  model = random_hf_model(cfg, seed=4).to(torch.bfloat16)
  got_cfg, params = load_hf_checkpoint(save_hf(model, tmp_path / "hf"))
  assert got_cfg.param_dtype == "bfloat16"
  assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(params))
  want = model.state_dict()["model.layers.1.self_attn.k_proj.weight"].float().numpy().T
  np.testing.assert_array_equal(np.asarray(params["layers"]["k"][1], np.float32), want)
  _, p32 = load_hf_checkpoint(tmp_path / "hf", dtype="float32")
  assert p32["embed"].dtype == np.float32


def test_callbacks_read_only_their_shard(mesh):
  """No read is bigger than one device's shard of one layer: the host never holds a whole leaf."""
  cfg = tiny_cfg()
  state = state_dict_numpy(random_hf_model(cfg, seed=5))
  sizes = []

  class Recording(DictSource):

    def read(self, name, index):
      out = super().read(name, index)
      sizes.append((name, out.size, self.tensors[name].size))
      return out

  params = params_from_source(cfg, Recording(state), mesh)
  assert all(n <= full // 4 for _, n, full in sizes if "norm" not in _), sizes[:5]
  np.testing.assert_array_equal(
      np.asarray(params["layers"]["o"][1]), state["model.layers.1.self_attn.o_proj.weight"].T
  )


def test_hub_name_offline_says_pass_a_local_folder(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE=1.*local folder"):
    load_hf_checkpoint("no-such-org/no-such-llama-xyz")
