"""Decode contract logs into plain, JSON-ready event records, and export them.

An event record is a dict::

    {"event": "Voted", "args": {...}, "address": "0x…", "block": 12,
     "tx": "0x…", "log_index": 0}

Arguments are normalised so that records compare equal whether they come
from a node, from a JSON file, or from the Python model
(`flock_jax.chain.model`): addresses are checksummed strings, bytes are
lower-case 0x-hex strings, integers are Python ints, arrays are lists.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable, Sequence

import eth_abi
from eth_utils import keccak, to_checksum_address

LOG_FORMAT = "flock_jax.chain.logs/1"


def normalise(typ: str, value: Any) -> Any:
  """Canonical JSON-ready form of an ABI value of type `typ`."""
  if typ.endswith("[]"):
    return [normalise(typ[:-2], v) for v in value]
  if typ == "address":
    return to_checksum_address(value)
  if typ.startswith("bytes"):
    if isinstance(value, str):
      return "0x" + value.removeprefix("0x").lower()
    return "0x" + bytes(value).hex()
  if typ == "bool":
    return bool(value)
  if typ.startswith(("uint", "int")):
    return int(value)
  return value


class EventDecoder:
  """Decodes raw logs of the contracts whose ABIs it is given."""

  def __init__(self, abis: Iterable[list]):
    self._by_topic: dict[bytes, dict] = {}
    for abi in abis:
      for item in abi:
        if item.get("type") != "event":
          continue
        sig = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
        self._by_topic[keccak(text=sig)] = item

  def topics_of(self, names: Iterable[str]) -> list[str]:
    """The topic-0 hashes (0x-hex) of the named events, for a log filter."""
    names = set(names)
    out = ["0x" + t.hex() for t, item in self._by_topic.items() if item["name"] in names]
    if len(out) != len(names):
      raise KeyError(f"unknown events among {sorted(names)}")
    return out

  def decode(self, log: Any) -> dict | None:
    """One raw log (web3 AttributeDict) -> event record, or None if unknown."""
    topics = [bytes(t) for t in log["topics"]]
    item = self._by_topic.get(topics[0]) if topics else None
    if item is None:
      return None
    indexed = [i for i in item["inputs"] if i["indexed"]]
    plain = [i for i in item["inputs"] if not i["indexed"]]
    args: dict[str, Any] = {}
    for inp, topic in zip(indexed, topics[1:]):
      args[inp["name"]] = normalise(inp["type"], eth_abi.decode([inp["type"]], topic)[0])
    values = eth_abi.decode([i["type"] for i in plain], bytes(log["data"]))
    for inp, v in zip(plain, values):
      args[inp["name"]] = normalise(inp["type"], v)
    ordered = {i["name"]: args[i["name"]] for i in item["inputs"]}
    return {
        "event": item["name"],
        "args": ordered,
        "address": to_checksum_address(log["address"]),
        "block": int(log["blockNumber"]),
        "tx": "0x" + bytes(log["transactionHash"]).hex(),
        "log_index": int(log["logIndex"]),
    }

  def decode_all(self, logs: Iterable[Any]) -> list[dict]:
    """Decode every log this decoder knows, in the given order."""
    out = []
    for log in logs:
      rec = self.decode(log)
      if rec is not None:
        out.append(rec)
    return out


def group_by_tx(events: Sequence[dict]) -> list[list[dict]]:
  """Split an ordered event list into consecutive per-transaction groups."""
  groups: list[list[dict]] = []
  for ev in events:
    if groups and groups[-1][0]["tx"] == ev["tx"]:
      groups[-1].append(ev)
    else:
      groups.append([ev])
  return groups


def write_json(path: str | pathlib.Path, export: dict) -> pathlib.Path:
  """Write an export (see `FlockChain.export_logs`) as JSON."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(export, indent=1))
  return path


def read_json(path: str | pathlib.Path) -> dict:
  """Read an export written by `write_json`; checks its format tag."""
  data = json.loads(pathlib.Path(path).read_text())
  if data.get("format") != LOG_FORMAT:
    raise ValueError(
        f"{path}: not a flock_jax chain log export (format {data.get('format')!r}, want {LOG_FORMAT!r})"
    )
  return data
