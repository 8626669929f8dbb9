"""The source stage: ``python -m stream.source --source SPEC --pub ENDPOINT``.

Opens a live source (``auto | camera[:SERIAL] | file:PATH | dv:HOST:PORT | sim``, see
``stream.sources``) and publishes on ``ENDPOINT`` in the ``stream.transport`` wire format:

* ``events`` packets as the source yields them (split above ``MAX_PACKET_EVENTS``);
* ``truth`` segments when the source knows them (the simulator);
* JSON status messages (``STATUS_KIND``) with a ``"type"``: ``"stats"`` about once a second and
  ``"end"`` once when the source ends by itself (end of a file): both carry the cumulative counters
  ``events_sent`` / ``packets_sent``, so a receiver that compares them with what it received knows
  exactly how many events the socket dropped. ``stats`` also carries ``connected`` (False while a
  camera or network source has lost its device or server and is reconnecting), ``disconnects``
  and ``reconnects`` (sources without these: True, 0, 0);
* ``{"type": "clock", "time_us": T, "paused": bool}`` (the source's watermark): T is the stream
  time (µs, the events' clock) before which no further event will come. It is sent whenever
  ``CLOCK_INTERVAL_S`` (10 ms) of wall time passed without any message, so a silent source still
  tells how far its time has gone (at least every ~20 ms). T never goes back. A source's own
  ``clock_us()`` gives it (see ``stream.sources``: exact for files and the simulator, for camera
  and network the last event's time plus the wall time since it, less a margin); a source without
  one is estimated as last event time + (wall time since it - 5 ms) x speed. A clock is a promise:
  an event that still comes earlier than a clock already sent (an estimate that ran ahead) is sent
  with its time raised to that clock, never dropped, and counted (``late_events``). Empty chunks
  are not published (clock messages replace them).

Control (``--control ENDPOINT``, ``ControlServer``): a ROUTER socket polled between packets (it
never blocks the stage) takes JSON commands of at most ``CONTROL_MAX_BYTES``, never pickled, from
REQ or DEALER clients (``ControlClient``) and answers each with one JSON reply:

    {"cmd": "status"}                    {"cmd": "pause"}            {"cmd": "resume"}
    {"cmd": "seek", "position_s": 12.5}  {"cmd": "speed", "speed": 2.0}  (or "max")
    {"cmd": "loop", "loop": true}
    reply: {"ok": true, "cmd": ..., "status": {"source", "controls", "position_s",
            "duration_s", "paused", "speed", "loop"}}  or  {"ok": false, "error": "one line"}

An optional ``"id"`` (int or short string) is echoed. Pause, seek, speed and loop work on file
replay; other sources answer them with an error. Loopback only unless ``--allow-remote``.

Start-up, flow control and end (``StagePublisher``, an XPUB socket): with ``--wait-subscribers N``
the stage sends nothing until N subscriptions to ``events`` have arrived (no events lost to
ZeroMQ's slow-joiner effect). After the end message it keeps its socket open until its subscribers
have left (each closes its socket once it has read the end; at most ``END_WAIT_S``), so no queued
packet is lost when the stage exits. With ``--speed max`` (a file replayed as fast as possible) the socket does not
drop: a full queue makes the source wait (back-pressure), so every event of the file reaches the
worker. At any other speed a slow subscriber loses packets (counted by it) and latency stays bounded.

The end message is never given up early: when a subscriber's queue is full (an overloaded
worker) the stage waits for room and sends it again until every subscriber has read it and left,
up to ``END_WAIT_S``, or until a stop request (``StagePublisher.publish_end``).

CurveZMQ (``--curve-keys DIR [--curve-name NAME]``, see ``stream.keys``): the events endpoint and
a tcp control endpoint are then CurveZMQ servers that accept only the public keys in DIR; ipc
endpoints stay plaintext. A bad key directory is one ``error:`` line and exit code 2.

SIGINT/SIGTERM stop the stage cleanly (exit code 0); the end message is only sent at a real end.
A camera or network source that is lost reconnects by itself (``connected`` False meanwhile); if
it stops trying, the stage exits with one ``error:`` line and code 3 (``EXIT_SOURCE_LOST``: the
launcher starts it again), no end. Any other expected failure (a bad file, argument or key, no
camera or server at start) is one ``error:`` line and code 2 (``EXIT_ERROR``: not restarted).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import os
import platform
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable

import numpy as np
import zmq

from stream.events import GestureSegment, SensorSize
from stream.keys import CurveConfig, add_curve_arguments, curve_from_args
from stream.transport import (
    CURVE_OVERHEAD_BYTES,
    DEFAULT_HWM,
    Kind,
    _Authenticators,
    _open_socket,
    check_endpoint,
    encode,
    encode_events,
    encode_json,
    encode_truth,
)

log = logging.getLogger("stream.source")

# JSON status messages (stats, end of stream) ride on this kind, told apart by their "type" field,
# until the transport has a kind of their own.
STATUS_KIND = Kind.PREDICTION
MAX_PACKET_EVENTS = 1 << 18  # 4 MiB per packet: bounded message size whatever a file's packets are
STATS_INTERVAL_S = 1.0
CLOCK_INTERVAL_S = 0.01  # a clock message goes out when nothing was sent for this long
FALLBACK_CLOCK_MARGIN_S = 0.005  # estimated clocks (no clock_us()) stay this far behind the wall clock
CONTROL_MAX_BYTES = 4096  # larger control messages are refused by the socket (ZMQ_MAXMSGSIZE)
CONTROL_MAX_PER_POLL = 32  # commands handled per poll at most, so a flood cannot starve the stream
CONTROL_COMMANDS = ("status", "pause", "resume", "seek", "speed", "loop")
SEND_POLL_MS = 100  # a blocked send wakes this often to honour a stop request
RELIABLE_SEND_S = 5.0  # how long a reliable message waits for room in a full queue by default
END_WAIT_S = 30.0  # how long the end message waits for room, then how long subscribers get to read it and leave
END_LINGER_MS = 1000  # then queued messages get this long to leave
EXIT_ERROR = 2  # exit code of an expected failure (one error line) that a restart would not change
EXIT_SOURCE_LOST = 3  # exit code after SourceLost: the device or server may come back, so restart
MMAP_THRESHOLD_BYTES = 1 << 20  # the source stage's fixed glibc mmap threshold (see fix_mmap_threshold)
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)


class Stopped(Exception):
    """The stage was asked to stop (SIGINT/SIGTERM) while waiting."""


class SourceLost(OSError):
    """A camera or network source lost its device or server and stopped reconnecting: not an end
    of the data, so no end message; the stage exits with an error (the launcher may restart it)."""


def fix_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc's malloc serve every block of ``threshold_bytes`` or more with its own mmap, given
    back to the system when freed, for the rest of this process. True when set.

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB)
    and keeps up to twice that of freed memory in its heaps. The source stage frees such blocks
    over and over (the simulator's ~11 MB cycle of body shapes, 4 MiB file packets), so its resident
    memory climbed in 7-10 MB steps through a 10-minute soak (+6.9 %) while what it held alive did
    not grow. Fixed at 1 MiB (which also stops the thresholds moving) it stays flat; the 160 kB
    packets of a 5 M events/s stream stay in the heap. Not done in the worker: its 2 MiB windows
    would each be a fresh mmap (a window copy measured 4x slower), and it does not grow.
    Does nothing (False) off glibc or when ``MALLOC_MMAP_THRESHOLD_`` is set (the user's choice).
    """
    if platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


class StopRequest:
    """SIGINT/SIGTERM handling of a stage (launch.py stops stages with SIGTERM).

    The first signal sets ``event`` (every loop of a stage polls it at least every ~100 ms) and
    runs ``callbacks`` (e.g. ``source.stop``); nothing is raised at a random point of the code, so
    sockets and devices close in order. A second signal raises KeyboardInterrupt (forced stop).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.callbacks: list[Callable[[], None]] = []

    def install(self) -> "StopRequest":
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        for callback in self.callbacks:
            callback()


def _bind_server_socket(
    context: zmq.Context, socket_type: int, endpoint: str, *, allow_remote: bool, options: dict[int, int],
    curve: CurveConfig | None,
) -> tuple[zmq.Socket, str, CurveConfig | None]:
    """Bind a stage's XPUB or ROUTER socket as ``EventPublisher`` binds its PUB: with ``curve`` on a
    tcp endpoint it is a CurveZMQ server whose clients the context's ZAP handler checks against
    ``curve.authorized``. Returns (socket, bound endpoint, the curve in use: None off tcp); close it
    with ``_close_server_socket``."""
    check_endpoint(endpoint, allow_remote=allow_remote)
    curve = curve if curve is not None and endpoint.startswith("tcp://") else None
    if curve is not None:
        _Authenticators.acquire(context, curve)
    try:
        socket, endpoint = _open_socket(context, socket_type, endpoint, bind=True, allow_remote=allow_remote,
                                        options=options, curve=curve)  # fmt: skip
    except BaseException:
        if curve is not None:
            _Authenticators.release(context)
        raise
    return socket, endpoint, curve


def _close_server_socket(socket: zmq.Socket, context: zmq.Context, curve: CurveConfig | None, linger_ms: int = 0) -> None:
    if socket.closed:
        return
    socket.close(linger=linger_ms)
    if curve is not None:
        _Authenticators.release(context)


class StagePublisher:
    """XPUB socket speaking the ``stream.transport`` wire format, for pipeline stages.

    Beyond ``EventPublisher``: it can wait until its subscribers are there before the first message
    (``wait_for_subscribers``), and with ``nodrop=True`` it applies back-pressure (a send waits while
    the queue is full) instead of dropping.

    Args:
        endpoint: where to bind (``tcp://127.0.0.1:*`` picks a port: see ``.endpoint``).
        sndhwm: messages queued per subscriber.
        nodrop: wait instead of dropping when a subscriber's queue is full.
        allow_remote: allow a non-loopback TCP address.
        context: a ``zmq.Context`` (default: the process-wide instance).
        stop: when this event is set, waiting calls raise ``Stopped``.
        curve: CurveZMQ keys (``stream.keys``); on a tcp endpoint the socket is then a CurveZMQ
            server that accepts only ``curve.authorized`` clients (as ``EventPublisher``).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = DEFAULT_HWM,
        nodrop: bool = False,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        stop: threading.Event | None = None,
        curve: CurveConfig | None = None,
    ) -> None:
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1 message, got {sndhwm}")
        self.nodrop = nodrop
        self.stop = stop or threading.Event()
        self._context = context or zmq.Context.instance()
        options = {
            zmq.SNDHWM: sndhwm,
            zmq.XPUB_VERBOSER: 1,  # every (un)subscription, not only the first/last
            zmq.XPUB_NODROP: int(nodrop),
            zmq.SNDTIMEO: SEND_POLL_MS,
        }
        self.socket, self.endpoint, self.curve = _bind_server_socket(
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
        seq = self._seq.get(kind, 0)
        self._seq[kind] = seq + 1
        return seq

    def send_frames(self, frames: list[Any]) -> None:
        """Send one message; with ``nodrop`` wait (in ``SEND_POLL_MS`` steps) while queues are full."""
        while True:
            try:
                self.socket.send_multipart(frames, copy=False)
                return
            except zmq.Again:
                if not self.nodrop:
                    return  # dropped by ZeroMQ; the receiver sees the sequence gap
                self._read_subscriptions(0)

    def publish_events(self, events: np.ndarray, sensor_size: SensorSize) -> int:
        seq = self.next_seq(Kind.EVENTS)
        self.send_frames(encode_events(events, sensor_size, seq))
        return seq

    def publish_truth(self, segments: Iterable[GestureSegment]) -> int:
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

    def publish_end(self, kind: Kind, obj: Any, topic: bytes, wait_s: float) -> bool:
        """Publish the last message of a stream (JSON) so that every subscriber of ``topic`` gets
        it, then wait until they have all left (each closes its socket once it has read it).

        ZeroMQ skips, without an error, a subscriber whose queue overflowed on a dropping socket
        (libzmq deactivates that pipe until its reader has drained half of it), so a single send
        can miss an overloaded worker. The message is therefore sent again, with back-off from
        ``SEND_POLL_MS`` to 1 s, waiting for room each time, while subscribers remain. Gives up
        after ``wait_s`` seconds (False, logged) or at a stop request (False); True when all left.
        Raises ``Stopped`` only if the stop request comes before the first send.
        """
        deadline = time.monotonic() + wait_s
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

    def publish_raw(self, kind: Kind, payload: bytes | np.ndarray, *, count: int = 0,
                    sensor_size: SensorSize | None = None) -> int:  # fmt: skip
        seq = self.next_seq(kind)
        self.send_frames(encode(kind, seq, payload, count=count, sensor_size=sensor_size))
        return seq

    def close(self, linger_ms: int = 0) -> None:
        """Close; ``linger_ms`` > 0 lets queued messages (an end message) leave first."""
        _close_server_socket(self.socket, self._context, self.curve, linger_ms)

    def __enter__(self) -> "StagePublisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SourceCounters:
    """What the source stage has sent so far (events, packets, truth segments, clock messages)."""

    def __init__(self) -> None:
        self.events_sent = 0
        self.packets_sent = 0
        self.segments_sent = 0
        self.clocks_sent = 0
        self.late_events = 0  # events earlier than a clock already announced, sent at that clock's time
        self.ended = False  # the source ended by itself and the end message was sent

    def as_dict(self) -> dict[str, int]:
        return {"events_sent": self.events_sent, "packets_sent": self.packets_sent, "segments_sent": self.segments_sent,
                "clocks_sent": self.clocks_sent, "late_events": self.late_events}  # fmt: skip


class StageClock:
    """The stream time (µs) a source stage announces in clock messages; never goes back.

    Uses ``source.clock_us()`` when the source has one, else last event time + (wall time since
    it arrived - ``FALLBACK_CLOCK_MARGIN_S``) x the source's ``speed`` (1 without one, 0 for "as
    fast as possible"). ``admit`` keeps the announced clock a promise whatever the source does.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self._own = getattr(source, "clock_us", None)
        self.last_event_us: int | None = None
        self.announced_us: int | None = None
        self._last_event_wall = 0.0

    def admit(self, events: np.ndarray, now_s: float) -> tuple[np.ndarray, int]:
        """A non-empty, time-ordered packet about to be sent: returns it with the times of its
        events earlier than the clock already announced (late) raised to that clock (a copy; the
        input is not changed), and how many were late."""
        late = 0
        if self.announced_us is not None and int(events["t"][0]) < self.announced_us:
            late = int(np.searchsorted(events["t"], self.announced_us, side="left"))
            copied = np.zeros(len(events), events.dtype)  # zeros: a structured copy()/mask leaves stale heap
            copied[...] = events  # bytes in the padding (NumPy 2), and the padding goes on the wire
            events = copied
            events["t"][:late] = self.announced_us
        self.last_event_us = int(events["t"][-1])
        self._last_event_wall = now_s
        return events, late

    def time_us(self, now_s: float) -> int | None:
        """The clock now (None while nothing is known: before the first event)."""
        if self._own is not None:
            value = self._own()
        elif self.last_event_us is None:
            value = None
        else:
            speed = getattr(self.source, "speed", 1.0)
            rate = 0.0 if speed is None else float(speed)
            elapsed_s = max(0.0, now_s - self._last_event_wall - FALLBACK_CLOCK_MARGIN_S)
            value = self.last_event_us + int(elapsed_s * rate * 1e6)
        if value is None:
            return self.announced_us
        if self.announced_us is not None and value < self.announced_us:
            value = self.announced_us
        self.announced_us = int(value)
        return self.announced_us


# --- control ---------------------------------------------------------------------------------


class ControlError(ValueError):
    """A control command that cannot be carried out; the message is the one-line reply."""


def source_status(source: Any) -> dict[str, Any]:
    """What a status reply says about ``source`` (JSON-ready)."""
    controls = ["status"]
    controls += ["pause", "resume"] if hasattr(source, "pause") and hasattr(source, "resume") else []
    controls += [name for name, method in (("seek", "seek"), ("speed", "set_speed"), ("loop", "set_loop"))
                 if hasattr(source, method)]  # fmt: skip
    speed = getattr(source, "speed", None if "speed" in controls else 1.0)
    status = {
        "source": str(getattr(source, "name", "?")),
        "controls": controls,
        "position_s": None,
        "duration_s": None,
        "paused": bool(getattr(source, "paused", False)),
        "speed": "max" if speed is None else speed,
        "loop": None,
    }
    if hasattr(source, "status"):
        status.update(source.status())
    return status


def parse_command(request: bytes) -> dict[str, Any]:
    """Decode and check one JSON command; raises ControlError naming what is wrong."""
    if len(request) > CONTROL_MAX_BYTES:
        raise ControlError(f"command is {len(request)} bytes; at most {CONTROL_MAX_BYTES}")
    try:
        command = json.loads(bytes(request).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ControlError(f"command is not JSON: {str(error).splitlines()[0][:120]}") from None
    if not isinstance(command, dict):
        raise ControlError('command must be a JSON object such as {"cmd": "status"}')
    name = command.get("cmd")
    if name not in CONTROL_COMMANDS:
        raise ControlError(f"unknown command {str(name)[:40]!r}; expected one of {', '.join(CONTROL_COMMANDS)}")
    if name == "seek":
        position = command.get("position_s")
        if isinstance(position, bool) or not isinstance(position, (int, float)) or not math.isfinite(position):
            raise ControlError('seek needs "position_s": seconds from the start of the file')
    elif name == "speed":
        speed = command.get("speed")
        if speed != "max" and (isinstance(speed, bool) or not isinstance(speed, (int, float))):
            raise ControlError('speed needs "speed": a factor (0.1..100) or "max"')
    elif name == "loop" and not isinstance(command.get("loop"), bool):
        raise ControlError('loop needs "loop": true or false')
    return command


def execute_command(source: Any, request: bytes, on_speed: Callable[[float | None], None] | None = None) -> dict[str, Any]:
    """Carry out one JSON command on ``source``; returns the reply (never raises for bad input)."""
    request_id = None
    try:
        command = parse_command(request)
        request_id = command.get("id")
        name = command["cmd"]
        method = {"pause": "pause", "resume": "resume", "seek": "seek", "speed": "set_speed", "loop": "set_loop"}.get(name)
        if method is not None and not hasattr(source, method):
            raise ControlError(f"{getattr(source, 'name', 'this source')} cannot {name} (only file replay can)")
        if name in ("pause", "resume"):
            getattr(source, method)()
        elif name == "seek":
            source.seek(float(command["position_s"]))
        elif name == "speed":
            speed = None if command["speed"] == "max" else float(command["speed"])
            source.set_speed(speed)
            if on_speed is not None:
                on_speed(speed)
        elif name == "loop":
            source.set_loop(command["loop"])
        reply: dict[str, Any] = {"ok": True, "cmd": name, "status": source_status(source)}
    except ValueError as error:  # ControlError, or a source refusing a value (speed out of range, seek past the end)
        reply = {"ok": False, "error": str(error).splitlines()[0] if str(error) else type(error).__name__}
    if isinstance(request_id, (int, str)) and not isinstance(request_id, bool) and len(str(request_id)) <= 64:
        reply["id"] = request_id
    return reply


class ControlServer:
    """The source stage's control socket (ROUTER): ``poll(source)`` answers every pending command
    without blocking. See the module docstring for the commands.

    Args:
        endpoint: where to bind (``ipc://...`` or a loopback ``tcp://``).
        allow_remote: allow a non-loopback TCP address.
        on_speed: called with the new speed (None: "max") after a speed command.
        context: a ``zmq.Context`` (default: the process-wide instance).
        curve: CurveZMQ keys; on a tcp endpoint only ``curve.authorized`` clients get in.
    """

    def __init__(self, endpoint: str, *, allow_remote: bool = False,
                 on_speed: Callable[[float | None], None] | None = None, context: zmq.Context | None = None,
                 curve: CurveConfig | None = None) -> None:  # fmt: skip
        self.on_speed = on_speed
        self.commands = 0
        self.errors = 0
        self._context = context or zmq.Context.instance()
        wire_limit = CONTROL_MAX_BYTES + (CURVE_OVERHEAD_BYTES if curve is not None else 0)
        options = {zmq.MAXMSGSIZE: wire_limit, zmq.RCVHWM: 64, zmq.SNDHWM: 64}
        self.socket, self.endpoint, self.curve = _bind_server_socket(
            self._context, zmq.ROUTER, endpoint, allow_remote=allow_remote, options=options, curve=curve
        )

    def poll(self, source: Any) -> int:
        """Answer the commands waiting (at most ``CONTROL_MAX_PER_POLL``); returns how many."""
        handled = 0
        while handled < CONTROL_MAX_PER_POLL:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            envelope, body = frames[:1], frames[1:]
            if body and body[0] == b"":  # a REQ client's (or ControlClient's) empty delimiter
                envelope, body = envelope + [b""], body[1:]
            if len(body) == 1:
                reply = execute_command(source, body[0], self.on_speed)
            else:
                reply = {"ok": False, "error": f"expected one JSON frame, got {len(body)}"}
            self.commands += 1
            self.errors += not reply["ok"]
            try:
                self.socket.send_multipart([*envelope, json.dumps(reply, allow_nan=False).encode()], zmq.NOBLOCK)
            except zmq.ZMQError:  # the client is gone or not reading: the reply is dropped
                pass
        return handled

    def close(self) -> None:
        _close_server_socket(self.socket, self._context, self.curve)

    def __enter__(self) -> "ControlServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ControlClient:
    """Talks to a source stage's ``ControlServer`` (DEALER socket; never blocks unless asked).

    ``send(command)`` queues a command (a dict, see the module docstring) and returns its id, or
    None when the stage is not connected; ``replies()`` returns the replies that arrived;
    ``request(command, timeout_s)`` does both and waits (raises TimeoutError).

    Args:
        endpoint: the stage's ``--control`` endpoint.
        allow_remote: allow a non-loopback TCP address.
        context: a ``zmq.Context`` (default: the process-wide instance).
        curve: CurveZMQ keys; on a tcp endpoint the client authenticates with them to the stage
            whose public key is ``curve.server_key``.
    """

    def __init__(self, endpoint: str, *, allow_remote: bool = False, context: zmq.Context | None = None,
                 curve: CurveConfig | None = None) -> None:  # fmt: skip
        check_endpoint(endpoint, allow_remote=allow_remote)
        self.endpoint = endpoint
        self.allow_remote = allow_remote
        self.curve = curve if curve is not None and endpoint.startswith("tcp://") else None
        self._context = context or zmq.Context.instance()
        self._next_id = 1
        self.socket = self._open()

    def _open(self) -> zmq.Socket:
        options = {
            zmq.IMMEDIATE: 1,  # queue nothing for a stage that is not there
            zmq.SNDHWM: 16,
            zmq.MAXMSGSIZE: (1 << 16) + (CURVE_OVERHEAD_BYTES if self.curve is not None else 0),
        }
        socket, _ = _open_socket(self._context, zmq.DEALER, self.endpoint, bind=False, allow_remote=self.allow_remote,
                                 options=options, curve=self.curve)  # fmt: skip
        return socket

    def reconnect(self) -> None:
        """Open the socket again: forgets queued commands and late replies, and recovers a
        connection the stage dropped (libzmq drops a peer for good after a protocol error)."""
        self.socket.close(linger=0)
        self.socket = self._open()

    def send(self, command: dict[str, Any]) -> int | None:
        """Send ``command`` (an ``"id"`` is added); its id, or None if the stage is not connected."""
        request_id = self._next_id
        self._next_id += 1
        payload = json.dumps({**command, "id": request_id}, allow_nan=False).encode()
        try:
            self.socket.send_multipart([b"", payload], zmq.NOBLOCK)
        except zmq.Again:
            return None
        return request_id

    def replies(self) -> list[dict[str, Any]]:
        """The replies received so far (malformed ones are skipped)."""
        replies = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return replies
            try:
                reply = json.loads(frames[-1].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            if isinstance(reply, dict):
                replies.append(reply)

    def request(self, command: dict[str, Any], timeout_s: float = 2.0, attempt_s: float = 0.5) -> dict[str, Any]:
        """Send ``command`` and wait for its reply, sending it again on a fresh socket every
        ``attempt_s`` (every command is idempotent); TimeoutError if none comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            attempt_end = min(deadline, time.monotonic() + attempt_s)
            request_id = self.send(command)
            while request_id is None and time.monotonic() < attempt_end:  # still connecting
                self.socket.poll(10, zmq.POLLOUT)
                request_id = self.send(command)
            while request_id is not None:
                remaining_ms = round((attempt_end - time.monotonic()) * 1000)
                if remaining_ms <= 0 or not self.socket.poll(remaining_ms, zmq.POLLIN):
                    break
                for reply in self.replies():
                    if reply.get("id") == request_id:
                        return reply
            self.reconnect()
        raise TimeoutError(f"no reply from the source stage's control endpoint {self.endpoint} within {timeout_s:g} s")

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the stage loop ----------------------------------------------------------------------------


def connection_state(source: Any) -> dict[str, Any]:
    """``connected``, ``disconnects``, ``reconnects`` of a camera or network source (a source
    without them: always connected, 0, 0), JSON-ready."""
    return {
        "connected": bool(getattr(source, "connected", True)),
        "disconnects": int(getattr(source, "disconnects", 0)),
        "reconnects": int(getattr(source, "reconnects", 0)),
    }


def stream_source(
    source: Any,
    publisher: StagePublisher,
    *,
    duration_s: float | None = None,
    stats_interval_s: float = STATS_INTERVAL_S,
    clock_interval_s: float = CLOCK_INTERVAL_S,
    on_stats: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
    control: ControlServer | None = None,
    end_wait_s: float = END_WAIT_S,
) -> SourceCounters:
    """Publish everything ``source`` yields until it ends (then send the end message),
    ``duration_s`` passes or ``stop`` is set; clock messages while it is silent; ``control``
    commands answered between packets; stats every ``stats_interval_s`` and at once when the
    source's ``connected`` state changes. At the end, ``StagePublisher.publish_end``: the end
    message until the subscribers of events have left, at most ``end_wait_s``. Returns the counters."""
    stop = stop or threading.Event()
    counters = SourceCounters()
    sensor = SensorSize(*source.sensor_size)
    drain_truth = getattr(source, "drain_truth", None)
    clock = StageClock(source)
    start = time.monotonic()
    deadline = None if duration_s is None else start + duration_s
    last_stats = start
    last_sent = start
    interval_events = 0
    connection = connection_state(source)

    def publish_truth() -> None:
        segments = drain_truth() if drain_truth is not None else []
        if segments:
            publisher.publish_truth(segments)
            counters.segments_sent += len(segments)

    for events in source:
        publish_truth()  # a segment goes out before (or with) the events of its start
        now = time.monotonic()
        if len(events):
            events, late = clock.admit(events, now)
            counters.late_events += late
            for begin in range(0, len(events), MAX_PACKET_EVENTS):
                publisher.publish_events(events[begin : begin + MAX_PACKET_EVENTS], sensor)
                counters.packets_sent += 1
            counters.events_sent += len(events)
            interval_events += len(events)
            last_sent = now
        elif now - last_sent >= clock_interval_s:
            time_us = clock.time_us(now)
            if time_us is not None:
                paused = bool(getattr(source, "paused", False))
                publisher.publish_json(STATUS_KIND, {"type": "clock", "time_us": time_us, "paused": paused})
                counters.clocks_sent += 1
                last_sent = now
        if control is not None:
            control.poll(source)
        previous_connected, connection = connection["connected"], connection_state(source)
        if now - last_stats >= stats_interval_s or connection["connected"] != previous_connected:
            stats = {
                "type": "stats",
                "source": source.name,
                "sensor": list(sensor),
                "event_rate": interval_events / max(now - last_stats, 1e-6),
                **counters.as_dict(),
                **connection,
            }
            if hasattr(source, "status"):
                stats["replay"] = source.status()
            publisher.publish_json(STATUS_KIND, stats)
            if on_stats is not None:
                on_stats(stats)
            interval_events = 0
            last_stats = now
        if stop.is_set() or (deadline is not None and now >= deadline):
            return counters
    if stop.is_set():  # the source ended because it was stopped, not at its end
        return counters
    if not connection_state(source)["connected"]:
        raise SourceLost(f"{source.name} was lost and did not come back ({counters.events_sent} events sent)")
    publish_truth()
    end = {"type": "end", "source": source.name, **counters.as_dict(), **connection_state(source)}
    counters.ended = True
    publisher.publish_end(STATUS_KIND, end, Kind.EVENTS.topic, end_wait_s)  # an overloaded worker still gets it
    return counters


def build_parser() -> argparse.ArgumentParser:
    parser = StageArgumentParser(prog="python -m stream.source", description="Publish a live event source over ZeroMQ.")
    parser.add_argument("--source", default="auto", help="auto | camera[:SERIAL] | file:PATH | dv:HOST:PORT | sim")
    parser.add_argument("--pub", required=True, help="endpoint to bind, e.g. ipc:///tmp/events or tcp://127.0.0.1:5555")
    parser.add_argument("--speed", default="1", help="replay speed factor for files and the simulator, or 'max'")
    parser.add_argument("--loop", action="store_true", help="replay a file forever")
    parser.add_argument("--allow-truncated", action="store_true",
                        help="replay a damaged or cut file up to the damage instead of refusing it")  # fmt: skip
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--wait-subscribers", type=int, default=0, help="send nothing before N subscribers joined")
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="packets queued per subscriber")
    parser.add_argument("--control", default=None, help="bind a control endpoint (pause, resume, seek, speed, loop, status)")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback TCP address")
    parser.add_argument("--quiet", action="store_true", help="no per-second stats lines on stderr")
    add_curve_arguments(parser)
    simulator = parser.add_argument_group("simulator (--source sim)")
    simulator.add_argument("--seed", type=int, default=0, help="same seed, same stream")
    simulator.add_argument("--sim-size", type=SensorSize.parse, default=None, help="sensor WxH (default 128x128)")
    simulator.add_argument("--sim-duration", type=float, default=None, help="end the stream after this much event time, s")
    simulator.add_argument("--rate-scale", type=int, default=1, help="replicate every event k times (load tests)")
    simulator.add_argument("--noise-hz", type=float, default=0.0, help="extra uniform noise events per second")
    return parser


def parse_speed(text: str) -> float | None:
    """``"max"`` -> None (as fast as possible), else a positive factor."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}")
    return value


def open_stage_source(spec: str, speed: float | None, loop: bool, sim_options: dict[str, Any] | None = None,
                      allow_truncated: bool = False) -> Any:  # fmt: skip
    """Open the source named by ``spec`` (see ``stream.sources.open_source``) with the options that
    kind takes: files get ``speed``, ``loop`` and ``allow_truncated``, the simulator ``speed`` and
    ``sim_options`` (``seed``, ``sensor_size``, ``duration_s``, ``rate_scale``, ...); ``auto`` is
    resolved here."""
    from stream.sources import list_cameras, open_source  # lazy: camera libraries load only here

    kind = spec.partition(":")[0]
    if spec == "auto":
        kind = spec = "camera" if list_cameras() else "sim"
    if kind == "file":
        return open_source(spec, speed=speed, loop=loop, allow_truncated=allow_truncated)
    if kind == "sim":
        return open_source(spec, speed=speed, **(sim_options or {}))
    return open_source(spec)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = build_parser().parse_args(argv[1:])
    fix_mmap_threshold()
    stop = StopRequest().install()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    speed = parse_speed(args.speed)
    if args.wait_subscribers < 0:
        raise ValueError(f"--wait-subscribers must be >= 0, got {args.wait_subscribers}")
    sim_options: dict[str, Any] = {"seed": args.seed, "duration_s": args.sim_duration, "rate_scale": args.rate_scale,
                                   "extra_noise_hz": args.noise_hz}  # fmt: skip
    if args.sim_size is not None:
        sim_options["sensor_size"] = args.sim_size
    curve = curve_from_args(args)  # before anything opens: a bad key directory is one error line
    context = zmq.Context()
    try:
        publisher = StagePublisher(
            args.pub, sndhwm=args.hwm, nodrop=speed is None, allow_remote=args.allow_remote, context=context,
            stop=stop.event, curve=curve,
        )
        with publisher:
            control = None
            if args.control:
                control = ControlServer(args.control, allow_remote=args.allow_remote, context=context, curve=curve,
                                        on_speed=lambda value: publisher.set_nodrop(value is None))  # fmt: skip
            closing_control = control if control is not None else contextlib.nullcontext()
            with closing_control, open_stage_source(args.source, speed, args.loop, sim_options,
                                                    allow_truncated=args.allow_truncated) as source:  # fmt: skip
                stop.callbacks.append(source.stop)
                log.info("%s (%s) -> %s%s", source.name, SensorSize(*source.sensor_size), publisher.endpoint,
                         " (CurveZMQ)" if publisher.curve is not None else "")  # fmt: skip
                publisher.wait_for_subscribers(args.wait_subscribers, Kind.EVENTS.topic)
                report = None if args.quiet else _log_stats
                counters = stream_source(source, publisher, duration_s=args.duration, on_stats=report, stop=stop.event,
                                         control=control)  # fmt: skip
                log.info("done: %d events in %d packets", counters.events_sent, counters.packets_sent)
                if counters.ended:  # the subscribers have read everything (publish_end): let the rest leave
                    source.close()
                    publisher.close(linger_ms=END_LINGER_MS)
    except (Stopped, KeyboardInterrupt):
        pass
    finally:
        context.destroy(linger=0)  # waits for a lingering socket (bounded by END_LINGER_MS)
    return 0


def _log_stats(stats: dict[str, Any]) -> None:
    log.info("%.2f Mev/s, %d events sent", stats["event_rate"] / 1e6, stats["events_sent"])


class StageArgumentParser(argparse.ArgumentParser):
    """argparse that raises ValueError (one ``error:`` line) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def exit_stage(main: Callable[[], int], expected: tuple[type[BaseException], ...] = ()) -> None:
    """Run a stage's ``main`` as a process entry point and exit with its code.

    Expected failures (ValueError, OSError and the ``expected`` types) become one ``error:`` line
    and exit code ``EXIT_ERROR`` (2); a lost source (``SourceLost``) ``EXIT_SOURCE_LOST`` (3), which
    the launcher restarts. Every socket, file and device
    is closed by the time ``main`` returns, so the interpreter's teardown of torch and friends
    (1-2 s on a busy 2-core machine) is skipped and a stage stops within milliseconds of SIGTERM.
    """
    try:
        code = main()
    except (ValueError, OSError, *expected) as error:  # SourceLost is an OSError
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_SOURCE_LOST if isinstance(error, SourceLost) else EXIT_ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_stage(main)
