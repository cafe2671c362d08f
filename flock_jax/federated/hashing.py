"""Canonical bytes and keccak-256 hashes of adapter / update pytrees (PROTOCOL.md step 2).

Byte format, version 1 (all integers little-endian, unsigned)::

    magic    4 bytes  b"FLKT"
    version  u32      1
    count    u32      number of leaves N
    N times, leaves in ascending order of their path string:
      path_len u32    length of the UTF-8 path in bytes
      path     bytes  the path, UTF-8, e.g. "layers/q/a"
      ndim     u32    number of dimensions (0 for a scalar)
      dims     ndim x u64
      data     prod(dims) x 4 bytes: the values as IEEE-754 float32,
               little-endian, C (row-major) order

A leaf's path joins its keys with "/": a dict key as ``str(key)``, a
list/tuple index as its decimal number, an attribute as its name. Paths are
ordered by Python string comparison, which equals comparing their UTF-8
bytes. Leaves of any real dtype are converted to float32 first (exact for
bf16/f16; float64 rounds to nearest). The header of each leaf makes trees with
the same values but different structure or shapes hash differently.

``tree_hash`` is keccak-256 (Ethereum's, via ``eth_utils.keccak``; not
``hashlib.sha3_256``, whose padding differs) of those bytes.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from eth_utils import keccak
from flock_jax.pytree import PyTree

MAGIC = b"FLKT"
VERSION = 1


def key_str(key: Any) -> str:
  """One path element as text: dict key, sequence index or attribute name."""
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: tuple) -> str:
  """A jax key path as ``'a/b/c'``."""
  parts = [key_str(k) for k in path]
  for p in parts:
    if "/" in p or p == "":
      raise ValueError(
          f"key {p!r} in path {parts} cannot be hashed canonically: keys must be non-empty and contain no '/'"
      )
  return "/".join(parts)


def leaves_by_path(tree: PyTree) -> dict[str, Any]:
  """``{path: leaf}`` in ascending path order (raises on duplicate paths)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  out: dict[str, Any] = {}
  for path, leaf in flat:
    p = path_str(path)
    if p in out:
      raise ValueError(f"two leaves share the path {p!r}")
    out[p] = leaf
  return dict(sorted(out.items()))


def canonical_bytes(tree: PyTree) -> bytes:
  """The canonical serialisation of ``tree`` (format in the module docstring)."""
  leaves = leaves_by_path(tree)
  parts = [MAGIC, struct.pack("<II", VERSION, len(leaves))]
  for p, leaf in leaves.items():
    arr = np.asarray(jax.device_get(leaf))
    if not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == jnp.bfloat16
    ):
      raise TypeError(f"leaf {p!r} has dtype {arr.dtype}; only real numbers can be hashed")
    pb = p.encode("utf-8")
    parts.append(struct.pack("<I", len(pb)))
    parts.append(pb)
    parts.append(struct.pack(f"<I{arr.ndim}Q", arr.ndim, *arr.shape))
    parts.append(np.ascontiguousarray(arr, "<f4").tobytes(order="C"))
  return b"".join(parts)


def tree_hash(tree: PyTree) -> bytes:
  """keccak-256 of `canonical_bytes` (32 bytes)."""
  return keccak(canonical_bytes(tree))


# Below this many bytes a tree, a thread pool costs more than it saves (the tiny model's
# four adapters: 3.1 ms on two threads against 1.4 ms in turn; SmolLM2's: 66 against 150).
THREADED_HASH_BYTES = 1 << 20


def tree_hashes(trees: Sequence[PyTree]) -> list[bytes]:
  """`tree_hash` of each tree, in order, on a few threads: the copies off the device and
  keccak release the GIL, so a round's P proposals hash in about 1/cores of the time."""
  nbytes = sum(np.dtype(x.dtype).itemsize * np.size(x) for x in jax.tree.leaves(trees[:1]))
  if len(trees) < 2 or nbytes < THREADED_HASH_BYTES:
    return [tree_hash(t) for t in trees]
  with concurrent.futures.ThreadPoolExecutor(min(len(trees), os.cpu_count() or 1)) as pool:
    return list(pool.map(tree_hash, trees))


def hash_hex(tree_or_digest: Any) -> str:
  """``'0x'`` + 64 lowercase hex digits, of a tree or of a 32-byte digest."""
  digest = (
      tree_or_digest
      if isinstance(tree_or_digest, (bytes, bytearray))
      else tree_hash(tree_or_digest)
  )
  return "0x" + bytes(digest).hex()


def _nest(paths_to_leaves: dict[str, np.ndarray]) -> dict:
  root: dict = {}
  for p, leaf in paths_to_leaves.items():
    node = root
    *parents, last = p.split("/")
    for k in parents:
      node = node.setdefault(k, {})
      if not isinstance(node, dict):
        raise ValueError(f"path {p!r} conflicts with a leaf")
    node[last] = leaf
  return root


def tree_from_canonical_bytes(data: bytes, like: Optional[PyTree] = None) -> PyTree:
  """Inverse of `canonical_bytes`.

  Without ``like``: nested dicts keyed by the path parts (all keys strings),
  float32 ``jnp`` leaves. With ``like``: ``like``'s structure, each leaf cast
  to the dtype of ``like``'s leaf; paths and shapes must match exactly.
  """
  mv = memoryview(data)
  if bytes(mv[:4]) != MAGIC:
    raise ValueError("not canonical tree bytes (bad magic); expected b'FLKT'")
  version, count = struct.unpack_from("<II", mv, 4)
  if version != VERSION:
    raise ValueError(f"canonical tree bytes version {version}; this code reads version {VERSION}")
  off = 12
  leaves: dict[str, np.ndarray] = {}
  for _ in range(count):
    (plen,) = struct.unpack_from("<I", mv, off)
    off += 4
    p = bytes(mv[off : off + plen]).decode("utf-8")
    off += plen
    (ndim,) = struct.unpack_from("<I", mv, off)
    off += 4
    shape = struct.unpack_from(f"<{ndim}Q", mv, off)
    off += 8 * ndim
    n = int(np.prod(shape, dtype=np.int64))
    if off + 4 * n > len(mv):
      raise ValueError(f"canonical tree bytes truncated in leaf {p!r}")
    leaves[p] = (
        np.frombuffer(mv, dtype="<f4", count=n, offset=off).reshape(shape).astype(np.float32)
    )
    off += 4 * n
  if off != len(mv):
    raise ValueError(f"{len(mv) - off} trailing bytes after {count} leaves")
  if like is None:
    return jax.tree.map(jnp.asarray, _nest(leaves))
  want = leaves_by_path(like)
  if list(want) != list(leaves):
    raise ValueError(f"paths differ from `like`: got {list(leaves)}, expected {list(want)}")
  flat, treedef = jax.tree_util.tree_flatten_with_path(like)
  out = []
  for path, ref in flat:
    p = path_str(path)
    arr = leaves[p]
    if tuple(arr.shape) != tuple(np.shape(ref)):
      raise ValueError(f"leaf {p!r} has shape {arr.shape}, expected {np.shape(ref)}")
    out.append(jnp.asarray(arr).astype(jnp.asarray(ref).dtype))
  return jax.tree.unflatten(treedef, out)
