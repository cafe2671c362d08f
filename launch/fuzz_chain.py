"""A randomized invariant run against FlockTask and its Python model, in lock step.

    python launch/fuzz_chain.py --transactions=10000 --seed=0

Prints one JSON line: {"transactions", "succeeded", "reverted", "finalized_rounds",
"invariant_checks", "violations"}. Exit status 1 on any violation (the first one is
printed to stderr). See flock_jax/chain/fuzz.py for what each step does and checks.
"""

from __future__ import annotations

import os
import json
import sys

from absl import app, flags

# Runnable from a checkout without installing it (the other launch scripts do the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flock_jax.chain.fuzz import Fuzzer, Violation

flags.DEFINE_integer("transactions", 10_000, "Transactions to send.")
flags.DEFINE_integer("seed", 0, "Seed of the random transaction sequence.")
flags.DEFINE_integer("participants", 10, "Participants per deployed task.")


def main(argv: list[str]) -> int:
  del argv
  f = flags.FLAGS
  if f.transactions < 1:
    raise app.UsageError("--transactions must be positive")
  fuzzer = Fuzzer(f.seed, num_participants=f.participants)
  try:
    fuzzer.run(f.transactions)
  except Violation as e:
    print(f"violation: {e}", file=sys.stderr)
  print(json.dumps(fuzzer.stats.line()), flush=True)
  return 1 if fuzzer.stats.violations else 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
