"""TensorBoard scalars without TensorFlow: one event file per invocation of a run.

An event file is a TFRecord stream of `Event` protocol buffers
(tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto):

  record   uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
  Event    1: double wall_time, 2: int64 step, 3: string file_version, 5: Summary summary
  Summary  1: repeated Value value
  Value    1: string tag, 2: float simple_value

The few fields we write are encoded by hand (a dozen lines), so the project needs no
TensorFlow or tensorboard package to write them; `tensorboard --logdir=<workdir>/tensorboard`
reads them. Scalars come from the metrics rows: every numeric field, dict fields as
`field/key` (e.g. heldout/finance, accuracy/medical).
"""

from __future__ import annotations

import math
import os
import pathlib
import socket
import struct
import time
from typing import Any, Mapping


# ------------------------------------------------------------------ CRC-32C (Castagnoli)
def _crc_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (RFC 3720's polynomial, reflected), as TFRecord frames use it."""
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord frame around `data`."""
  length = struct.pack("<Q", len(data))
  return (
      length
      + struct.pack("<I", masked_crc32c(length))
      + data
      + struct.pack("<I", masked_crc32c(data))
  )


# ------------------------------------------------------------------ protobuf wire format
def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # int64 as two's complement, as protobuf encodes negatives
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2, _varint(len(data)) + data)


def scalar_event(step: int, values: Mapping[str, float], wall_time: float) -> bytes:
  """Event{wall_time, step, summary{value[tag, simple_value]...}} bytes."""
  summary = b"".join(
      _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
      for tag, v in values.items()
  )
  return (
      _field(1, 1, struct.pack("<d", wall_time))
      + _field(2, 0, _varint(step))
      + _bytes_field(5, summary)
  )


def version_event(wall_time: float) -> bytes:
  return _field(1, 1, struct.pack("<d", wall_time)) + _bytes_field(3, b"brain.Event:2")


# ------------------------------------------------------------------ scalars of a metrics row
def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """Every finite number of a metrics row (bools as 0/1; dicts as `field/key`)."""
  out = {}
  for k, v in row.items():
    tag = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(scalars(v, tag + "/"))
    elif isinstance(v, (bool, int, float)) and not (isinstance(v, float) and not math.isfinite(v)):
      out[tag] = float(v)
  return out


class EventWriter:
  """Appends scalar events to `<logdir>/events.out.tfevents.<time>.<host>.<pid>`."""

  def __init__(self, logdir: str | os.PathLike):
    self.dir = pathlib.Path(logdir)
    self.dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
    self.path = self.dir / name
    with open(self.path, "ab") as f:
      f.write(tfrecord(version_event(now)))

  def write_row(self, row: Mapping[str, Any], step_key: str = "round") -> None:
    """The row's scalars at step row[step_key], flushed at once (a killed run keeps them)."""
    values = scalars({k: v for k, v in row.items() if k != step_key})
    with open(self.path, "ab") as f:
      f.write(tfrecord(scalar_event(int(row[step_key]), values, time.time())))
      f.flush()
