"""TensorBoard event files: the frames checked against RFC 3720's CRC-32C vectors, the events
decoded by the protobuf library from TensorFlow's own message definitions (event.proto,
summary.proto), not by our encoder's inverse."""

import struct

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from flock_jax import tensorboard as tb


def test_crc32c_rfc3720_vectors():
  assert tb.crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
  assert tb.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
  assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43  # 32 bytes of ones
  assert tb.crc32c(bytes(range(32))) == 0x46DD794E  # incrementing


def _event_class():
  """tensorflow.Event / Summary / Summary.Value with TensorFlow's field numbers and types."""
  f = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="tensorflow")
  F = descriptor_pb2.FieldDescriptorProto
  value = descriptor_pb2.DescriptorProto(name="Value")
  value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
  value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
  summary = f.message_type.add(name="Summary")
  summary.nested_type.append(value)
  summary.field.add(
      name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
      type_name=".tensorflow.Summary.Value",
  )  # fmt: skip
  event = f.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
  event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
  event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
  event.field.add(
      name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
      type_name=".tensorflow.Summary",
  )  # fmt: skip
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Event"))


def read_events(path):
  """Events of a TFRecord file, each frame's two CRCs checked."""
  Event, data, out = _event_class(), path.read_bytes(), []
  while data:
    (n,) = struct.unpack("<Q", data[:8])
    assert struct.unpack("<I", data[8:12])[0] == tb.masked_crc32c(data[:8])
    body = data[12 : 12 + n]
    assert struct.unpack("<I", data[12 + n : 16 + n])[0] == tb.masked_crc32c(body)
    out.append(Event.FromString(body))
    data = data[16 + n :]
  return out


def test_rows_decode_as_tensorflow_events(tmp_path):
  w = tb.EventWriter(tmp_path / "tb")
  w.write_row({"round": -1, "heldout": {"finance": 5.5, "medical": 6.25}, "mode": "flock"})
  w.write_row(
      {
          "round": 3,
          "accepted": True,
          "train_loss": 1.5,
          "asr": None,
          "gas": 21000,
          "x": float("nan"),
      }
  )
  first, *events = read_events(w.path)
  assert first.file_version == "brain.Event:2"
  assert [e.step for e in events] == [-1, 3]
  vals = [{v.tag: v.simple_value for v in e.summary.value} for e in events]
  assert vals[0] == {"heldout/finance": 5.5, "heldout/medical": 6.25}
  assert vals[1] == {"accepted": 1.0, "train_loss": 1.5, "gas": 21000.0}  # None, NaN, str: none
  assert all(e.wall_time > 1e9 for e in events)


def test_a_corrupt_frame_is_caught(tmp_path):
  w = tb.EventWriter(tmp_path / "tb")
  w.write_row({"round": 0, "loss": 2.0})
  raw = bytearray(w.path.read_bytes())
  raw[-6] ^= 1  # a bit of the last event's payload
  w.path.write_bytes(bytes(raw))
  with pytest.raises(AssertionError):
    read_events(w.path)
