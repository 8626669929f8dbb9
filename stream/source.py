"""The source stage: ``python -m stream.source --source SPEC --pub ENDPOINT``.

Opens a live source (``auto | camera[:SERIAL] | file:PATH | dv:HOST:PORT | sim``, see
``stream.sources``) and publishes on ``ENDPOINT`` in the ``stream.transport`` wire format:

* ``events`` packets as the source yields them (split above ``MAX_PACKET_EVENTS``);
* ``truth`` segments when the source knows them (the simulator);
* JSON status messages (``STATUS_KIND``) with a ``"type"``: ``"stats"`` about once a second and
  ``"end"`` once when the source ends by itself (end of a file): both carry the cumulative counters
  ``events_sent`` / ``packets_sent``, so a receiver that compares them with what it received knows
  exactly how many events the socket dropped.

Start-up, flow control and end (``StagePublisher``, an XPUB socket): with ``--wait-subscribers N``
the stage sends nothing until N subscriptions to ``events`` have arrived (no events lost to
ZeroMQ's slow-joiner effect). After the end message it keeps its socket open until its subscribers
have left (each closes its socket once it has read the end; at most ``END_WAIT_S``), so no queued
packet is lost when the stage exits. With ``--speed max`` (a file replayed as fast as possible) the socket does not
drop: a full queue makes the source wait (back-pressure), so every event of the file reaches the
worker. At any other speed a slow subscriber loses packets (counted by it) and latency stays bounded.

SIGINT/SIGTERM stop the stage cleanly (exit code 0); the end message is only sent at a real end.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable

import numpy as np
import zmq

from stream.events import GestureSegment, SensorSize
from stream.transport import (
    DEFAULT_HWM,
    Kind,
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
SEND_POLL_MS = 100  # a blocked send wakes this often to honour a stop request
RELIABLE_SEND_S = 5.0  # how long an end message waits for room in a full queue
END_WAIT_S = 30.0  # after the end message, how long subscribers get to read everything and leave
END_LINGER_MS = 1000  # then queued messages get this long to leave


class Stopped(Exception):
    """The stage was asked to stop (SIGINT/SIGTERM) while waiting."""


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
    ) -> None:
        check_endpoint(endpoint, allow_remote=allow_remote)
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1 message, got {sndhwm}")
        self.nodrop = nodrop
        self.stop = stop or threading.Event()
        self.socket = (context or zmq.Context.instance()).socket(zmq.XPUB)
        try:
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.SNDHWM, sndhwm)
            self.socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, not only the first/last
            self.socket.setsockopt(zmq.XPUB_NODROP, int(nodrop))
            self.socket.setsockopt(zmq.SNDTIMEO, SEND_POLL_MS)
            self.socket.bind(endpoint)
        except zmq.ZMQError as error:
            self.socket.close(linger=0)
            raise OSError(f"cannot bind {endpoint!r}: {error}") from None
        self.endpoint = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.subscriptions: dict[bytes, int] = {}
        self._seq: dict[Kind, int] = {}

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

    def wait_for_subscribers(self, count: int, topic: bytes, timeout_s: float | None = None) -> bool:
        """Wait until ``count`` subscriptions to ``topic`` arrived; False on timeout (None: forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.subscriptions.get(topic, 0) < count:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._read_subscriptions(SEND_POLL_MS)
        return True

    def wait_for_unsubscribed(self, topic: bytes, timeout_s: float) -> bool:
        """After an end message: wait until every subscriber of ``topic`` has left (it closes its
        socket once it has read the end), so no queued message dies with this socket. False on timeout."""
        deadline = time.monotonic() + timeout_s
        self._read_subscriptions(0)
        while self.subscriptions.get(topic, 0) > 0:
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

    def publish_json(self, kind: Kind, obj: Any, *, reliable: bool = False) -> int:
        """Publish JSON; ``reliable`` waits for room even on a dropping socket (end messages)."""
        seq = self.next_seq(kind)
        frames = encode_json(kind, seq, obj)
        if reliable and not self.nodrop:
            self.socket.setsockopt(zmq.XPUB_NODROP, 1)
            try:
                self._send_until(frames, time.monotonic() + RELIABLE_SEND_S)
            finally:
                self.socket.setsockopt(zmq.XPUB_NODROP, 0)
        else:
            self.send_frames(frames)
        return seq

    def _send_until(self, frames: list[Any], deadline: float) -> None:
        while True:
            try:
                self.socket.send_multipart(frames, copy=False)
                return
            except zmq.Again:
                if self.stop.is_set():
                    raise Stopped() from None
                if time.monotonic() >= deadline:
                    log.warning("%s: a subscriber did not take the message within %g s", self.endpoint, RELIABLE_SEND_S)
                    return

    def publish_raw(self, kind: Kind, payload: bytes | np.ndarray, *, count: int = 0,
                    sensor_size: SensorSize | None = None) -> int:  # fmt: skip
        seq = self.next_seq(kind)
        self.send_frames(encode(kind, seq, payload, count=count, sensor_size=sensor_size))
        return seq

    def close(self, linger_ms: int = 0) -> None:
        """Close; ``linger_ms`` > 0 lets queued messages (an end message) leave first."""
        self.socket.close(linger=linger_ms)

    def __enter__(self) -> "StagePublisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SourceCounters:
    """What the source stage has sent so far (events, packets, truth segments)."""

    def __init__(self) -> None:
        self.events_sent = 0
        self.packets_sent = 0
        self.segments_sent = 0
        self.ended = False  # the source ended by itself and the end message was sent

    def as_dict(self) -> dict[str, int]:
        return {"events_sent": self.events_sent, "packets_sent": self.packets_sent, "segments_sent": self.segments_sent}


def stream_source(
    source: Any,
    publisher: StagePublisher,
    *,
    duration_s: float | None = None,
    stats_interval_s: float = STATS_INTERVAL_S,
    on_stats: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
) -> SourceCounters:
    """Publish everything ``source`` yields until it ends (then send the end message),
    ``duration_s`` passes or ``stop`` is set. Returns the counters."""
    stop = stop or threading.Event()
    counters = SourceCounters()
    sensor = SensorSize(*source.sensor_size)
    drain_truth = getattr(source, "drain_truth", None)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    next_stats = time.monotonic() + stats_interval_s
    interval_events = 0

    def publish_truth() -> None:
        segments = drain_truth() if drain_truth is not None else []
        if segments:
            publisher.publish_truth(segments)
            counters.segments_sent += len(segments)

    for events in source:
        publish_truth()  # a segment goes out before (or with) the events of its start
        for start in range(0, max(len(events), 1), MAX_PACKET_EVENTS):
            publisher.publish_events(events[start : start + MAX_PACKET_EVENTS], sensor)
            counters.packets_sent += 1
        counters.events_sent += len(events)
        interval_events += len(events)
        now = time.monotonic()
        if now >= next_stats:
            stats = {
                "type": "stats",
                "source": source.name,
                "sensor": list(sensor),
                "event_rate": interval_events / (now - next_stats + stats_interval_s),
                **counters.as_dict(),
            }
            publisher.publish_json(STATUS_KIND, stats)
            if on_stats is not None:
                on_stats(stats)
            interval_events = 0
            next_stats = now + stats_interval_s
        if stop.is_set() or (deadline is not None and now >= deadline):
            return counters
    if stop.is_set():  # the source ended because it was stopped, not at its end
        return counters
    publish_truth()
    publisher.publish_json(STATUS_KIND, {"type": "end", "source": source.name, **counters.as_dict()}, reliable=True)
    counters.ended = True
    return counters


def build_parser() -> argparse.ArgumentParser:
    parser = StageArgumentParser(prog="python -m stream.source", description="Publish a live event source over ZeroMQ.")
    parser.add_argument("--source", default="auto", help="auto | camera[:SERIAL] | file:PATH | dv:HOST:PORT | sim")
    parser.add_argument("--pub", required=True, help="endpoint to bind, e.g. ipc:///tmp/events or tcp://127.0.0.1:5555")
    parser.add_argument("--speed", default="1", help="replay speed factor for files and the simulator, or 'max'")
    parser.add_argument("--loop", action="store_true", help="replay a file forever")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--wait-subscribers", type=int, default=0, help="send nothing before N subscribers joined")
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="packets queued per subscriber")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback TCP address")
    parser.add_argument("--quiet", action="store_true", help="no per-second stats lines on stderr")
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


def open_stage_source(spec: str, speed: float | None, loop: bool, sim_options: dict[str, Any] | None = None) -> Any:
    """Open the source named by ``spec`` (see ``stream.sources.open_source``) with the options that
    kind takes: files get ``speed`` and ``loop``, the simulator ``speed`` and ``sim_options``
    (``seed``, ``sensor_size``, ``duration_s``, ``rate_scale``, ...); ``auto`` is resolved here."""
    from stream.sources import list_cameras, open_source  # lazy: camera libraries load only here

    kind = spec.partition(":")[0]
    if spec == "auto":
        kind = spec = "camera" if list_cameras() else "sim"
    if kind == "file":
        return open_source(spec, speed=speed, loop=loop)
    if kind == "sim":
        return open_source(spec, speed=speed, **(sim_options or {}))
    return open_source(spec)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = build_parser().parse_args(argv[1:])
    stop = StopRequest().install()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    speed = parse_speed(args.speed)
    if args.wait_subscribers < 0:
        raise ValueError(f"--wait-subscribers must be >= 0, got {args.wait_subscribers}")
    sim_options: dict[str, Any] = {"seed": args.seed, "duration_s": args.sim_duration, "rate_scale": args.rate_scale,
                                   "extra_noise_hz": args.noise_hz}  # fmt: skip
    if args.sim_size is not None:
        sim_options["sensor_size"] = args.sim_size
    context = zmq.Context()
    try:
        publisher = StagePublisher(
            args.pub, sndhwm=args.hwm, nodrop=speed is None, allow_remote=args.allow_remote, context=context,
            stop=stop.event,
        )
        with publisher, open_stage_source(args.source, speed, args.loop, sim_options) as source:
            stop.callbacks.append(source.stop)
            log.info("%s (%s) -> %s", source.name, SensorSize(*source.sensor_size), publisher.endpoint)
            publisher.wait_for_subscribers(args.wait_subscribers, Kind.EVENTS.topic)
            report = None if args.quiet else _log_stats
            counters = stream_source(source, publisher, duration_s=args.duration, on_stats=report, stop=stop.event)
            log.info("done: %d events in %d packets", counters.events_sent, counters.packets_sent)
            if counters.ended:  # let subscribers read everything before the socket goes
                source.close()
                publisher.wait_for_unsubscribed(Kind.EVENTS.topic, END_WAIT_S)
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


def exit_stage(main: Callable[[], int]) -> None:
    """Run a stage's ``main`` as a process entry point and exit with its code.

    Expected failures become one ``error:`` line and exit code 2. Every socket, file and device
    is closed by the time ``main`` returns, so the interpreter's teardown of torch and friends
    (1-2 s on a busy 2-core machine) is skipped and a stage stops within milliseconds of SIGTERM.
    """
    try:
        code = main()
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_stage(main)
