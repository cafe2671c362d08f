"""Re-score every proposal of a finished FLock run with the voters' behaviour probe.

  python launch/probe_proposals.py --workdir=runs/backdoor_smollm2/flock_f0.3_s0
  python launch/probe_proposals.py --workdir=RUN --threshold=0.1 --probe_prompts=8
  python launch/probe_proposals.py --workdir=RUN --mode=search   # the trigger search as well
  python launch/probe_proposals.py --workdir=RUN --mode=private --owners=4,5,6
  python launch/probe_proposals.py --workdir=RUN --mode=private --search_scope=round
  python launch/probe_proposals.py --workdir=RUN --mode=soft --probe_prompts=4 --from_round=15

Reads the run's config, metrics.jsonl and adapter store (every FLock run with a workdir keeps
one), and scores each proposal against the global adapter of its round, as a voter with
config.federation.probe=MODE would have (flock_jax/federated/probe.py; 'search' also prints
the trigger tokens found, flock_jax/federated/trigger_search.py; 'private' runs the search on
each of --owners' own probe prompts, as those voters would, and reports the median of their
scores, each voter's in brackets; 'soft', offline only, searches free slot embeddings instead of
tokens, `trigger_search.soft_search`, and scores each proposal against the base model, with its
score against G and G's own against the base model beside it). Prints one line
per round (attackers marked, from the run's attack config) and, last, a JSON line:
{"proposals", "attacker_scores", "honest_scores", "max_honest", "min_attacker",
"attackers_over", "honest_over", "threshold"}. This is how the probe's threshold was chosen
(docs/results/README.md, experiment 5): run it on an undefended run and on an attack-free one.

A run's proposal hashes are in its metrics (extra.proposal_hashes). Runs made before they were
recorded are read in store order: every round stores its new proposals, in proposer order, then
its candidate; the candidate's recorded hash checks the alignment.
"""

import json
import os
import pathlib
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished FLock run's workdir.", required=True)
_THRESHOLD = flags.DEFINE_float("threshold", 0.1, "Report the proposals scoring above this.")
_PROMPTS = flags.DEFINE_integer("probe_prompts", 8, "Public probe prompts per domain.")
_MODE = flags.DEFINE_enum(
    "mode", "collapse", ["collapse", "anchored", "search", "private", "soft"], "Probe mode."
)
_SOFT_STEPS = flags.DEFINE_integer("soft_steps", 12, "mode=soft: gradient steps.")
_SOFT_LR = flags.DEFINE_float(
    "soft_lr", 0.1, "mode=soft: step length, as a fraction of the largest token-embedding norm."
)
_OWNERS = flags.DEFINE_list(
    "owners",
    None,
    "mode=private: the voters whose own probe prompts score each proposal (participant"
    " indices; default the run's first three honest participants).",
)
_ROUNDS = flags.DEFINE_integer("rounds", None, "Score the first this many rounds only.")
_FROM = flags.DEFINE_integer("from_round", 0, "Score rounds from this one on.")
_SLOTS = flags.DEFINE_integer("search_slots", 3, "mode=search: trigger tokens searched.")
_TOPK = flags.DEFINE_integer("search_topk", 8, "mode=search: swaps tried per slot and step.")
_STEPS = flags.DEFINE_integer("search_steps", 2, "mode=search: swap steps after the first fill.")
_RESTARTS = flags.DEFINE_integer(
    "search_restarts", 1, "mode=search: searches per proposal (the others from random tokens)."
)
_SCOPE = flags.DEFINE_enum(
    "search_scope",
    "proposal",
    ["proposal", "round"],
    "mode=search: search each proposal, or once a round on G + the sum of its proposals.",
)
_EXEMPT = flags.DEFINE_bool(
    "exempt_g",
    False,
    "Score a proposal against the base model only where it exceeds G's own collapse"
    " (federation.probe_exempt_g).",
)
_KNOWN = flags.DEFINE_bool(
    "known_trigger",
    False,
    "Also print each proposal's collapse on the probe prompts ending in the run's own attack"
    " trigger (what the search would score if it found it; a voter does not know it).",
)


def _known_trigger_scores(engine, G, updates, run):
  """Collapse of each G + Δ on the probe prompts ending in the run's trigger, against G and the
  base model (the larger): the trigger search's score had it found the trigger."""
  from flock_jax.federated.trigger_search import search_scores

  tok = engine.population.prompts.tokenizer
  trigger = tok(" " + run.attack.trigger, add_special_tokens=False)["input_ids"]
  return search_scores(engine, G, updates, ids=trigger)[0].tolist()


def main(argv):
  del argv
  import ml_collections
  import numpy as np
  from flock_jax import cli
  from flock_jax.chain.store import AdapterStore
  from flock_jax.federated import engine as E, hashing
  from flock_jax.federated.population import PRIVATE_PROBE_SEED_OFFSET
  from flock_jax.federated.probe import probe
  from flock_jax.federated.trigger_search import soft_search_scores
  from flock_jax.run_config import from_config
  from flock_jax.workdir import flock_run_config, proposal_hashes

  cli.info_logging()
  wd = pathlib.Path(_WORKDIR.value)
  try:
    config = flock_run_config(wd)
  except ValueError as e:
    cli.fail(str(e))
  config["federation"].update(
      probe="anchored" if _MODE.value == "soft" else _MODE.value,
      probe_prompts=_PROMPTS.value,
      search_slots=_SLOTS.value,
      search_topk=_TOPK.value,
      search_steps=_STEPS.value,
      search_restarts=_RESTARTS.value,
      search_scope=_SCOPE.value,
      probe_exempt_g=_EXEMPT.value,
  )
  run = from_config(ml_collections.ConfigDict(config))
  engine, state = E.build(run)
  tok = engine.population.prompts.tokenizer
  store = AdapterStore(wd / "store")
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  start, rows = rows[0], [r for r in rows if r["round"] >= 0]
  rows = rows[: _ROUNDS.value] if _ROUNDS.value is not None else rows
  n = run.federation.num_participants
  bad = set(run.attack.attackers(n))
  read = lambda h: hashing.tree_from_canonical_bytes(
      store.get(bytes.fromhex(h[2:])), like=state.global_lora
  )
  g_hash, att, hon = start["global_hash"], [], []
  att_over, hon_over, th = [], [], _THRESHOLD.value  # mode=private: voters over, per proposal
  soft_g = []  # mode=soft: each proposal's score against G, in print order
  owners = [int(j) for j in _OWNERS.value or [i for i in range(n) if i not in bad][:3]]
  with engine.mesh_context():
    for r, hashes in zip(rows, proposal_hashes(rows, wd / "store")):
      if r["round"] < _FROM.value:
        g_hash = r["global_hash"] or g_hash
        continue
      who = [i for i in r["proposers"] if i in hashes]
      ups = [read(hashes[i]) for i in who]
      if _MODE.value == "private":
        each = [
            probe(
                engine,
                read(g_hash),
                ups,
                mode="search",
                arrays=engine.population.private_probe(j),
                seed=(run.seed, PRIVATE_PROBE_SEED_OFFSET, j, r["round"]),  # as in the round
            )
            for j in owners
        ]
        scores = np.median([e[0] for e in each], axis=0)
        tokens, found = each[0][1], each[0][2]
        per_owner = np.asarray([e[0] for e in each])  # [owners, P]
      elif _MODE.value == "soft":
        soft = soft_search_scores(
            engine,
            read(g_hash),
            ups,
            slots=_SLOTS.value,
            steps=_SOFT_STEPS.value,
            lr=_SOFT_LR.value,
            seed=run.seed,
        )
        scores, tokens, found = soft["vs_base"], soft["token_base"], None
      else:
        scores, tokens, found = probe(engine, read(g_hash), ups, mode=_MODE.value)
      known = _known_trigger_scores(engine, read(g_hash), ups, run) if _KNOWN.value else None
      cells = []
      for k, (i, s, t) in enumerate(zip(who, scores.tolist(), tokens.tolist())):
        (att if i in bad else hon).append(s)
        trig = "" if found is None else f" found {tok.decode(list(found[k]))!r}"
        scale = r.get("extra", {}).get("evade_scales", {}).get(str(i))  # the run's own shrink
        trig += "" if scale is None else f" (submitted at scale {scale:.2f})"
        trig += "" if known is None else f" [known trigger {known[k]:.3f}]"
        if _MODE.value == "soft":
          trig += f" [vs G {soft['vs_g'][k]:.3f} {tok.decode([int(soft['token_g'][k])])!r}]"
          soft_g.append((i in bad, round(float(soft["vs_g"][k]), 4)))
        if _MODE.value == "private":
          trig += f" [voters {' '.join(f'{x:.3f}' for x in per_owner[:, k])}]"
          (att_over if i in bad else hon_over).append(int((per_owner[:, k] > th).sum()))
        cells.append(f"{i}{'*' if i in bad else ''}={s:.3f} {tok.decode([t])!r}{trig}")
      own = f" (G vs base {soft['g_vs_base']:.3f})" if _MODE.value == "soft" else ""
      print(f"round {r['round']:3d} (G {g_hash[:10]}){own}: " + ", ".join(cells), flush=True)
      g_hash = r["global_hash"] or g_hash
  print("* attacker (the run's attack config)")
  print(
      json.dumps(
          {
              "proposals": len(att) + len(hon),
              "attacker_scores": [round(x, 4) for x in att],
              "honest_scores": [round(x, 4) for x in hon],
              "max_honest": max(hon, default=None),
              "min_attacker": min(att, default=None),
              "attackers_over": int(np.sum(np.asarray(att) > th)),
              "honest_over": int(np.sum(np.asarray(hon) > th)),
              "threshold": th,
              **(
                  {
                      "owners": owners,
                      # per proposal: how many of the owners' own probes flag it
                      "attacker_flagged_by": att_over,
                      "honest_flagged_by": hon_over,
                  }
                  if _MODE.value == "private"
                  else {}
              ),
              **(
                  {
                      "attacker_scores_vs_g": [x for a, x in soft_g if a],
                      "honest_scores_vs_g": [x for a, x in soft_g if not a],
                  }
                  if _MODE.value == "soft"
                  else {}
              ),
          }
      )
  )


if __name__ == "__main__":
  from flock_jax import cli

  cli.run_main(main)
