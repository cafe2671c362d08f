"""Atomic folder writes: build in a temporary sibling folder, then rename into place."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile

from flock_jax.checkpoint.errors import CheckpointError


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False):
  """Yields a temporary folder next to `path`; on success it becomes `path` in one rename.

  A crash leaves only a hidden `.<name>.tmp-*` sibling, never a half-written `path`.
  With overwrite, an existing `path` is moved aside first and deleted after.
  """
  path = pathlib.Path(path).expanduser().absolute()
  if path.exists() and not overwrite:
    raise CheckpointError(f"{path}: already exists; pass overwrite=True to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a model folder is meant to be shared
  try:
    yield tmp
    old = None
    if path.exists():
      old = path.parent / f".{path.name}.old-{os.getpid()}"
      os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
