"""Local data files (JSON, JSONL, CSV, parquet, gzip'd JSON/JSONL, `save_to_disk`
folders) and the schema adapters that turn their rows into `Example`s.

Schemas of the usual federated instruction sets:
  alpaca  instruction / input / output      (alpaca-gpt4, FinGPT sentiment,
                                             medical_meadow flashcards, CodeAlpaca-20k)
  dolly   instruction / context / response / category   (Dolly-15k)
  qa      question / answer
  chat    prompt / response
`columns={"prompt": "q", "response": "a", "answer": "gold"}` maps any other schema.
"""

from __future__ import annotations

import csv
import gzip
import json
import pathlib
from typing import Any, Callable, Iterable, Mapping

from flock_jax.data.example import Example
from flock_jax.data.sources.catalogue import HUB_SETS

Row = Mapping[str, Any]
Adapter = Callable[[Row], tuple[str, str, dict[str, Any]]]
"""row -> (prompt, response, meta)."""


def _text(row: Row, key: str) -> str:
  v = row.get(key)
  return "" if v is None else str(v).strip()


def alpaca_adapter(row: Row) -> tuple[str, str, dict[str, Any]]:
  """instruction (+ blank line + input, if any) -> output."""
  inst, inp = _text(row, "instruction"), _text(row, "input")
  prompt = f"{inst}\n\n{inp}" if inp else inst
  return prompt, _text(row, "output"), {}


def dolly_adapter(row: Row) -> tuple[str, str, dict[str, Any]]:
  """instruction (+ "Context:" block, if any) -> response; category kept in meta."""
  inst, ctx = _text(row, "instruction"), _text(row, "context")
  prompt = f"{inst}\n\nContext:\n{ctx}" if ctx else inst
  return prompt, _text(row, "response"), {"category": _text(row, "category")}


def qa_adapter(row: Row) -> tuple[str, str, dict[str, Any]]:
  """question -> answer."""
  return _text(row, "question"), _text(row, "answer"), {}


def chat_adapter(row: Row) -> tuple[str, str, dict[str, Any]]:
  """prompt -> response."""
  return _text(row, "prompt"), _text(row, "response"), {}


ADAPTERS: dict[str, Adapter] = {
    "alpaca": alpaca_adapter,
    "dolly": dolly_adapter,
    "qa": qa_adapter,
    "chat": chat_adapter,
}

# Columns that identify each schema, most specific first.
_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("dolly", frozenset({"instruction", "context", "response"})),
    ("alpaca", frozenset({"instruction", "output"})),
    ("chat", frozenset({"prompt", "response"})),
    ("qa", frozenset({"question", "answer"})),
)


def detect_adapter(columns: Iterable[str]) -> str:
  """The adapter name whose signature columns are all present.

  Raises ValueError naming the columns seen and how to map them.
  """
  cols = set(columns)
  for name, needed in _SIGNATURES:
    if needed <= cols:
      return name
  raise ValueError(
      f"cannot tell the schema of columns {sorted(cols)}; pass adapter=one of "
      f"{sorted(ADAPTERS)} or columns={{'prompt': ..., 'response': ...}}"
  )


def column_adapter(columns: Mapping[str, str]) -> Adapter:
  """An adapter from a column map with keys prompt, response and optionally answer."""
  missing = {"prompt", "response"} - set(columns)
  if missing:
    raise ValueError(f"columns= must map {sorted(missing)} too; got {dict(columns)}")
  unknown = set(columns) - {"prompt", "response", "answer"}
  if unknown:
    raise ValueError(f"columns= keys must be prompt/response/answer; got unknown {sorted(unknown)}")

  def adapt(row: Row) -> tuple[str, str, dict[str, Any]]:
    meta = {"answer": _text(row, columns["answer"])} if "answer" in columns else {}
    return _text(row, columns["prompt"]), _text(row, columns["response"]), meta

  return adapt


def read_rows(path: str | pathlib.Path, *, split: str = "train") -> list[dict[str, Any]]:
  """Rows of a local data file as dicts, by extension.

  .json (a list of objects, or {split: [...]}), .jsonl, .json.gz, .jsonl.gz,
  .csv, .parquet, or a folder written by `datasets.Dataset(Dict).save_to_disk`.
  """
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise FileNotFoundError(f"no data file or folder at {p}")
  name = p.name.lower()
  if p.is_dir():
    import datasets  # only for save_to_disk folders

    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
      if split not in ds:
        raise KeyError(f"{p} has splits {list(ds)}, not {split!r}; pass split=")
      ds = ds[split]
    return ds.to_list()
  if name.endswith(".parquet"):
    import pyarrow.parquet as pq

    return pq.read_table(p).to_pylist()
  if name.endswith(".csv"):
    with open(p, newline="", encoding="utf-8") as f:
      return list(csv.DictReader(f))
  opener = gzip.open if name.endswith(".gz") else open
  stem = name[:-3] if name.endswith(".gz") else name
  with opener(p, "rt", encoding="utf-8") as f:
    if stem.endswith(".jsonl"):
      return [json.loads(line) for line in f if line.strip()]
    if stem.endswith(".json"):
      data = json.load(f)
      if isinstance(data, dict):
        if split not in data:
          raise KeyError(
              f"{p} is a JSON object with keys {list(data)}; "
              f"expected a list of rows or a {split!r} key"
          )
        data = data[split]
      return list(data)
  raise ValueError(
      f"unsupported data file {p}: use .json, .jsonl, .csv, .parquet "
      f"(optionally .gz for JSON) or a save_to_disk folder"
  )


def rows_to_examples(
    rows: Iterable[Row],
    *,
    domain: str,
    adapter: str | Adapter | None = None,
    columns: Mapping[str, str] | None = None,
    uid_prefix: str = "",
    answer_key: str | None = None,
    limit: int | None = None,
) -> list[Example]:
  """Apply a schema adapter to rows; drop rows whose prompt or response is empty.

  Args:
    adapter: a name in ADAPTERS, a callable, or None to detect from the columns.
    columns: an explicit column map (overrides `adapter`).
    answer_key: a column holding the exact answer (e.g. FinGPT's label in
      "output"); otherwise `columns["answer"]` if mapped, else None.
  """
  rows = list(rows)
  if limit is not None:
    rows = rows[:limit]
  if not rows:
    return []
  if columns is not None:
    fn = column_adapter(columns)
  elif callable(adapter):
    fn = adapter
  else:
    fn = ADAPTERS[adapter or detect_adapter(rows[0].keys())]
  out = []
  for i, row in enumerate(rows):
    prompt, response, meta = fn(row)
    if not prompt or not response:
      continue
    answer = meta.pop("answer", None)
    if answer_key is not None:
      answer = _text(row, answer_key)
    out.append(
        Example(
            domain=domain,
            prompt=prompt,
            response=response,
            answer=answer or None,
            uid=f"{uid_prefix or domain}/{i}",
            meta=meta,
        )
    )
  return out


def load_local(
    path: str | pathlib.Path,
    *,
    domain: str | None = None,
    adapter: str | Adapter | None = None,
    columns: Mapping[str, str] | None = None,
    split: str = "train",
    answer_key: str | None = None,
    limit: int | None = None,
) -> list[Example]:
  """Examples from a local data file.

  `adapter` may also name a known hub set ("alpaca-gpt4", "fingpt-sentiment",
  "medical-flashcards", "code-alpaca", "dolly"; see `sources.catalogue.HUB_SETS`) to
  use a local copy of it: its schema, domain and answer column apply. The
  domain otherwise defaults to the file's stem.
  """
  p = pathlib.Path(path).expanduser()
  if isinstance(adapter, str) and adapter not in ADAPTERS:
    if adapter not in HUB_SETS:
      raise ValueError(
          f"unknown adapter {adapter!r}; use one of {sorted(ADAPTERS)}, "
          f"a hub set name {sorted(HUB_SETS)}, or columns="
      )
    hs = HUB_SETS[adapter]
    adapter, domain, answer_key = hs.adapter, domain or hs.domain, answer_key or hs.answer_key
  dom = domain or p.name.split(".")[0]
  return rows_to_examples(
      read_rows(p, split=split),
      domain=dom,
      adapter=adapter,
      columns=columns,
      uid_prefix=f"{dom}",
      answer_key=answer_key,
      limit=limit,
  )
