"""Errors raised by the chain layer: every failure is a `ChainError`."""

from __future__ import annotations


class ChainError(RuntimeError):
  """Base class of every error the chain layer raises."""


class RevertError(ChainError):
  """A contract call reverted. `reason` is the contract's own message.

  The message names the call and the reason, for example
  ``vote: not a drawn voter for round 3 (participant 5, 0xAbc…)``.
  """

  def __init__(self, call: str, reason: str, sender: str | None = None, detail: str = ""):
    self.call = call
    self.reason = reason
    self.sender = sender
    where = f" ({detail})" if detail else ""
    text = reason if reason.startswith(call + ":") else f"{call}: {reason}"
    super().__init__(text + where)


class ChainConfigError(ChainError):
  """The chain configuration is invalid (unknown backend, missing URL, ...)."""


class ChainConnectionError(ChainError):
  """The JSON-RPC node cannot be reached."""
