"""Hugging Face dataset names, for machines that reach a hub.

`load_hub("alpaca-gpt4")` calls `datasets.load_dataset(...)` and applies the
set's schema adapter. Offline (HF_DATASETS_OFFLINE=1, or no network) it fails
at once with an error that says how to use a local copy instead. The same
adapters apply to local copies: `load_local(path, adapter="alpaca")`.
"""

from __future__ import annotations

from typing import Mapping

from flock_jax.data.example import Example
from flock_jax.data.sources.catalogue import HUB_SETS, HubSet
from flock_jax.data.sources.files import rows_to_examples


class HubUnavailableError(RuntimeError):
  """A hub data set could not be loaded (offline, or the hub is unreachable)."""


def resolve(name: str) -> HubSet | None:
  """The HubSet for a short name or a repository id, or None if unknown."""
  if name in HUB_SETS:
    return HUB_SETS[name]
  for hs in HUB_SETS.values():
    if hs.repo.lower() == name.lower():
      return hs
  return None


def load_hub(
    name: str,
    *,
    split: str = "train",
    adapter: str | None = None,
    columns: Mapping[str, str] | None = None,
    domain: str | None = None,
    limit: int | None = None,
) -> list[Example]:
  """Examples from a hub data set, by short name (HUB_SETS) or repository id.

  Unknown repository ids need `adapter=` or `columns=` (or rely on column
  detection). Raises HubUnavailableError when the hub cannot be reached.
  """
  known = resolve(name)
  repo = known.repo if known else name
  try:
    import datasets

    ds = datasets.load_dataset(repo, split=split)
  except (ConnectionError, OSError) as e:  # OfflineModeIsEnabled arrives as ConnectionError
    short = f"{name}" if known else repo
    raise HubUnavailableError(
        f"cannot load the hub data set {repo!r} ({type(e).__name__}: {e}). This machine "
        f"has no hub access (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE, or no network), and "
        f"flock_jax never downloads data at run time by itself. Fix: on a connected machine "
        f"run datasets.load_dataset({repo!r}, split={split!r}).to_json('{short}.jsonl'), copy "
        f"the file here and pass a local path instead: load_domain('local:/path/{short}.jsonl'"
        f", adapter={(adapter or (known.adapter if known else 'alpaca'))!r})."
    ) from e
  rows = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
  return rows_to_examples(
      rows.to_list(),
      domain=domain or (known.domain if known else repo.split("/")[-1]),
      adapter=adapter or (known.adapter if known and columns is None else None),
      columns=columns,
      uid_prefix=repo,
      answer_key=known.answer_key if known else None,
  )
