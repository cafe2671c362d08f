"""Benchmark the chain: gas per call, and gas, wall time and throughput per round.

    python launch/bench_chain.py                       # N = 10, 50, 200; P = V = 4, 16, 64
    python launch/bench_chain.py --participants=10 --roles=4 --rounds=3 --selection=stake
    python launch/bench_chain.py --backend=jsonrpc --rpc_url=http://127.0.0.1:8545

For every N and every P = V = k with 2k <= N it deploys a task, stakes every
participant, and plays `--rounds` full rounds (every proposer proposes,
every voter votes, then finalize), then one claim. A figure, not a test.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from flock_jax.chain import FlockChain, TaskParams, WEI
from flock_jax.chain.client import as_hash
from eth_utils import keccak

flags.DEFINE_list("participants", ["10", "50", "200"], "Numbers of participants N.")
flags.DEFINE_list(
    "roles", ["4", "16", "64"], "Proposers = voters per round (k), run where 2k <= N."
)
flags.DEFINE_integer("rounds", 2, "Rounds played per configuration.")
flags.DEFINE_enum("selection", "uniform", ["uniform", "stake"], "Role selection mode.")
flags.DEFINE_enum("vote_mode", "whole", ["whole", "per_proposal"], "Vote mode.")
flags.DEFINE_enum("backend", "eth_tester", ["eth_tester", "jsonrpc"], "Chain backend.")
flags.DEFINE_string("rpc_url", "", "JSON-RPC URL for --backend=jsonrpc.")
FLAGS = flags.FLAGS

CALLS = (
    "deploy FlockTask",
    "deploy StakeToken",
    "fund",
    "stake",
    "start_round",
    "propose",
    "vote",
    "vote_bits",
    "finalize",
    "claim",
    "unstake",
)


def run_config(n: int, k: int) -> dict:
  """Deploy, stake, play the rounds; returns gas per call and per-round figures."""
  chain = FlockChain.from_config({"backend": FLAGS.backend, "rpc_url": FLAGS.rpc_url}, n)
  per_proposal = FLAGS.vote_mode == "per_proposal"
  params = TaskParams(
      total_rounds=FLAGS.rounds,
      num_proposers=k,
      num_voters=k,
      vote_window=10 * k + 10,
      vote_mode=int(per_proposal),
      selection_mode=int(FLAGS.selection == "stake"),
      reward_pool=1_000 * WEI,
  )
  t0 = time.perf_counter()
  chain.deploy(params, stakes=[(100 + 7 * i) * WEI for i in range(n)])
  setup_s = time.perf_counter() - t0
  rounds = []
  for r in range(FLAGS.rounds):
    start = len(chain.gas_log)
    t = time.perf_counter()
    roles = chain.start_round()
    for i in roles.proposers:
      chain.propose(i, keccak(text=f"{r} {i}"))
    cand = as_hash(keccak(text=f"candidate {r}"))
    for j in roles.voters:
      if per_proposal:
        chain.vote_bits(j, (1 << k) - 1)
      else:
        chain.vote(j, cand, True)
    chain.finalize()
    wall = time.perf_counter() - t
    txs = chain.gas_log[start:]
    rounds.append({"gas": sum(g for _, g, _ in txs), "wall": wall, "txs": len(txs)})
  chain.unstake(0, 7 * WEI)  # every participant staked 100 + 7i, so 7 leaves >= s_min
  winner = next(i for i in range(n) if chain.claimable(i) > 0)
  chain.claim(winner)
  gas = {
      c: int(statistics.median(g for name, g, _ in chain.gas_log if name == c))
      for c in CALLS
      if any(name == c for name, _, _ in chain.gas_log)
  }
  assert chain.balances().conserved
  return {
      "n": n,
      "k": k,
      "gas": gas,
      "setup_s": setup_s,
      "round_gas": statistics.mean(r["gas"] for r in rounds),
      "round_s": statistics.mean(r["wall"] for r in rounds),
      "tps": sum(r["txs"] for r in rounds) / sum(r["wall"] for r in rounds),
  }


def main(argv: list[str]) -> None:
  del argv
  results = []
  for n in map(int, FLAGS.participants):
    for k in map(int, FLAGS.roles):
      if 2 * k > n:
        continue
      res = run_config(n, k)
      results.append(res)
      print(
          f"done N={n} P=V={k}: setup {res['setup_s']:.1f}s, {res['round_s']:.2f} s/round",
          flush=True,
      )
  vote = "vote_bits" if FLAGS.vote_mode == "per_proposal" else "vote"
  print(
      f"\nbackend={FLAGS.backend} selection={FLAGS.selection} vote_mode={FLAGS.vote_mode} rounds={FLAGS.rounds}"
  )
  print("\nGas per call (median over the configuration's calls):")
  cols = [
      "deploy FlockTask",
      "deploy StakeToken",
      "stake",
      "start_round",
      "propose",
      vote,
      "finalize",
      "claim",
  ]
  print(f"{'N':>4} {'P=V':>4} " + " ".join(f"{c.replace('deploy ', 'deploy:'):>17}" for c in cols))
  for r in results:
    print(f"{r['n']:>4} {r['k']:>4} " + " ".join(f"{r['gas'].get(c, 0):>17,}" for c in cols))
  print("\nPer round (start_round + P propose + V vote + finalize):")
  print(f"{'N':>4} {'P=V':>4} {'txs':>5} {'gas/round':>12} {'s/round':>8} {'tx/s':>6}")
  for r in results:
    print(
        f"{r['n']:>4} {r['k']:>4} {2 * r['k'] + 2:>5} {int(r['round_gas']):>12,} {r['round_s']:>8.2f} {r['tps']:>6.1f}"
    )


if __name__ == "__main__":
  app.run(main)
