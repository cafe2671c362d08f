"""PEFT adapter export/import against the peft library, and merge == unmerged forward."""

import json

import jax
import numpy as np
import pytest
import transformers
from peft import PeftModel

from flock_jax.checkpoint import (
    CheckpointError,
    load_peft_adapter,
    params_from_state_dict,
    save_hf_checkpoint,
    save_peft_adapter,
)
from flock_jax.model import LoraConfig, init_lora, merge
from tests.checkpoint import helpers
from tests.checkpoint.helpers import (
    hf_logits,
    our_logits,
    random_hf_model,
    state_dict_numpy,
    tiny_cfg,
    tokens,
)

CFG = tiny_cfg()
TOL = 1e-4


def random_lora(lcfg, seed=0):
  return helpers.random_lora(CFG, lcfg, seed)


@pytest.fixture(scope="module")
def base():
  model = random_hf_model(CFG, seed=11)
  return model, params_from_state_dict(state_dict_numpy(model), CFG)


@pytest.mark.parametrize(
    "lcfg",
    [
        LoraConfig(rank=4, alpha=8.0),
        LoraConfig(rank=3, alpha=5.0, targets=("q", "v", "down"), rslora=True),
    ],
    ids=["all7_r4", "qvdown_rslora"],
)
def test_peft_loads_our_adapter_with_same_logits(tmp_path, base, lcfg):
  model, params = base
  lora = random_lora(lcfg)
  save_peft_adapter(lora, lcfg, CFG, tmp_path / "adapter", base_model_name_or_path="tiny-base")
  conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert conf["peft_type"] == "LORA" and conf["task_type"] == "CAUSAL_LM"
  assert conf["r"] == lcfg.rank and conf["use_rslora"] == lcfg.rslora
  peft_model = PeftModel.from_pretrained(model, str(tmp_path / "adapter")).eval()
  toks = tokens(CFG)
  ref = hf_logits(peft_model, toks)
  ours = our_logits(params, toks, CFG, lora, lcfg)
  base_logits = our_logits(params, toks, CFG)
  assert np.abs(ref - base_logits).max() > 1e-2  # the adapter really changes the output
  assert np.abs(ours - ref).max() <= TOL, np.abs(ours - ref).max()
  peft_model.unload()  # leave the shared base model as it was

  back, back_cfg = load_peft_adapter(tmp_path / "adapter", CFG)
  assert back_cfg == lcfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), lora, back)


def test_merge_equals_unmerged_and_exports_to_transformers(tmp_path, base):
  _, params = base
  lcfg = LoraConfig(rank=4, alpha=16.0)
  lora = random_lora(lcfg, seed=3)
  toks = tokens(CFG)
  unmerged = our_logits(params, toks, CFG, lora, lcfg)
  merged = jax.jit(lambda p, l: merge(p, l, lcfg))(params, lora)
  assert np.abs(our_logits(merged, toks, CFG) - unmerged).max() <= TOL
  save_hf_checkpoint(merged, CFG, tmp_path / "merged")
  hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  assert np.abs(hf_logits(hf, toks) - unmerged).max() <= TOL


def test_zero_b_gives_base_logits_exactly(base):
  _, params = base
  lcfg = LoraConfig(rank=4)
  lora = jax.jit(lambda k: init_lora(CFG, lcfg, k))(jax.random.key(0))
  assert all(not np.any(np.asarray(ab["b"])) for ab in lora.values())
  assert all(np.any(np.asarray(ab["a"])) for ab in lora.values())
  toks = tokens(CFG)
  np.testing.assert_array_equal(
      our_logits(params, toks, CFG, lora, lcfg), our_logits(params, toks, CFG)
  )


def test_bad_adapters_are_named(tmp_path):
  lcfg = LoraConfig(rank=2, targets=("q", "k"))
  lora = random_lora(lcfg)
  save_peft_adapter(lora, lcfg, CFG, tmp_path / "a")
  with pytest.raises(
      CheckpointError,
      match=r"tensor .*layers\.0\.self_attn\.q_proj\.lora_A"
      r"\.weight has shape \[2, 64\], expected \[2, 32\]",
  ):
    load_peft_adapter(tmp_path / "a", tiny_cfg(hidden_size=32, intermediate_size=48))
  conf_path = tmp_path / "a" / "adapter_config.json"
  conf = json.loads(conf_path.read_text())
  conf_path.write_text(json.dumps({**conf, "use_dora": True}))
  with pytest.raises(CheckpointError, match="use_dora=True is not supported"):
    load_peft_adapter(tmp_path / "a", CFG)
  conf_path.write_text(json.dumps({**conf, "target_modules": ["q_proj"]}))
  with pytest.raises(CheckpointError, match=r"unexpected tensor.*k_proj"):
    load_peft_adapter(tmp_path / "a", CFG)
  with pytest.raises(CheckpointError, match="clients axis"):
    save_peft_adapter(helpers.random_lora(CFG, lcfg, clients=2), lcfg, CFG, tmp_path / "b")
