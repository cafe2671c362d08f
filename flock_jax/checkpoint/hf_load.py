"""Loads a Hugging Face Llama checkpoint folder (safetensors) into sharded jax arrays.

A folder holds config.json (transformers v4 or v5 form) and either one
`model.safetensors` or shards listed in `model.safetensors.index.json`.
Every file's header is read and checked against config.json (names, shapes,
dtypes, byte coverage) before the first array is allocated, so a bad
checkpoint fails whole with a `CheckpointError`, never half-loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re

from safetensors import SafetensorError, safe_open

from flock_jax.checkpoint.errors import CheckpointError
from flock_jax.checkpoint.hf_names import hf_shape, hf_tensor_map
from flock_jax.checkpoint.sharded_load import params_from_source
from flock_jax.model.config import ConfigError, LlamaConfig
from flock_jax.model.llama import abstract_params
from flock_jax.sharding import LOGICAL_AXIS_RULES

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float32"}
# Non-parameter buffers some v4-era checkpoints carry; recomputed by every Llama, safe to skip.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: pathlib.Path
  shape: tuple[int, ...]
  dtype: str  # safetensors dtype name, e.g. 'BF16'


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> pathlib.Path:
  """A local folder as is; otherwise a hub repo id, fetched with huggingface_hub when allowed.

  Raises CheckpointError when the hub is off (HF_HUB_OFFLINE=1) and the repo is not
  already in the local hub cache, telling the user to pass a local folder instead.
  """
  path = pathlib.Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  name = str(name_or_path)
  if path.exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
    raise CheckpointError(
        f"{name}: not a checkpoint folder (expected a directory holding "
        f"config.json and *.safetensors, or a hub repo id 'org/name')"
    )
  offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
  try:
    from huggingface_hub import snapshot_download

    local = snapshot_download(
        name, allow_patterns=["*.json", "*.safetensors", "tokenizer*"], local_files_only=offline
    )
  except Exception as e:  # noqa: BLE001 (hub errors have many types; all mean "not available")
    why = (
        "HF_HUB_OFFLINE=1 is set and it is not in the local hub cache"
        if offline
        else f"the hub download failed ({type(e).__name__}: {e})"
    )
    raise CheckpointError(
        f"{name}: no local folder of that name, and {why}. Pass the path of a local folder "
        f"holding config.json and model*.safetensors (e.g. one written by "
        f"save_pretrained or save_hf_checkpoint)."
    ) from e
  return pathlib.Path(local)


def _load_config(folder: pathlib.Path) -> LlamaConfig:
  cfg_path = folder / "config.json"
  if not cfg_path.is_file():
    raise CheckpointError(
        f"{cfg_path}: missing; a Hugging Face checkpoint folder needs config.json"
    )
  try:
    return LlamaConfig.from_hf_file(cfg_path)
  except ConfigError as e:
    raise CheckpointError(f"{cfg_path}: {e}") from e


def _weight_files(folder: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str] | None]:
  """The safetensors files of the folder and the index's weight map (None for one file)."""
  index = folder / INDEX_FILE
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from e
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
      raise CheckpointError(f"{index}: lists shard files that do not exist: {missing}")
    return [folder / f for f in files], weight_map
  if (folder / SINGLE_FILE).is_file():
    return [folder / SINGLE_FILE], None
  raise CheckpointError(
      f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found "
      f"(only safetensors checkpoints are supported; found "
      f"{sorted(p.name for p in folder.iterdir())})"
  )


def read_headers(files: list[pathlib.Path]) -> dict[str, TensorInfo]:
  """name -> TensorInfo over all files; a corrupt, truncated or duplicated entry raises."""
  out: dict[str, TensorInfo] = {}
  for path in files:
    try:
      with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
          sl = f.get_slice(name)
          if name in out:
            raise CheckpointError(f"{path}: tensor {name} is also in {out[name].file.name}")
          out[name] = TensorInfo(path, tuple(sl.get_shape()), sl.get_dtype())
    except SafetensorError as e:
      raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
  return out


def validate_tensors(
    cfg: LlamaConfig,
    infos: dict[str, TensorInfo],
    weight_map: dict[str, str] | None,
    where: pathlib.Path,
    config_name: str = "config.json",
) -> None:
  """Checks the headers against what `cfg` needs: no missing, extra or misshapen tensors.

  config_name: where `cfg` came from, for messages ('config.json', 'the GGUF metadata').
  """
  expected = hf_tensor_map(cfg)
  abstract = abstract_params(cfg)
  present = {n for n in infos if not _IGNORED.fullmatch(n)}
  missing = sorted(set(expected) - present)
  if missing:
    raise CheckpointError(
        f"{where}: missing tensor(s) {missing[:5]}"
        f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all) "
        f"that {config_name} requires"
    )
  extra = sorted(present - set(expected))
  if extra:
    f = infos[extra[0]].file
    raise CheckpointError(
        f"{f}: unexpected tensor(s) {extra[:5]} not in a Llama of this "
        f"{config_name} (tie_word_embeddings={cfg.tie_word_embeddings}, "
        f"num_layers={cfg.num_layers})"
    )
  for name, slot in expected.items():
    info = infos[name]
    leaf = abstract
    for k in slot.path:
      leaf = leaf[k]
    want = hf_shape(slot, tuple(leaf.shape))
    if info.shape != want:
      raise CheckpointError(
          f"{info.file}: tensor {name} has shape {list(info.shape)} but "
          f"{config_name} implies {list(want)}"
      )
    if info.dtype not in _DTYPE_NAMES:
      raise CheckpointError(
          f"{info.file}: tensor {name} has dtype {info.dtype}; "
          f"supported: {sorted(_DTYPE_NAMES)}"
      )
    if weight_map is not None and weight_map.get(name) != info.file.name:
      raise CheckpointError(
          f"{where / INDEX_FILE}: maps {name} to {weight_map.get(name)} but "
          f"it is stored in {info.file.name}"
      )


class SafetensorsSource:
  """Reads slices of tensors from open safetensors files (memory-mapped, slice by slice)."""

  def __init__(self, infos: dict[str, TensorInfo]):
    self.infos = infos
    self._handles: dict[pathlib.Path, object] = {}

  def _handle(self, path):
    if path not in self._handles:
      self._handles[path] = safe_open(str(path), framework="numpy")
    return self._handles[path]

  def read(self, name, index):
    info = self.infos[name]
    try:
      return self._handle(info.file).get_slice(name)[index]
    except SafetensorError as e:
      raise CheckpointError(f"{info.file}: could not read tensor {name} ({e})") from e

  def close(self):
    self._handles.clear()


def checkpoint_dtype(infos: dict[str, TensorInfo]) -> str:
  """The storage dtype of the checkpoint (that of the embedding), as a config dtype name."""
  return _DTYPE_NAMES[infos["model.embed_tokens.weight"].dtype]


def load_hf_checkpoint(
    name_or_path: str | os.PathLike, mesh=None, dtype: str | None = None, rules=LOGICAL_AXIS_RULES
) -> tuple[LlamaConfig, dict]:
  """Loads a HF LlamaForCausalLM checkpoint into params sharded on `mesh`.

  Args:
    name_or_path: a local folder, or a hub repo id (see resolve_checkpoint_dir).
    mesh: the device mesh; None puts every param on the first device.
    dtype: 'float32' | 'bfloat16' | 'float16' storage dtype; default: the checkpoint's.
    rules: the logical-axis rules table.
  Returns:
    (cfg with param_dtype set to the dtype loaded, params in the layout of
    flock_jax.model.llama).
  Raises:
    CheckpointError: bad folder, config, index, header, or tensor (named).
  """
  folder = resolve_checkpoint_dir(name_or_path)
  cfg = _load_config(folder)
  files, weight_map = _weight_files(folder)
  infos = read_headers(files)
  validate_tensors(cfg, infos, weight_map, folder)
  cfg = cfg.replace(param_dtype=dtype or checkpoint_dtype(infos))
  source = SafetensorsSource(infos)
  try:
    params = params_from_source(cfg, source, mesh, cfg.param_dtype, rules)
  finally:
    source.close()
  return cfg, params
