"""Turn a run's `ml_collections.ConfigDict` (configs/flock.py) into typed, checked objects.

`from_config(config) -> RunConfig` checks every field it reads and raises
`RunConfigError` naming the field (`config.federation.num_voters`), what was
wrong, and what would be valid. Unknown fields are errors too, so a typo in
a config file cannot be silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flock_jax.optim import OptimConfig
from flock_jax.model.config import ConfigError, LlamaConfig, PRESETS, preset
from flock_jax.model.llama import PROJECTIONS
from flock_jax.model.lora import LoraConfig

MODES = ("flock", "baseline")
VOTE_MODES = ("whole", "per_proposal")
# Per-proposal votes: G moves by the sum of the accepted updates over their number, or over the
# number of valid proposals (a rejected one counts as a zero update).
PER_PROPOSAL_MEANS = ("accepted", "valid")
PROPOSER_BEHAVIOURS = (
    "honest",
    "backdoor",
    "backdoor_evade",
    "label_flip",
    "scale",
    "free_rider",
    "copy",
    "nan",
    "wrong_shape",
)
VOTER_BEHAVIOURS = ("honest", "always_approve", "always_reject", "absent", "colluding")
SCREENS = ("none", "norm", "cosine", "both")
PROBES = ("none", "collapse", "anchored", "search", "private")
# What one trigger search set runs on: each proposal (G + Δ_i) or the round (G + Σ_i Δ_i).
SEARCH_SCOPES = ("proposal", "round")
# How a search moves its slots: vocabulary tokens (HotFlip swaps) or free embeddings (gradient).
SEARCH_KINDS = ("tokens", "soft")
CLIENT_STATES = ("persistent", "fresh")
# Fields added after runs were made with configs that lack them: absent means this default,
# so such a config (and a workdir's config.json) runs, and continues, unchanged.
OPTIONAL_FIELDS = {
    "eval.asr_max_new_tokens": 0,
    "attack.sybil_stake": 0,
    "federation.client_state": "persistent",
    "log.tensorboard": False,
    "federation.probe": "none",
    "federation.probe_threshold": 0.1,
    "federation.probe_prompts": 8,
    "federation.search_slots": 3,
    "federation.search_topk": 8,
    "federation.search_steps": 2,
    "federation.search_restarts": 1,
    "federation.search_scope": "proposal",
    "federation.search_kind": "tokens",
    "federation.search_lr": 0.1,
    "federation.probe_exempt_g": False,
    "federation.per_proposal_mean": "accepted",
    "federation.probe_budget": 0.0,
    "federation.probe_allowance": 0.01,
    "federation.probe_budget_by_stake": False,
    "federation.oracle": False,
    "model.head_at_targets": True,  # a speed option: the same loss up to its sum's order
}
PLACEMENTS = ("prefix", "suffix", "random")
PARTITIONS = ("domain", "iid", "dirichlet")


class RunConfigError(ValueError):
  """A run configuration field that is missing, malformed or inconsistent."""


def load_config(variant: str = "tiny", path: str | None = None):
  """get_config(variant) of a config file (default: the repo's configs/flock.py), for tests,
  benchmarks and scripts that need the defaults without absl flags."""
  import importlib.util
  import pathlib

  path = path or str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "flock.py")
  spec = importlib.util.spec_from_file_location("flock_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


def default_optim(**overrides) -> OptimConfig:
  """The tiny config's optimizer with `overrides` (dataclasses.replace)."""
  return dataclasses.replace(from_config(load_config("tiny")).optim, **overrides)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  preset: str
  cfg: LlamaConfig
  weights: str  # '' random | 'smollm2' | 'hf:<dir>' | 'gguf:<file>'
  tokenizer: str  # 'byte' | path | '' (the one that comes with the weights)
  loss_chunk: int  # sequence chunk of the lm-head loss (0 = whole sequence)
  head_at_targets: bool = True  # the lm head only at positions with a target (loss.py)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  domains: tuple[str, ...]
  examples_per_domain: int
  seq_len: int
  partition: str
  dirichlet_alpha: float
  heldout_fraction: float
  pack: bool
  system: str
  eval_examples_per_domain: int


@dataclasses.dataclass(frozen=True)
class FederationSpec:
  mode: str
  num_participants: int
  rounds: int
  num_proposers: int
  num_voters: int
  clients_per_round: int
  local_steps: int
  batch_size: int
  eval_batches: int
  eval_batch_size: int
  vote_mode: str
  tau: float
  aggregator: str
  aggregator_hparams: dict
  screen: str  # FLock voters' screen of proposals before scoring: none | norm | cosine | both
  screen_norm_factor: float
  screen_min_cosine: float
  # 'persistent': each participant keeps its adapter and optimizer state across rounds
  # ([N, ...] in ClientState); 'fresh': a fresh optimizer each round from G and nothing kept
  # per participant (OpenFedLLM's loop; memory independent of N)
  client_state: str = "persistent"
  # FLock voters' behaviour probe of each proposal (flock_jax.federated.probe):
  # none | collapse (against G) | anchored (against G and the base model) | search (anchored
  # and the trigger search) | private (search on each voter's own prompts)
  probe: str = "none"
  probe_threshold: float = 0.1  # flag a proposal whose collapse score exceeds this
  probe_prompts: int = 8  # public probe prompts per domain
  # probe 'search' (flock_jax.federated.trigger_search): tokens inserted, swaps tried, steps
  search_slots: int = 3
  search_topk: int = 8
  search_steps: int = 2
  # searches per proposal: the first from the zero fill, the others from random tokens (a
  # private probe draws them from the voter's own seed)
  search_restarts: int = 1
  # 'proposal': searches per proposal; 'round': one set per round, on G + the sum of the
  # proposals, every proposal scored at its tokens (P times cheaper)
  search_scope: str = "proposal"
  # 'tokens': slots hold vocabulary tokens, search_steps HotFlip swap steps; 'soft': slots hold
  # free embeddings, search_steps gradient steps of search_lr x the largest token-embedding norm
  search_kind: str = "tokens"
  search_lr: float = 0.1
  # anchored / search probes: a proposal's score against the base model counts only where it
  # exceeds G's own (what G already carries is not blamed on whoever proposes next)
  probe_exempt_g: bool = False
  # per-proposal votes: G + sum of the accepted / their number ('accepted') or / the number of
  # valid proposals ('valid': one update accepted alone enters at 1/P', not at full weight)
  per_proposal_mean: str = "accepted"
  # the probe's memory across rounds (public probes): each participant's excess scores
  # max(0, score - probe_allowance) add up over the run, and once the sum exceeds probe_budget
  # every proposal it makes is flagged (0: off)
  probe_budget: float = 0.0
  probe_allowance: float = 0.01
  # the budget is that of a participant staking ledger.stake; each one's scales with its stake
  # (an attacker splitting its stake over sybil accounts splits its budget with it)
  probe_budget_by_stake: bool = False
  # baseline mode: drop the drawn attackers' updates before aggregating. Not a defence (it knows
  # who attacks): the clean target of one, which no defence that excludes attackers can beat
  oracle: bool = False


@dataclasses.dataclass(frozen=True)
class LedgerSpec:
  """Token amounts in whole tokens (the ledger works in base units, 18 decimals)."""

  backend: str
  rpc_url: str
  vote_window: int
  task: str
  stake: int
  min_stake: int
  reward_pool: int
  slash_fraction: float
  proposer_share: float
  stake_weighted_draw: bool


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  # participant index -> behaviour: a proposer or a voter behaviour, or 'proposer+voter'
  # (e.g. 'backdoor+colluding': poisons when drawn to propose, colludes when drawn to vote)
  behaviours: dict
  scale_gamma: float
  trigger: str
  target: str
  poison_fraction: float
  trigger_placement: str  # prefix | suffix | random
  distributed: bool  # backdoor attackers plant one piece of the trigger each
  copy_noise: float
  # Sybils: every attacker account stakes this many whole tokens instead of ledger.stake (one
  # holder's stake split over many minimum-stake accounts); 0 = attackers stake like everyone.
  sybil_stake: int = 0

  def _part(self, i: int, kinds: tuple[str, ...]) -> str:
    parts = [b for b in self.behaviours.get(i, "honest").split("+") if b in kinds]
    return parts[0] if parts else "honest"

  def proposer(self, i: int) -> str:
    return self._part(i, PROPOSER_BEHAVIOURS)

  def voter(self, i: int) -> str:
    return self._part(i, VOTER_BEHAVIOURS)

  def is_attacker(self, i: int) -> bool:
    """Any non-honest behaviour (the side of the ledger's economics a participant counts on)."""
    return self.proposer(i) != "honest" or self.voter(i) != "honest"

  def attackers(self, n: int) -> list[int]:
    return [i for i in range(n) if self.is_attacker(i)]

  def stakes(self, n: int, stake: int) -> list[int]:
    """Whole tokens each of n participants stakes (attackers: sybil_stake when set)."""
    return [
        self.sybil_stake if self.sybil_stake and self.is_attacker(i) else stake for i in range(n)
    ]


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  every: int  # per-domain report of G every k rounds (and after the last); 0 = never
  accuracy: bool  # exact-match accuracy per domain by generation
  asr: bool  # attack success rate (triggered prompts) and false activation (untriggered)
  prompts_per_domain: int
  asr_prompts: int
  generate_max_new_tokens: int
  domains: tuple[str, ...]  # () = the pooled held-out examples of data.domains
  asr_max_new_tokens: int = 0  # tokens per triggered / untriggered prompt (0: as above)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  seed: int
  model: ModelSpec
  lora: LoraConfig
  optim: OptimConfig
  data: DataSpec
  federation: FederationSpec
  ledger: LedgerSpec
  attack: AttackSpec
  eval: EvalSpec
  mesh: dict  # mesh axis -> size; {} = no mesh
  checkpoint_every: int  # rounds between run-state checkpoints (0 = never)
  checkpoint_keep: int
  tensorboard: bool  # scalar event files of every metrics row under <workdir>/tensorboard


# ------------------------------------------------------------------ helpers
def _section(config: Any, name: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
  if name not in config:
    raise RunConfigError(f"config.{name} is missing")
  sec = config[name]
  sec = sec.to_dict() if hasattr(sec, "to_dict") else dict(sec)
  unknown = sorted(set(sec) - set(allowed))
  if unknown:
    raise RunConfigError(
        f"config.{name}.{unknown[0]}: unknown field; known fields: " f"{sorted(allowed)}"
    )
  return sec


def _optional(sec: Mapping[str, Any], where: str, key: str, kind, **kw):
  """_get for a field in OPTIONAL_FIELDS: its default when the config predates it."""
  return _get(sec, where, key, kind, **kw) if key in sec else OPTIONAL_FIELDS[f"{where}.{key}"]


def _get(
    sec: Mapping[str, Any],
    where: str,
    key: str,
    kind,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices=None,
    lo_open=False,
):
  field = f"config.{where}.{key}" if where else f"config.{key}"
  if key not in sec or sec[key] is None:  # defaults live in configs/, not here
    raise RunConfigError(f"{field} is required (configs/flock.py sets every field)")
  v = sec[key]
  if kind is bool:
    if not isinstance(v, bool):
      raise RunConfigError(f"{field}={v!r}: expected true or false")
  elif kind is int:
    if isinstance(v, bool) or not isinstance(v, int):
      if isinstance(v, float) and v.is_integer():
        v = int(v)
      else:
        raise RunConfigError(f"{field}={v!r}: expected an integer")
  elif kind is float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise RunConfigError(f"{field}={v!r}: expected a number")
    v = float(v)
  elif kind is str:
    if not isinstance(v, str):
      raise RunConfigError(f"{field}={v!r}: expected a string")
  if lo is not None and (v <= lo if lo_open else v < lo):
    raise RunConfigError(f"{field}={v!r}: must be {'>' if lo_open else '>='} {lo}")
  if hi is not None and v > hi:
    raise RunConfigError(f"{field}={v!r}: must be <= {hi}")
  if choices is not None and v not in choices:
    raise RunConfigError(f"{field}={v!r}: expected one of {list(choices)}")
  return v


def _names(v: Any, field: str) -> tuple[str, ...]:
  """A tuple of names from a tuple/list or a comma-separated string."""
  if isinstance(v, str):
    out = tuple(s.strip() for s in v.split(",") if s.strip())
  elif isinstance(v, (list, tuple)):
    out = tuple(str(s) for s in v)
  else:
    raise RunConfigError(f"{field}={v!r}: expected a list or a comma-separated string")
  if not out:
    raise RunConfigError(f"{field} is empty")
  return out


def _kv(v: Any, field: str) -> dict:
  """A dict from a mapping or a 'k=v,k=v' string (values parsed as numbers/bools when they are)."""
  if hasattr(v, "to_dict"):
    v = v.to_dict()
  if isinstance(v, Mapping):
    return dict(v)
  if not isinstance(v, str):
    raise RunConfigError(f"{field}={v!r}: expected a dict or 'key=value,...'")
  out = {}
  for item in filter(None, (s.strip() for s in v.split(","))):
    if "=" not in item:
      raise RunConfigError(f"{field}: {item!r} is not key=value")
    k, val = (s.strip() for s in item.split("=", 1))
    for conv in (int, float):
      try:
        val = conv(val)
        break
      except ValueError:
        pass
    if val in ("true", "True", "false", "False"):
      val = val in ("true", "True")
    out[k] = val
  return out


# ------------------------------------------------------------------ sections
def _model(config) -> tuple[ModelSpec, LoraConfig]:
  sec = _section(
      config,
      "model",
      ("preset", "overrides", "weights", "tokenizer", "loss_chunk", "head_at_targets"),
  )
  name = _get(sec, "model", "preset", str)
  if name not in PRESETS:
    raise RunConfigError(
        f"config.model.preset={name!r}: unknown model preset; known: " f"{sorted(PRESETS)}"
    )
  overrides = _kv(sec.get("overrides") or {}, "config.model.overrides")
  try:
    cfg = preset(name, **overrides)
  except (TypeError, ConfigError) as e:
    raise RunConfigError(f"config.model.overrides={overrides}: {e}") from e
  weights = _get(sec, "model", "weights", str)
  if weights and not (weights == "smollm2" or weights.startswith(("hf:", "gguf:"))):
    raise RunConfigError(
        f"config.model.weights={weights!r}: expected '' (random), 'smollm2', "
        f"'hf:<folder>' or 'gguf:<file>'"
    )
  spec = ModelSpec(
      name,
      cfg,
      weights,
      _get(sec, "model", "tokenizer", str),
      _get(sec, "model", "loss_chunk", int, lo=0),
      _optional(sec, "model", "head_at_targets", bool),
  )
  ls = _section(config, "lora", ("rank", "alpha", "dropout", "targets", "rslora", "dtype"))
  targets = _names(_get(ls, "lora", "targets", (str, list, tuple)), "config.lora.targets")
  bad = [t for t in targets if t not in PROJECTIONS]
  if bad:
    raise RunConfigError(
        f"config.lora.targets: unknown projection {bad[0]!r}; choose from " f"{list(PROJECTIONS)}"
    )
  lora = LoraConfig(
      rank=_get(ls, "lora", "rank", int, lo=0, lo_open=True),
      alpha=_get(ls, "lora", "alpha", float, lo=0, lo_open=True),
      dropout=_get(ls, "lora", "dropout", float, lo=0.0, hi=0.99),
      targets=targets,
      rslora=_get(ls, "lora", "rslora", bool),
      dtype=_get(ls, "lora", "dtype", str, choices=("float32", "bfloat16")),
  )
  return spec, lora


def _optim(config, total_steps: int) -> OptimConfig:
  sec = _section(
      config,
      "optim",
      (
          "name",
          "lr",
          "schedule",
          "warmup_steps",
          "weight_decay",
          "b1",
          "b2",
          "eps",
          "momentum",
          "grad_clip",
          "prox_mu",
      ),
  )
  return OptimConfig(
      name=_get(sec, "optim", "name", str, choices=("adamw", "sgd")),
      lr=_get(sec, "optim", "lr", float, lo=0, lo_open=True),
      schedule=_get(sec, "optim", "schedule", str, choices=("constant", "cosine", "warmup_cosine")),
      warmup_steps=_get(sec, "optim", "warmup_steps", int, lo=0),
      total_steps=total_steps,
      weight_decay=_get(sec, "optim", "weight_decay", float, lo=0),
      b1=_get(sec, "optim", "b1", float, lo=0, hi=1),
      b2=_get(sec, "optim", "b2", float, lo=0, hi=1),
      eps=_get(sec, "optim", "eps", float, lo=0, lo_open=True),
      momentum=_get(sec, "optim", "momentum", float, lo=0, hi=1),
      grad_clip=_get(sec, "optim", "grad_clip", float, lo=0),
      prox_mu=_get(sec, "optim", "prox_mu", float, lo=0),
  )


def _data(config) -> DataSpec:
  from flock_jax.data.registry import DOMAINS

  sec = _section(
      config,
      "data",
      (
          "domains",
          "examples_per_domain",
          "seq_len",
          "partition",
          "dirichlet_alpha",
          "heldout_fraction",
          "pack",
          "system",
          "eval_examples_per_domain",
      ),
  )
  domains = _names(_get(sec, "data", "domains", (str, list, tuple)), "config.data.domains")
  for d in domains:
    if d not in DOMAINS and not d.startswith(("local:", "hf:")):
      raise RunConfigError(
          f"config.data.domains: unknown domain {d!r}; use one of "
          f"{sorted(DOMAINS)}, 'local:<path>' or 'hf:<name>'"
      )
  return DataSpec(
      domains=domains,
      examples_per_domain=_get(sec, "data", "examples_per_domain", int, lo=1),
      seq_len=_get(sec, "data", "seq_len", int, lo=2),
      partition=_get(sec, "data", "partition", str, choices=PARTITIONS),
      dirichlet_alpha=_get(sec, "data", "dirichlet_alpha", float, lo=0, lo_open=True),
      heldout_fraction=_get(sec, "data", "heldout_fraction", float, lo=0, lo_open=True, hi=0.9),
      pack=_get(sec, "data", "pack", bool),
      system=_get(sec, "data", "system", str),
      eval_examples_per_domain=_get(sec, "data", "eval_examples_per_domain", int, lo=1),
  )


def _federation(config) -> FederationSpec:
  from flock_jax.federated.aggregators import AGGREGATORS

  sec = _section(
      config,
      "federation",
      (
          "mode",
          "num_participants",
          "rounds",
          "num_proposers",
          "num_voters",
          "clients_per_round",
          "local_steps",
          "batch_size",
          "eval_batches",
          "eval_batch_size",
          "vote_mode",
          "tau",
          "aggregator",
          "aggregator_hparams",
          "screen",
          "screen_norm_factor",
          "screen_min_cosine",
          "client_state",  # optional: configs written before it existed run unchanged
          "probe",  # optional, as are the five below
          "probe_threshold",
          "probe_prompts",
          "search_slots",
          "search_topk",
          "search_steps",
          "search_restarts",
          "search_scope",
          "search_kind",
          "search_lr",
          "probe_exempt_g",
          "per_proposal_mean",
          "probe_budget",
          "probe_allowance",
          "probe_budget_by_stake",
          "oracle",
      ),
  )
  w = "federation"
  n = _get(sec, w, "num_participants", int, lo=2)
  p = _get(sec, w, "num_proposers", int, lo=1)
  v = _get(sec, w, "num_voters", int, lo=1)
  if p + v > n:
    raise RunConfigError(
        f"config.federation.num_proposers + num_voters = {p} + {v} = {p + v} "
        f"> num_participants = {n}: proposers and voters are disjoint"
    )
  agg = _get(sec, w, "aggregator", str).lower().replace("-", "_")
  if agg not in AGGREGATORS:
    raise RunConfigError(
        f"config.federation.aggregator={agg!r}: unknown aggregator; "
        f"choose one of {sorted(AGGREGATORS)}"
    )
  k = _get(sec, w, "clients_per_round", int, lo=1)
  if k > n:
    raise RunConfigError(f"config.federation.clients_per_round={k} > num_participants={n}")
  client_state = _optional(sec, w, "client_state", str, choices=CLIENT_STATES)
  if client_state == "fresh" and agg == "local":  # the one isolated aggregator
    raise RunConfigError(
        f"config.federation.client_state='fresh' with aggregator={agg!r}: isolated clients "
        "train their own adapters across rounds and need client_state='persistent'"
    )
  probe = _optional(sec, w, "probe", str, choices=PROBES)
  budget = _optional(sec, w, "probe_budget", float, lo=0)
  if budget > 0 and probe not in ("collapse", "anchored", "search"):
    raise RunConfigError(
        f"config.federation.probe_budget={budget} needs a public probe ('collapse', 'anchored' "
        f"or 'search'), whose scores every participant can recompute; probe={probe!r}"
    )
  oracle = _optional(sec, w, "oracle", bool)
  if oracle and sec.get("mode") != "baseline":
    raise RunConfigError(
        f"config.federation.oracle=True needs mode 'baseline' (an aggregator that drops the "
        f"attackers' updates); mode={sec.get('mode')!r}"
    )
  return FederationSpec(
      mode=_get(sec, w, "mode", str, choices=MODES),
      num_participants=n,
      rounds=_get(sec, w, "rounds", int, lo=1),
      num_proposers=p,
      num_voters=v,
      clients_per_round=k,
      local_steps=_get(sec, w, "local_steps", int, lo=1),
      batch_size=_get(sec, w, "batch_size", int, lo=1),
      eval_batches=_get(sec, w, "eval_batches", int, lo=1),
      eval_batch_size=_get(sec, w, "eval_batch_size", int, lo=1),
      vote_mode=_get(sec, w, "vote_mode", str, choices=VOTE_MODES),
      tau=_get(sec, w, "tau", float),
      aggregator=agg,
      aggregator_hparams=_kv(
          sec.get("aggregator_hparams") or {}, "config.federation.aggregator_hparams"
      ),
      screen=_get(sec, w, "screen", str, choices=SCREENS),
      screen_norm_factor=_get(sec, w, "screen_norm_factor", float, lo=0, lo_open=True),
      screen_min_cosine=_get(sec, w, "screen_min_cosine", float, lo=-1, hi=1),
      client_state=client_state,
      probe=probe,
      probe_threshold=_optional(sec, w, "probe_threshold", float, lo=0, hi=1),
      probe_prompts=_optional(sec, w, "probe_prompts", int, lo=1),
      search_slots=_optional(sec, w, "search_slots", int, lo=1),
      search_topk=_optional(sec, w, "search_topk", int, lo=1),
      search_steps=_optional(sec, w, "search_steps", int, lo=0),
      search_restarts=_optional(sec, w, "search_restarts", int, lo=1),
      search_scope=_optional(sec, w, "search_scope", str, choices=SEARCH_SCOPES),
      search_kind=_optional(sec, w, "search_kind", str, choices=SEARCH_KINDS),
      search_lr=_optional(sec, w, "search_lr", float, lo=0, lo_open=True),
      probe_exempt_g=_optional(sec, w, "probe_exempt_g", bool),
      per_proposal_mean=_optional(sec, w, "per_proposal_mean", str, choices=PER_PROPOSAL_MEANS),
      probe_budget=budget,
      probe_allowance=_optional(sec, w, "probe_allowance", float, lo=0, hi=1),
      probe_budget_by_stake=_optional(sec, w, "probe_budget_by_stake", bool),
      oracle=oracle,
  )


def _ledger(config) -> LedgerSpec:
  sec = _section(
      config,
      "ledger",
      (
          "backend",
          "rpc_url",
          "vote_window",
          "task",
          "stake",
          "min_stake",
          "reward_pool",
          "slash_fraction",
          "proposer_share",
          "stake_weighted_draw",
      ),
  )
  spec = LedgerSpec(
      backend=_get(sec, "ledger", "backend", str, choices=("local", "eth_tester", "jsonrpc")),
      rpc_url=_get(sec, "ledger", "rpc_url", str),
      vote_window=_get(sec, "ledger", "vote_window", int, lo=1),
      task=_get(sec, "ledger", "task", str),
      stake=_get(sec, "ledger", "stake", int, lo=0),
      min_stake=_get(sec, "ledger", "min_stake", int, lo=0),
      reward_pool=_get(sec, "ledger", "reward_pool", int, lo=0),
      slash_fraction=_get(sec, "ledger", "slash_fraction", float, lo=0, hi=1),
      proposer_share=_get(sec, "ledger", "proposer_share", float, lo=0, hi=1),
      stake_weighted_draw=_get(sec, "ledger", "stake_weighted_draw", bool),
  )
  if spec.backend == "jsonrpc" and not spec.rpc_url:
    raise RunConfigError(
        "config.ledger.rpc_url is empty; the 'jsonrpc' backend needs the node's "
        "URL, e.g. http://127.0.0.1:8545"
    )
  if spec.task and spec.backend != "jsonrpc":
    raise RunConfigError(
        f"config.ledger.task={spec.task!r} needs backend 'jsonrpc': only a "
        "node outlives the process that deployed the task"
    )
  if spec.stake < spec.min_stake:
    raise RunConfigError(
        f"config.ledger.stake={spec.stake} < min_stake={spec.min_stake}: " "nobody could be drawn"
    )
  return spec


def _attack(config, n: int, seed: int) -> AttackSpec:
  import numpy as np

  sec = _section(
      config,
      "attack",
      (
          "behaviours",
          "fraction",
          "proposer",
          "voter",
          "scale_gamma",
          "trigger",
          "target",
          "poison_fraction",
          "trigger_placement",
          "distributed",
          "copy_noise",
          "sybil_stake",  # optional: configs written before it existed run unchanged
      ),
  )
  known = PROPOSER_BEHAVIOURS + VOTER_BEHAVIOURS
  raw = (
      _kv(sec.get("behaviours") or {}, "config.attack.behaviours")
      if not isinstance(sec.get("behaviours"), str)
      else {}
  )
  if isinstance(sec.get("behaviours"), str):  # '0:nan,3:always_reject'
    for item in filter(None, (s.strip() for s in sec["behaviours"].split(","))):
      if ":" not in item:
        raise RunConfigError(f"config.attack.behaviours: {item!r} is not index:behaviour")
      i, b = item.split(":", 1)
      raw[i.strip()] = b.strip()
  behaviours: dict[int, str] = {}
  for i, b in raw.items():
    try:
      idx = int(i)
    except ValueError:
      raise RunConfigError(f"config.attack.behaviours: participant {i!r} is not an index") from None
    if not 0 <= idx < n:
      raise RunConfigError(f"config.attack.behaviours: participant {idx} is not in 0..{n - 1}")
    parts = b.split("+")
    if (
        len(parts) > 2
        or any(x not in known for x in parts)
        or (
            len(parts) == 2
            and not (parts[0] in PROPOSER_BEHAVIOURS and parts[1] in VOTER_BEHAVIOURS)
        )
    ):
      raise RunConfigError(
          f"config.attack.behaviours: {b!r} for participant {idx} is unknown; "
          f"proposers: {list(PROPOSER_BEHAVIOURS)}, voters: "
          f"{list(VOTER_BEHAVIOURS)}, or 'proposer+voter'"
      )
    behaviours[idx] = b
  frac = _get(sec, "attack", "fraction", float, lo=0, hi=1)
  prop = _get(sec, "attack", "proposer", str, choices=PROPOSER_BEHAVIOURS)
  vote = _get(sec, "attack", "voter", str, choices=VOTER_BEHAVIOURS)
  if frac > 0:  # both set: each attacker proposes as `prop` and votes as `vote`
    both = "+".join(b for b in (prop, vote) if b != "honest") or "honest"
    bad = np.random.default_rng([seed, 7]).permutation(n)[: int(round(frac * n))]
    for i in sorted(int(x) for x in bad):
      behaviours.setdefault(i, both)
  return AttackSpec(
      behaviours=behaviours,
      scale_gamma=_get(sec, "attack", "scale_gamma", float),
      trigger=_get(sec, "attack", "trigger", str),
      target=_get(sec, "attack", "target", str),
      poison_fraction=_get(sec, "attack", "poison_fraction", float, lo=0, hi=1),
      trigger_placement=_get(sec, "attack", "trigger_placement", str, choices=PLACEMENTS),
      distributed=_get(sec, "attack", "distributed", bool),
      copy_noise=_get(sec, "attack", "copy_noise", float, lo=0),
      sybil_stake=_optional(sec, "attack", "sybil_stake", int, lo=0),
  )


def from_config(config: Any) -> RunConfig:
  """Checked, typed view of a run config (see configs/flock.py for every field)."""
  from flock_jax.data.registry import DOMAINS

  top = set(config.keys())
  allowed = {
      "seed",
      "model",
      "lora",
      "optim",
      "data",
      "federation",
      "ledger",
      "attack",
      "eval",
      "mesh",
      "checkpoint",
      "log",
  }
  if top - allowed:
    raise RunConfigError(
        f"config.{sorted(top - allowed)[0]}: unknown section; known: " f"{sorted(allowed)}"
    )
  seed = _get(config, "", "seed", int)
  model, lora = _model(config)
  data = _data(config)
  if data.pack and model.cfg.attention == "cudnn":
    raise RunConfigError(
        "config.data.pack=True with config.model.overrides attention='cudnn': the fused kernel"
        " takes right-padded rows of one sequence each; use attention='xla' to pack"
    )
  fed = _federation(config)
  optim = _optim(config, total_steps=fed.rounds * fed.local_steps)
  ledger = _ledger(config)
  attack = _attack(config, fed.num_participants, seed)
  if 0 < attack.sybil_stake < ledger.min_stake:
    raise RunConfigError(
        f"config.attack.sybil_stake={attack.sybil_stake} < ledger.min_stake={ledger.min_stake}:"
        " an account below the minimum stake cannot register"
    )
  ev = _section(
      config,
      "eval",
      (
          "every",
          "accuracy",
          "asr",
          "prompts_per_domain",
          "asr_prompts",
          "generate_max_new_tokens",
          "domains",
          "asr_max_new_tokens",  # optional: configs written before it existed run unchanged
      ),
  )
  eval_domains = ()
  if _get(ev, "eval", "domains", (str, list, tuple)):
    eval_domains = _names(ev["domains"], "config.eval.domains")
    bad = [x for x in eval_domains if x not in DOMAINS]
    if bad:
      raise RunConfigError(
          f"config.eval.domains: {bad[0]!r} is not a registry domain; use one of {sorted(DOMAINS)}"
      )
  for name in ("mesh", "checkpoint"):
    if name not in config:
      raise RunConfigError(f"config.{name} is missing (configs/flock.py sets every field)")
  mesh = _kv(config.mesh or {}, "config.mesh")
  from flock_jax.sharding import MESH_AXES

  for k, v in mesh.items():
    if k not in MESH_AXES:
      raise RunConfigError(f"config.mesh.{k}: unknown mesh axis; axes are {list(MESH_AXES)}")
    if not isinstance(v, int) or (v < 1 and v != -1):
      raise RunConfigError(f"config.mesh.{k}={v!r}: expected a positive size or -1")
  ck = _section(config, "checkpoint", ("every", "keep"))
  # optional: configs written before it existed run unchanged
  lg = _section(config, "log", ("tensorboard",)) if "log" in config else {}
  if model.tokenizer == "byte":
    from flock_jax.data.tokenizer import BYTE_VOCAB_SIZE

    if model.cfg.vocab_size < BYTE_VOCAB_SIZE:
      raise RunConfigError(
          f"config.model: vocab_size={model.cfg.vocab_size} < the byte "
          f"tokenizer's {BYTE_VOCAB_SIZE} tokens"
      )
  if data.seq_len > model.cfg.max_position_embeddings:
    raise RunConfigError(
        f"config.data.seq_len={data.seq_len} > the model's "
        f"max_position_embeddings={model.cfg.max_position_embeddings}"
    )
  return RunConfig(
      seed=seed,
      model=model,
      lora=lora,
      optim=optim,
      data=data,
      federation=fed,
      ledger=ledger,
      attack=attack,
      eval=EvalSpec(
          every=_get(ev, "eval", "every", int, lo=0),
          accuracy=_get(ev, "eval", "accuracy", bool),
          asr=_get(ev, "eval", "asr", bool),
          prompts_per_domain=_get(ev, "eval", "prompts_per_domain", int, lo=1),
          asr_prompts=_get(ev, "eval", "asr_prompts", int, lo=0),
          generate_max_new_tokens=_get(ev, "eval", "generate_max_new_tokens", int, lo=1),
          domains=eval_domains,
          asr_max_new_tokens=_optional(ev, "eval", "asr_max_new_tokens", int, lo=0),
      ),
      mesh={k: v for k, v in mesh.items() if v != 1},
      checkpoint_every=_get(ck, "checkpoint", "every", int, lo=0),
      checkpoint_keep=_get(ck, "checkpoint", "keep", int, lo=1),
      tensorboard=_optional(lg, "log", "tensorboard", bool),
  )
