"""`AdapterStore`: a content-addressed directory of blobs (adapters, candidates).

A blob lives at ``<root>/<0x-hex keccak256 of its bytes>.bin``; the name is
the hash committed on chain. `get` recomputes the hash on every read, so a
tampered file is caught where it is used.
"""

from __future__ import annotations

import os
import pathlib

from eth_utils import keccak

from .errors import ChainError


class StoreError(ChainError):
  """A blob is missing or its bytes do not hash to its name."""


class AdapterStore:
  """Blobs named by their keccak256 hash."""

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    self.root.mkdir(parents=True, exist_ok=True)

  def path(self, h: bytes) -> pathlib.Path:
    """Where the blob of hash `h` (32 bytes) lives."""
    return self.root / f"0x{bytes(h).hex()}.bin"

  def put(self, data: bytes) -> bytes:
    """Store `data`; returns its keccak256 hash (32 bytes)."""
    h = keccak(data)
    p = self.path(h)
    if not p.exists():
      tmp = p.with_suffix(f".tmp{os.getpid()}")
      tmp.write_bytes(data)
      os.replace(tmp, p)
    return h

  def __contains__(self, h: bytes) -> bool:
    return self.path(h).exists()

  def get(self, h: bytes) -> bytes:
    """The blob of hash `h`, after checking that its bytes hash to `h`."""
    p = self.path(h)
    if not p.exists():
      raise StoreError(f"no blob 0x{bytes(h).hex()} in {self.root}")
    data = p.read_bytes()
    got = keccak(data)
    if got != bytes(h):
      raise StoreError(f"blob {p.name} is tampered: its bytes hash to 0x{got.hex()}")
    return data

  def hashes(self) -> list[bytes]:
    """Hashes named by the files in the store (sorted)."""
    return sorted(bytes.fromhex(p.stem[2:]) for p in self.root.glob("0x*.bin"))
