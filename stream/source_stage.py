"""The source stage: ``python -m stream.source_stage --source SPEC --pub ENDPOINT``.

Opens a live source (``auto | camera[:SERIAL] | file:PATH | dv:HOST:PORT | sim``, see
``stream.sources``) and publishes on ``ENDPOINT`` in the wire format (``stream.transport.wire``):

* ``events`` packets as the source yields them (split above ``MAX_PACKET_EVENTS``, 4 MiB);
* ``truth`` segments when the source knows them (the simulator);
* status messages (``Kind.STATUS``) with a ``"type"``: ``"stats"`` about once a second and
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

Control (``--control ENDPOINT``): pause, resume, seek, speed and loop of a file replay as JSON
commands, ``stream.transport.control``.

Start-up, flow control and end (``stream.transport.sockets.Publisher``, an XPUB socket): with ``--wait-subscribers N``
the stage sends nothing until N subscriptions to ``events`` have arrived (no events lost to
ZeroMQ's slow-joiner effect). After the end message it keeps its socket open until its subscribers
have left (each closes its socket once it has read the end; at most ``END_WAIT_S``), so no queued
packet is lost when the stage exits. With ``--speed max`` (a file replayed as fast as possible) the socket does not
drop: a full queue makes the source wait (back-pressure), so every event of the file reaches the
worker. At any other speed a slow subscriber loses packets (counted by it) and latency stays bounded.

The end message is never given up early: when a subscriber's queue is full (an overloaded
worker) the stage waits for room and sends it again until every subscriber has read it and left,
up to ``END_WAIT_S``, or until a stop request (``Publisher.publish_end``).

CurveZMQ (``--curve-keys DIR [--curve-name NAME]``, see ``stream.transport.keys``): the events endpoint and
a tcp control endpoint are then CurveZMQ servers that accept only the public keys in DIR; ipc
endpoints stay plaintext. A bad key directory is one ``error:`` line and exit code 2.

SIGINT/SIGTERM stop the stage cleanly (exit code 0); the end message is only sent at a real end.
A camera or network source that is lost reconnects by itself (``connected`` False meanwhile); if
it stops trying, the stage exits with one ``error:`` line and code 3 (``EXIT_SOURCE_LOST``: the
launcher starts it again), no end. Any other expected failure (a bad file, argument or key, no
camera or server at start) is one ``error:`` line and code 2 (``EXIT_ERROR``: not restarted).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from stream.events import SensorSize
from stream.formats import add_format_options
from stream.sources.base import SourceLost, parse_speed
from stream.stage import END_LINGER_MS, END_WAIT_S, ArgumentParser, StopRequest, exit_stage, speed_argument
from stream.transport.control import ControlServer
from stream.transport.keys import add_curve_arguments, curve_from_args
from stream.transport.sockets import DEFAULT_HWM, Publisher, Stopped
from stream.transport.wire import Kind

log = logging.getLogger("stream.source_stage")

STATS_INTERVAL_S = 1.0
CLOCK_INTERVAL_S = 0.01  # a clock message goes out when nothing was sent for this long
FALLBACK_CLOCK_MARGIN_S = 0.005  # estimated clocks (no clock_us()) stay this far behind the wall clock
MMAP_THRESHOLD_BYTES = 1 << 20  # the source stage's fixed glibc mmap threshold (see fix_mmap_threshold)
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)


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
    publisher: Publisher,
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
    source's ``connected`` state changes. At the end, ``Publisher.publish_end``: the end
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
            counters.packets_sent += publisher.publish_events(events, sensor)
            counters.events_sent += len(events)
            interval_events += len(events)
            last_sent = now
        elif now - last_sent >= clock_interval_s:
            time_us = clock.time_us(now)
            if time_us is not None:
                paused = bool(getattr(source, "paused", False))
                publisher.publish_status({"type": "clock", "time_us": time_us, "paused": paused})
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
            publisher.publish_status(stats)
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
    end = {"source": source.name, **counters.as_dict(), **connection_state(source)}
    counters.ended = True
    publisher.publish_end(end, Kind.EVENTS.topic, end_wait_s)  # an overloaded worker still gets it
    return counters


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m stream.source_stage", description="Publish a live event source over ZeroMQ.")
    parser.add_argument("--source", default="auto", help="auto | camera[:SERIAL] | file:PATH | dv:HOST:PORT | sim | sim:directed")
    parser.add_argument("--pub", required=True, help="endpoint to bind, e.g. ipc:///tmp/events or tcp://127.0.0.1:5555")
    parser.add_argument("--speed", type=speed_argument, default="1",
                        help="replay speed factor for files and the simulator (0.1..100), or 'max'")  # fmt: skip
    parser.add_argument("--loop", action="store_true", help="replay a file forever")
    parser.add_argument("--allow-truncated", action="store_true",
                        help="replay a damaged or cut file up to the damage instead of refusing it")  # fmt: skip
    add_format_options(parser.add_argument_group("file (--source file:PATH)"))
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


def open_stage_source(spec: str, speed: float | None, loop: bool, sim_options: dict[str, Any] | None = None,
                      allow_truncated: bool = False, file_options: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """Open the source named by ``spec`` (see ``stream.sources.open_source``) with the options that
    kind takes: files get ``speed``, ``loop``, ``allow_truncated`` and ``file_options`` (``format``,
    ``sensor_size``: see ``FileSource``), the simulator ``speed`` and
    ``sim_options`` (``seed``, ``sensor_size``, ``duration_s``, ``rate_scale``, ...); ``auto`` is
    resolved here."""
    from stream.sources import open_source
    from stream.sources.live import list_cameras  # lazy: camera libraries load only here

    kind = spec.partition(":")[0]
    if spec == "auto":
        kind = spec = "camera" if list_cameras() else "sim"
    if kind == "file":
        return open_source(spec, speed=speed, loop=loop, allow_truncated=allow_truncated, **(file_options or {}))
    if kind == "sim":
        return open_source(spec, speed=speed, **(sim_options or {}))
    return open_source(spec)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        publisher = Publisher(
            args.pub, sndhwm=args.hwm, nodrop=speed is None, allow_remote=args.allow_remote, context=context,
            stop=stop.event, curve=curve,
        )
        with publisher:
            control = None
            if args.control:
                control = ControlServer(args.control, allow_remote=args.allow_remote, context=context, curve=curve,
                                        on_speed=lambda value: publisher.set_nodrop(value is None))  # fmt: skip
            closing_control = control if control is not None else contextlib.nullcontext()
            file_options = {"format": args.file_format, "sensor_size": args.file_sensor}
            with closing_control, open_stage_source(args.source, speed, args.loop, sim_options,
                                                    allow_truncated=args.allow_truncated,
                                                    file_options=file_options) as source:  # fmt: skip
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


if __name__ == "__main__":
    exit_stage(main)
