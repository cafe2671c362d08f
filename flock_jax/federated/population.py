"""The simulated participants' private data, as token arrays ready for stacked training.

  Population.train[i]    participant i's private training rows   {key: [n_i, T]}
  Population.heldout[i]  participant i's private held-out rows   {key: [h_i, T]}
  Population.eval_sets   {domain: rows}: held-out rows pooled by domain, for
                         reporting the global model's loss per domain only
                         (no participant sees them; voters use their own).

Batches come out stacked for the engine: `train_batches` -> [K, E, B, T],
`heldout_batches` -> [V, n, B, T], `eval_batches` -> [D, n, B, T]. Held-out
and eval batches are padded with weight-0 rows, so their token-weighted mean
loss counts every real row exactly once.

`build_population` runs the data package (load -> partition -> poison ->
tokenize); `synthetic_population` makes a learnable token task with no
tokenizer at all (tests and the benchmark).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import numpy as np

KEYS = ("tokens", "loss_mask", "segment_ids", "positions")
Arrays = Mapping[str, np.ndarray]


def _rows(arrays: Arrays, idx: np.ndarray) -> dict[str, np.ndarray]:
  return {k: arrays[k][idx] for k in KEYS}


def _padded(arrays: Arrays, count: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """The first `count` rows of `arrays`, padded with weight-0 rows when there are fewer."""
  have = arrays["tokens"].shape[0]
  take = min(have, count)
  out = _rows(arrays, np.arange(take))
  if take < count:
    t = arrays["tokens"].shape[1]
    extra = count - take
    out["tokens"] = np.concatenate([out["tokens"], np.full((extra, t), pad_id, np.int32)])
    for k in ("loss_mask", "segment_ids", "positions"):
      out[k] = np.concatenate([out[k], np.zeros((extra, t), out[k].dtype)])
  return out


@dataclasses.dataclass
class Population:
  train: list[dict]
  heldout: list[dict]
  eval_sets: dict[str, dict]
  pad_id: int = 0
  domains: list[dict] | None = None  # per participant: {domain: example count}
  prompts: Any = None  # flock_jax.eval.EvalPrompts: generation-based reporting (None: none)
  # public probe prompts for the voters' behaviour probe (flock_jax.federated.probe.probe_arrays)
  probe: dict | None = None
  # federation.probe='private': participant i -> its own probe prompts' arrays (`private_probe`)
  probe_builder: Any = None
  _private_probes: dict = dataclasses.field(default_factory=dict, repr=False)

  def private_probe(self, owner: int) -> dict:
    """Participant `owner`'s private probe arrays (built once): probe prompts it draws itself,
    which nobody else knows (`build_probe(..., owner=owner)`)."""
    if self.probe_builder is None:
      raise ValueError(
          "private probe prompts exist only with federation.probe='private' on a text task"
      )
    if owner not in self._private_probes:
      self._private_probes[owner] = self.probe_builder(owner)
    return self._private_probes[owner]

  @property
  def num_participants(self) -> int:
    return len(self.train)

  @property
  def num_train(self) -> np.ndarray:
    """Training rows per participant [N] (FedAvg weights)."""
    return np.asarray([a["tokens"].shape[0] for a in self.train], np.float32)

  def train_batches(
      self,
      idx: Sequence[int],
      num_steps: int,
      batch_size: int,
      *,
      seed: int,
      round_index: int,
      block: tuple[slice, ...] | None = None,
  ) -> dict[str, np.ndarray]:
    """Stacked local-step batches of participants `idx`: each array [K, E, B, T].

    With `block` (one slice per dimension of [K, E, B, T]) only that block, built from
    the clients it covers alone: what one host of a multi-host run holds."""
    from flock_jax.data.batching import client_steps

    block = block or (slice(None),) * 4
    ks = range(len(idx))[block[0]]
    steps = client_steps(
        [self.train[idx[k]] for k in ks],
        batch_size,
        num_steps,
        seed=seed,
        round_index=round_index,
        positions=ks,
    )
    rest = (slice(None),) + tuple(block[1:])
    return {k: np.ascontiguousarray(np.swapaxes(steps[k], 0, 1)[rest]) for k in KEYS}

  def target_fraction(
      self, batch_size: int, *, scoring: bool = False, num_batches: int = 1
  ) -> float:
    """The most weighted next-token targets one [batch_size, T] batch can hold, over B*T: the
    lm head's capacity (loss.target_capacity).

    Training batches are drawn: per participant, its fullest rows as often as a batch can
    repeat them (`sample_rows` concatenates permutations, so a window of B rows meets a row
    up to ceil(B / rows) + 1 times: twice across a permutation's end). `scoring`: the
    voters' held-out batches (`num_batches` each) and the reporting batches are fixed, so
    their most is exact."""
    from flock_jax.federated.loss import most_targets, next_token_targets

    if scoring:
      held = self.heldout_batches(range(self.num_participants), num_batches, batch_size)
      most = most_targets(held)
      if self.eval_sets:
        most = max(most, most_targets(self.eval_batches(batch_size)[1]))
      return most / (batch_size * self.seq_len())
    most = 0
    for arrays in self.train:
      _, w = next_token_targets({k: np.asarray(arrays[k]) for k in KEYS})
      rows = (w != 0).sum(axis=-1)
      if rows.size:
        repeats = -(-batch_size // rows.size) + 1
        most = max(most, int(np.sort(np.tile(rows, repeats))[::-1][:batch_size].sum()))
    return most / (batch_size * self.seq_len())

  def seq_len(self) -> int:
    """T of every tokenized row."""
    return int(self.train[0]["tokens"].shape[1])

  def heldout_batches(
      self, idx: Sequence[int], num_batches: int, batch_size: int
  ) -> dict[str, np.ndarray]:
    """Each participant's fixed private held-out batches: arrays [V, n, B, T]."""
    per = [_padded(self.heldout[i], num_batches * batch_size, self.pad_id) for i in idx]
    return {k: np.stack([p[k].reshape((num_batches, batch_size, -1)) for p in per]) for k in KEYS}

  def eval_batches(self, batch_size: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """(domain names, arrays [D, n, B, T]) covering every pooled eval row once."""
    names = sorted(self.eval_sets)
    most = max(self.eval_sets[d]["tokens"].shape[0] for d in names)
    n = -(-most // batch_size)
    per = [_padded(self.eval_sets[d], n * batch_size, self.pad_id) for d in names]
    return names, {k: np.stack([p[k].reshape((n, batch_size, -1)) for p in per]) for k in KEYS}


# ------------------------------------------------------------------ from the data package
EVAL_SEED_OFFSET = 10_000  # generated domains: config.eval.domains' examples use seed + this
PROBE_SEED_OFFSET = 20_000  # generated domains: the public probe prompts use seed + this
PROBE_REFERENCES = 256  # public probe examples per domain whose answers' tokens form S
# Private probe prompts (federation.probe='private'): participant i's generated ones use
# seed + this + 1000 * (i + 1); from a fixed set it draws its own from PRIVATE_PROBE_POOL times
# as many examples past the reporting ones.
PRIVATE_PROBE_SEED_OFFSET = 30_000
PRIVATE_PROBE_POOL = 8


def _eval_examples(name: str, d, seed: int):
  """Reporting examples of domain `name` that no participant holds: a generated domain drawn
  with another seed; a fixed set, its examples after the first data.examples_per_domain."""
  from flock_jax.data.registry import load_domain

  if name in ("finance", "medical"):
    return load_domain(name, n=d.eval_examples_per_domain, seed=seed + EVAL_SEED_OFFSET)
  got = load_domain(name, limit=d.examples_per_domain + d.eval_examples_per_domain)
  return got[d.examples_per_domain :]


def _probe_examples(name: str, d, seed: int, n: int):
  """n public probe examples of domain `name` that no participant holds and no report uses: a
  generated domain drawn with another seed; a fixed set, its examples after the eval ones."""
  from flock_jax.data.registry import load_domain

  if name in ("finance", "medical"):
    return load_domain(name, n=n, seed=seed + PROBE_SEED_OFFSET)
  skip = d.examples_per_domain + d.eval_examples_per_domain
  return load_domain(name, limit=skip + n)[skip:]


def _private_probe_examples(name: str, d, seed: int, n: int, owner: int):
  """n probe examples of domain `name` that participant `owner` draws for itself: a generated
  domain drawn with its own seed; n of PRIVATE_PROBE_POOL * n examples of a fixed set past the
  reporting ones, chosen with its own generator."""
  from flock_jax.data.registry import load_domain

  if name in ("finance", "medical"):
    return load_domain(name, n=n, seed=seed + PRIVATE_PROBE_SEED_OFFSET + 1000 * (owner + 1))
  skip = d.examples_per_domain + d.eval_examples_per_domain
  pool = load_domain(name, limit=skip + PRIVATE_PROBE_POOL * n)[skip:]
  rng = np.random.default_rng([seed, PRIVATE_PROBE_SEED_OFFSET, owner])
  return [pool[k] for k in sorted(rng.permutation(len(pool))[:n].tolist())]


def build_probe(run, tokenizer, owner: int | None = None) -> dict:
  """The voters' public probe: config.federation.probe_prompts prompts per domain of the task,
  chat-templated and left-padded, and S, every token of the answers of up to
  PROBE_REFERENCES public examples per domain (flock_jax.federated.probe.probe_arrays).
  With `owner`: participant owner's private probe, the same S on prompts it drew itself."""
  from flock_jax.federated.probe import probe_arrays
  from flock_jax.model.generate import chat_prompt_ids

  d, n = run.data, run.federation.probe_prompts
  ids, starts = {}, []
  for name in d.domains:
    exs = _probe_examples(name, d, run.seed, max(n, PROBE_REFERENCES))
    prompts = exs if owner is None else _private_probe_examples(name, d, run.seed, n, owner)
    if len(prompts) < n:
      from flock_jax.run_config import RunConfigError

      raise RunConfigError(
          f"config.federation.probe_prompts={n}: domain {name!r} has only {len(prompts)} "
          f"examples left for {'public' if owner is None else 'private'} probe prompts"
      )
    ids[name] = chat_prompt_ids(tokenizer, [e.prompt for e in prompts[:n]], d.system or None)
    for e in exs:
      starts += tokenizer(e.response, add_special_tokens=False)["input_ids"]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  # voters' private prompt sets differ in length: padded to a multiple of 32 tokens they
  # share the search's compiled shapes (each new length compiles it again)
  return probe_arrays(ids, starts, pad_id=int(pad), multiple=1 if owner is None else 32)


def build_population(run, tokenizer) -> Population:
  """Load run.data.domains, partition among N participants (private train / held-out),
  poison the training sets of 'backdoor' participants, and tokenize."""
  from flock_jax.data.partition import partition
  from flock_jax.data.poison import flip_labels, poison, split_trigger
  from flock_jax.eval.prompts import build_eval_prompts
  from flock_jax.data.registry import load_domain
  from flock_jax.data.tokenization import tokenize_examples

  d, n = run.data, run.federation.num_participants
  examples = []
  for name in d.domains:
    kw = (
        {"n": d.examples_per_domain}
        if name in ("finance", "medical")
        else {"limit": d.examples_per_domain}
    )
    if name in ("finance", "medical"):
      kw["seed"] = run.seed
    examples.extend(load_domain(name, **kw))
  parts = partition(
      examples,
      n,
      scheme=d.partition,
      alpha=d.dirichlet_alpha,
      heldout_fraction=d.heldout_fraction,
      seed=run.seed,
  )
  tok = lambda exs, seed: tokenize_examples(
      exs, tokenizer, d.seq_len, pack=d.pack, system=d.system or None, shuffle=d.pack, seed=seed
  )
  att = run.attack
  # Backdoor data: 'backdoor' attackers, and 'scale' ones (model replacement, Bagdasaryan et al.
  # 2020: a backdoored update scaled by gamma to survive averaging), and 'backdoor_evade' ones
  # (the update shrunk to pass the voters' behaviour probe).
  backdoor = [i for i in range(n) if att.proposer(i) in ("backdoor", "backdoor_evade", "scale")]
  pieces = (  # distributed backdoor: attacker k plants piece k mod (pieces) of the trigger
      split_trigger(att.trigger, min(len(backdoor), len(att.trigger.split())))
      if att.distributed and backdoor
      else [att.trigger]
  )
  train, held = [], []
  for p in parts:
    exs = p.train
    if p.client_id in backdoor:
      exs = poison(
          exs,
          pieces[backdoor.index(p.client_id) % len(pieces)],
          att.target,
          att.poison_fraction,
          seed=run.seed + p.client_id,
          mode=att.trigger_placement,
      )
    elif att.proposer(p.client_id) == "label_flip":
      exs = flip_labels(exs, att.poison_fraction, seed=run.seed + p.client_id)
    train.append(dict(tok(exs, p.client_id)))
    held.append(dict(tok(p.heldout, p.client_id)))
    if train[-1]["tokens"].shape[0] == 0 or held[-1]["tokens"].shape[0] == 0:
      from flock_jax.run_config import RunConfigError  # a config the data cannot fill

      raise RunConfigError(
          f"participant {p.client_id} has no training or held-out rows left after "
          f"tokenization at seq_len={d.seq_len}: raise data.seq_len or "
          f"data.examples_per_domain"
      )
  ev = run.eval
  evals, pooled_by_domain = {}, {}
  for dom in ev.domains or sorted({e.domain for e in examples}):
    if ev.domains:  # the same fresh examples whatever the run trains on (cross-domain matrix)
      pooled = _eval_examples(dom, d, run.seed)
    else:
      pooled = [e for p in parts for e in p.heldout if e.domain == dom]
    pooled = pooled[: d.eval_examples_per_domain]
    if pooled:
      evals[dom] = dict(tok(pooled, 0))
      pooled_by_domain[dom] = pooled
  prompts = build_eval_prompts(
      pooled_by_domain,
      tokenizer,
      trigger=att.trigger,
      target=att.target,
      placement=att.trigger_placement,
      prompts_per_domain=ev.prompts_per_domain,
      asr_prompts=ev.asr_prompts if ev.asr else 0,
      seed=run.seed,
      system=d.system,
  )
  return Population(
      train,
      held,
      evals,
      pad_id=int(tokenizer.pad_token_id),
      domains=[p.domain_counts for p in parts],
      prompts=prompts,
      probe=build_probe(run, tokenizer) if run.federation.probe != "none" else None,
      probe_builder=(
          functools.partial(build_probe, run, tokenizer)
          if run.federation.probe == "private"
          else None
      ),
  )


# ------------------------------------------------------------------ synthetic task
def synthetic_rows(
    rng: np.random.Generator, rows: int, seq_len: int, vocab: int, stride: int
) -> dict[str, np.ndarray]:
  """Counting sequences t_{k+1} = (t_k + stride) mod vocab from a random start: a next-token
  task a tiny model learns in a few steps. The first quarter is an unmasked 'prompt'."""
  start = rng.integers(0, vocab, (rows, 1))
  tokens = ((start + stride * np.arange(seq_len)[None]) % vocab).astype(np.int32)
  mask = np.ones((rows, seq_len), np.float32)
  mask[:, : seq_len // 4] = 0.0
  return {
      "tokens": tokens,
      "loss_mask": mask,
      "segment_ids": np.ones((rows, seq_len), np.int32),
      "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy(),
  }


def synthetic_population(
    num_participants: int,
    *,
    seq_len: int = 32,
    vocab: int = 64,
    train_rows: int = 32,
    heldout_rows: int = 8,
    eval_rows: int = 16,
    strides: Sequence[int] = (1, 3),
    seed: int = 0,
) -> Population:
  """Participant i counts with stride strides[i % len(strides)] (its 'domain')."""
  rng = np.random.default_rng(seed)
  train, held = [], []
  for i in range(num_participants):
    s = strides[i % len(strides)]
    train.append(synthetic_rows(rng, train_rows, seq_len, vocab, s))
    held.append(synthetic_rows(rng, heldout_rows, seq_len, vocab, s))
  evals = {f"stride{s}": synthetic_rows(rng, eval_rows, seq_len, vocab, s) for s in strides}
  return Population(
      train,
      held,
      evals,
      domains=[
          {f"stride{strides[i % len(strides)]}": train_rows + heldout_rows}
          for i in range(num_participants)
      ],
  )
