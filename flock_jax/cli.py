"""What every launch/ command shares: a user error ends in one line, not a traceback.

  from flock_jax.cli import run_main
  if __name__ == "__main__":
    run_main(main)

A user error is a bad flag or config field (also a misspelled override, which ml_collections
reports as an AttributeError during flag parsing), a missing path, a workdir conflict, a
checkpoint that disagrees with the chain, a chain that cannot be reached: the command prints
`error: <what, where, how to fix>` on stderr and exits with status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception types that mean the user asked for something that cannot be done."""
  from flock_jax.chain.errors import ChainError
  from flock_jax.checkpoint.errors import CheckpointError
  from flock_jax.data.wheels import WheelError
  from flock_jax.federated.ledger import LedgerError
  from flock_jax.federated.run_state import ResumeError
  from flock_jax.model.config import ConfigError
  from flock_jax.run_config import RunConfigError
  from flock_jax.workdir import WorkdirError

  return (
      RunConfigError,
      ConfigError,
      WorkdirError,
      CheckpointError,
      ResumeError,
      LedgerError,
      ChainError,
      WheelError,
      FileNotFoundError,
      NotADirectoryError,
      app.UsageError,
  )


def one_line(e: BaseException) -> str:
  """An exception's message on one line (ml_collections wraps its KeyError text in quotes)."""
  msg = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  if isinstance(e, (KeyError, AttributeError)):
    msg = msg.strip("'\"").replace("\\n", " ").replace("\\'", "'")
  return " ".join(msg.replace("\\n", " ").split())


def info_logging() -> None:
  """absl logging at INFO for flock_jax's own records (launch/ and the package); every other
  library's records only from WARNING up (orbax logs each file it reads or writes at INFO)."""
  import logging as pylog
  import pathlib

  from absl import logging

  root = pathlib.Path(__file__).resolve().parents[1]
  own = (str(root / "flock_jax"), str(root / "launch"))

  class OwnRecords(pylog.Filter):

    def filter(self, record: pylog.LogRecord) -> bool:
      return record.levelno >= pylog.WARNING or str(record.pathname).startswith(own)

  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, OwnRecords) for f in handler.filters):
    handler.addFilter(OwnRecords())


def fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{one_line(e)} (see --helpfull)")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # --config.federation.roundz=3: ml_collections raises while the flag is applied
    fail(f"bad --config override: {one_line(e)}")
  return []


def define_config(name: str, default: str, help_string: str):
  """`config_flags.DEFINE_config_file`, whose --config.x=y overrides are applied as the flag is
  defined (at import): a misspelled field there ends in one line too."""
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file(name, default, help_string)
  except (AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    fail(f"bad --{name} or --{name}.<field> override: {one_line(e)}")


def run_main(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with user errors (flags included) as one line and exit status 2."""

  def guarded(argv):
    try:
      return main(argv)
    except user_errors() as e:
      fail(one_line(e))

  app.run(guarded, flags_parser=_parse_flags)
