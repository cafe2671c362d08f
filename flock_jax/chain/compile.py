"""Compile the Vyper contracts in-process, cached by source hash.

The cache lives in ``$FLOCK_JAX_CACHE/vyper`` when that variable is set,
else in ``~/.cache/flock_jax/vyper``; an entry's name is the sha256 of the
source and the compiler version, so an edit or a compiler upgrade recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib

CONTRACTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "contracts"


@dataclasses.dataclass(frozen=True)
class Artifact:
  """A compiled contract: its name, ABI and creation bytecode (0x-hex)."""

  name: str
  abi: list
  bytecode: str


def cache_dir() -> pathlib.Path:
  """Where compiled artifacts are kept (see the module docstring)."""
  root = os.environ.get("FLOCK_JAX_CACHE")
  base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "flock_jax"
  return base / "vyper"


def _compile(name: str, source: str, fmt: str) -> Artifact:
  """Compile Vyper `source` to its ABI and `fmt` bytecode, through the on-disk cache."""
  import vyper

  tag = "" if fmt == "bytecode" else "blueprint\n"
  key = hashlib.sha256(f"{vyper.__version__}\n{tag}{source}".encode()).hexdigest()
  path = cache_dir() / f"{name}{'-blueprint' if tag else ''}-{key[:24]}.json"
  if path.exists():
    data = json.loads(path.read_text())
    return Artifact(name, data["abi"], data["bytecode"])
  out = vyper.compile_code(source, output_formats=["abi", fmt])
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}")
  tmp.write_text(json.dumps({"abi": out["abi"], "bytecode": out[fmt], "vyper": vyper.__version__}))
  os.replace(tmp, path)  # atomic: parallel test workers may race here
  return Artifact(name, out["abi"], out[fmt])


def compile_source(name: str, source: str) -> Artifact:
  """Compile Vyper `source` (or load it from the cache) into an `Artifact`."""
  return _compile(name, source, "bytecode")


def _contract_source(name: str) -> str:
  path = CONTRACTS_DIR / f"{name}.vy"
  if not path.exists():
    raise FileNotFoundError(
        f"no contract {path}; expected one of {sorted(p.stem for p in CONTRACTS_DIR.glob('*.vy'))}"
    )
  return path.read_text()


@functools.cache
def load_contract(name: str) -> Artifact:
  """Compile ``contracts/<name>.vy``, e.g. ``load_contract("FlockTask")``."""
  return compile_source(name, _contract_source(name))


def compile_blueprint_source(name: str, source: str) -> Artifact:
  """Like `compile_source`, but `bytecode` deploys the contract as an
  ERC-5202 blueprint (vyper's ``blueprint_bytecode``: the deployed code is
  ``0xfe7100`` + the initcode), for ``create_from_blueprint``."""
  return _compile(name, source, "blueprint_bytecode")


@functools.cache
def load_blueprint(name: str) -> Artifact:
  """Compile ``contracts/<name>.vy`` as a blueprint, e.g. ``load_blueprint("FlockTask")``."""
  return compile_blueprint_source(name, _contract_source(name))
