"""Fault injection for the kill-and-resume tests: SIGKILL this process at a named point.

  FLOCK_JAX_KILL_AT="2:voted"   kill in round 2 right after the votes were sent
  FLOCK_JAX_KILL_AT="1:checkpoint"   kill 5 ms into the checkpoint write after round 1

Points, in the order a round reaches them: 'trained' (local training done, nothing on chain
yet), 'proposed' (proposals committed), 'voted' (votes sent, not finalized), 'finalized' (the
round settled on chain, nothing written off chain), 'metrics' (the round's metrics row
written, no checkpoint yet), 'checkpoint' (during the checkpoint write). Unset: every call is
a no-op costing one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "FLOCK_JAX_KILL_AT"
POINTS = ("trained", "proposed", "voted", "finalized", "metrics", "checkpoint")


def _target() -> tuple[int, str] | None:
  spec = os.environ.get(ENV, "")
  if not spec:
    return None
  r, _, point = spec.partition(":")
  if point not in POINTS:
    raise ValueError(f"{ENV}={spec!r}: expected '<round>:<point>' with point in {POINTS}")
  return int(r), point


def point(name: str, round_index: int) -> None:
  """SIGKILL now when FLOCK_JAX_KILL_AT names this round and point ('checkpoint': 5 ms later,
  from a timer thread, so the kill lands inside the write that follows)."""
  t = _target()
  if t is None or t != (round_index, name):
    return
  kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
  if name == "checkpoint":
    threading.Timer(0.005, kill).start()
  else:
    kill()
