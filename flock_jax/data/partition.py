"""Split examples among N clients, then each client's share ONCE into a private
training set and a private held-out (test) set (PROTOCOL.md, "Parties").

Schemes (`scheme=`):
  "domain"     client i gets label i mod L (labels sorted; the label is the
               domain unless `label_key` says otherwise). With N > L clients
               several share a label and split its examples evenly; with N < L
               a client gets several labels, round-robin. Every example is used.
  "iid"        a seeded shuffle split into N near-equal parts.
  "dirichlet"  for each label, client shares p ~ Dirichlet(alpha * 1_N)
               (Hsu et al. 2019): small alpha -> each client sees few labels,
               large alpha -> close to IID. Redrawn (up to `max_tries`) until
               every client has at least `min_examples`.

Every scheme checks `min_examples` and raises a ValueError that says what to
change when it cannot be met. Everything is a pure function of the inputs and
the seed.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Literal, Sequence

import numpy as np

from flock_jax.data.example import Example

Scheme = Literal["domain", "iid", "dirichlet"]


@dataclasses.dataclass(frozen=True)
class ClientData:
  """One participant's private data.

  Attributes:
    client_id: 0..N-1.
    domain_counts: examples per domain, train and held-out together.
    train: the private training set.
    heldout: the private held-out set (voters score candidates on it).
  """

  client_id: int
  domain_counts: dict[str, int]
  train: list[Example]
  heldout: list[Example]

  @property
  def size(self) -> int:
    """len(train) + len(heldout)."""
    return len(self.train) + len(self.heldout)


def label_of(ex: Example, label_key: str) -> str:
  """An Example field (e.g. "domain") or, failing that, a `meta` key (e.g. "category")."""
  if label_key in {f.name for f in dataclasses.fields(Example)}:
    return str(getattr(ex, label_key))
  if label_key not in ex.meta:
    raise KeyError(f"example {ex.uid!r} has no field or meta key {label_key!r}")
  return str(ex.meta[label_key])


def _by_domain(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
  names = sorted(set(labels.tolist()))
  owners: dict[str, list[int]] = {c: [] for c in names}
  for i in range(max(n, len(names))):
    owners[names[i % len(names)]].append(i % n)
  parts: list[list[np.ndarray]] = [[] for _ in range(n)]
  for c in names:
    idx = rng.permutation(np.flatnonzero(labels == c))
    clients = sorted(set(owners[c]))
    for client, chunk in zip(clients, np.array_split(idx, len(clients))):
      parts[client].append(chunk)
  return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]


def _iid(total: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
  return np.array_split(rng.permutation(total), n)


def _dirichlet(
    labels: np.ndarray,
    n: int,
    alpha: float,
    min_examples: int,
    max_tries: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
  if alpha <= 0:
    raise ValueError(f"alpha must be > 0, got {alpha}")
  names = sorted(set(labels.tolist()))
  sizes = np.zeros(n, np.int64)
  for _ in range(max_tries):
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in names:
      idx = rng.permutation(np.flatnonzero(labels == c))
      p = rng.dirichlet(np.full(n, alpha))
      cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
      for client, chunk in enumerate(np.split(idx, cuts)):
        parts[client].append(chunk)
    out = [np.concatenate(p) for p in parts]
    sizes = np.array([len(o) for o in out])
    if sizes.min() >= min_examples:
      return out
  raise ValueError(
      f"Dirichlet(alpha={alpha}) over {len(names)} labels gave some client fewer "
      f"than min_examples={min_examples} in {max_tries} draws (last sizes "
      f"{sizes.tolist()}); raise alpha, lower min_examples, use fewer clients "
      f"or more examples"
  )


def assign(
    examples: Sequence[Example],
    num_clients: int,
    *,
    scheme: Scheme = "domain",
    alpha: float = 0.5,
    label_key: str = "domain",
    min_examples: int = 2,
    seed: int = 0,
    max_tries: int = 100,
) -> list[np.ndarray]:
  """Indices into `examples` for each client (disjoint; see the module docstring)."""
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  total = len(examples)
  if total < num_clients * min_examples:
    raise ValueError(
        f"{total} examples cannot give {num_clients} clients "
        f"{min_examples} each; load more data, use fewer clients or "
        f"lower min_examples"
    )
  rng = np.random.default_rng(seed)
  labels = np.array([label_of(e, label_key) for e in examples], dtype=object)
  if scheme == "domain":
    parts = _by_domain(labels, num_clients, rng)
  elif scheme == "iid":
    parts = _iid(total, num_clients, rng)
  elif scheme == "dirichlet":
    parts = _dirichlet(labels, num_clients, alpha, min_examples, max_tries, rng)
  else:
    raise ValueError(f"scheme must be 'domain', 'iid' or 'dirichlet', not {scheme!r}")
  small = [(i, len(p)) for i, p in enumerate(parts) if len(p) < min_examples]
  if small:
    raise ValueError(
        f"scheme {scheme!r} leaves clients {small} (id, size) below "
        f"min_examples={min_examples}; with 'domain', a label with few "
        f"examples is shared by too many clients: use fewer clients, "
        f"more data, or another scheme"
    )
  return [np.asarray(p, np.int64) for p in parts]


def split_heldout(
    examples: Sequence[Example], fraction: float, seed: int | Sequence[int]
) -> tuple[list[Example], list[Example]]:
  """Seeded split into (train, heldout) with round(fraction * n) held out, at
  least 1 of each when 0 < fraction < 1 and n >= 2."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"heldout_fraction must be in [0, 1), got {fraction}")
  n = len(examples)
  k = int(round(fraction * n))
  if fraction > 0 and n >= 2:
    k = min(max(k, 1), n - 1)
  order = np.random.default_rng(seed).permutation(n)
  held = [examples[i] for i in order[:k]]
  train = [examples[i] for i in order[k:]]
  return train, held


def partition(
    examples: Sequence[Example],
    num_clients: int,
    *,
    scheme: Scheme = "domain",
    alpha: float = 0.5,
    label_key: str = "domain",
    min_examples: int = 2,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    max_tries: int = 100,
) -> list[ClientData]:
  """Each client's private train and held-out sets.

  `min_examples` counts a client's examples before the held-out split. The
  held-out split of client i uses the seed sequence [seed, i], so it does not
  move when other clients change.
  """
  parts = assign(
      examples,
      num_clients,
      scheme=scheme,
      alpha=alpha,
      label_key=label_key,
      min_examples=min_examples,
      seed=seed,
      max_tries=max_tries,
  )
  out = []
  for cid, idx in enumerate(parts):
    mine = [examples[i] for i in idx]
    train, held = split_heldout(mine, heldout_fraction, seed=[seed, cid])
    counts = dict(sorted(collections.Counter(e.domain for e in mine).items()))
    out.append(ClientData(client_id=cid, domain_counts=counts, train=train, heldout=held))
  return out
