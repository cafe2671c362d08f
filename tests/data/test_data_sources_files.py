"""Local files, schema adapters and hub names, on small fixture files the tests write."""

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flock_jax.data.registry import load_domain
from flock_jax.data.sources import files, hub

ALPACA = [  # alpaca-gpt4 / FinGPT sentiment / medical_meadow / CodeAlpaca schema
    {
        "instruction": "What is the sentiment of this news?",
        "input": "Shares jumped 10%.",
        "output": "positive",
    },
    {"instruction": "Write a haiku.", "input": "", "output": "Leaves fall..."},
    {"instruction": "Empty output is dropped.", "input": "", "output": ""},
]
DOLLY = [
    {
        "instruction": "Who wrote it?",
        "context": "Hamlet was written by Shakespeare.",
        "response": "Shakespeare.",
        "category": "closed_qa",
    },
    {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
]


def _write(path, rows):
  name = path.name
  if name.endswith(".parquet"):
    pq.write_table(pa.Table.from_pylist(rows), path)
  elif name.endswith(".jsonl"):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  elif name.endswith(".jsonl.gz"):
    with gzip.open(path, "wt") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  elif name.endswith(".json"):
    path.write_text(json.dumps(rows))
  elif name.endswith(".csv"):
    with open(path, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
  return path


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".jsonl.gz", ".json", ".csv"])
def test_alpaca_schema_every_format(tmp_path, suffix):
  path = _write(tmp_path / f"alpaca{suffix}", ALPACA)
  exs = load_domain(f"local:{path}")  # schema detected from the columns
  assert len(exs) == 2 and {e.domain for e in exs} == {"alpaca"}
  assert exs[0].prompt == "What is the sentiment of this news?\n\nShares jumped 10%."
  assert exs[0].response == "positive" and exs[1].prompt == "Write a haiku."
  assert len({e.uid for e in exs}) == 2


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_dolly_schema(tmp_path, suffix):
  path = _write(tmp_path / f"dolly{suffix}", DOLLY)
  exs = load_domain(f"local:{path}", domain="general")
  assert [e.domain for e in exs] == ["general", "general"]
  assert exs[0].prompt == "Who wrote it?\n\nContext:\nHamlet was written by Shakespeare."
  assert exs[0].response == "Shakespeare." and exs[0].meta["category"] == "closed_qa"
  assert exs[1].prompt == "Name a colour."


@pytest.mark.parametrize(
    "hub_name,domain,has_answer",
    [
        ("alpaca-gpt4", "general", False),
        ("fingpt-sentiment", "finance", True),
        ("medical-flashcards", "medical", False),
        ("code-alpaca", "code", False),
    ],
)
def test_hub_set_schema_on_local_copy(tmp_path, hub_name, domain, has_answer):
  path = _write(tmp_path / "copy.parquet", ALPACA)
  exs = load_domain(f"local:{path}", adapter=hub_name)
  assert {e.domain for e in exs} == {domain}
  assert (exs[0].answer == "positive") if has_answer else exs[0].answer is None


def test_dolly_hub_set_on_local_copy(tmp_path):
  exs = files.load_local(_write(tmp_path / "d.jsonl", DOLLY), adapter="dolly")
  assert len(exs) == 2 and exs[0].meta["category"] == "closed_qa"


def test_column_mapping_and_limit(tmp_path):
  rows = [{"q": f"question {i}", "a": f"reply {i}", "gold": str(i)} for i in range(5)]
  path = _write(tmp_path / "custom.csv", rows)
  exs = load_domain(
      f"local:{path}",
      columns={"prompt": "q", "response": "a", "answer": "gold"},
      domain="legal",
      limit=3,
  )
  assert [(e.prompt, e.response, e.answer, e.domain) for e in exs] == [
      (f"question {i}", f"reply {i}", str(i), "legal") for i in range(3)
  ]
  with pytest.raises(ValueError, match="response"):
    load_domain(f"local:{path}", columns={"prompt": "q"})


def test_unknown_schema_and_missing_file_errors(tmp_path):
  path = _write(tmp_path / "odd.jsonl", [{"foo": "x", "bar": "y"}])
  with pytest.raises(ValueError, match="columns="):
    load_domain(f"local:{path}")
  with pytest.raises(FileNotFoundError):
    load_domain(f"local:{tmp_path / 'nope.jsonl'}")
  txt = tmp_path / "x.txt"
  txt.write_text("")
  with pytest.raises(ValueError, match="unsupported"):
    files.read_rows(txt)
  with pytest.raises(ValueError, match="unknown adapter"):
    load_domain(f"local:{path}", adapter="nonesuch")


def test_save_to_disk_folder(tmp_path):
  import datasets

  datasets.DatasetDict({"train": datasets.Dataset.from_list(DOLLY)}).save_to_disk(
      str(tmp_path / "ds")
  )
  exs = load_domain(f"local:{tmp_path / 'ds'}", domain="general")
  assert [e.response for e in exs] == ["Shakespeare.", "Blue."]


def test_hub_name_offline_fails_clearly(monkeypatch):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(hub.HubUnavailableError, match="local path") as err:
    load_domain("hf:alpaca-gpt4")
  assert "vicgalle/alpaca-gpt4" in str(err.value) and "adapter='alpaca'" in str(err.value)
  with pytest.raises(hub.HubUnavailableError, match="local:"):
    load_domain("hf:databricks/databricks-dolly-15k")


def test_hub_table_resolves_names_and_repos():
  assert hub.resolve("dolly").adapter == "dolly"
  assert hub.resolve("FinGPT/fingpt-sentiment-train").domain == "finance"
  assert hub.resolve("someone/unknown") is None
  assert {hs.adapter for hs in hub.HUB_SETS.values()} <= set(files.ADAPTERS)


def test_unknown_domain_name():
  with pytest.raises(ValueError, match="local:<path>"):
    load_domain("astrology")
