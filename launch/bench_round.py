"""One whole FLock round in flock_jax against the same round as an OpenFedLLM-style torch loop.

  python launch/bench_round.py --model=tiny|smollm2 --dtype=float32|bfloat16 [--rounds=2]
  python launch/bench_round.py --model=tiny --breakdown=10,100,1000   # round-time breakdown
  python launch/bench_round.py --model=smollm2 --breakdown=10,100,1000 --client_state=fresh

Both sides do the same work on the same tokens, in one process, rounds interleaved:
  flock_jax  engine.build + rounds.flock_round on the 'local' ledger (no EVM): P proposers
             train E AdamW steps on [B, T] batches (vmapped, one jitted call), the candidate
             is aggregated and hashed, V voters score G_r and C_r on n held-out [B, T]
             batches (L_j(G_r) comes from the (voter, hash) cache when G did not change);
             per-domain reporting off (config.eval.every=0).
  peer       Hugging Face transformers LlamaForCausalLM + peft (torch, --threads threads),
             the OpenFedLLM loop: per proposer load the global adapter, train E steps with
             a fresh AdamW (the same clipping), return the adapter; FedAvg; each voter
             computes its held-out loss of the old and of the candidate adapter.
Roles and batches of the peer's round r are those flock_jax drew for round r. bfloat16:
flock_jax stores the base in bf16 and computes in bf16 with float32 accumulation (f32
LoRA masters and optimizer state); torch runs under CPU autocast(bfloat16) (its usual
mixed precision). Round 0 compiles and is not timed; rounds 1..R are, the mean reported.

Prints per-phase seconds of both, the ratio, the training step's matmul FLOP/s as a
percentage of a matmul peak measured in the same run (jax, 2048^2, same dtype), and the
number of compilations during the timed rounds (should be 0). Last line: JSON.

--breakdown=N1,N2,..: one round at each participant count N (P and V fixed) on the
in-process EVM chain (eth-tester), with the adapter store and a run-state checkpoint:
seconds of training, scoring, hashing + serialization, chain and checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flock_jax.timing import use_one_cpu_device  # noqa: E402

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_enum("model", "tiny", ["tiny", "smollm2"], "tiny random Llama or SmolLM2.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_P = flags.DEFINE_integer("proposers", 4, "Proposers P.")
_V = flags.DEFINE_integer("voters", 4, "Voters V.")
_N = flags.DEFINE_integer("participants", 8, "Participants N (>= P + V).")
_E = flags.DEFINE_integer("steps", 2, "Local steps E.")
_B = flags.DEFINE_integer("batch", 4, "Batch size B (training and scoring).")
_T = flags.DEFINE_integer("seq", 128, "Sequence length T.")
_NB = flags.DEFINE_integer("eval_batches", 1, "Held-out batches n per voter.")
_R = flags.DEFINE_integer("rounds", 2, "Timed rounds after the compiling round 0.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads.")
_PEER = flags.DEFINE_boolean("peer", True, "Also run the torch peer.")
_SCHEDULE = flags.DEFINE_enum(
    "schedule",
    "interleaved",
    ["interleaved", "blocked"],
    "interleaved: flock_jax round r, then the peer's round r. blocked: every flock_jax round,"
    " then every peer round (each side follows its own work: on some CPUs one library's"
    " heavy AMX / OpenMP work slows the other's next seconds).",
)
_BREAKDOWN = flags.DEFINE_list("breakdown", [], "Participant counts for the breakdown section.")
_PACKING = flags.DEFINE_boolean(
    "packing", False, "Packing section: rows and real tokens of the same examples, packed or not."
)
_QUANT = flags.DEFINE_enum("quantize", "none", ["none", "int8"], "flock_jax frozen base storage.")
_CLIENT_STATE = flags.DEFINE_enum(
    "client_state",
    "persistent",
    ["persistent", "fresh"],
    "flock_jax's federation.client_state: 'fresh' is the peer's algorithm exactly (a fresh AdamW"
    " each round) and keeps no [N, ...] state, so --breakdown reaches N = 1000 with SmolLM2.",
)
_DEVICE = flags.DEFINE_enum(
    "device",
    "cpu",
    ["cpu", "gpu"],
    "cpu: both sides on the CPU. gpu: flock_jax on the first accelerator, the torch peer on"
    " cuda (autocast bf16 there), matmul peaks at 8192^2.",
)
_WEIGHTS = flags.DEFINE_enum(
    "weights",
    "real",
    ["real", "random"],
    "--model=smollm2: its real weights (the GGUF) or a random init of the same shapes (speed"
    " does not depend on the values; for machines without the model file).",
)
_ATTN = flags.DEFINE_enum(
    "attention", "xla", ["xla", "cudnn"], "flock_jax's LlamaConfig.attention (cudnn: GPU, bf16)."
)
_HEAD = flags.DEFINE_boolean(
    "head_at_targets",
    True,
    "flock_jax's config.model.head_at_targets: the lm head at target positions only (the"
    " benchmark's rows are 3/4 targets; the peer computes every position, as HF does).",
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    1,
    "flock_jax on this many CPU devices with the clients (proposers, voters) sharded over "
    "them (mesh clients=n): each device runs its clients on its own thread.",
)


# ------------------------------------------------------------------ set-up
def _config(n: int, rounds: int, backend: str):
  """The run config both sides follow (configs/flock.py variant, overridden)."""
  import importlib.util

  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  spec = importlib.util.spec_from_file_location("flock_config", os.path.join(path, "flock.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smollm2" if _MODEL.value == "smollm2" else "tiny")
  c.model.weights = ""  # the base is passed in (see _base)
  c.model.tokenizer = "byte"
  c.lora.rank, c.lora.alpha = 8, 16.0
  c.federation.update(
      num_participants=n,
      num_proposers=_P.value,
      num_voters=_V.value,
      rounds=rounds,
      local_steps=_E.value,
      batch_size=_B.value,
      eval_batches=_NB.value,
      eval_batch_size=_B.value,
  )
  c.data.seq_len = _T.value
  c.mesh.clients = _CPU_DEVICES.value
  c.federation.client_state = _CLIENT_STATE.value
  c.ledger.backend = backend
  c.eval.every = 0  # per-domain reporting off the round (round -1 only, not called here)
  c.checkpoint.every = 0
  c.model.head_at_targets = _HEAD.value
  return c


def _base(cfg):
  """(cfg, float32 base params): SmolLM2's real weights or the tiny preset's random init."""
  import jax

  from flock_jax.model.llama import init_params

  if _MODEL.value == "smollm2" and _WEIGHTS.value == "real":
    from flock_jax.checkpoint.smollm2 import load_smollm2

    cfg32, base, _ = load_smollm2(tokenizer=False)
    return cfg32, base
  return cfg, init_params(cfg, jax.random.key(0))


def _round(engine, state, ledger, store=None):
  """One flock_round under the run's mesh (as rounds.run does): without it, the clients
  are not split over a mesh's devices and every device runs all of them."""
  from flock_jax.federated import rounds as rd

  with engine.mesh_context():
    return rd.flock_round(engine, state, ledger, store)


def _population(n: int, cfg, rounds: int):
  from flock_jax.federated.population import synthetic_population

  e, b = _E.value, _B.value
  return synthetic_population(
      n,
      seq_len=_T.value,
      vocab=min(cfg.vocab_size, 4096),
      train_rows=e * b * (rounds + 1),
      heldout_rows=_NB.value * b,
      eval_rows=b,
      strides=(1, 3, 5, 7),
  )


class CompileCounter:
  """Counts XLA compilations (jax.monitoring's backend-compile events) while `active`."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    import jax

    self.count, self.active = 0, False
    jax.monitoring.register_event_duration_secs_listener(self._on)

  def _on(self, event, duration, **kw):
    del duration, kw
    if self.active and event == self.EVENT:
      self.count += 1


def _peak_size() -> int:
  """The matmul peak's [size, size]: large enough to fill the device."""
  return 8192 if _DEVICE.value == "gpu" else 2048


def matmul_peak(dtype: str, reps: int = 5) -> tuple[float, float]:
  """(jax, torch) best matmul FLOP/s at [_peak_size()]^2 in dtype (jax: f32 accumulation)."""
  import jax
  import jax.numpy as jnp
  import torch

  gpu = _DEVICE.value == "gpu"
  size = _peak_size()

  jdt = jnp.dtype(dtype)
  x = jnp.ones((size, size), jdt)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(x, x).block_until_ready()
  tj = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(x, x).block_until_ready()
    tj = min(tj, time.perf_counter() - t)
  tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
  a = torch.ones(size, size, dtype=tdt, device="cuda" if gpu else "cpu")
  sync = torch.cuda.synchronize if gpu else (lambda: None)
  a @ a
  sync()
  tt = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    a @ a
    sync()
    tt = min(tt, time.perf_counter() - t)
  flops = 2.0 * size**3
  return flops / tj, flops / tt


# ------------------------------------------------------------------ the torch peer
class TorchPeer:
  """An OpenFedLLM-style FL loop over HF transformers + peft, on the same weights."""

  TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

  def __init__(self, cfg, base32, run, dtype: str, threads: int):
    import numpy as np
    import peft
    import torch
    import transformers

    from flock_jax.checkpoint.hf_names import hf_tensor_map

    torch.set_num_threads(threads)
    self.torch, self.np = torch, np
    self.bf16 = dtype == "bfloat16"
    self.device = "cuda" if _DEVICE.value == "gpu" else "cpu"
    # Phase times include their queued kernels: wait for the device before reading a clock.
    self.sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
    hf = cfg.to_hf_dict()
    for key in ("architectures", "model_type", "torch_dtype"):
      hf.pop(key)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).float()
    state = {}
    for name, slot in hf_tensor_map(cfg).items():
      x = base32
      for k in slot.path:
        x = x[k]
      x = np.asarray(x if slot.layer is None else x[slot.layer], np.float32)
      state[name] = torch.from_numpy(np.array(x.T if slot.transpose else x, order="C"))
    if cfg.tie_word_embeddings:
      state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    model.to(self.device)
    lc = run.lora
    pcfg = peft.LoraConfig(
        r=lc.rank,
        lora_alpha=lc.alpha,
        lora_dropout=0.0,
        target_modules=list(self.TARGETS),
        task_type="CAUSAL_LM",
    )
    self.pm = peft.get_peft_model(model, pcfg)
    self.lora_params = {n: p for n, p in self.pm.named_parameters() if p.requires_grad}
    self.optim = run.optim
    self.global_sd = {n: p.detach().clone() for n, p in self.lora_params.items()}

  def _load(self, sd):
    with self.torch.no_grad():
      for n, p in self.lora_params.items():
        p.copy_(sd[n])

  def _loss(self, batch, s):
    """Masked next-token mean loss of batch row-block s (HF shifts the labels)."""
    torch = self.torch
    dev = self.device
    tokens = torch.as_tensor(batch["tokens"][s], dtype=torch.long, device=dev)
    labels = tokens.masked_fill(torch.as_tensor(batch["loss_mask"][s], device=dev) == 0, -100)
    attn = torch.as_tensor(batch["segment_ids"][s] != 0, dtype=torch.long, device=dev)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=self.bf16):
      out = self.pm(input_ids=tokens, attention_mask=attn, labels=labels)
    return out.loss, int((labels[:, 1:] != -100).sum())

  def train_client(self, batches):
    """batches {key: [E, B, T]} -> the client's adapter state (a dict of tensors)."""
    torch = self.torch
    self._load(self.global_sd)
    params = list(self.lora_params.values())
    opt = torch.optim.AdamW(
        params,
        lr=self.optim.lr,
        betas=(self.optim.b1, self.optim.b2),
        eps=self.optim.eps,
        weight_decay=self.optim.weight_decay,
    )
    self.pm.train()
    for s in range(batches["tokens"].shape[0]):
      loss, _ = self._loss(batches, s)
      loss.backward()
      if self.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip)
      opt.step()
      opt.zero_grad(set_to_none=True)
    self.sync()
    return {n: p.detach().clone() for n, p in self.lora_params.items()}

  def heldout(self, sd, batches) -> float:
    """Token-weighted mean held-out loss of adapter `sd` over batches {key: [n, B, T]}."""
    self._load(sd)
    self.pm.eval()
    total = count = 0.0
    with self.torch.no_grad():
      for s in range(batches["tokens"].shape[0]):
        loss, c = self._loss(batches, s)
        total += float(loss) * c
        count += c
    return total / max(count, 1.0)

  def round(self, population, proposers, voters, run, round_index) -> dict:
    """One OpenFedLLM round + FLock voting; returns per-phase seconds."""
    fed = run.federation
    times = {}
    cpu = time.process_time()
    t = time.perf_counter()
    batches = population.train_batches(
        proposers, fed.local_steps, fed.batch_size, seed=run.seed, round_index=round_index
    )
    local = [
        self.train_client({k: v[i] for k, v in batches.items()}) for i in range(len(proposers))
    ]
    times["train"] = time.perf_counter() - t
    t = time.perf_counter()
    cand = {n: sum(sd[n] for sd in local) / len(local) for n in self.global_sd}  # FedAvg
    self.sync()
    times["aggregate"] = time.perf_counter() - t
    t = time.perf_counter()
    held = population.heldout_batches(voters, fed.eval_batches, fed.eval_batch_size)
    approve = 0
    for j in range(len(voters)):
      hj = {k: v[j] for k, v in held.items()}
      approve += self.heldout(self.global_sd, hj) - self.heldout(cand, hj) >= fed.tau
    times["eval"] = time.perf_counter() - t
    if approve * 2 > len(voters):
      self.global_sd = cand
    times["round"] = sum(times.values())
    times["cpu"] = time.process_time() - cpu
    return times

  def warm_up(self, population, proposers, voters, run) -> float:
    """One local step and one held-out batch (torch's first calls set up kernels)."""
    t = time.perf_counter()
    b = population.train_batches(proposers[:1], 1, run.federation.batch_size, seed=1, round_index=0)
    self.train_client({k: v[0] for k, v in b.items()})
    held = population.heldout_batches(voters[:1], 1, run.federation.eval_batch_size)
    self.heldout(self.global_sd, {k: v[0] for k, v in held.items()})
    self._load(self.global_sd)
    return time.perf_counter() - t


# ------------------------------------------------------------------ main comparison
def compare():
  import dataclasses

  import jax
  import numpy as np

  from flock_jax.federated.engine import build, make_ledger
  from flock_jax.federated.loss import target_capacity
  from flock_jax.model.config import matmul_flops
  from flock_jax.model.quant import prepare_base
  from flock_jax.run_config import from_config

  n_rounds = 1 + _R.value
  run = from_config(_config(_N.value, n_rounds, "local"))
  cfg32, base32 = _base(run.model.cfg)
  cfg = cfg32.replace(
      dtype=_DTYPE.value, param_dtype=_DTYPE.value, quantize=_QUANT.value, attention=_ATTN.value
  )
  pop = _population(_N.value, cfg, n_rounds)
  run = dataclasses.replace(run, model=dataclasses.replace(run.model, cfg=cfg))
  cfg, base = prepare_base(cfg, cfg32, base32)  # bf16 / int8 as cfg says
  engine, state = build(run, population=pop, base=base)
  ledger = make_ledger(run, state.global_hash)
  peer = TorchPeer(cfg32, base32, run, _DTYPE.value, _THREADS.value) if _PEER.value else None
  counter = CompileCounter()
  fed = run.federation
  print(
      f"{_MODEL.value} ({cfg.num_layers} layers, D={cfg.hidden_size}, V={cfg.vocab_size}) "
      f"{_DTYPE.value}{' int8 base' if _QUANT.value == 'int8' else ''}: N={fed.num_participants}"
      f" P={fed.num_proposers} V={fed.num_voters} E={fed.local_steps} [B, T]=[{fed.batch_size},"
      f" {_T.value}] n={fed.eval_batches}; LoRA r={run.lora.rank} on {len(run.lora.targets)} "
      f"projections; jax {jax.devices()}, torch threads={_THREADS.value}",
      flush=True,
  )
  peak_j, peak_t = matmul_peak(_DTYPE.value)
  t = time.perf_counter()
  state, m = _round(engine, state, ledger)  # round 0: compiles
  msg = (
      f"round 0 ({'accepted' if m.accepted else 'rejected'}; warm-up, not timed): flock_jax "
      f"{time.perf_counter() - t:.1f} s (compiles)"
  )
  warm = (m.proposers, m.voters)
  if peer is not None and _SCHEDULE.value == "interleaved":
    msg += f", peer warm-up {peer.warm_up(pop, *warm, run):.1f} s"
  print(msg, flush=True)
  jx, pt, drawn = [], [], []
  for _ in range(_R.value):
    r = state.round
    counter.active = True
    cpu = time.process_time()
    state, m = _round(engine, state, ledger)
    cpu = time.process_time() - cpu
    counter.active = False
    jx.append({k[5:-2]: v for k, v in m.to_dict().items() if k.startswith("time_")})
    jx[-1]["cpu"] = cpu
    drawn.append((m.proposers, m.voters, r))
    if peer is not None and _SCHEDULE.value == "interleaved":
      pt.append(peer.round(pop, m.proposers, m.voters, run, r))
    print(
        f"round {r} ({'accepted' if m.accepted else 'rejected'}; compilations so far"
        f" {counter.count}): flock_jax {jx[-1]['round']:.2f} s"
        + (f", peer {pt[-1]['round']:.2f} s" if pt else ""),
        flush=True,
    )
  if peer is not None and _SCHEDULE.value == "blocked":  # the same rounds, after every jax one
    print(f"peer warm-up {peer.warm_up(pop, *warm, run):.1f} s", flush=True)
    for proposers, voters, r in drawn:
      pt.append(peer.round(pop, proposers, voters, run, r))
      print(f"peer round {r}: {pt[-1]['round']:.2f} s", flush=True)
  peak_j2, peak_t2 = matmul_peak(_DTYPE.value)
  peak_j, peak_t = max(peak_j, peak_j2), max(peak_t, peak_t2)
  mean = lambda rows, k: float(np.mean([row.get(k, 0.0) for row in rows])) if rows else 0.0
  flops = lambda head: (
      fed.num_proposers
      * fed.local_steps
      * matmul_flops(
          cfg,
          fed.batch_size,
          _T.value,
          lora_rank=run.lora.rank,
          lora_targets=run.lora.targets,
          train=True,
          head_positions=head,
      )
  )
  peer_flops = flops(None)  # HF computes the lm head at every position
  # the work flock_jax does: the head at the capacity where the engine chose the capped program
  fraction = getattr(engine.local_train, "fraction", None)
  train_flops = flops(target_capacity(fraction, fed.batch_size, _T.value))
  j_train = mean(jx, "train")
  pct = 100.0 * train_flops / j_train / peak_j
  print(f"\n{'phase':<10} {'flock_jax s':>12} {'peer s':>10}")
  for k in ("train", "hash", "eval", "chain", "report", "round"):
    pk = {"hash": "aggregate"}.get(k, k)
    print(f"{k:<10} {mean(jx, k):>12.3f} {mean(pt, pk) if pk in (pt or [{}])[0] else 0:>10.3f}")
  j_round, p_round = mean(jx, "round"), mean(pt, "round")
  ratio = p_round / j_round if pt else float("nan")
  print(
      f"\nmatmul peak {_DTYPE.value} {_peak_size()}^2: jax {peak_j / 1e9:.0f} GFLOP/s, "
      f"torch {peak_t / 1e9:.0f} GFLOP/s"
  )
  print(
      f"flock_jax training: {train_flops / j_train / 1e9:.0f} GFLOP/s = {pct:.0f}% of the jax "
      f"peak"
      + (f"; peer training {peer_flops / mean(pt, 'train') / 1e9:.1f} GFLOP/s" if pt else "")
  )
  print(f"compilations during the timed rounds: {counter.count}")
  print(
      f"process CPU seconds per round (both threads; wall time is what counts, CPU time shows"
      f" what a loaded machine did to it): flock_jax {mean(jx, 'cpu'):.1f}, peer {mean(pt, 'cpu'):.1f}"
  )
  print(f"round: flock_jax {j_round:.2f} s, peer {p_round:.2f} s, ratio {ratio:.2f}x")
  print(
      json.dumps(
          {
              "model": _MODEL.value,
              "dtype": _DTYPE.value,
              "flock_jax_round_s": round(j_round, 3),
              "peer_round_s": round(p_round, 3),
              "ratio": round(ratio, 3),
              "train_pct_of_peak": round(pct, 1),
              "cpu_devices": _CPU_DEVICES.value,
              "schedule": _SCHEDULE.value,
              "device": _DEVICE.value,
          }
      )
  )


# ------------------------------------------------------------------ breakdown vs N
def breakdown():
  import dataclasses

  import jax
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO

  from flock_jax.chain import AdapterStore
  from flock_jax.checkpoint import RunCheckpointer
  from flock_jax.federated import run_state
  from flock_jax.federated.engine import build, make_ledger
  from flock_jax.model.lora import lora_shapes
  from flock_jax.model.quant import prepare_base
  from flock_jax.run_config import from_config

  print(
      f"{'N':>6} {'train':>8} {'score':>8} {'hash+io':>8} {'chain':>8} {'ckpt':>8} "
      f"{'round':>8} {'chain+ckpt %':>13}"
  )
  cfg32 = base32 = None
  for n in map(int, _BREAKDOWN.value):
    run = from_config(_config(n, 2, "eth_tester"))
    if base32 is None:
      cfg32, base32 = _base(run.model.cfg)
    cfg = cfg32.replace(dtype=_DTYPE.value, param_dtype=_DTYPE.value)
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, cfg=cfg))
    per = sum(int(x.size) for x in jax.tree.leaves(lora_shapes(cfg, run.lora))) * 4 * 3
    if _CLIENT_STATE.value == "fresh":
      per = 0  # nothing kept per participant
    if per * n > 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
      print(
          f"{n:>6} skipped: client state (adapter + AdamW) {per * n / 2**30:.1f} GiB exceeds"
          " 60% of this machine's memory"
      )
      continue
    cfg, base = prepare_base(cfg, cfg32, base32)
    engine, state = build(run, population=_population(n, cfg, 2), base=base)
    t = time.perf_counter()
    ledger = make_ledger(run, state.global_hash)
    setup = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
      store = AdapterStore(os.path.join(tmp, "store"))
      ckpt = RunCheckpointer(os.path.join(tmp, "ckpt"), max_to_keep=1)
      state, _ = _round(engine, state, ledger, store)  # compiles
      state, m = _round(engine, state, ledger, store)
      t = time.perf_counter()
      ckpt.save(
          state.round,
          run_state.checkpoint_tree(state, ledger),
          run_state.checkpoint_meta(state, m, run, ledger),
      )
      t_ck = time.perf_counter() - t
      ckpt.close()
    total = m.time_round_s + t_ck
    print(
        f"{n:>6} {m.time_train_s:>8.2f} {m.time_eval_s:>8.2f} {m.time_hash_s:>8.2f} "
        f"{m.time_chain_s:>8.2f} {t_ck:>8.2f} {total:>8.2f} "
        f"{100 * (m.time_chain_s + t_ck) / total:>12.1f}%  (chain set-up {setup:.0f} s)",
        flush=True,
    )


# ------------------------------------------------------------------ packing
def packing():
  """The same examples (config.data's domains, the model's tokenizer) at T: rows and share
  of real tokens unpacked (one example per row, padded: what the peer computes) and packed
  (segment ids, first fit: what flock_jax can compute). Training cost is per row, so
  'same examples' time = 'same tokens' time x packed rows / unpacked rows."""
  from flock_jax.data.registry import load_domain
  from flock_jax.data.tokenization import tokenize_examples
  from flock_jax.run_config import from_config

  run = from_config(_config(_N.value, 1, "local"))
  if _MODEL.value == "smollm2":
    from flock_jax.checkpoint.smollm2 import load_smollm2

    tok = load_smollm2(tokenizer=True)[2]
  else:
    from flock_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer("byte")
  d = run.data
  examples = []
  for name in ("finance", "medical"):
    examples.extend(load_domain(name, n=d.examples_per_domain, seed=run.seed))
  rows = {}
  for pack in (False, True):
    arr = tokenize_examples(examples, tok, _T.value, pack=pack, system=d.system or None)
    real = float((arr["segment_ids"] != 0).mean())
    rows[pack] = arr["tokens"].shape[0]
    print(
        f"{'packed' if pack else 'unpacked':>9}: {len(examples)} examples -> {rows[pack]} rows"
        f" of {_T.value} tokens, {100 * real:.0f}% real tokens",
        flush=True,
    )
  print(f"same examples: packed rows / unpacked rows = {rows[True] / rows[False]:.3f}")


def main(argv):
  del argv
  if _DEVICE.value == "cpu":
    use_one_cpu_device(_CPU_DEVICES.value)  # before the first jax import
  if _PACKING.value:
    packing()
  elif _BREAKDOWN.value:
    breakdown()
  else:
    compare()


if __name__ == "__main__":
  app.run(main)
