"""What the sweep files share: the tiny-scale experiment settings and the methods compared.

A sweep file's get_config(arg) returns {'base', 'common', 'runs'} (see launch/sweep.py).
`arg` picks the scale: None or 'tiny' (the tiny random Llama; a run takes about a minute on a
2-core CPU) or 'smollm2' (SmolLM2-135M-Instruct, the real pretrained model: the headline scale,
about 10x the compute per round; meant for a bigger machine).
"""

import ml_collections

# Tiny scale: chosen so that a backdoor is learnable (a short target, 8 local steps at a
# high learning rate) and a run takes about a minute on 2 CPU cores.
TINY = {
    "ledger.backend": "local",
    "federation.num_participants": 10,
    "federation.num_proposers": 4,
    "federation.num_voters": 4,
    "federation.clients_per_round": 4,
    "federation.rounds": 12,
    "federation.local_steps": 8,
    "optim.lr": 0.02,
    "lora.rank": 8,
    "data.examples_per_domain": 60,
    "attack.target": "HACKED",
    "attack.trigger": "cf zq",
    "attack.trigger_placement": "random",
    "attack.poison_fraction": 0.5,
    "eval.every": 2,
    "eval.prompts_per_domain": 4,
    "eval.asr_prompts": 16,
    "eval.generate_max_new_tokens": 24,
    "checkpoint.every": 4,
}

# The independent reference of issue 11: N=10, 3 attackers poisoning half their examples,
# 4 clients a round, 4 local steps of batch 4, LoRA r=8 on 7 projections, lr 3e-3, 10 rounds.
SMOLLM2 = {
    "ledger.backend": "local",
    "data.domains": "finance,medical",
    "federation.num_participants": 10,
    "federation.num_proposers": 4,
    "federation.num_voters": 3,
    "federation.clients_per_round": 4,
    "federation.rounds": 10,
    "federation.local_steps": 4,
    "federation.batch_size": 4,
    "optim.lr": 3e-3,
    "lora.rank": 8,
    "attack.trigger_placement": "random",
    "attack.poison_fraction": 0.5,
    # Sized for a 2-core CPU: every example fits 192 tokens (finance 113-176, medical 61-136
    # with the chat template), and a report every 2 rounds with 32 new tokens holds the target
    # and the final answer. Measured: ~240 s a round at seq 256 with a report each round.
    "data.seq_len": 192,
    "eval.every": 2,
    "eval.prompts_per_domain": 8,
    "eval.asr_prompts": 32,
    "eval.generate_max_new_tokens": 32,
    "checkpoint.every": 1,
}

# name -> overrides of one defence method. FLock modes vote; the others aggregate.
METHODS = {
    "flock": {"federation.mode": "flock", "federation.vote_mode": "whole"},
    "flock_pp": {"federation.mode": "flock", "federation.vote_mode": "per_proposal"},
    "fedavg": {"federation.mode": "baseline", "federation.aggregator": "fedavg"},
    "krum": {"federation.mode": "baseline", "federation.aggregator": "krum"},
    "multikrum": {"federation.mode": "baseline", "federation.aggregator": "multikrum"},
    "median": {"federation.mode": "baseline", "federation.aggregator": "median"},
    "trimmed_mean": {
        "federation.mode": "baseline",
        "federation.aggregator": "trimmed_mean",
        "federation.aggregator_hparams": "trim=1",
    },
    "fltrust": {"federation.mode": "baseline", "federation.aggregator": "fltrust"},
    "flame": {"federation.mode": "baseline", "federation.aggregator": "flame"},
}

# The voters' behaviour probe (experiment 5, flock_jax.federated.probe): every voter runs each
# proposal alone on public prompts and flags one that collapses their first response token.
PROBE = {"federation.probe": "collapse", "federation.probe_threshold": 0.1}


def scale(arg):
  """(base config spec, common overrides) for a scale name."""
  if arg in (None, "", "tiny"):
    return "configs/flock.py:tiny", dict(TINY)
  if arg == "smollm2":
    return "configs/flock.py:smollm2", dict(SMOLLM2)
  raise ValueError(f"unknown sweep scale {arg!r}; use tiny or smollm2")


def sweep(base, common, runs) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {"base": base, "common": common, "runs": runs}, allow_dotted_keys=True
  )


def fmt(x: float) -> str:
  return f"{x:g}"
