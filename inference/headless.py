"""Headless consumer: record the worker's predictions, print a summary, write a JSON report.

Statistics (pure functions, tested on their own):

* ``latency_ms``: compute latency, window closed at the worker (the packet that closed it was
  received) -> prediction published.
* ``e2e_latency_ms``: the source sending the window's last packet -> this consumer receiving the
  prediction.

Both come from time stamps in the message headers taken with ``time.monotonic_ns()``, which on
Linux is ``CLOCK_MONOTONIC``: one clock for every process of the machine, so differences across
processes are valid on the same machine. Across machines the end-to-end figure is meaningless
(clocks differ) and is reported only when the source and the consumer share a host.

* ``accuracy``: fraction of windows lying fully inside a labelled gesture whose per-window class is
  the gesture's class (``stable_accuracy``: the same with the smoothed label).
* ``time_to_decision_ms``: per gesture, stream time from its start to the end of the first window
  whose stable label is correct, counting only windows that end inside the gesture. Stream time is
  event time; at ``--speed 1`` add the end-to-end latency for the wall-clock figure.
* ``gaps``: pauses in the predictions longer than ``gap_threshold_s`` = max(1 s, 5 strides), as
  ``{"start_s", "duration_s", "reason"}`` (seconds of this recorder's receive time since its first
  message). ``reason`` is ``"worker restarted"`` when the predictions after the pause come from
  another worker process (each worker start has a new random ``worker_id``), else ``"no
  predictions"`` (a stalled or paused pipeline; also a pause that lasts until the recording stops).
  ``worker_restarts`` counts the worker ids seen after the first, with or without a pause.
* Counters (``windows``, ``events_in``, ``events_dropped``, ...) are summed over the workers seen
  (each worker counts from its own start); ``counters`` holds every numeric counter summed.
* ``stage_restarts`` (``launch.py --headless``): ``{stage: count}`` of the automatic restarts the
  launcher's ``Supervisor`` made after a stage failed (``--on-failure restart``); ``{}`` without a
  supervisor. ``worker_restarts`` above counts worker processes seen, whoever started them.
* ``failures``: one line per stage failure that ended the recording.
* ``environment`` (``launch.py --headless``): where the figures were measured: Python, OS, CPU
  model and count, load average at the end, and the versions of the packages on the path
  (read from their metadata: nothing is imported for it), so a report can be compared with another.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from array import array
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from inference.messages import read_worker_message
from stream.events import GestureSegment
from stream.transport.keys import CurveConfig
from stream.transport.sockets import Subscriber
from stream.transport.wire import Message, now_us

PERCENTILES = (50, 90, 99)
POLL_MS = 100
STARTUP_TIMEOUT_S = 300.0  # model loading (and an ONNX export or TensorRT build) may take long
EXIT_GRACE_S = 2.0  # after every stage exited, how long to wait for a late end message


def latency_summary(values_ms: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """``{"p50", "p90", "p99", "max", "count"}`` of latencies in milliseconds (None when empty)."""
    values = np.asarray(values_ms, dtype=np.float64)
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "count": 0}
    p50, p90, p99 = np.percentile(values, PERCENTILES)
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": round(float(values.max()), 3),
        "count": int(values.size),
    }


def gap_threshold_s(stride_us: int | None) -> float:
    """Pauses longer than this are gaps: max(1 s, 5 strides) (1 s when the stride is unknown)."""
    return max(1.0, 5 * stride_us / 1e6) if stride_us else 1.0


def find_gaps(
    times_s: Sequence[float] | np.ndarray, worker_ids: Sequence[int | str | None], threshold_s: float,
    end_s: float | None = None,
) -> list[dict]:  # fmt: skip
    """Pauses longer than ``threshold_s`` between consecutive predictions received at ``times_s``
    (seconds, ascending) from ``worker_ids``, and from the last one to ``end_s`` (the end of the
    recording, None: not counted). Each is ``{"start_s", "duration_s", "reason"}``, reason
    ``"worker restarted"`` when the worker id changed across the pause, else ``"no predictions"``."""
    times = np.asarray(times_s, dtype=np.float64)
    gaps = []
    if times.size == 0:
        return gaps
    for i in np.flatnonzero(np.diff(times) > threshold_s).tolist():  # one iteration per gap
        restarted = worker_ids[i] != worker_ids[i + 1]
        gaps.append({"start_s": round(float(times[i]), 3), "duration_s": round(float(times[i + 1] - times[i]), 3),
                     "reason": "worker restarted" if restarted else "no predictions"})  # fmt: skip
    if end_s is not None and end_s - times[-1] > threshold_s:
        gaps.append({"start_s": round(float(times[-1]), 3), "duration_s": round(float(end_s - times[-1]), 3),
                     "reason": "no predictions"})  # fmt: skip
    return gaps


def sum_counters(per_worker: Iterable[dict]) -> dict:
    """Numeric counters summed over workers (each counts from its own start); dicts of numbers
    (``rejected``) are summed key by key."""
    total: dict = {}
    for counters in per_worker:
        for name, value in counters.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                total[name] = total.get(name, 0) + value
            elif isinstance(value, dict):
                inner = total.setdefault(name, {})
                for key, number in value.items():
                    if isinstance(number, (int, float)) and not isinstance(number, bool):
                        inner[key] = inner.get(key, 0) + number
    return total


def _segment_arrays(segments: Iterable[GestureSegment]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ordered = sorted(segments, key=lambda s: s.start_us)
    labels = np.array([s.label for s in ordered], dtype=np.int64)
    starts = np.array([s.start_us for s in ordered], dtype=np.int64)
    ends = np.array([s.end_us for s in ordered], dtype=np.int64)
    return labels, starts, ends


def window_truth(
    window_start_us: np.ndarray, window_end_us: np.ndarray, segments: Iterable[GestureSegment]
) -> np.ndarray:
    """Class of the segment each window lies fully inside, or -1 (segments must not overlap)."""
    window_start_us = np.asarray(window_start_us, dtype=np.int64)
    window_end_us = np.asarray(window_end_us, dtype=np.int64)
    labels, starts, ends = _segment_arrays(segments)
    truth = np.full(window_start_us.shape, -1, dtype=np.int64)
    if labels.size == 0 or window_start_us.size == 0:
        return truth
    index = np.searchsorted(starts, window_start_us, side="right") - 1
    valid = index >= 0
    clipped = np.clip(index, 0, None)
    inside = valid & (window_end_us <= ends[clipped])
    truth[inside] = labels[clipped[inside]]
    return truth


def window_accuracy(predicted: np.ndarray, truth: np.ndarray) -> tuple[float | None, int]:
    """Accuracy over windows with a truth (``truth >= 0``) and how many such windows there were."""
    predicted = np.asarray(predicted, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    labelled = truth >= 0
    count = int(labelled.sum())
    if count == 0:
        return None, 0
    return float((predicted[labelled] == truth[labelled]).mean()), count


def times_to_decision_ms(
    window_end_us: np.ndarray, stable_index: np.ndarray, segments: Iterable[GestureSegment]
) -> tuple[list[float], int]:
    """Per gesture: ms of stream time from its start to the first correct stable label.

    Only windows ending in ``[start, end]`` of the gesture count. Returns the times of the gestures
    that were decided and how many gestures had no correct decision.
    """
    window_end_us = np.asarray(window_end_us, dtype=np.int64)
    stable_index = np.asarray(stable_index, dtype=np.int64)
    order = np.argsort(window_end_us, kind="stable")
    window_end_us, stable_index = window_end_us[order], stable_index[order]
    decided: list[float] = []
    undecided = 0
    for segment in segments:  # one iteration per gesture, not per event
        lo = np.searchsorted(window_end_us, segment.start_us, side="left")
        hi = np.searchsorted(window_end_us, segment.end_us, side="right")
        hits = np.flatnonzero(stable_index[lo:hi] == segment.label)
        if hits.size == 0:
            undecided += 1
        else:
            decided.append((int(window_end_us[lo + hits[0]]) - segment.start_us) / 1000.0)
    return decided, undecided


# --- the recorder ---------------------------------------------------------------------------------


class HeadlessRecorder:
    """Collects the worker's messages (predictions, truth, stats, end) and builds the report."""

    def __init__(self) -> None:
        # One compact machine number per prediction (8 bytes, not a Python object): a long run keeps
        # every window for the report's percentiles, so the recorder's memory grows only by ~60 bytes
        # per prediction.
        self.window_start_us = array("q")
        self.window_end_us = array("q")
        self.class_index = array("q")
        self.stable_index = array("q")
        self.compute_ms = array("d")
        self.e2e_ms = array("d")
        self.segments: list[GestureSegment] = []
        self.prediction_us = array("q")  # when each prediction arrived here (transport clock)
        self.prediction_worker = array("q")  # index into worker_ids of each prediction's worker (-1: none)
        self.worker_ids: list[str] = []  # in the order they were first seen
        self.worker_counters: dict[str | None, dict] = {}  # the latest counters of each worker
        self.stride_us: int | None = None
        self.stopped_us: int | None = None  # when the recording stopped (set by ``record``)
        self.worker_busy_s: dict = {}  # the latest worker's busy seconds by part (its stats)
        self.counters: dict = {}
        self.source: dict = {}
        self.backend: str | None = None
        self.sensor: list[int] | None = None
        self.ended = False
        self.first_us: int | None = None
        self.last_us: int | None = None
        self.last_prediction: dict | None = None
        self.malformed = 0  # messages that were not the worker's

    def add(self, message: Message, recv_us: int) -> None:
        """Record one message received at ``recv_us`` (transport clock, µs); one that is not the
        worker's (``inference.messages``) is counted in ``malformed`` and skipped."""
        received = read_worker_message(message)
        if received is None:
            self.malformed += 1
            return
        self.first_us = recv_us if self.first_us is None else self.first_us
        self.last_us = recv_us
        kind, data = received
        if kind == "truth":
            self.segments.extend(data)
            return
        worker_id = data["worker_id"]
        if worker_id not in self.worker_ids:
            self.worker_ids.append(worker_id)
        if kind == "prediction":
            timing = data["timing"]
            self.prediction_us.append(recv_us)
            self.prediction_worker.append(self.worker_ids.index(worker_id))
            self.stride_us = data["window"].get("stride_us", self.stride_us)
            self.window_start_us.append(int(data["window"]["start_us"]))
            self.window_end_us.append(int(data["window"]["end_us"]))
            self.class_index.append(int(data["class_index"]))
            self.stable_index.append(int(data["stable"]["index"]))
            self.compute_ms.append(float(timing["compute_ms"]))
            self.e2e_ms.append((recv_us - int(timing["source_send_us"])) / 1000.0)
            self.last_prediction = data
        else:
            self.source = data.get("source") or self.source
            self.ended = self.ended or kind == "end"
            if isinstance(data.get("busy_s"), dict):
                self.worker_busy_s = data["busy_s"]
            window = data.get("window")
            if isinstance(window, dict) and self.stride_us is None:
                self.stride_us = window.get("stride_us")
        if isinstance(data.get("counters"), dict):
            self.worker_counters[worker_id] = data["counters"]
            self.counters = sum_counters(self.worker_counters.values())
        self.backend = data.get("backend", self.backend)
        self.sensor = data.get("sensor", self.sensor)

    def report(self, checkpoint: str, wall_s: float) -> dict:
        """The report: latencies, counts, rates and (with truth) accuracy and time to decision.

        ``event_rate`` is events received by the worker per second between the first and the last
        message this recorder got (model loading excluded); ``wall_s`` the whole recording time.
        """
        counters = self.counters
        active_s = (self.last_us - self.first_us) / 1e6 if self.first_us is not None else 0.0
        threshold_s = gap_threshold_s(self.stride_us)
        origin_us = self.first_us or 0
        end_us = self.stopped_us if self.stopped_us is not None else self.last_us
        gaps = find_gaps(
            (np.asarray(self.prediction_us, dtype=np.int64) - origin_us) / 1e6, self.prediction_worker, threshold_s,
            None if end_us is None or self.ended else (end_us - origin_us) / 1e6,
        )  # fmt: skip
        report = {
            "latency_ms": latency_summary(self.compute_ms),
            "e2e_latency_ms": latency_summary(self.e2e_ms),
            "windows": counters.get("windows", len(self.class_index)),
            "windows_skipped": counters.get("windows_skipped", 0),
            "events_in": counters.get("events_in", 0),
            "events_dropped": counters.get("events_dropped", 0),
            "events_lost": counters.get("events_lost", 0),
            "event_rate": round(counters.get("events_in", 0) / active_s, 1) if active_s > 0 else None,
            "backend": self.backend,
            "checkpoint": checkpoint,
            "sensor": self.sensor,
            "wall_s": round(wall_s, 3),
            "ended": self.ended,
            "counters": counters,
            "source": self.source,
            "gestures": len(self.segments),
            "gaps": gaps,
            "gap_threshold_s": threshold_s,
            "worker_restarts": max(0, len(self.worker_ids) - 1),
            "worker_ids": self.worker_ids,
            "worker_busy_s": self.worker_busy_s,
            "messages_malformed": self.malformed,
        }
        if self.segments:
            truth = window_truth(self.window_start_us, self.window_end_us, self.segments)
            accuracy, labelled = window_accuracy(self.class_index, truth)
            stable_accuracy, _ = window_accuracy(self.stable_index, truth)
            decided, undecided = times_to_decision_ms(self.window_end_us, self.stable_index, self.segments)
            summary = latency_summary(decided)
            report.update(
                accuracy=accuracy,
                stable_accuracy=stable_accuracy,
                windows_labelled=labelled,
                time_to_decision_ms={"median": summary["p50"], "p90": summary["p90"], "decided": len(decided),
                                     "undecided": undecided},  # fmt: skip
            )
        return report


def format_summary(report: dict) -> str:
    """A small markdown table of the report's main figures."""

    def ms(summary: dict) -> str:
        if not summary or summary.get("p50") is None:
            return "n/a"
        return f"{summary['p50']:.1f} / {summary['p90']:.1f} / {summary['p99']:.1f} / {summary['max']:.1f}"

    rows = [
        ("backend", report.get("backend")),
        ("checkpoint", Path(str(report.get("checkpoint"))).name),
        ("compute latency p50/p90/p99/max (ms)", ms(report["latency_ms"])),
        ("end-to-end latency p50/p90/p99/max (ms)", ms(report["e2e_latency_ms"])),
        ("windows inferred / skipped", f"{report['windows']} / {report['windows_skipped']}"),
        ("events in / dropped (lost)", f"{report['events_in']} / {report['events_dropped']} ({report['events_lost']})"),
        ("event rate (ev/s)", report.get("event_rate")),
        ("worker restarts", report.get("worker_restarts", 0)),
        ("stage restarts (launcher)", _restarts_text(report.get("stage_restarts", {}))),
        (f"gaps > {report.get('gap_threshold_s', 1.0):g} s", _gaps_text(report.get("gaps", []))),
    ]
    environment = report.get("environment")
    if environment:
        load = environment.get("load_average")
        rows.append(("machine", f"{environment['cpu']}, {environment['cpus']} CPUs"
                                + (f", load {load[0]:g}" if load else "")))  # fmt: skip
    if "accuracy" in report:
        accuracy = report["accuracy"]
        rows.append(("accuracy (windows inside gestures)",
                     "n/a" if accuracy is None else f"{accuracy:.3f} over {report['windows_labelled']}"))  # fmt: skip
        decision = report["time_to_decision_ms"]
        rows.append(("time to decision median / p90 (ms)",
                     f"{decision['median']} / {decision['p90']} ({decision['decided']} decided, "
                     f"{decision['undecided']} not)"))  # fmt: skip
    lines = ["| metric | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _restarts_text(restarts: dict[str, int]) -> str:
    if not any(restarts.values()):
        return "none"
    return ", ".join(f"{stage} {count}" for stage, count in restarts.items())


def _gaps_text(gaps: list[dict], shown: int = 3) -> str:
    if not gaps:
        return "none"
    total = sum(gap["duration_s"] for gap in gaps)
    items = [f"{gap['duration_s']:.1f} s at {gap['start_s']:.1f} s ({gap['reason']})" for gap in gaps[:shown]]
    more = f", {len(gaps) - shown} more" if len(gaps) > shown else ""
    return f"{len(gaps)}, {total:.1f} s in all: " + "; ".join(items) + more


def record(
    endpoint: str,
    *,
    supervisor: Any = None,
    duration_s: float | None = None,
    quiet: bool = False,
    on_ready: Any = None,
    on_first_message: Any = None,
    curve: CurveConfig | None = None,
    allow_remote: bool = False,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> tuple[HeadlessRecorder, float, list[str]]:
    """Subscribe to the worker at ``endpoint`` and record until its end message, ``duration_s``,
    or (with a ``launch.Supervisor``) a stage failing. Returns the recorder, the wall time (s) and
    the failures (one line each). ``on_ready()`` runs once the subscriber exists (e.g. start the
    stages), ``on_first_message()`` when the first message arrives (``duration_s`` counts from it);
    no message within ``startup_timeout_s`` is a failure. ``curve``: CurveZMQ keys of this
    subscriber (a tcp endpoint only; ``curve.server_key`` is the worker's public key);
    ``allow_remote``: allow a non-loopback tcp endpoint."""
    recorder = HeadlessRecorder()
    failures: list[str] = []
    topics = ("prediction", "status", "truth")
    with Subscriber(endpoint, topics, rcvhwm=10_000, curve=curve, allow_remote=allow_remote) as subscriber:
        if on_ready is not None:
            on_ready()  # e.g. start the stages once this subscriber exists
        started = time.monotonic()
        deadline = None  # --duration counts from the first message: model loading is not included
        next_progress = started + 1.0
        all_exited_at = None
        while not recorder.ended:
            message = subscriber.recv(POLL_MS)
            now = time.monotonic()
            if message is not None:
                if recorder.first_us is None and on_first_message is not None:
                    on_first_message()
                recorder.add(message, now_us())
                if deadline is None and duration_s is not None:
                    deadline = now + duration_s
            if deadline is not None and now >= deadline:
                break
            if deadline is None and now - started > startup_timeout_s:
                failures.append(f"no message from the worker within {startup_timeout_s:g} s"
                                + _refused(subscriber))  # fmt: skip
                break
            if supervisor is not None:
                for stage_exit in supervisor.poll():
                    if stage_exit.returncode != 0:
                        error = getattr(supervisor.stages.get(stage_exit.name), "last_error", "")
                        failures.append(f"stage {stage_exit.name} exited with code {stage_exit.returncode}"
                                        + (f": {error}" if error else ""))  # fmt: skip
                if failures:
                    break
                if not supervisor.running():
                    all_exited_at = all_exited_at or now
                    if now - all_exited_at > EXIT_GRACE_S:
                        failures.append("every stage exited but no end message arrived")
                        break
            if not quiet and now >= next_progress:
                _progress(recorder, subscriber)
                next_progress = now + 1.0
        recorder.stopped_us = now_us()
    return recorder, time.monotonic() - started, failures


def _refused(subscriber: Subscriber) -> str:
    """Why nothing came, when the subscriber knows: its CurveZMQ handshakes were refused."""
    refused = subscriber.stats.handshake_failures
    if not refused:
        return ""
    return f" ({refused} connection(s) refused in the handshake: CurveZMQ keys or mechanism differ from the worker's)"


def _progress(recorder: HeadlessRecorder, subscriber: Subscriber) -> None:
    prediction = recorder.last_prediction
    if prediction is None:
        print("waiting for predictions ..." + _refused(subscriber), file=sys.stderr, flush=True)
        return
    counters = recorder.counters
    print(
        f"{len(recorder.class_index)} windows ({counters.get('windows_skipped', 0)} skipped), "
        f"{counters.get('events_in', 0)} events, stable: {prediction['stable']['name']}, "
        f"compute {prediction['timing']['compute_ms']:.1f} ms",
        file=sys.stderr,
        flush=True,
    )


REPORTED_PACKAGES = (
    "numpy", "numba", "pyzmq", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "dv-processing",
)  # fmt: skip


def environment_info() -> dict:
    """Python, OS, CPU (model, count, load average) and package versions of this machine."""
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "packages": versions,
    }


def build_report(recorder: HeadlessRecorder, checkpoint: str, wall_s: float, failures: list[str],
                 supervisor: Any = None) -> dict:  # fmt: skip
    """The recorder's report plus ``failures``, ``stage_restarts`` (from
    ``supervisor.restart_counts()`` when the supervisor has it, else ``{}``) and ``environment``."""
    report = recorder.report(checkpoint, wall_s)
    report["failures"] = list(failures)
    restart_counts = getattr(supervisor, "restart_counts", None)
    counts = restart_counts() if callable(restart_counts) else {}
    report["stage_restarts"] = {str(name): int(count) for name, count in counts.items()}
    report["environment"] = environment_info()
    return report


def run_headless(args: Any, endpoints: Any, supervisor: Any, curve: CurveConfig | None = None) -> int:
    """``launch.py --headless``: start the stages, record, print the summary, write ``--report``.
    ``curve``: CurveZMQ keys for the predictions endpoint (its ``server_key``: the worker's)."""
    recorder, wall_s, failures = record(
        endpoints.predictions, supervisor=supervisor, duration_s=args.duration, quiet=args.quiet,
        on_ready=supervisor.start, curve=curve, allow_remote=bool(getattr(args, "allow_remote", False)),
    )  # fmt: skip
    report = build_report(recorder, str(args.checkpoint), wall_s, failures, supervisor)
    for failure in failures:
        print(f"launch: {failure}", file=sys.stderr)
    print(format_summary(report))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        print(f"report written to {args.report}")
    return 1 if failures else 0
