"""Aggregation rules, chosen by name.

    agg = get_aggregator("krum", f=2)            # or get_aggregator(cfg.aggregator.name, cfg.aggregator.hparams)
    state = agg.init(global_params)
    delta, state, info = jax.jit(agg.apply)(state, global_params, updates, num_samples, key)
    global_params = apply_delta(global_params, delta)

See `base.Aggregator` for the contract and docs/aggregators.md for every rule.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from flock_jax.federated.aggregators.base import (
    Aggregator,
    apply_delta,
    pairwise_sq_dists,
    ravel_stacked,
    ravel_tree,
)
from flock_jax.federated.aggregators.flame import flame, majority_cluster
from flock_jax.federated.aggregators.mean import fedavg, fedprox, fedprox_penalty, local, norm_clip
from flock_jax.federated.aggregators.reputation import fltrust, foolsgold, foolsgold_weights
from flock_jax.federated.aggregators.robust import bulyan, krum, krum_scores, median, multikrum, trimmed_mean
from flock_jax.federated.aggregators.server_opt import fedadagrad, fedadam, fedavgm, fedyogi, scale_by_fedopt

AGGREGATORS: dict[str, Callable[..., Aggregator]] = {
    "fedavg": fedavg,
    "fedprox": fedprox,
    "fedavgm": fedavgm,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
    "krum": krum,
    "multikrum": multikrum,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "bulyan": bulyan,
    "fltrust": fltrust,
    "foolsgold": foolsgold,
    "flame": flame,
    "norm_clip": norm_clip,
    "local": local,
}


def get_aggregator(
    name: str, config: Optional[Mapping[str, Any]] = None, **overrides: Any
) -> Aggregator:
  """The aggregator registered as ``name``, built with hyperparameters from
  ``config`` (a dict or ``ml_collections.ConfigDict``) updated by ``overrides``.

  Unknown names or hyperparameters raise with the valid choices listed.
  """
  key = name.lower().replace("-", "_")
  if key not in AGGREGATORS:
    raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
  if config is not None and hasattr(config, "to_dict"):
    config = config.to_dict()
  hparams = dict(config or {})
  hparams.update(overrides)
  factory = AGGREGATORS[key]
  try:
    return factory(**hparams)
  except TypeError as e:
    import inspect

    valid = list(inspect.signature(factory).parameters)
    raise TypeError(
        f"aggregator {key!r}: bad hyperparameters {sorted(hparams)} ({e}); valid: {valid}"
    ) from e


aggregate = get_aggregator  # short alias: aggregate("fedavg")

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "aggregate",
    "apply_delta",
    "bulyan",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedprox_penalty",
    "fedyogi",
    "flame",
    "fltrust",
    "foolsgold",
    "foolsgold_weights",
    "get_aggregator",
    "krum",
    "krum_scores",
    "local",
    "majority_cluster",
    "median",
    "multikrum",
    "norm_clip",
    "pairwise_sq_dists",
    "ravel_stacked",
    "ravel_tree",
    "scale_by_fedopt",
    "trimmed_mean",
]
