"""FLock LoRA fine-tuning of Llama-3-70B / 3.1-70B on a TPU pod slice or a GPU cluster.

  python launch/train.py --config=configs/pods.py:v5p-64 --workdir=gs://BUCKET/run \
      --config.model.weights=hf:/mnt/llama3-70b
  launch/pod/tpu.sh --tpu=NAME --zone=ZONE --type=v5p-64 --config=configs/pods.py:v5p-64 ...
  sbatch --nodes=2 launch/pod/slurm.sbatch configs/pods.py:16xh100 /shared/run

The part after ':' is `TOPOLOGY[,MODEL][,int8]`:
  TOPOLOGY  v5p-64 (32 chips, 8 hosts), v5e-256 (256 chips, 64 hosts),
            8xh100 (one host), 16xh100 (two hosts of 8)
  MODEL     llama3_70b (default) | llama31_70b
  int8      the frozen base's projections in int8 with per-channel scales
            (LlamaConfig.quantize, flock_jax/model/quant.py); the plan counts 1 byte per weight

The mesh is not written here: it is what the memory plan chooses for this
topology, K = num_proposers clients (the proposers train at once), the
largest per-client batch of 4, 2, 1 that fits, sequence length 2048, remat 'full' and chunked loss
(flock_jax.memory.choose_mesh; `plan(arg)` returns the choice and its reasons).
Weights: a Hugging Face folder every host can read, set with
--config.model.weights=hf:<folder> (or FLOCK_HF_DIR in the environment).
"""

import importlib.util
import os
import pathlib

TOPOLOGIES = ("v5p-64", "v5e-256", "8xh100", "16xh100")
MODELS = ("llama3_70b", "llama31_70b")

# One shape of run for every pod: K = 4 proposers (trained at once), 8 voters, 16 participants;
# the per-client batch is the largest of BATCHES whose plan fits.
PROPOSERS, VOTERS, PARTICIPANTS = 4, 8, 16
BATCHES, SEQ_LEN, LOSS_CHUNK, REMAT = (4, 2, 1), 2048, 512, "full"


def _flock():
  path = pathlib.Path(__file__).with_name("flock.py")
  spec = importlib.util.spec_from_file_location("flock_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def parse(arg: str | None) -> tuple[str, str, bool]:
  """'v5p-64,llama31_70b,int8' -> (topology, model, int8)."""
  parts = [p.strip() for p in (arg or "v5p-64").split(",") if p.strip()]
  topo, model, int8 = parts[0], "llama3_70b", False
  for p in parts[1:]:
    if p in MODELS:
      model = p
    elif p == "int8":
      int8 = True
    else:
      raise ValueError(
          f"configs/pods.py: unknown part {p!r}; use TOPOLOGY[,{'|'.join(MODELS)}][,int8]"
      )
  if topo not in TOPOLOGIES:
    raise ValueError(f"configs/pods.py: unknown topology {topo!r}; choose one of {TOPOLOGIES}")
  return topo, model, int8


def plan(arg: str | None = None):
  """(per-client batch, the memory plan's flock_jax.memory.MeshChoice) for this variant: the
  largest batch of BATCHES for which some mesh fits, and the mesh the plan chooses for it."""
  from flock_jax import memory as M
  from flock_jax.model import LoraConfig, preset

  topo, model, int8 = parse(arg)
  cfg = preset(model).replace(remat=REMAT)
  lcfg = LoraConfig(rank=16, alpha=32.0, targets=tuple(_flock().PROJECTIONS.split(",")))
  for batch in BATCHES:
    choice = M.choose_mesh(
        cfg,
        lcfg,
        M.parse_topology(topo),
        clients=PROPOSERS,
        batch=batch,
        seq_len=SEQ_LEN,
        logits_chunk=LOSS_CHUNK,
        weight_bytes=1 if int8 else None,
    )
    if choice.fits:
      break
  return batch, choice


def get_config(arg: str | None = None):
  topo, model, int8 = parse(arg)
  c = _flock().get_config("llama3_70b")
  c.model.preset = model
  c.model.weights = "hf:" + os.environ.get("FLOCK_HF_DIR", "<set --config.model.weights=hf:FOLDER>")
  c.model.overrides = {"remat": REMAT, **({"quantize": "int8"} if int8 else {})}
  c.model.loss_chunk = LOSS_CHUNK
  c.data.seq_len = SEQ_LEN
  c.federation.num_participants = PARTICIPANTS
  c.federation.num_proposers = PROPOSERS
  c.federation.num_voters = VOTERS
  batch, choice = plan(arg)
  c.federation.batch_size = batch
  c.federation.eval_batch_size = batch
  if not choice.fits:
    raise ValueError(f"configs/pods.py:{arg}: " + "; ".join(choice.reasons))
  c.mesh = dict(choice.mesh)
  return c
