"""The inference worker stage: ``python -m inference.worker_stage --sub EVENTS --pub PREDICTIONS --checkpoint CK``.

Receives event packets from the source stage (``stream.source_stage``), feeds them to an
``InferenceWorker`` (``inference.worker``: binning and the model) and publishes on ``PREDICTIONS``
what ``inference.messages`` describes: predictions, its own stats about once a second and, after
the source's end, its end message (sent again with back-off until every consumer has read it and
left, at most ``END_WAIT_S``, so a consumer whose queue overflowed gets it too), and the source's
ground truth, forwarded.

CurveZMQ (``--curve-keys DIR [--curve-name NAME] [--curve-server NAME]``, see ``stream.transport.keys``):
a tcp ``--pub`` is then a CurveZMQ server that accepts only the public keys in DIR, and a tcp
``--sub`` authenticates to the source whose public key is ``DIR/SERVER.key`` (default: this
stage's own key). A bad key directory is one ``error:`` line and exit code 2, before the model loads.

The source's clock messages (``Kind.STATUS``, ``{"type": "clock", "time_us": T, "paused": bool}``: no event with
``t < T`` will follow) advance the windows while the source is silent, so predictions go on ("no
gesture") when a camera sees nothing; while ``paused`` nothing advances.

Latency never grows with a backlog. Each step drains the socket (whatever is queued, for at most
``DRAIN_BUDGET_S``) and bins consecutive packets in batches (one binner call per batch of up to
``MAX_BATCH_EVENTS``, not one per packet); of the last batch, the packets up to the one that
completed the newest window are binned first, then the model runs on that window and the
prediction goes out, then the rest (it only adds to windows not due yet) is binned. Windows passed over are counted (``windows_skipped``). Events are accounted
for: received, binned, unused (only in skipped windows), unmapped (outside the mapping's crop),
dropped (outside the sensor, bad polarity, time going back) and lost (the source's
``events_sent`` minus those received: ZeroMQ high-water mark overflow; a worker that joins a stream
already running counts from the source's first stats message it gets, and a source restart starts
a new count); malformed messages are counted by reason and skipped.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import zmq

from inference.smoothing import SMOOTHING_METHODS, SmoothingConfig
from inference.worker import InferenceWorker, Packet, WorkerConfig
from stream.binning import warmup
from stream.events import SensorSize
from stream.stage import END_LINGER_MS, END_WAIT_S, ArgumentParser, StopRequest, exit_stage
from stream.transport.keys import add_curve_arguments, curve_from_args
from stream.transport.sockets import DEFAULT_HWM, Publisher, Stopped, Subscriber
from stream.transport.wire import Kind, Message, Status, now_us

log = logging.getLogger("inference.worker_stage")

DRAIN_BUDGET_S = 0.05  # at most this long receiving queued messages before inferring the newest window
# Queued packets are binned in batches of at most this many events (512 kB, still in the CPU cache
# when binned): small packets are merged, 20k-event packets are not. Draining 10 M queued events on
# this 2-core machine took 36 ns/event of worker CPU with 2k-event packets (50 one by one) and
# 18.5 with 20k-event packets (unchanged); batches of 4 M events were slower (cache misses).
MAX_BATCH_EVENTS = 1 << 15
STATS_INTERVAL_S = 1.0
RECV_TIMEOUT_MS = 50
# Inferring every window (``--all-windows``, a causal model's every bin): draining stops once this
# many windows wait, so a file replayed at --speed max (the source waits for room: back-pressure)
# never piles up more binned windows than this (plus one packet's worth) in memory.
MAX_QUEUED_WINDOWS = 32


class LossCount:
    """Events the source sent that never reached this worker, from the source's cumulative
    ``events_sent`` (in its stats and end messages) and the events received before that message.

    A worker that joins a running stream (its first packet has a sequence number above 0, or the
    source had sent events before any reached it) counts from the first source message with
    ``events_sent`` it gets: what was sent before it joined is not "lost". A source that starts
    again (its packet sequence or its ``events_sent`` goes back) starts a new count, added to the
    old one.
    """

    def __init__(self) -> None:
        self.lost_before = 0  # in earlier source runs
        self.restarts = 0
        self._new_run()

    def _new_run(self) -> None:
        self.received = 0
        self.base: int | None = None  # events_sent before this worker joined
        self.joined_mid: bool | None = None
        self.last_sent: int | None = None
        self.last_seq: int | None = None
        self.lost_now = 0

    @property
    def lost(self) -> int:
        return self.lost_before + self.lost_now

    def _restart(self) -> None:
        self.lost_before += self.lost_now
        self.restarts += 1
        self._new_run()

    def on_events(self, seq: int, count: int) -> None:
        """A packet (sequence number ``seq``, ``count`` events) arrived."""
        if self.last_seq is not None and seq < self.last_seq:
            self._restart()
        if self.joined_mid is None:
            self.joined_mid = seq != 0
        self.last_seq = seq
        self.received += count

    def on_sent(self, events_sent: int) -> None:
        """The source says it has sent ``events_sent`` events so far."""
        if self.last_sent is not None and events_sent < self.last_sent:
            self._restart()
        if self.base is None:
            joined_mid = self.joined_mid if self.joined_mid is not None else events_sent > 0
            self.base = events_sent - self.received if joined_mid else 0
        self.last_sent = events_sent
        self.lost_now = max(0, events_sent - self.base - self.received)


# --- the stage ------------------------------------------------------------------------------


def load_backend(checkpoint: Path, backend_name: str, device: str | None) -> tuple[Any, dict[str, Any]]:
    """The backend for ``checkpoint`` (a step backend for a causal model) and the checkpoint's metadata."""
    from inference.backends import create_backend, create_step_backend
    from training.checkpoint import read_metadata

    metadata = read_metadata(checkpoint)
    create = create_step_backend if metadata["model"].get("causal", False) else create_backend
    return create(backend_name, checkpoint, device=device), metadata


class WorkerLoop:
    """Sockets around an ``InferenceWorker``: drain, bin, infer the newest window, publish.

    Args:
        worker: the logic.
        subscriber: receives ``events``, ``truth`` and the source's status messages.
        publisher: where predictions, truth and status go.
    """

    def __init__(self, worker: InferenceWorker, subscriber: Subscriber, publisher: Publisher) -> None:
        self.worker = worker
        self.subscriber = subscriber
        self.publisher = publisher
        self.source_stats: dict[str, Any] = {}
        self.ended = False
        self.paused = False  # the source's last clock message said paused
        self.loss = LossCount()
        self.busy_s: Counter[str] = Counter()  # seconds spent per part of the work
        self.rejected: Counter[str] = Counter()  # malformed source messages the transport let through
        self._started = time.monotonic()
        self._events_seq: int | None = None  # sequence number of the latest event packet
        self._next_stats = time.monotonic() + STATS_INTERVAL_S
        self._batch: list[Packet] = []
        self._batch_sensor: SensorSize | None = None
        self._batch_events = 0
        self._poller = zmq.Poller()  # waits here, so receiving time excludes waiting time
        for socket in subscriber.poll_sockets:
            self._poller.register(socket, zmq.POLLIN)

    def handle(self, message: Message) -> None:
        """Act on one received message (event packets are batched: see ``step``)."""
        if message.kind == Kind.EVENTS:
            count = len(message.events)
            if self._batch and (message.sensor_size != self._batch_sensor or self._batch_events + count > MAX_BATCH_EVENTS):
                self._bin_batch()
            self.loss.on_events(message.seq, count)
            # A sequence number going back is a new source run (the subscriber counts it in
            # stats.restarts): its stream time may start anywhere, even just behind the old one.
            restart = self._events_seq is not None and message.seq < self._events_seq
            self._events_seq = message.seq
            self._batch.append(Packet(message.events, message.send_us, now_us(), restart))
            self._batch_sensor = message.sensor_size
            self._batch_events += count
            return
        self._bin_batch()  # keep the order of events and everything else
        if message.kind == Kind.TRUTH:
            self.publisher.publish_truth(message.data)
        elif message.kind == Kind.STATUS:
            status = message.data
            data = status.fields
            kind = status.type
            if kind == "clock":
                self._on_clock(status, message.send_us)
            elif kind in ("stats", "end"):
                self.source_stats = data
                sent = data.get("events_sent")
                if isinstance(sent, int) and not isinstance(sent, bool):
                    self.loss.on_sent(sent)
                    self.worker.counters.events_lost = self.loss.lost
                    self.worker.counters.source_restarts = self.loss.restarts
                if kind == "end":
                    self.ended = True

    def _on_clock(self, clock: Status, send_us: int) -> None:
        self.paused = clock.paused  # the transport checked the clock's fields (malformed: rejected)
        if not clock.paused:
            self.worker.advance(clock.time_us, send_us, now_us())

    def _bin_batch(self, packets: list[Packet] | None = None) -> None:
        """Bin ``packets`` (default: the whole batch received so far)."""
        if packets is None:
            packets, self._batch, self._batch_events = self._batch, [], 0
        if packets:
            start = time.perf_counter()
            self.worker.push_packets(packets, self._batch_sensor)
            self.busy_s["bin"] += time.perf_counter() - start

    def _sync_subscriber_counters(self) -> None:
        stats = self.subscriber.stats
        rejected = Counter(stats.rejected) + self.rejected
        counters = self.worker.counters
        counters.packets_lost = stats.lost
        counters.messages_rejected = sum(rejected.values())
        counters.rejected = dict(rejected)

    def _receive(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for a message, then take whatever is queued (at most
        ``DRAIN_BUDGET_S``). While idle the subscriber is maintained: after a connection ZeroMQ
        closed for good (an oversized message, a refused handshake) nothing arrives any more, so
        only ``maintain()`` connects it again."""
        if not self._poller.poll(self.subscriber.poll_timeout_ms(timeout_ms)):
            self.subscriber.maintain()
            return
        start = time.perf_counter()
        binning = self.busy_s["bin"]  # batches binned in between count as binning, not receiving
        deadline = time.monotonic() + DRAIN_BUDGET_S
        while (message := self.subscriber.recv(0)) is not None:
            self.handle(message)
            if self.ended or time.monotonic() >= deadline:
                break
            if self.worker.infers_all and self.worker.windows_due() >= MAX_QUEUED_WINDOWS:
                break  # infer those first (memory stays bounded; the source waits or drops)
        self.busy_s["receive"] += time.perf_counter() - start - (self.busy_s["bin"] - binning)

    def step(self, timeout_ms: int = RECV_TIMEOUT_MS) -> None:
        """Receive (waiting up to ``timeout_ms``), bin, infer the newest window, publish; then bin
        the rest of the batch and publish stats when due."""
        self._receive(timeout_ms)
        head, rest = self.worker.split_at_newest_window(self._batch) if self._batch else ([], [])
        self._bin_batch(head)
        self._batch, self._batch_events = rest, sum(len(p.events) for p in rest)
        if self.ended:
            self._bin_batch()
            self.worker.flush()
        self._sync_subscriber_counters()
        while self.worker.has_window():
            start = time.perf_counter()
            prediction = self.worker.infer()
            middle = time.perf_counter()
            published_us = now_us()
            timing = prediction["timing"]
            timing["published_us"] = published_us
            timing["compute_ms"] = (published_us - timing["recv_us"]) / 1000.0
            self.publisher.publish_json(Kind.PREDICTION, prediction)
            self.busy_s["infer"] += middle - start
            self.busy_s["publish"] += time.perf_counter() - middle
            if not self.worker.infers_all:
                break
        self._bin_batch()
        now = time.monotonic()
        if now >= self._next_stats:
            self.publisher.publish_status(self.status("stats"))
            self._next_stats = now + STATS_INTERVAL_S

    def status(self, kind: str) -> dict[str, Any]:
        """A ``stats`` or ``end`` message."""
        return {
            "type": kind,
            "worker_id": self.worker.worker_id,
            "counters": self.worker.counter_dict(),
            "backend": self.worker.backend_name,
            "sensor": list(self.worker.sensor) if self.worker.sensor else None,
            "window": self.worker.window.to_dict(),
            "classes": list(self.worker.classes),
            "background_activity": self.worker.background_activity(),
            "input_coverage": self.worker.coverage.summary(),
            "source": self.source_stats,
            "source_paused": self.paused,
            "busy_s": {name: round(value, 4) for name, value in self.busy_s.items()},
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> None:
        """Step until the source's end message (``ended``; then ``publish_end``), ``duration_s`` or ``stop``."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self.ended:
            if stop is not None and stop.is_set():
                return
            self.step()
            if deadline is not None and time.monotonic() >= deadline:
                return

    def publish_end(self, wait_s: float = END_WAIT_S) -> bool:
        """Publish the ``end`` message (after the source's) until every consumer of predictions has
        read it and left, at most ``wait_s`` (``Publisher.publish_end``: ZeroMQ silently skips
        a consumer whose queue overflowed, so one send may reach no one). True when all left."""
        self._sync_subscriber_counters()
        end = self.status("end")
        del end["type"]
        return self.publisher.publish_end(end, Kind.PREDICTION.topic, wait_s)


def freeze_heap() -> None:
    """Move every object alive now (the model, torch, numba, ...: ~270 k objects) out of the
    garbage collector's reach: a full collection over them took 40-120 ms on this 2-core machine,
    a latency spike whenever one ran in the loop; with them frozen it takes well under 1 ms. The
    loop's own garbage (messages, windows) is still collected as usual."""
    gc.collect()
    gc.freeze()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m inference.worker_stage", description="Bin events and run the gesture model.")
    parser.add_argument("--sub", required=True, help="events endpoint to connect to (the source's --pub)")
    parser.add_argument("--pub", required=True, help="endpoint to bind for predictions, frames, truth, stats")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint (.json)")
    parser.add_argument("--backend", default="auto", help="auto | tensorrt | onnxruntime | torch")
    parser.add_argument("--device", default=None, help="backend device (e.g. cuda:0)")
    parser.add_argument("--stride-us", type=int, default=None, help="time between predictions (default: checkpoint's)")
    parser.add_argument("--all-windows", action="store_true", help="infer every window (evaluation), never skip")
    decision = parser.add_argument_group("decision rule (default: the checkpoint's own, else ema 0.4, threshold 0.5)")
    decision.add_argument("--smoothing", choices=SMOOTHING_METHODS, default=None)
    decision.add_argument("--alpha", type=float, default=None, help="EMA weight of the newest window")
    decision.add_argument("--history", type=int, default=None, help="windows voting (majority)")
    decision.add_argument("--threshold", type=float, default=None, help="confidence for a stable label")
    decision.add_argument("--margin", type=float, default=None, help="lead of the best class over the second")
    parser.add_argument("--wait-subscribers", type=int, default=0, help="start only once N consumers subscribed")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="packets queued before the socket drops")
    parser.add_argument("--allow-remote", action="store_true", help="allow non-loopback TCP endpoints")
    add_curve_arguments(parser)
    return parser


def _decision(args: Any) -> SmoothingConfig | None:
    """The decision rule given on the command line (None: the checkpoint's); unset options keep defaults."""
    given = {name: getattr(args, key) for name, key in (("method", "smoothing"), ("alpha", "alpha"), ("history", "history"),
                                                       ("threshold", "threshold"), ("margin", "margin"))
             if getattr(args, key) is not None}  # fmt: skip
    return SmoothingConfig(**given) if given else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.checkpoint.is_file():
        raise ValueError(f"checkpoint {args.checkpoint} not found")
    curve = curve_from_args(args)  # before the model loads: a bad key directory is one error line at once
    config = WorkerConfig(
        stride_us=args.stride_us,
        all_windows=args.all_windows,
        smoothing=_decision(args),
    )
    context = zmq.Context()
    try:
        backend, metadata = load_backend(args.checkpoint, args.backend, args.device)
        warmup()
        worker = InferenceWorker(backend, metadata, config)
        freeze_heap()
        stop = StopRequest().install()  # until here, the default handlers end a stage still loading
        # Bind, wait for the consumers, only then connect to the source (which waits for this
        # subscriber): nothing is published before someone listens.
        publisher = Publisher(args.pub, allow_remote=args.allow_remote, context=context, stop=stop.event,
                                   curve=curve)  # fmt: skip
        with publisher:
            publisher.wait_for_subscribers(args.wait_subscribers, Kind.PREDICTION.topic)
            topics = ("events", "truth", "status")
            subscriber = Subscriber(args.sub, topics, rcvhwm=args.hwm, allow_remote=args.allow_remote,
                                         context=context, curve=curve)  # fmt: skip
            with subscriber:  # closed first at the end: the source waits for it to leave
                log.info("%s on %s (worker %s): %s -> %s", worker.backend_name, args.checkpoint.name, worker.worker_id,
                         args.sub, publisher.endpoint)  # fmt: skip
                loop = WorkerLoop(worker, subscriber, publisher)
                loop.run(args.duration, stop.event)
            if loop.ended:  # the consumers have read everything (publish_end): let the rest leave
                loop.publish_end()
                publisher.close(linger_ms=END_LINGER_MS)
    except (Stopped, KeyboardInterrupt):
        pass
    finally:
        context.destroy(linger=0)
    return 0


if __name__ == "__main__":
    exit_stage(main)  # BackendUnavailable (--backend tensorrt without TensorRT): one error line, exit code 2
