"""ZeroMQ sockets speaking the wire format (``stream.transport.wire``): one ``Publisher``, one
``Subscriber``.

``Publisher`` is an XPUB socket (it binds; it can wait for its subscribers, and with ``nodrop``
it applies back-pressure instead of dropping), ``Subscriber`` a SUB socket (connects by default). Endpoints are ``ipc://PATH``, ``inproc://NAME`` or ``tcp://HOST:PORT``;
a TCP host other than loopback (``127.0.0.1``, ``localhost``, ``::1``), ``*`` included, is refused
unless ``allow_remote=True``. High-water marks are bounded: when a subscriber falls
behind, the publisher drops new messages for it (ZeroMQ's PUB policy) and the subscriber sees
the gap in ``stats.lost``. The SUB socket sets ``zmq.MAXMSGSIZE`` so an oversized frame is refused
by ZeroMQ itself before Python sees it: libzmq treats it as a protocol error and closes that
connection for good. A connecting subscriber tells the two kinds of disconnect apart by its socket
monitor: when the publisher is gone, ZeroMQ reconnects by itself (``EVENT_CONNECT_RETRIED``
follows at once) and the subscriber leaves the socket alone: calling ``socket.disconnect()`` then
terminates the live pipe that ZeroMQ keeps across reconnects, and libzmq aborted the process with
``Assertion failed: !_more (src/fq.cpp:80)`` within one or two publisher kills. Only when no
reconnect follows within ``RECONNECT_GRACE_S`` (a protocol error: ZeroMQ has already dropped that
pipe) does it disconnect and connect again (``stats.reconnected``). The publisher splits event packets larger than
``MAX_PACKET_EVENTS`` (4 MiB), which is what a subscriber accepts by default, so it never triggers it.
Everything the subscriber gets that breaks this spec is counted in ``stats.rejected[reason]``,
logged (at most once per reason every few seconds) and skipped; the subscriber keeps working.
Every socket owner is a context manager and closes with linger 0.

CurveZMQ (``curve=CurveConfig``, see ``stream.transport.keys``): on tcp endpoints the publisher is the
CurveZMQ server and accepts only clients whose public key the config authorises (a ZAP handler,
pyzmq's ``ThreadAuthenticator``, one per context); the subscriber is the client and must know the
publisher's public key. The stream is then encrypted and authenticated; a client with an unknown key
or without CurveZMQ receives nothing (``stats.handshake_failures`` counts the refusals it sees).
ipc and inproc endpoints ignore ``curve``: file permissions and the process boundary protect them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from stream.events import GestureSegment, SensorSize, check_events
from stream.transport.keys import CurveConfig
from stream.transport.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    HEADER,
    MAX_PACKET_EVENTS,
    STATUS_TYPES,
    TOPIC_KINDS,
    Kind,
    Message,
    MessageError,
    decode,
    encode_events,
    encode_json,
    encode_truth,
)

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
DEFAULT_HWM = 100  # messages queued per peer before the publisher drops
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
SEND_POLL_MS = 100  # a blocked send wakes this often to honour a stop request
RELIABLE_SEND_S = 5.0  # how long a reliable message waits for room in a full queue by default


class Stopped(Exception):
    """The stage was asked to stop (SIGINT/SIGTERM) while a publisher waited."""


# --- endpoints and sockets ------------------------------------------------------------------


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


def open_socket(
    context: zmq.Context, socket_type: int, endpoint: str, *, bind: bool, allow_remote: bool, options: dict[int, int],
    curve: CurveConfig | None = None,
) -> tuple[zmq.Socket, str]:
    """A socket with ``options`` set, bound or connected. With ``curve`` and a tcp endpoint, a PUB,
    XPUB or ROUTER socket is the CurveZMQ server (register its ZAP domain with ``Authenticators``
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
                socket.zap_domain = Authenticators.domain(curve).encode()
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


class Authenticators:
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
                entry = cls._running[id(context)] = [cls._start(context), 0]
            entry[0].configure_curve_callback(cls.domain(curve), _KeySet(curve.authorized))
            entry[1] += 1

    @staticmethod
    def _start(context: zmq.Context, wait_s: float = 2.0) -> ThreadAuthenticator:
        """Start a ZAP handler on ``context``. ZeroMQ closes sockets in the background, so the ZAP
        endpoint of a handler stopped a moment ago may still be bound: retry for ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            authenticator = ThreadAuthenticator(context)
            try:
                authenticator.start()
                return authenticator
            except zmq.ZMQError as error:
                authenticator.stop()  # closes the half-made ZAP socket
                if error.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    # another ZAP handler (not one of ours that is closing) serves this context
                    raise OSError(f"cannot start the CurveZMQ authenticator: {error}") from None
                time.sleep(0.01)

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


def bind_server_socket(
    context: zmq.Context, socket_type: int, endpoint: str, *, allow_remote: bool, options: dict[int, int],
    curve: CurveConfig | None,
) -> tuple[zmq.Socket, str, CurveConfig | None]:
    """Bind a server socket (XPUB, ROUTER): with ``curve`` on a tcp endpoint it is a CurveZMQ server whose clients the context's ZAP handler checks against
    ``curve.authorized``. Returns (socket, bound endpoint, the curve in use: None off tcp); close it
    with ``close_server_socket``."""
    check_endpoint(endpoint, allow_remote=allow_remote)
    curve = curve if curve is not None and endpoint.startswith("tcp://") else None
    if curve is not None:
        Authenticators.acquire(context, curve)
    try:
        socket, endpoint = open_socket(context, socket_type, endpoint, bind=True, allow_remote=allow_remote,
                                        options=options, curve=curve)  # fmt: skip
    except BaseException:
        if curve is not None:
            Authenticators.release(context)
        raise
    return socket, endpoint, curve


def close_server_socket(socket: zmq.Socket, context: zmq.Context, curve: CurveConfig | None, linger_ms: int = 0) -> None:
    if socket.closed:
        return
    socket.close(linger=linger_ms)
    if curve is not None:
        Authenticators.release(context)


class Publisher:
    """XPUB socket that publishes events, truth, predictions and status in the wire format.

    It can wait until its subscribers are there before the first message (``wait_for_subscribers``),
    and with ``nodrop=True`` it applies back-pressure (a send waits while the queue is full) instead
    of dropping. Event packets larger than ``max_packet_events`` go out as several messages.

    Args:
        endpoint: where to bind (``tcp://127.0.0.1:*`` picks a port: see ``.endpoint``).
        sndhwm: messages queued per subscriber.
        nodrop: wait instead of dropping when a subscriber's queue is full.
        allow_remote: allow a non-loopback TCP address.
        zero_copy_min_bytes: payloads of at least this many bytes are sent without a copy; the
            caller must then not modify the array after publishing it.
        max_packet_events: larger event packets are split (keep it within the subscribers'
            ``max_message_bytes`` / 16).
        context: a ``zmq.Context`` (default: the process-wide instance).
        stop: when this event is set, waiting calls raise ``Stopped``.
        curve: CurveZMQ keys (``stream.transport.keys``); on a tcp endpoint the socket is then a
            CurveZMQ server that accepts only ``curve.authorized`` clients.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = DEFAULT_HWM,
        nodrop: bool = False,
        allow_remote: bool = False,
        zero_copy_min_bytes: int = ZERO_COPY_MIN_BYTES,
        max_packet_events: int = MAX_PACKET_EVENTS,
        context: zmq.Context | None = None,
        stop: threading.Event | None = None,
        curve: CurveConfig | None = None,
    ) -> None:
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1 message, got {sndhwm}")
        if max_packet_events < 1:
            raise ValueError(f"max_packet_events must be >= 1, got {max_packet_events}")
        self.nodrop = nodrop
        self.zero_copy_min_bytes = zero_copy_min_bytes
        self.max_packet_events = max_packet_events
        self.stop = stop or threading.Event()
        self._context = context or zmq.Context.instance()
        options = {
            zmq.SNDHWM: sndhwm,
            zmq.XPUB_VERBOSER: 1,  # every (un)subscription, not only the first/last
            zmq.XPUB_NODROP: int(nodrop),
            zmq.SNDTIMEO: SEND_POLL_MS,
        }
        self.socket, self.endpoint, self.curve = bind_server_socket(
            self._context, zmq.XPUB, endpoint, allow_remote=allow_remote, options=options, curve=curve
        )
        self.subscriptions: dict[bytes, int] = {}
        self._seq: dict[Kind, int] = {}

    def set_nodrop(self, nodrop: bool) -> None:
        """Switch between back-pressure (True: a full queue makes sends wait) and dropping."""
        self.nodrop = bool(nodrop)
        self.socket.setsockopt(zmq.XPUB_NODROP, int(self.nodrop))

    def _read_subscriptions(self, timeout_ms: int) -> None:
        if self.stop.is_set():
            raise Stopped()
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                message = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self.subscriptions[message[1:]] = self.subscriptions.get(message[1:], 0) + 1
            elif message[:1] == b"\x00" and self.subscriptions.get(message[1:], 0) > 0:
                self.subscriptions[message[1:]] -= 1

    def _delivering(self, topic: bytes) -> int:
        """Subscriptions known so far that deliver ``topic`` (it starts with them; ``b""``: all)."""
        return sum(count for prefix, count in self.subscriptions.items() if count > 0 and topic.startswith(prefix))

    def subscribed(self, topic: bytes) -> int:
        """How many subscriptions deliver ``topic`` now: those to it or to any prefix of it, the
        empty one included. Reads the (un)subscriptions that arrived; never waits."""
        self._read_subscriptions(0)
        return self._delivering(topic)

    def wait_for_subscribers(self, count: int, topic: bytes, timeout_s: float | None = None) -> bool:
        """Wait until ``count`` subscriptions delivering ``topic`` arrived; False on timeout (None: forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._delivering(topic) < count:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._read_subscriptions(SEND_POLL_MS)
        return True

    def wait_for_unsubscribed(self, topic: bytes, timeout_s: float) -> bool:
        """After an end message: wait until every subscriber of ``topic`` has left (it closes its
        socket once it has read the end), so no queued message dies with this socket. False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.subscribed(topic) > 0:
            if time.monotonic() >= deadline:
                log.warning("%s: subscribers still connected %g s after the end message; closing", self.endpoint, timeout_s)
                return False
            self._read_subscriptions(SEND_POLL_MS)
        return True

    def next_seq(self, kind: Kind) -> int:
        """Take the next sequence number of ``kind`` (0, 1, 2, ... per kind)."""
        seq = self._seq.get(kind, 0)
        self._seq[kind] = seq + 1
        return seq

    def send_frames(self, frames: list[Any]) -> None:
        """Send one message; with ``nodrop`` wait (in ``SEND_POLL_MS`` steps) while queues are full.
        The payload goes without a copy when it is at least ``zero_copy_min_bytes``."""
        payload = frames[2]
        nbytes = payload.nbytes if isinstance(payload, (np.ndarray, memoryview)) else len(payload)
        copy = nbytes < self.zero_copy_min_bytes
        while True:
            try:
                self.socket.send_multipart(frames, copy=copy)
                return
            except zmq.Again:
                if not self.nodrop:
                    return  # dropped by ZeroMQ; the receiver sees the sequence gap
                self._read_subscriptions(0)

    def publish_events(self, events: np.ndarray, sensor_size: SensorSize) -> int:
        """Publish one event packet (may be empty), split above ``max_packet_events``; returns the
        number of messages sent."""
        check_events(events)
        messages = 0
        for start in range(0, max(len(events), 1), self.max_packet_events):
            seq = self.next_seq(Kind.EVENTS)
            self.send_frames(encode_events(events[start : start + self.max_packet_events], sensor_size, seq))
            messages += 1
        return messages

    def publish_truth(self, segments: Iterable[GestureSegment]) -> int:
        """Publish ground-truth gesture segments; returns the sequence number."""
        seq = self.next_seq(Kind.TRUTH)
        self.send_frames(encode_truth(segments, seq))
        return seq

    def publish_json(self, kind: Kind, obj: Any, *, reliable: bool = False, wait_s: float | None = None) -> int:
        """Publish JSON; ``reliable`` waits for room even on a dropping socket (end messages), up
        to ``wait_s`` seconds (default ``RELIABLE_SEND_S``) or until a stop request (``Stopped``);
        with ``nodrop`` every send waits."""
        seq = self.next_seq(kind)
        frames = encode_json(kind, seq, obj)
        if reliable and not self.nodrop:
            self.socket.setsockopt(zmq.XPUB_NODROP, 1)
            try:
                self._send_until(frames, RELIABLE_SEND_S if wait_s is None else wait_s)
            finally:
                self.socket.setsockopt(zmq.XPUB_NODROP, 0)
        else:
            self.send_frames(frames)  # a back-pressure socket waits anyway (until a stop request)
        return seq

    def publish_status(self, fields: dict[str, Any], *, reliable: bool = False) -> int:
        """Publish a status message (``fields["type"]`` one of ``STATUS_TYPES``); returns its sequence number."""
        if fields.get("type") not in STATUS_TYPES:
            raise ValueError(f"a status message needs a type in {STATUS_TYPES}, got {fields.get('type')!r}")
        return self.publish_json(Kind.STATUS, fields, reliable=reliable)

    def publish_end(self, fields: dict[str, Any], topic: bytes, wait_s: float) -> bool:
        """Publish the ``end`` status message (``fields``, without its type) so that every
        subscriber of ``topic`` gets it, then wait until they have all left (each closes its socket
        once it has read it).

        ZeroMQ skips, without an error, a subscriber whose queue overflowed on a dropping socket
        (libzmq deactivates that pipe until its reader has drained half of it), so a single send
        can miss an overloaded worker. The message is therefore sent again, with back-off from
        ``SEND_POLL_MS`` to 1 s, waiting for room each time, while subscribers remain. Gives up
        after ``wait_s`` seconds (False, logged) or at a stop request (False); True when all left.
        Raises ``Stopped`` only if the stop request comes before the first send.
        """
        deadline = time.monotonic() + wait_s
        kind, obj = Kind.STATUS, {"type": "end", **fields}
        self.publish_json(kind, obj, reliable=True, wait_s=wait_s)
        interval_s = SEND_POLL_MS / 1000
        try:
            while self.subscribed(topic) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("%s: subscribers still connected %g s after the end message; closing", self.endpoint, wait_s)
                    return False
                resend_at = time.monotonic() + min(interval_s, remaining)
                while self._delivering(topic) > 0 and (left_s := resend_at - time.monotonic()) > 0:
                    self._read_subscriptions(max(1, round(left_s * 1000)))
                if self._delivering(topic) > 0 and time.monotonic() < deadline:
                    self.publish_json(kind, obj, reliable=True, wait_s=deadline - time.monotonic())
                interval_s = min(interval_s * 2, 1.0)
        except Stopped:
            return False
        return True

    def _send_until(self, frames: list[Any], wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.socket.send_multipart(frames, copy=False)
                return
            except zmq.Again:  # SNDTIMEO (SEND_POLL_MS) passed with the queue still full
                if self.stop.is_set():
                    raise Stopped() from None
                if time.monotonic() >= deadline:
                    log.warning("%s: a subscriber did not take the message within %g s", self.endpoint, wait_s)
                    return
                self._read_subscriptions(0)  # a subscriber that left frees the send

    def close(self, linger_ms: int = 0) -> None:
        """Close; ``linger_ms`` > 0 lets queued messages (an end message) leave first."""
        close_server_socket(self.socket, self._context, self.curve, linger_ms)

    def __enter__(self) -> "Publisher":
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


class Subscriber:
    """SUB socket that receives and checks messages of the wire format above.

    Args:
        endpoint: where to connect (or bind with ``bind=True``).
        topics: topics to subscribe to (``"events"``, ``"truth"``, ...).
        bind: connect (default) or bind.
        rcvhwm: messages queued before ZeroMQ drops new ones (seen as ``stats.lost``).
        max_message_bytes: largest payload accepted; also set as ``zmq.MAXMSGSIZE`` on the socket.
        allow_remote: allow a non-loopback TCP address.
        context: a ``zmq.Context`` (default: the process-wide instance).
        curve: CurveZMQ keys (``stream.transport.keys``); on a tcp endpoint the socket is then a CurveZMQ
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
        self.socket, self.endpoint = open_socket(
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

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
