"""FlockChain.stakes(): one whole read, then kept in step with the task's stake events.

Every check compares against a whole `accounts_of` read at the same block, after the
stake-changing paths: slashes and ejections in settlement, stake, unstake, withdraw, a
transaction sent around the client, and a revert to an earlier block."""

from flock_jax.chain import WEI

from tests.chain.helpers import make_chain, play_round


def _whole_read(chain):
  return list(chain.balances().stakes)


class _CountingCalls:
  """Counts whole-list `accounts_of` calls made through the task's functions."""

  def __init__(self, chain, monkeypatch):
    self.n = 0
    real = chain.task.functions.accounts_of

    def counted(*args, **kwargs):
      self.n += 1
      return real(*args, **kwargs)

    monkeypatch.setattr(chain.task.functions, "accounts_of", counted)


def test_mirror_follows_settlement_stake_unstake_and_withdraw(monkeypatch):
  # 11 tokens against a 10-token floor: one 10% slash ejects. Every drawn voter stays away,
  # so each round slashes and ejects its 3 voters; two rounds leave 2 of 8 listed.
  chain = make_chain(8, stakes=[11 * WEI] * 8, mint=20 * WEI)
  calls = _CountingCalls(chain, monkeypatch)
  assert chain.stakes() == _whole_read(chain) == [11 * WEI] * 8
  assert calls.n == 2  # the first read and the check's own
  ejected = set()
  for _ in range(2):
    roles, out = play_round(chain, skip_vote={*range(8)})
    ejected |= set(out.ejected)
    before = calls.n
    mirrored = chain.stakes()
    assert calls.n == before  # the events, not a whole read
    assert mirrored == _whole_read(chain)
  assert len(ejected) == 6 and sum(s < 11 * WEI for s in mirrored) == 6
  e = min(ejected)
  chain.withdraw(e)
  a, b = sorted(set(range(8)) - ejected)
  chain.stake(a, 5 * WEI)
  chain.unstake(a, 3 * WEI)
  # a transaction sent around the client: the logs still carry it
  chain.backend.transact(
      "stake", chain.task.functions.stake(2 * WEI), chain.addresses[b], 300_000, "direct"
  )
  before = calls.n
  mirrored = chain.stakes()
  assert calls.n == before
  assert mirrored == _whole_read(chain)
  assert (mirrored[e], mirrored[a], mirrored[b]) == (0, 13 * WEI, 13 * WEI)
  # ChainLedger.active_participants counts stakes >= min_stake: the contract's active list
  floor = chain.params.min_stake
  assert sum(s >= floor for s in mirrored) == len(_listed(chain)) == 2


def _listed(chain):
  """The contract's active list."""
  out = []
  while True:
    try:
      out.append(chain.task.functions.participants(len(out)).call())
    except Exception:  # noqa: BLE001 - past the end of the list
      return out


def test_mirror_starts_over_after_a_revert():
  chain = make_chain(8, stakes=[11 * WEI] * 8, mint=20 * WEI)
  snap = chain.backend.snapshot()
  play_round(chain, skip_vote={*range(8)})
  slashed = chain.stakes()
  read_at = chain.latest_block()[0]
  assert slashed == _whole_read(chain) and slashed != [11 * WEI] * 8
  chain.backend.revert(snap)
  # another history, past the block stakes() last read: its number exists, its hash differs
  chain.stake(0, 1 * WEI)
  chain.backend.mine(read_at - chain.latest_block()[0] + 2)
  assert chain.stakes() == _whole_read(chain) == [12 * WEI] + [11 * WEI] * 7


def test_mirror_reads_everything_when_the_node_refuses_the_logs(monkeypatch):
  chain = make_chain(8, stakes=[11 * WEI] * 8, mint=20 * WEI)
  assert chain.stakes() == [11 * WEI] * 8

  def refuse(*args, **kwargs):
    raise ValueError("query returned more than 10000 results")  # as capped nodes answer

  play_round(chain, skip_vote={*range(8)})
  monkeypatch.setattr(chain.w3.eth, "get_logs", refuse)
  slashed = chain.stakes()
  assert slashed == _whole_read(chain) and slashed != [11 * WEI] * 8
