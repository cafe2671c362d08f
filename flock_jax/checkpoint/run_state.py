"""Orbax checkpoints of a federated run: the array state (adapters, optimizer states) + JSON.

One step folder per checkpoint, holding two items:
  state/  the pytree of arrays, saved sharded (each host writes its shards)
  meta/   a JSON dict beside it: round number, chain block hash, configs, ...
Orbax writes each step in a temporary folder and renames it when complete,
so an interrupted save never shows up as a step (see `RunCheckpointer.steps`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from flock_jax.checkpoint.errors import CheckpointError

STATE, META = "state", "meta"


def _as_abstract(tree):
  """Arrays -> ShapeDtypeStructs with their shardings (a restore target); structs as is."""

  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

  return jax.tree.map(one, tree)


class RunCheckpointer:
  """Saves and restores (state pytree, JSON meta) per step under `directory`.

  Keeps the newest `max_to_keep` steps (None keeps all). Saves are synchronous
  by default so a returned `save` means the step is on disk.
  """

  def __init__(
      self, directory: str | os.PathLike, max_to_keep: int | None = 3, async_save: bool = False
  ):
    self.directory = pathlib.Path(directory).expanduser().absolute()
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
        ),
        item_handlers={STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()},
    )

  # ---------------------------------------------------------------- queries
  def steps(self) -> list[int]:
    """Completed steps, oldest first (temporary folders of interrupted saves are not steps)."""
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  # ---------------------------------------------------------------- save / restore
  def save(self, step: int, state: Any, meta: dict | None = None, force: bool = True) -> None:
    """Writes `state` (pytree of jax/numpy arrays) and `meta` (JSON-serialisable) as `step`."""
    if step in self.steps():
      raise CheckpointError(f"{self.directory}: step {step} already exists")
    try:
      self._mgr.save(
          step,
          args=ocp.args.Composite(
              **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(dict(meta or {}))}
          ),
          force=force,
      )
      self._mgr.wait_until_finished()
    except TypeError as e:
      raise CheckpointError(
          f"{self.directory}: step {step}: meta is not JSON-serialisable "
          f"or state is not a pytree of arrays ({e})"
      ) from e

  def restore_meta(self, step: int | None = None) -> dict:
    """Only the JSON meta of `step` (default: latest)."""
    step = self._step(step)
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    except Exception as e:  # noqa: BLE001 (orbax raises many types for a broken step)
      raise self._broken(step, e) from e
    return dict(out[META])

  def restore(self, step: int | None = None, abstract_state: Any = None) -> tuple[Any, dict]:
    """Returns (state, meta) of `step` (default: latest).

    abstract_state: pytree of ShapeDtypeStruct (with .sharding) or arrays
    giving the target structure and shardings, which may differ from those
    saved. None restores every leaf onto the first device.
    """
    step = self._step(step)
    if abstract_state is None:
      abstract_state = self.abstract_state(step)
    target = _as_abstract(abstract_state)
    try:
      out = self._mgr.restore(
          step,
          args=ocp.args.Composite(
              **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
          ),
      )
    except Exception as e:  # noqa: BLE001
      raise self._broken(step, e) from e
    return out[STATE], dict(out[META])

  def abstract_state(self, step: int | None = None, sharding=None) -> Any:
    """The saved state's structure as ShapeDtypeStructs on `sharding` (default: one device)."""
    step = self._step(step)
    sharding = sharding or SingleDeviceSharding(jax.devices()[0])
    try:
      meta = self._mgr.item_metadata(step)[STATE]
      if meta is None:
        raise FileNotFoundError("no array metadata")
      return jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype), sharding=sharding),
          meta.tree if hasattr(meta, "tree") else meta,
      )
    except Exception as e:  # noqa: BLE001
      raise self._broken(step, e) from e

  def close(self) -> None:
    self._mgr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # ---------------------------------------------------------------- helpers
  def _step(self, step: int | None) -> int:
    steps = self.steps()
    if step is None:
      if not steps:
        raise CheckpointError(f"{self.directory}: no completed checkpoint to restore")
      return steps[-1]
    if step not in steps:
      raise CheckpointError(
          f"{self.directory}: no completed checkpoint for step {step}; " f"have {steps}"
      )
    return step

  def _broken(self, step: int, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{self.directory / str(step)}: checkpoint step {step} is broken or does not match "
        f"the requested structure ({type(e).__name__}: {str(e)[:500]}). Restore an earlier "
        f"step (have {self.steps()}) or delete this one."
    )


# ------------------------------------------------------------------ meta conventions
LORA_CONFIG_KEY = "lora_config"


def lora_config_meta(lcfg) -> dict:
  """A LoraConfig as the JSON dict stored under meta['lora_config'] (read by launch/export.py)."""
  import dataclasses

  d = dataclasses.asdict(lcfg)
  d["targets"] = list(d["targets"])
  return d


def lora_config_from_meta(meta: dict, where=""):
  """The LoraConfig saved by lora_config_meta in a step's meta."""
  from flock_jax.model.config import ConfigError
  from flock_jax.model.lora import LoraConfig

  if LORA_CONFIG_KEY not in meta:
    raise CheckpointError(
        f"{where}: meta has no {LORA_CONFIG_KEY!r} (keys: {sorted(meta)}); "
        f"save it with lora_config_meta(lora_cfg)"
    )
  d = dict(meta[LORA_CONFIG_KEY])
  try:
    return LoraConfig(**{**d, "targets": tuple(d.get("targets", LoraConfig().targets))})
  except (TypeError, ConfigError) as e:
    raise CheckpointError(f"{where}: bad {LORA_CONFIG_KEY} {d} ({e})") from e
