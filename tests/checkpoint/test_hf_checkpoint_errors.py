"""Bad checkpoints fail whole, before any array is allocated, with the file and tensor named."""

import json

import pytest
from safetensors.numpy import save_file

from flock_jax.checkpoint import CheckpointError, load_hf_checkpoint
from flock_jax.checkpoint import hf_load
from tests.checkpoint.helpers import random_hf_model, state_dict_numpy, tiny_cfg

CFG = tiny_cfg()


@pytest.fixture(scope="module")
def state():
  return state_dict_numpy(random_hf_model(CFG, seed=7))


@pytest.fixture(autouse=True)
def no_allocation(monkeypatch):
  """Any attempt to build arrays means validation let a bad checkpoint through."""

  def boom(*a, **k):
    raise AssertionError("params were allocated for a bad checkpoint")

  monkeypatch.setattr(hf_load, "params_from_source", boom)


def write(folder, tensors, conf=None, shards=1):
  folder.mkdir()
  hf = conf or CFG.to_hf_dict()
  (folder / "config.json").write_text(json.dumps(hf))
  names = sorted(tensors)
  if shards == 1:
    save_file(tensors, str(folder / "model.safetensors"))
    return folder
  weight_map = {}
  for i in range(shards):
    fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = names[i::shards]
    save_file({n: tensors[n] for n in part}, str(folder / fname))
    weight_map.update(dict.fromkeys(part, fname))
  (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return folder


def test_missing_tensor(tmp_path, state):
  bad = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(CheckpointError, match=r"missing tensor.*layers\.1\.mlp\.up_proj"):
    load_hf_checkpoint(write(tmp_path / "c", bad, shards=2))


def test_extra_tensor(tmp_path, state):
  bad = {
      **state,
      "model.layers.2.self_attn.q_proj.weight": state["model.layers.0.self_attn.q_proj.weight"],
  }
  with pytest.raises(
      CheckpointError, match=r"model\.safetensors: unexpected.*layers\.2\.self_attn"
  ):
    load_hf_checkpoint(write(tmp_path / "c", bad))


def test_shape_disagrees_with_config(tmp_path, state):
  conf = {**CFG.to_hf_dict(), "intermediate_size": 128}
  with pytest.raises(
      CheckpointError,
      match=r"model\.safetensors: tensor model\.layers\.0\.mlp\.\w+_proj\.weight "
      r"has shape \[\d+, \d+\] but config\.json implies",
  ):
    load_hf_checkpoint(write(tmp_path / "c", state, conf))


def test_unknown_architecture(tmp_path, state):
  conf = {**CFG.to_hf_dict(), "model_type": "mistral", "architectures": ["MistralForCausalLM"]}
  with pytest.raises(CheckpointError, match=r"config\.json: unsupported architecture.*mistral"):
    load_hf_checkpoint(write(tmp_path / "c", state, conf))


def test_truncated_shard(tmp_path, state):
  folder = write(tmp_path / "c", state, shards=3)
  shard = folder / "model-00002-of-00003.safetensors"
  data = shard.read_bytes()
  shard.write_bytes(data[: len(data) - 100])
  with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors: corrupt or trunc"):
    load_hf_checkpoint(folder)


def test_garbage_header(tmp_path, state):
  folder = write(tmp_path / "c", state)
  data = bytearray((folder / "model.safetensors").read_bytes())
  data[8:40] = b"\x00" * 32
  (folder / "model.safetensors").write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
    load_hf_checkpoint(folder)


def test_index_names_wrong_file_or_missing_file(tmp_path, state):
  folder = write(tmp_path / "c", state, shards=2)
  index = json.loads((folder / "model.safetensors.index.json").read_text())
  name = "model.embed_tokens.weight"
  other = [f for f in set(index["weight_map"].values()) if f != index["weight_map"][name]][0]
  index["weight_map"][name] = other
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match=r"maps model\.embed_tokens\.weight to .* but it is "):
    load_hf_checkpoint(folder)
  index["weight_map"][name] = "model-00009-of-00009.safetensors"
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match=r"shard files that do not exist.*00009"):
    load_hf_checkpoint(folder)


def test_no_weights_and_not_a_folder(tmp_path):
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "config.json").write_text(json.dumps(CFG.to_hf_dict()))
  with pytest.raises(CheckpointError, match="neither model.safetensors nor"):
    load_hf_checkpoint(tmp_path / "c")
  (tmp_path / "f.bin").write_bytes(b"x")
  with pytest.raises(CheckpointError, match="not a checkpoint folder"):
    load_hf_checkpoint(tmp_path / "f.bin")
