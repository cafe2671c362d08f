"""launch/export.py: run checkpoint -> merged HF model + PEFT adapter, checked in transformers."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import numpy as np
import transformers

from flock_jax.checkpoint import RunCheckpointer, load_hf_checkpoint, load_peft_adapter
from flock_jax.checkpoint.run_state import lora_config_meta
from flock_jax.model import LoraConfig
from tests.checkpoint.helpers import (
    hf_logits,
    our_logits,
    random_hf_model,
    random_lora,
    save_hf,
    tiny_cfg,
    tokens,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _export_module():
  spec = importlib.util.spec_from_file_location("flock_export", ROOT / "launch" / "export.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_export_from_run_checkpoint(tmp_path):
  cfg, lcfg = tiny_cfg(), LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "up"))
  model = random_hf_model(cfg, seed=31)
  base = save_hf(model, tmp_path / "base")
  loras = random_lora(cfg, lcfg, seed=1, clients=2)
  RunCheckpointer(tmp_path / "run").save(
      4, {"global": {"lora": loras}}, {"round": 4, "lora_config": lora_config_meta(lcfg)}
  )

  out = _export_module().run_export(
      str(base),
      run_dir=str(tmp_path / "run"),
      adapter_key="global.lora",
      client=1,
      out_hf=str(tmp_path / "merged"),
      out_peft=str(tmp_path / "adapter"),
  )
  assert set(out) == {"hf", "peft"}

  client1 = jax.tree.map(lambda x: x[1], loras)
  _, params = load_hf_checkpoint(base)
  toks = tokens(cfg)
  want = our_logits(params, toks, cfg, client1, lcfg)
  merged = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  assert np.abs(hf_logits(merged, toks) - want).max() <= 1e-4
  back, back_cfg = load_peft_adapter(tmp_path / "adapter", cfg)
  assert back_cfg == lcfg
  np.testing.assert_array_equal(back["up"]["b"], np.asarray(client1["up"]["b"]))


def test_cli_rejects_missing_flags():
  proc = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "export.py")],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=120,
  )
  assert proc.returncode != 0 and "--base is required" in proc.stderr
