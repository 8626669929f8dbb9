"""ZeroMQ transport for events, ground truth and (later) predictions and frames.

Wire format, version 1 (all integers little-endian). Every message is three ZeroMQ frames::

    [topic, header, payload]

* ``topic``: ASCII name of the kind (``b"events"``, ``b"truth"``, ``b"prediction"``, ``b"frame"``);
  it comes first so that SUB sockets filter by prefix. It must match the header's ``kind``.
* ``header``: exactly ``HEADER.size`` = 40 bytes, ``struct`` format ``<4sHHQHHIqII``:

  ======  ============  ===================================================================
  offset  field         meaning
  ======  ============  ===================================================================
  0       magic         ``b"SFLV"``
  4       version       u16, ``VERSION`` (1); a receiver rejects any other version
  6       kind          u16, a ``Kind`` value (1 events, 2 truth, 3 prediction, 4 frame)
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
  JSON ``[{"label": int, "start_us": int, "end_us": int}, ...]``; for other JSON kinds, any UTF-8
  JSON value. JSON, never pickle: nothing received is unpickled or executed.

Adding a kind: add a member to ``Kind`` (its lower-case name is the topic), publish it with
``publisher.publish_json(Kind.X, obj)`` (or ``publish_raw`` for binary payloads) and, if it needs
checks, add them in ``decode``.

Sockets: ``EventPublisher`` is a PUB socket (binds by default), ``EventSubscriber`` a SUB socket
(connects by default). Endpoints are ``ipc://PATH``, ``inproc://NAME`` or ``tcp://HOST:PORT``;
a TCP host other than loopback (``127.0.0.1``, ``localhost``, ``::1``), ``*`` included, is refused
unless ``allow_remote=True``. High-water marks are bounded: when a subscriber falls
behind, the PUB socket drops new messages for it (ZeroMQ's PUB policy) and the subscriber sees
the gap in ``stats.lost``. The SUB socket sets ``zmq.MAXMSGSIZE`` so an oversized frame is refused
by ZeroMQ itself before Python sees it: libzmq treats it as a protocol error and closes that
connection for good. A connecting subscriber tells the two kinds of disconnect apart by its socket
monitor: when the publisher is gone, ZeroMQ reconnects by itself (``EVENT_CONNECT_RETRIED``
follows at once) and the subscriber leaves the socket alone: calling ``socket.disconnect()`` then
terminates the live pipe that ZeroMQ keeps across reconnects, and libzmq aborted the process with
``Assertion failed: !_more (src/fq.cpp:80)`` within one or two publisher kills. Only when no
reconnect follows within ``RECONNECT_GRACE_S`` (a protocol error: ZeroMQ has already dropped that
pipe) does it disconnect and connect again (``stats.reconnected``). Publishers split event packets larger than
``max_packet_events`` (default: what the default limit allows) so they never trigger it.
Everything the subscriber gets that breaks this spec is counted in ``stats.rejected[reason]``,
logged (at most once per reason every few seconds) and skipped; the subscriber keeps working.
Every socket owner is a context manager and closes with linger 0.

CurveZMQ (``curve=CurveConfig``, see ``stream.keys``): on tcp endpoints the publisher is the
CurveZMQ server and accepts only clients whose public key the config authorises (a ZAP handler,
pyzmq's ``ThreadAuthenticator``, one per context); the subscriber is the client and must know the
publisher's public key. The stream is then encrypted and authenticated; a client with an unknown key
or without CurveZMQ receives nothing (``stats.handshake_failures`` counts the refusals it sees).
ipc and inproc endpoints ignore ``curve``: file permissions and the process boundary protect them.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import logging
import hashlib
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from stream.events import EVENT_DTYPE, GestureSegment, SensorSize, check_events
from stream.keys import CurveConfig

log = logging.getLogger(__name__)

PADDING_BYTES = slice(13, 16)  # bytes of an EVENT_DTYPE record after p: zeroed before sending

MAGIC = b"SFLV"
VERSION = 1
HEADER = struct.Struct("<4sHHQHHIqII")
assert HEADER.size == 40

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
DEFAULT_HWM = 100  # messages queued per peer before the PUB socket drops
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # 4 M events per packet
DEFAULT_MAX_PACKET_EVENTS = DEFAULT_MAX_MESSAGE_BYTES // EVENT_DTYPE.itemsize
ZERO_COPY_MIN_BYTES = 64 << 10  # payloads from this size are sent without copying (see benchmark)
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
CURVE_OVERHEAD_BYTES = 33  # a CurveZMQ MESSAGE frame: 8 command + 8 nonce + 16 MAC + 1 flags bytes; MAXMSGSIZE counts them
CURVE_SERVER_SOCKETS = (zmq.PUB, zmq.XPUB, zmq.ROUTER)  # with CurveZMQ these are servers, all other sockets clients
RECONNECT_GRACE_S = 0.5  # a disconnect that ZeroMQ does not follow with its own reconnect by then: connect again
HANDSHAKE_FAILED_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
RECONNECTING_EVENTS = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_DELAYED
MONITOR_EVENTS = zmq.EVENT_DISCONNECTED | RECONNECTING_EVENTS | HANDSHAKE_FAILED_EVENTS

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
)


class Kind(enum.IntEnum):
    """Message kinds; the topic of a kind is its lower-case name."""

    EVENTS = 1
    TRUTH = 2
    PREDICTION = 3
    FRAME = 4

    @property
    def topic(self) -> bytes:
        return self.name.lower().encode()


TOPIC_KINDS = {kind.topic: kind for kind in Kind}
JSON_KINDS = {Kind.TRUTH, Kind.PREDICTION}


class MessageError(ValueError):
    """A received message breaks the wire format. ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One decoded message.

    ``events`` (kind EVENTS) is a view on the received message memory (no copy).
    ``data`` is the decoded JSON (kind TRUTH: a list of ``GestureSegment``), ``payload`` the raw
    payload bytes for other kinds. ``send_us`` is the sender's monotonic clock in microseconds.
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
    """Frames of a JSON message (``truth``, ``prediction`` or a new JSON kind)."""
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
    if kind != Kind.TRUTH:
        return obj
    try:
        segments = [GestureSegment(int(d["label"]), int(d["start_us"]), int(d["end_us"])) for d in obj]
    except (TypeError, KeyError, ValueError) as error:
        raise MessageError("bad_json", f"truth payload is not a list of segments: {error!r}") from None
    if len(segments) != count:
        raise MessageError("bad_json", f"header says {count} segments, payload has {len(segments)}")
    return segments


# --- endpoints --------------------------------------------------------------------------------


def check_endpoint(endpoint: str, *, allow_remote: bool = False) -> str:
    """Return ``endpoint`` if it is ipc://, inproc:// or a loopback tcp:// address, else raise ValueError.

    A non-loopback TCP host (``*``, ``0.0.0.0``, an interface or another machine) needs
    ``allow_remote=True``.
    """
    scheme, sep, address = endpoint.partition("://")
    if not sep or not address:
        raise ValueError(f"endpoint must look like tcp://127.0.0.1:5556 or ipc:///tmp/name, got {endpoint!r}")
    if scheme in ("ipc", "inproc"):
        return endpoint
    if scheme != "tcp":
        raise ValueError(f"endpoint scheme {scheme!r} is not supported (use tcp, ipc or inproc): {endpoint!r}")
    host, colon, port = address.rpartition(":")
    if not colon or not host or not (port == "*" or port.isdigit()):
        raise ValueError(f"tcp endpoint needs HOST:PORT (PORT may be *), got {endpoint!r}")
    if not allow_remote and not _is_loopback(host):
        raise ValueError(
            f"endpoint {endpoint!r} is not on the loopback interface; --allow-remote (allow_remote=True) opens it "
            "to the network"
        )
    return endpoint


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "*", interface names, host names


def _open_socket(
    context: zmq.Context, socket_type: int, endpoint: str, *, bind: bool, allow_remote: bool, options: dict[int, int],
    curve: CurveConfig | None = None,
) -> tuple[zmq.Socket, str]:
    """A socket with ``options`` set, bound or connected. With ``curve`` and a tcp endpoint, a PUB,
    XPUB or ROUTER socket is the CurveZMQ server (register its ZAP domain with ``_Authenticators``
    first) and any other socket a client."""
    check_endpoint(endpoint, allow_remote=allow_remote)
    use_curve = curve is not None and endpoint.startswith("tcp://")
    if not use_curve and endpoint.startswith("tcp://") and not _is_loopback(endpoint[6:].rpartition(":")[0]):
        log.warning("%s: plaintext tcp on the network; pass a CurveConfig (--curve-keys) to encrypt it", endpoint)
    if use_curve and socket_type not in CURVE_SERVER_SOCKETS and curve.server_key is None:
        raise ValueError(f"{endpoint}: a CurveZMQ client needs the publisher's public key (CurveConfig.server_key)")
    socket = context.socket(socket_type)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            socket.setsockopt(option, value)
        if use_curve:
            socket.curve_secretkey = curve.secret_key
            socket.curve_publickey = curve.public_key
            if socket_type in CURVE_SERVER_SOCKETS:
                socket.curve_server = True
                socket.zap_domain = _Authenticators.domain(curve).encode()
            else:
                socket.curve_serverkey = curve.server_key
        if bind:
            socket.bind(endpoint)
            endpoint = socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        else:
            socket.connect(endpoint)
    except zmq.ZMQError as error:
        socket.close(linger=0)
        raise OSError(f"cannot {'bind' if bind else 'connect'} {endpoint!r}: {error}") from None
    return socket, endpoint


class _KeySet:
    """pyzmq credentials provider: a client may connect when its Z85 public key is in the set.
    A refused key is logged once a minute (a refused client retries every half second)."""

    LOG_INTERVAL_S = 60.0

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys
        self._logged: dict[bytes, float] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        now = time.monotonic()
        if not allowed and now - self._logged.get(key, -np.inf) >= self.LOG_INTERVAL_S:
            if len(self._logged) > 1000:
                self._logged.clear()  # bounded memory under a flood of random keys
            self._logged[key] = now
            log.warning("CurveZMQ: refused a client with unknown public key %s", key.decode(errors="replace"))
        return allowed


class _Authenticators:
    """One ZAP handler (``ThreadAuthenticator``) per ZeroMQ context, shared by its CurveZMQ publishers.

    Each distinct set of authorised keys is one ZAP domain; the handler stops when the last
    publisher of its context closes.
    """

    _lock = threading.Lock()
    _running: dict[int, list] = {}  # id(context) -> [authenticator, users]

    @staticmethod
    def domain(curve: CurveConfig) -> str:
        return "sfl-" + hashlib.sha256(b"\n".join(sorted(curve.authorized))).hexdigest()[:24]

    @classmethod
    def acquire(cls, context: zmq.Context, curve: CurveConfig) -> None:
        with cls._lock:
            entry = cls._running.get(id(context))
            if entry is None:
                authenticator = ThreadAuthenticator(context)
                try:
                    authenticator.start()
                except zmq.ZMQError as error:  # another ZAP handler already serves this context
                    raise OSError(f"cannot start the CurveZMQ authenticator: {error}") from None
                entry = cls._running[id(context)] = [authenticator, 0]
            entry[0].configure_curve_callback(cls.domain(curve), _KeySet(curve.authorized))
            entry[1] += 1

    @classmethod
    def release(cls, context: zmq.Context) -> None:
        with cls._lock:
            entry = cls._running.get(id(context))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del cls._running[id(context)]
                entry[0].stop()


# --- publisher and subscriber ---------------------------------------------------------------


class EventPublisher:
    """PUB socket that sends events, truth and JSON kinds in the wire format above.

    Args:
        endpoint: where to bind (or connect with ``bind=False``); ``tcp://127.0.0.1:*`` picks a
            free port, see ``.endpoint`` for the one chosen.
        bind: bind (default) or connect.
        sndhwm: messages queued per subscriber before new ones are dropped for it.
        allow_remote: allow a non-loopback TCP address.
        zero_copy_min_bytes: payloads of at least this many bytes are sent without a copy; the
            caller must then not modify the array after publishing it.
        max_packet_events: larger event packets are sent as several messages (keep it within the
            subscribers' ``max_message_bytes`` / 16).
        context: a ``zmq.Context`` (default: the process-wide instance).
        curve: CurveZMQ keys (``stream.keys``); on a tcp endpoint the socket is then a CurveZMQ
            server that accepts only ``curve.authorized`` clients.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        bind: bool = True,
        sndhwm: int = DEFAULT_HWM,
        allow_remote: bool = False,
        zero_copy_min_bytes: int = ZERO_COPY_MIN_BYTES,
        max_packet_events: int = DEFAULT_MAX_PACKET_EVENTS,
        context: zmq.Context | None = None,
        curve: CurveConfig | None = None,
    ) -> None:
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1 message, got {sndhwm}")
        if max_packet_events < 1:
            raise ValueError(f"max_packet_events must be >= 1, got {max_packet_events}")
        self.max_packet_events = max_packet_events
        self._context = context or zmq.Context.instance()
        self.curve = curve if curve is not None and endpoint.startswith("tcp://") else None
        if self.curve is not None:
            _Authenticators.acquire(self._context, self.curve)
        try:
            self.socket, self.endpoint = _open_socket(
                self._context, zmq.PUB, endpoint, bind=bind, allow_remote=allow_remote,
                options={zmq.SNDHWM: sndhwm}, curve=self.curve,
            )  # fmt: skip
        except BaseException:
            if self.curve is not None:
                _Authenticators.release(self._context)
            raise
        self.zero_copy_min_bytes = zero_copy_min_bytes
        self._seq: Counter[Kind] = Counter()

    def next_seq(self, kind: Kind) -> int:
        """Take the next sequence number of ``kind`` (0, 1, 2, ... per kind)."""
        seq = self._seq[kind]
        self._seq[kind] = seq + 1
        return seq

    def send_frames(self, frames: list[Any]) -> None:
        """Send prepared frames; the payload goes without a copy when it is large enough."""
        payload = frames[2]
        nbytes = payload.nbytes if isinstance(payload, (np.ndarray, memoryview)) else len(payload)
        self.socket.send_multipart(frames, copy=nbytes < self.zero_copy_min_bytes)

    def publish_events(self, events: np.ndarray, sensor_size: SensorSize) -> int:
        """Publish one event packet (may be empty; split above ``max_packet_events``); returns the last sequence number."""
        check_events(events)
        for start in range(0, max(len(events), 1), self.max_packet_events):
            seq = self.next_seq(Kind.EVENTS)
            self.send_frames(encode_events(events[start : start + self.max_packet_events], sensor_size, seq))
        return seq

    def publish_truth(self, segments: Iterable[GestureSegment]) -> int:
        """Publish ground-truth gesture segments; returns the sequence number."""
        seq = self.next_seq(Kind.TRUTH)
        self.send_frames(encode_truth(segments, seq))
        return seq

    def publish_json(self, kind: Kind, obj: Any, *, count: int = 0) -> int:
        """Publish any JSON-serialisable object as ``kind``; returns the sequence number."""
        seq = self.next_seq(kind)
        self.send_frames(encode_json(kind, seq, obj, count=count))
        return seq

    def publish_raw(self, kind: Kind, payload: bytes | np.ndarray, *, count: int = 0,
                    sensor_size: SensorSize | None = None) -> int:  # fmt: skip
        """Publish a binary payload as ``kind`` (e.g. a frame); returns the sequence number."""
        seq = self.next_seq(kind)
        self.send_frames(encode(kind, seq, payload, count=count, sensor_size=sensor_size))
        return seq

    def close(self) -> None:
        if self.socket.closed:
            return
        self.socket.close(linger=0)
        if self.curve is not None:
            _Authenticators.release(self._context)

    def __enter__(self) -> "EventPublisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class SubscriberStats:
    """What a subscriber has seen: accepted messages, lost ones (sequence gaps), rejects by reason."""

    received: int = 0
    lost: int = 0
    restarts: int = 0  # a sequence number went back: the publisher restarted
    disconnects: int = 0  # connections closed (publisher gone, oversized message)
    reconnected: int = 0  # connections ZeroMQ closed for good (oversized message, refused handshake), made again
    handshake_failures: int = 0  # connections refused during the handshake (CurveZMQ key or mechanism mismatch)
    rejected: Counter = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class EventSubscriber:
    """SUB socket that receives and checks messages of the wire format above.

    Args:
        endpoint: where to connect (or bind with ``bind=True``).
        topics: topics to subscribe to (``"events"``, ``"truth"``, ...).
        bind: connect (default) or bind.
        rcvhwm: messages queued before ZeroMQ drops new ones (seen as ``stats.lost``).
        max_message_bytes: largest payload accepted; also set as ``zmq.MAXMSGSIZE`` on the socket.
        allow_remote: allow a non-loopback TCP address.
        context: a ``zmq.Context`` (default: the process-wide instance).
        curve: CurveZMQ keys (``stream.keys``); on a tcp endpoint the socket is then a CurveZMQ
            client that authenticates with ``curve.public_key`` to the publisher ``curve.server_key``.

    To wait in your own ``zmq.Poller`` (next to a control socket), register every socket of
    ``.poll_sockets`` (the SUB socket and its monitor; they stay the same for the subscriber's
    life), bound the wait with ``poll_timeout_ms(timeout_ms)`` and call ``recv(0)`` when one is
    readable, ``maintain()`` when none is (it connects again after a connection ZeroMQ closed for good).
    """

    LOG_INTERVAL_S = 5.0

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        topics: Iterable[str] = ("events",),
        *,
        bind: bool = False,
        rcvhwm: int = DEFAULT_HWM,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        curve: CurveConfig | None = None,
    ) -> None:
        topics = [topic.encode() if isinstance(topic, str) else bytes(topic) for topic in topics]
        unknown = [topic for topic in topics if topic not in TOPIC_KINDS]
        if not topics or unknown:
            raise ValueError(f"topics must be some of {sorted(t.decode() for t in TOPIC_KINDS)}, got {topics}")
        if rcvhwm < 1:
            raise ValueError(f"rcvhwm must be >= 1 message, got {rcvhwm}")
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self.curve = curve if curve is not None and endpoint.startswith("tcp://") else None
        wire_limit = max(max_message_bytes, HEADER.size) + (CURVE_OVERHEAD_BYTES if self.curve is not None else 0)
        self._topics = topics
        self._bind = bind
        self._context = context or zmq.Context.instance()
        self._requested_endpoint = endpoint
        self._allow_remote = allow_remote
        self._options = {zmq.RCVHWM: rcvhwm, zmq.MAXMSGSIZE: wire_limit}
        self.stats = SubscriberStats()
        self._next_seq: dict[Kind, int] = {}
        self._last_log: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        self._open()

    def _open(self) -> None:
        self.socket, self.endpoint = _open_socket(
            self._context, zmq.SUB, self._requested_endpoint, bind=self._bind, allow_remote=self._allow_remote,
            options=self._options, curve=self.curve,
        )  # fmt: skip
        for topic in self._topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.monitor = self.socket.get_monitor_socket(MONITOR_EVENTS)
        self.poll_sockets = (self.socket, self.monitor)
        self._poller = zmq.Poller()
        for socket in self.poll_sockets:
            self._poller.register(socket, zmq.POLLIN)
        self._lost_at: float | None = None  # a connection closed and ZeroMQ has not yet shown it reconnects

    def poll_timeout_ms(self, timeout_ms: int | None) -> int | None:
        """``timeout_ms`` for an outside poller, shortened while a lost connection awaits ``maintain()``."""
        if self._lost_at is None:
            return timeout_ms
        due_ms = max(0, round((self._lost_at + RECONNECT_GRACE_S - time.monotonic()) * 1000))
        return due_ms if timeout_ms is None else min(timeout_ms, due_ms)

    def maintain(self) -> None:
        """Read the monitor; connect again if ZeroMQ closed a connection for good (cheap; ``recv`` calls it)."""
        if self.monitor.poll(0):
            self._on_monitor()
        if self._lost_at is not None and time.monotonic() - self._lost_at >= RECONNECT_GRACE_S:
            self._reconnect()

    def recv(self, timeout_ms: int | None = 0) -> Message | None:
        """The next valid message, or None when none came within ``timeout_ms`` (None: wait forever).

        Invalid messages are counted in ``stats.rejected``, logged and skipped; they do not end
        the wait early.
        """
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            self.maintain()
            wait_ms = None if deadline is None else max(0, round((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(self.poll_timeout_ms(wait_ms)))
            if self.monitor in ready:
                self._on_monitor()
            if self.socket not in ready:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            frames = self.socket.recv_multipart(copy=False)
            try:
                message = decode(frames, max_payload_bytes=self.max_message_bytes)
            except MessageError as error:
                self._reject(error)
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            self._count(message)
            return message

    def _on_monitor(self) -> None:
        """Read the socket's monitor events: count disconnects and handshake failures, and note a
        connection closed without ZeroMQ reconnecting (``maintain`` then connects again)."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self.stats.disconnects += 1
                if not self._bind:
                    self._lost_at = time.monotonic()
            elif event & RECONNECTING_EVENTS:
                if self._lost_at is not None:
                    log.info("%s: publisher gone; ZeroMQ reconnects", self.endpoint)
                self._lost_at = None
            elif event & HANDSHAKE_FAILED_EVENTS:
                self.stats.handshake_failures += 1
                self._warn("handshake", "connection refused in the handshake (CurveZMQ keys or mechanism differ "
                                        "from the publisher's)")  # fmt: skip

    def _reconnect(self) -> None:
        """ZeroMQ closed the connection for good (a protocol error such as a message over
        MAXMSGSIZE, or a refused handshake) and dropped its pipe: connect again. Only here is
        ``socket.disconnect()`` safe (see the module docstring)."""
        self._lost_at = None
        self.stats.reconnected += 1
        self._warn("reconnect", f"connection closed by ZeroMQ for good (a message over {self.max_message_bytes} "
                                "bytes, or a refused handshake); connected again")  # fmt: skip
        try:
            self.socket.disconnect(self._requested_endpoint)
        except zmq.ZMQError:
            pass  # libzmq already forgot the endpoint
        self.socket.connect(self._requested_endpoint)

    def _count(self, message: Message) -> None:
        self.stats.received += 1
        expected = self._next_seq.get(message.kind)
        if expected is not None:
            if message.seq > expected:
                self.stats.lost += message.seq - expected
            elif message.seq < expected:
                self.stats.restarts += 1
        self._next_seq[message.kind] = message.seq + 1

    def _reject(self, error: MessageError) -> None:
        self.stats.rejected[error.reason] += 1
        self._warn(error.reason, f"rejected message(s): {error}")

    def _warn(self, key: str, text: str) -> None:
        """Log a warning at most once per ``key`` every LOG_INTERVAL_S, with the count since the last one."""
        self._unlogged[key] += 1
        now = time.monotonic()
        if now - self._last_log.get(key, -np.inf) >= self.LOG_INTERVAL_S:
            log.warning("%s: %d x %s", self.endpoint, self._unlogged[key], text)
            self._last_log[key] = now
            self._unlogged[key] = 0

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)

    def __enter__(self) -> "EventSubscriber":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
