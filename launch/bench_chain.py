"""Benchmark the chain (protocol v2): gas per call, and gas, blocks and wall time per round.

    python launch/bench_chain.py                       # N = 10, 100, 1000; P = V = 4, 16
    python launch/bench_chain.py --participants=10 --roles=4 --rounds=3 --selection=stake
    python launch/bench_chain.py --worst_case          # N = 1024, P = V = 64: every call < 30 M?
    python launch/bench_chain.py --backend=jsonrpc --rpc_url=http://127.0.0.1:8545

For every N and every P = V = k with 2k <= N it deploys a task, stakes every
participant, and plays `--rounds` full rounds (start_round, draw_roles, P commits,
P reveals, V vote commits, V vote reveals, finalize), then one unstake and claim.
`--worst_case` runs the largest task the constructor accepts (1024 participants,
P = V = 64, stake-weighted, per-proposal votes, every voter flagging a proposal) and
reports every function's gas against the 30 M block limit. A figure, not a test.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags
from eth_utils import keccak

# Runnable from a checkout without installing it (the other launch scripts do the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flock_jax.chain import FlockChain, TaskParams, WEI
from flock_jax.chain.backend import EthTesterBackend
from flock_jax.chain.client import as_hash

flags.DEFINE_list("participants", ["10", "100", "1000"], "Numbers of participants N.")
flags.DEFINE_list("roles", ["4", "16"], "Proposers = voters per round (k), run where 2k <= N.")
flags.DEFINE_integer("rounds", 2, "Rounds played per configuration.")
flags.DEFINE_enum("selection", "uniform", ["uniform", "stake"], "Role selection mode.")
flags.DEFINE_enum("vote_mode", "whole", ["whole", "per_proposal"], "Vote mode.")
flags.DEFINE_enum("backend", "eth_tester", ["eth_tester", "jsonrpc"], "Chain backend.")
flags.DEFINE_string("rpc_url", "", "JSON-RPC URL for --backend=jsonrpc.")
flags.DEFINE_boolean("worst_case", False, "Measure the worst case at the maximum parameters.")
FLAGS = flags.FLAGS
BLOCK_GAS = 30_000_000

CALLS = (
    "deploy FlockTask",
    "deploy FlockLogic",
    "deploy StakeToken",
    "stake",
    "start_round",
    "draw_roles",
    "commit_proposal",
    "reveal_proposal",
    "commit_vote",
    "reveal_vote",
    "finalize",
    "claim",
    "unstake",
    "close",
    "drain_pool",
)


def _chain(n: int) -> FlockChain:
  if FLAGS.backend == "eth_tester":
    return FlockChain(EthTesterBackend(n + 1), n)
  return FlockChain.from_config({"backend": "jsonrpc", "rpc_url": FLAGS.rpc_url}, n)


def play(chain: FlockChain, r: int, k: int, per_proposal: bool, flag: bool = False) -> dict:
  """One full round; returns its gas, transactions, blocks and wall time."""
  start = len(chain.gas_log)
  b0 = chain.latest_block()[0]
  t = time.perf_counter()
  roles = chain.start_round()
  for i in roles.proposers:
    chain.propose(i, keccak(text=f"{r} {i}"))
  chain.reveal_proposals(roles.proposers)
  cand = as_hash(keccak(text=f"candidate {r}"))
  for n, j in enumerate(roles.voters):
    inv = 1 << (n % k) if flag else 0
    if per_proposal:
      chain.vote_bits(j, (1 << k) - 1, invalid=inv)
    else:
      chain.vote(j, cand, True, invalid=inv)
  chain.finalize()
  wall = time.perf_counter() - t
  txs = chain.gas_log[start:]
  return {
      "gas": sum(g for _, g, _ in txs),
      "wall": wall,
      "txs": len(txs),
      "blocks": chain.latest_block()[0] - b0,
  }


def _gas(chain: FlockChain, reduce=statistics.median) -> dict:
  return {
      c: int(reduce(g for name, g, _ in chain.gas_log if name == c))
      for c in CALLS
      if any(name == c for name, _, _ in chain.gas_log)
  }


def run_config(n: int, k: int) -> dict:
  """Deploy, stake, play the rounds; returns gas per call and per-round figures."""
  chain = _chain(n)
  per_proposal = FLAGS.vote_mode == "per_proposal"
  params = TaskParams(
      total_rounds=FLAGS.rounds,
      num_proposers=k,
      num_voters=k,
      vote_window=4 * k + 10,
      vote_mode=int(per_proposal),
      selection_mode=int(FLAGS.selection == "stake"),
      reward_pool=1_000 * WEI,
  )
  t0 = time.perf_counter()
  chain.deploy(params, stakes=[(100 + 7 * i) * WEI for i in range(n)])
  setup_s = time.perf_counter() - t0
  rounds = [play(chain, r, k, per_proposal) for r in range(FLAGS.rounds)]
  chain.unstake(0, 7 * WEI)  # every participant staked 100 + 7i, so 7 leaves >= s_min
  winner = next(i for i in range(n) if chain.claimable(i) > 0)
  chain.claim(winner)
  assert chain.balances().conserved
  return {
      "n": n,
      "k": k,
      "gas": _gas(chain),
      "setup_s": setup_s,
      "round_gas": statistics.mean(r["gas"] for r in rounds),
      "round_s": statistics.mean(r["wall"] for r in rounds),
      "round_blocks": statistics.mean(r["blocks"] for r in rounds),
      "round_txs": statistics.mean(r["txs"] for r in rounds),
      "tps": sum(r["txs"] for r in rounds) / sum(r["wall"] for r in rounds),
  }


def worst_case() -> None:
  """The largest task the constructor accepts; every function's most expensive call."""
  n, k = 1024, 64
  chain = _chain(n)
  params = TaskParams(
      total_rounds=2,
      num_proposers=k,
      num_voters=k,
      vote_window=400,
      vote_mode=1,
      selection_mode=1,
      reward_pool=1_000 * WEI,
  )
  t0 = time.perf_counter()
  chain.deploy(params, stakes=[(100 + 7 * i) * WEI + i for i in range(n)])
  print(f"set up N={n} in {time.perf_counter() - t0:.0f} s", flush=True)
  r = play(chain, 0, k, True, flag=True)
  chain.unstake(1, (100 + 7) * WEI + 1)  # leaves the list: the swap-remove
  chain.claim(next(i for i in range(n) if chain.claimable(i) > 0))
  play(chain, 1, k, True, flag=True)
  chain.close()
  chain._send("drain_pool", chain.task.functions.drain_pool(chain.deployer), chain.deployer)
  gas = _gas(chain, max)
  print(f"\nworst case: N={n}, P=V={k}, stake-weighted, per-proposal votes, every voter flags")
  print(f"{'call':>18} {'max gas':>12} {'of 30 M':>8}")
  for c, g in gas.items():
    print(f"{c:>18} {g:>12,} {100 * g / BLOCK_GAS:>7.1f}%")
  print(f"round: {r['txs']} txs, {r['gas']:,} gas, {r['blocks']} blocks, {r['wall']:.1f} s")
  over = {c: g for c, g in gas.items() if g >= BLOCK_GAS}
  if over:
    raise SystemExit(f"over the 30 M block gas limit: {over}")


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.worst_case:
    return worst_case()
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
  print(
      f"\nbackend={FLAGS.backend} selection={FLAGS.selection} vote_mode={FLAGS.vote_mode} rounds={FLAGS.rounds}"
  )
  print("\nGas per call (median over the configuration's calls):")
  cols = [
      "deploy FlockTask",
      "stake",
      "start_round",
      "draw_roles",
      "commit_proposal",
      "reveal_proposal",
      "commit_vote",
      "reveal_vote",
      "finalize",
  ]
  print(f"{'N':>4} {'P=V':>4} " + " ".join(f"{c.replace('deploy ', 'deploy:'):>17}" for c in cols))
  for r in results:
    print(f"{r['n']:>4} {r['k']:>4} " + " ".join(f"{r['gas'].get(c, 0):>17,}" for c in cols))
  print(
      "\nPer round (start_round, draw_roles, P commits and reveals, V commits and reveals, finalize):"
  )
  print(
      f"{'N':>4} {'P=V':>4} {'txs':>5} {'blocks':>6} {'gas/round':>12} {'s/round':>8} {'tx/s':>6}"
  )
  for r in results:
    print(
        f"{r['n']:>4} {r['k']:>4} {r['round_txs']:>5.0f} {r['round_blocks']:>6.0f}"
        f" {int(r['round_gas']):>12,} {r['round_s']:>8.2f} {r['tps']:>6.1f}"
    )


if __name__ == "__main__":
  app.run(main)
