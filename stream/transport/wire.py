"""The wire format of every message between stages: events, ground truth, predictions and status.

Wire format, version 1 (all integers little-endian). Every message is three ZeroMQ frames::

    [topic, header, payload]

* ``topic``: ASCII name of the kind (``b"events"``, ``b"truth"``, ``b"prediction"``, ``b"status"``);
  it comes first so that SUB sockets filter by prefix. It must match the header's ``kind``.
* ``header``: exactly ``HEADER.size`` = 40 bytes, ``struct`` format ``<4sHHQHHIqII``:

  ======  ============  ===================================================================
  offset  field         meaning
  ======  ============  ===================================================================
  0       magic         ``b"SFLV"``
  4       version       u16, ``VERSION`` (1); a receiver rejects any other version
  6       kind          u16, a ``Kind`` value (1 events, 2 truth, 3 prediction, 5 status)
  8       seq           u64, per-topic sequence number of the publisher, +1 per message from 0;
                        a receiver counts gaps as lost messages
  16      width         u16, sensor width in pixels (0 when the kind has no sensor)
  18      height        u16, sensor height in pixels (0 when the kind has no sensor)
  20      reserved      u32, 0
  24      send_us       i64, ``time.monotonic_ns() // 1000`` of the sender, microseconds. On Linux
                        CLOCK_MONOTONIC is shared by all processes of one machine, so a receiver
                        on the same machine gets latency as ``now_us() - send_us``; across
                        machines it means nothing.
  32      count         u32, number of items: events (kind 1), segments (kind 2), else 0 or
                        kind-defined
  36      payload_len   u32, byte length of the payload frame
  ======  ============  ===================================================================

* ``payload``: for ``events``, ``count`` raw ``EVENT_DTYPE`` records (16 bytes each: t i64 µs,
  x i16, y i16, p i8, 3 padding bytes), exactly the bytes of the NumPy array; for ``truth``, UTF-8
  JSON ``[{"label": int, "start_us": int, "end_us": int}, ...]``; for ``status``, a JSON object
  with a ``"type"`` (``STATUS_TYPES``), decoded into a ``Status``; for ``prediction``, a JSON
  object (the schema is the inference worker's, ``inference.messages``). JSON, never pickle:
  nothing received is unpickled or executed.

Status messages (``Kind.STATUS``), sent by every stage about its own stream:

* ``{"type": "clock", "time_us": T, "paused": bool}``: the source's watermark, no event with
  ``t < T`` (µs, the events' clock) will follow;
* ``{"type": "stats", ...}`` about once a second, and ``{"type": "end", ...}`` once at the end of the
  stream, with the stage's counters (the source's: ``events_sent``, ``packets_sent``, ...; the
  worker's: ``counters``, ``busy_s``, ...).

Adding a kind: add a member to ``Kind`` (its lower-case name is the topic), publish it with
``Publisher.publish_json`` and, if it needs checks, add them in ``decode``.

Adding a kind: add a member to ``Kind`` (its lower-case name is the topic), publish it with
``publisher.publish_json(Kind.X, obj)`` (or ``publish_raw`` for binary payloads) and, if it needs
checks, add them in ``decode``.
"""

from __future__ import annotations

import enum
import json
import struct
import time
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

import numpy as np
import zmq

from stream.events import EVENT_DTYPE, GestureSegment, SensorSize, check_events

MAGIC = b"SFLV"
VERSION = 1
HEADER = struct.Struct("<4sHHQHHIqII")
assert HEADER.size == 40
PADDING_BYTES = slice(13, 16)  # bytes of an EVENT_DTYPE record after p: zeroed before sending
MAX_PACKET_EVENTS = 1 << 18  # events per message at most: publishers split larger packets (4 MiB)
DEFAULT_MAX_MESSAGE_BYTES = MAX_PACKET_EVENTS * EVENT_DTYPE.itemsize  # payload bytes a receiver accepts
STATUS_TYPES = ("clock", "stats", "end")

REJECT_REASONS = (
    "frame_count",  # not exactly 3 frames
    "bad_topic",  # unknown topic, or topic does not match the header's kind
    "short_header",  # header frame is not HEADER.size bytes
    "bad_magic",
    "wrong_version",
    "unknown_kind",
    "length_mismatch",  # payload_len differs from the payload frame's length
    "oversized",  # payload larger than the subscriber's max_message_bytes
    "count_mismatch",  # count * 16 != payload_len for events
    "bad_sensor",  # events with a zero sensor width or height
    "bad_events",  # coordinates outside the sensor, polarity not 0/1, or time going back
    "bad_json",  # JSON payload that does not parse or does not have the kind's shape
    "bad_status",  # a status message without a known "type", or a clock without an int time_us and bool paused
)


class Kind(enum.IntEnum):
    """Message kinds; the topic of a kind is its lower-case name."""

    EVENTS = 1
    TRUTH = 2
    PREDICTION = 3  # 4 was the worker's display frames, never consumed: removed
    STATUS = 5

    @property
    def topic(self) -> bytes:
        return self.name.lower().encode()


TOPIC_KINDS = {kind.topic: kind for kind in Kind}
JSON_KINDS = {Kind.TRUTH, Kind.PREDICTION, Kind.STATUS}


class Status(NamedTuple):
    """A decoded status message: ``type`` (one of ``STATUS_TYPES``) and the whole JSON object."""

    type: str
    fields: dict[str, Any]

    @property
    def time_us(self) -> int:
        """A clock's stream time, µs."""
        return self.fields["time_us"]

    @property
    def paused(self) -> bool:
        """Whether a clock's source is paused."""
        return self.fields["paused"]


class MessageError(ValueError):
    """A received message breaks the wire format. ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One decoded message.

    ``events`` (kind EVENTS) is a view on the received message memory (no copy).
    ``data`` is the decoded JSON (kind TRUTH: a list of ``GestureSegment``; kind STATUS: a
    ``Status``), ``payload`` the raw payload bytes for other kinds. ``send_us`` is the sender's monotonic clock in microseconds.
    """

    kind: Kind
    seq: int
    sensor_size: SensorSize
    send_us: int
    count: int
    events: np.ndarray | None = None
    data: Any = None
    payload: memoryview | bytes | None = None

    @property
    def topic(self) -> str:
        return self.kind.name.lower()

    def latency_us(self) -> int:
        """Microseconds since the sender stamped the message (valid on the sender's machine)."""
        return now_us() - self.send_us


def now_us() -> int:
    """The transport clock: ``time.monotonic_ns() // 1000`` (microseconds)."""
    return time.monotonic_ns() // 1000


# --- encoding and decoding (pure functions) -------------------------------------------------


def encode(
    kind: Kind,
    seq: int,
    payload: bytes | memoryview | np.ndarray,
    *,
    count: int = 0,
    sensor_size: SensorSize | None = None,
    send_us: int | None = None,
) -> list[Any]:
    """The three frames of a message. ``payload`` is passed through (not copied)."""
    width, height = sensor_size if sensor_size is not None else (0, 0)
    nbytes = payload.nbytes if isinstance(payload, (np.ndarray, memoryview)) else len(payload)
    header = HEADER.pack(
        MAGIC, VERSION, int(kind), seq, width, height, 0, now_us() if send_us is None else send_us, count, nbytes
    )
    return [Kind(kind).topic, header, payload]


def encode_events(events: np.ndarray, sensor_size: SensorSize, seq: int, *, send_us: int | None = None) -> list[Any]:
    """Frames of an ``events`` message; the payload is the array's memory (made contiguous).

    The 3 padding bytes of every event (13-15) are zeroed first, in place when the array is writable:
    NumPy leaves them as whatever the heap held (``np.empty``, masks, ``copy()`` of a padded dtype), and
    they would otherwise leave the machine with the events."""
    events = np.ascontiguousarray(check_events(events))
    padding = events.view(np.uint8).reshape(-1, EVENT_DTYPE.itemsize)[:, PADDING_BYTES]
    if padding.any():
        if not events.flags.writeable:
            events = events.copy()
        events.view(np.uint8).reshape(-1, EVENT_DTYPE.itemsize)[:, PADDING_BYTES] = 0
    return encode(Kind.EVENTS, seq, events, count=len(events), sensor_size=sensor_size, send_us=send_us)


def encode_json(kind: Kind, seq: int, obj: Any, *, count: int = 0, send_us: int | None = None) -> list[Any]:
    """Frames of a JSON message (``truth``, ``prediction``, ``status`` or a new JSON kind)."""
    payload = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    return encode(kind, seq, payload, count=count, send_us=send_us)


def encode_truth(segments: Iterable[GestureSegment], seq: int, *, send_us: int | None = None) -> list[Any]:
    """Frames of a ``truth`` message carrying gesture segments (times in microseconds)."""
    items = [{"label": int(s.label), "start_us": int(s.start_us), "end_us": int(s.end_us)} for s in segments]
    return encode_json(Kind.TRUTH, seq, items, count=len(items), send_us=send_us)


def _buffer(frame: Any) -> memoryview:
    return frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)


def decode(frames: list[Any], *, max_payload_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode and check the frames of one message (``bytes`` or ``zmq.Frame``). Raises ``MessageError``."""
    if len(frames) != 3:
        raise MessageError("frame_count", f"expected 3 frames, got {len(frames)}")
    topic, header, payload = (_buffer(frame) for frame in frames)
    if len(header) != HEADER.size:
        raise MessageError("short_header", f"header is {len(header)} bytes, expected {HEADER.size}")
    magic, version, kind_value, seq, width, height, _, send_us, count, payload_len = HEADER.unpack(header)
    if magic != MAGIC:
        raise MessageError("bad_magic", f"magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise MessageError("wrong_version", f"version {version}, this receiver speaks {VERSION}")
    try:
        kind = Kind(kind_value)
    except ValueError:
        raise MessageError("unknown_kind", f"kind {kind_value}") from None
    if bytes(topic) != kind.topic:
        raise MessageError("bad_topic", f"topic {bytes(topic)[:32]!r} with kind {kind.name}")
    if payload_len != len(payload):
        raise MessageError("length_mismatch", f"header says {payload_len} payload bytes, frame has {len(payload)}")
    if payload_len > max_payload_bytes:
        raise MessageError("oversized", f"{payload_len} payload bytes > limit {max_payload_bytes}")
    sensor_size = SensorSize(width, height)
    fields = dict(kind=kind, seq=seq, sensor_size=sensor_size, send_us=send_us, count=count)
    if kind == Kind.EVENTS:
        return Message(**fields, events=_decode_events(payload, count, sensor_size))
    if kind in JSON_KINDS:
        return Message(**fields, data=_decode_json(kind, payload, count))
    return Message(**fields, payload=payload)


def _decode_events(payload: memoryview, count: int, sensor_size: SensorSize) -> np.ndarray:
    if count * EVENT_DTYPE.itemsize != len(payload):
        raise MessageError("count_mismatch", f"{count} events need {count * EVENT_DTYPE.itemsize} bytes, got {len(payload)}")
    if sensor_size.width == 0 or sensor_size.height == 0:
        raise MessageError("bad_sensor", f"sensor size {sensor_size}")
    events = np.frombuffer(payload, dtype=EVENT_DTYPE)
    if count:
        t = events["t"]
        # unsigned views: a negative coordinate or polarity becomes large, so one max() checks both ends
        if (
            events["x"].view(np.uint16).max() >= sensor_size.width
            or events["y"].view(np.uint16).max() >= sensor_size.height
            or events["p"].view(np.uint8).max() > 1
            or (count > 1 and bool(np.any(t[1:] < t[:-1])))
        ):
            raise MessageError("bad_events", f"events outside {sensor_size}, polarity not 0/1, or time going back")
    return events


def _decode_json(kind: Kind, payload: memoryview, count: int) -> Any:
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MessageError("bad_json", f"{kind.name.lower()} payload: {error}") from None
    if kind == Kind.STATUS:
        return _decode_status(obj)
    if kind != Kind.TRUTH:
        return obj
    try:
        segments = [GestureSegment(int(d["label"]), int(d["start_us"]), int(d["end_us"])) for d in obj]
    except (TypeError, KeyError, ValueError) as error:
        raise MessageError("bad_json", f"truth payload is not a list of segments: {error!r}") from None
    if len(segments) != count:
        raise MessageError("bad_json", f"header says {count} segments, payload has {len(segments)}")
    return segments


def _decode_status(obj: Any) -> Status:
    if not isinstance(obj, dict) or obj.get("type") not in STATUS_TYPES:
        raise MessageError("bad_status", f"status must be an object with a type in {STATUS_TYPES}")
    if obj["type"] == "clock":
        time_us, paused = obj.get("time_us"), obj.get("paused", False)
        if not isinstance(time_us, int) or isinstance(time_us, bool) or not isinstance(paused, bool):
            raise MessageError("bad_status", "a clock needs an integer time_us and a boolean paused")
        obj["paused"] = paused
    return Status(obj["type"], obj)
