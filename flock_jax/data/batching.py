"""Stacked batches for K clients trained in one program: arrays [K, B, T] per step.

Each client draws its own rows with its own generator, seeded by
[seed, round_index, client]: epochs of fresh permutations, concatenated as
needed, so a client with fewer than B * E rows sees every row before any
repeats (sampling without replacement inside an epoch, with replacement
across epochs). A client's stream does not depend on the other clients.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from flock_jax.data.tokenization import TokenArrays

KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def sample_rows(num_rows: int, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` row indices: whole permutations of range(num_rows), then part of one."""
  if num_rows < 1:
    raise ValueError(
        "a client has no rows to sample; give every client data "
        "(partition(min_examples=...)) before batching"
    )
  epochs = -(-count // num_rows)
  return np.concatenate([rng.permutation(num_rows) for _ in range(epochs)])[:count]


def client_steps(
    client_arrays: Sequence[TokenArrays],
    batch_size: int,
    num_steps: int,
    *,
    seed: int,
    round_index: int = 0,
    positions: Sequence[int] | None = None,
) -> TokenArrays:
  """All local steps at once: each array [E, K, B, T] (E = num_steps), ready
  for a `lax.scan` over steps and a `vmap` over clients.

  Client k's rows are drawn from (seed, round_index, positions[k]) (default k): a host
  that builds only clients k0..k1 of a selection passes positions=range(k0, k1) and gets
  exactly those clients' rows of the whole selection's batch."""
  if not client_arrays:
    raise ValueError("no clients")
  lengths = {a["tokens"].shape[1] for a in client_arrays}
  if len(lengths) != 1:
    raise ValueError(
        f"clients have different sequence lengths {sorted(lengths)}; "
        f"tokenize every client with the same seq_len"
    )
  picks = []
  positions = range(len(client_arrays)) if positions is None else positions
  for k, arrays in zip(positions, client_arrays):
    rng = np.random.default_rng([seed, round_index, k])
    rows = sample_rows(arrays["tokens"].shape[0], batch_size * num_steps, rng)
    picks.append(rows.reshape(num_steps, batch_size))
  return TokenArrays(
      **{  # type: ignore[typeddict-item]
          key: np.stack([a[key][p] for a, p in zip(client_arrays, picks)], axis=1) for key in KEYS
      }
  )


def client_batches(
    client_arrays: Sequence[TokenArrays],
    batch_size: int,
    num_steps: int,
    *,
    seed: int,
    round_index: int = 0,
) -> Iterator[TokenArrays]:
  """`num_steps` batches, each array [K, B, T]; the steps of `client_steps` in order."""
  steps = client_steps(client_arrays, batch_size, num_steps, seed=seed, round_index=round_index)
  for e in range(num_steps):
    yield TokenArrays(**{key: steps[key][e] for key in KEYS})  # type: ignore[typeddict-item]
