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

* ``binning_ms`` and ``model_ms`` split the compute latency: the packet that closed the window
  received -> its windows binned (``recv_to_binned_ms``), and the model's own time
  (``inference_ms``); the rest is waiting between the two and publishing.
* ``model_cpu_ms``: the worker thread's CPU time while the model ran (ONNX Runtime with one thread
  runs it on that thread): ``model_ms`` beyond it is time the worker waited for a CPU, which on a
  shared machine is what the other processes cost.
* ``window_rate``: windows inferred per second between the first and the last prediction received
  (with ``--all-windows`` on a file at ``--speed max``: how fast the model gets through a recording).

Ground truth (``truth``: ``"simulator"`` or the labels file) comes from the source's truth messages
(the simulator) or from a labels CSV given to ``record`` (``launch.py --labels``, or
``<name>_labels.csv`` beside a replayed file), on the events' clock. Either way:

* ``accuracy``: fraction of windows lying fully inside a labelled gesture whose per-window class is
  the gesture's class (``stable_accuracy``: the same with the smoothed label);
  ``per_class_accuracy`` (class name -> accuracy, None without windows) and ``confusion``
  (rows = true class, columns = predicted, in the order of ``classes``) over the same windows.
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
* ``environment`` (``launch.py --headless``): where the figures were measured: this project's
  version and git commit (``commit_modified``: the checkout had uncommitted changes), Python, OS,
  CPU model and count, load average at the end, and the versions of the packages on the path
  (read from their metadata: nothing is imported for it), so a report can be compared with another.
* ``ended``: why the recording stopped: ``"end of stream"`` (the worker's end message: a file
  replayed to its end), ``"duration"``, ``"interrupted"`` (Ctrl-C or SIGTERM: the report holds
  everything measured up to then) or ``"failure"`` (see ``failures``).

``--predictions-out PATH`` (``PredictionWriter``): one row per prediction as it arrives, ``.csv``
(one ``p_<class>`` column per class) or ``.jsonl`` (``probabilities`` as a list): the window's
``start_us`` and ``end_us``, ``class_index``, ``class_name``, ``stable_index``, ``stable_name``,
``stable_confidence``, ``truth`` (the class of the labelled gesture the window lies inside, -1:
none), ``events``, and the latencies ``compute_ms``, ``binning_ms``, ``model_ms``, ``e2e_ms``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from array import array
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from inference.messages import (
    background_activity_text,
    read_background_activity,
    read_input_coverage,
    read_worker_message,
)
from stream.atomic import write_atomically
from stream.coverage import coverage_summary, coverage_text
from stream.events import GestureSegment
from stream.transport.keys import CurveConfig
from stream.transport.sockets import Subscriber
from stream.transport.wire import Message, now_us

PERCENTILES = (50, 90, 99)
POLL_MS = 100
STARTUP_TIMEOUT_S = 300.0  # model loading (and an ONNX export or TensorRT build) may take long
EXIT_GRACE_S = 2.0  # after every stage exited, how long to wait for a late end message
INTERRUPT_DRAIN_S = 0.5  # after Ctrl-C, at most this long reading the messages already queued
ENDINGS = ("end of stream", "duration", "interrupted", "failure")
PREDICTION_FORMATS = (".csv", ".jsonl")
REPO_ROOT = Path(__file__).resolve().parents[1]


def latency_summary(values_ms: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """``{"p50", "p90", "p99", "max", "count"}`` of latencies in milliseconds (None when empty;
    NaN values, a figure that was not measured, are left out)."""
    values = np.asarray(values_ms, dtype=np.float64)
    values = values[np.isfinite(values)]
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


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """``[true, predicted]`` window counts over the windows with a truth (``truth >= 0``); a predicted
    or true index outside ``0..classes-1`` is not counted."""
    predicted = np.asarray(predicted, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    keep = (truth >= 0) & (truth < classes) & (predicted >= 0) & (predicted < classes)
    return np.bincount(truth[keep] * classes + predicted[keep], minlength=classes * classes).reshape(classes, classes)


def per_class_accuracy(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    """Accuracy (recall) of each true class from a confusion matrix; None for a class without windows."""
    totals = confusion.sum(axis=1)
    return {name: (round(float(confusion[i, i] / totals[i]), 4) if totals[i] else None) for i, name in enumerate(classes)}


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


def model_segments(path: str | os.PathLike, labels_csv: str | os.PathLike,
                   classes: Sequence[str] | None = None) -> list[GestureSegment]:  # fmt: skip
    """The labelled gestures of the event file ``path`` in ``labels_csv`` (DVS128 Gesture's
    ``class,startTime_usec,endTime_usec`` or the folder format, ``stream.formats.labels.labels_for``)
    as indices of the model's ``classes`` (None: the 11 DVS128 Gesture classes): DVS128 Gesture's
    numbers name its own classes, so a model with other classes gets them by name. ValueError (one
    line): a missing or malformed file, a class the model does not have."""
    from stream.classes import GESTURE_CLASSES
    from stream.formats.labels import LABELS_HEADER, labels_for

    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise ValueError(f"labels {labels_csv}: no such file")
    classes = tuple(classes or GESTURE_CLASSES)
    segments = labels_for(path, labels_csv, classes)
    header = labels_csv.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].replace(" ", "").strip()
    if header == LABELS_HEADER and classes != GESTURE_CLASSES:
        missing = sorted({GESTURE_CLASSES[segment.label] for segment in segments} - set(classes))
        if missing:
            raise ValueError(f"{labels_csv}: class(es) {missing} are not among the model's classes {list(classes)}")
        segments = [segment._replace(label=classes.index(GESTURE_CLASSES[segment.label])) for segment in segments]
    return segments


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
        self.binning_ms = array("d")
        self.model_ms = array("d")
        self.model_cpu_ms = array("d")
        self.e2e_ms = array("d")
        self.coverage = array("d")  # each window's input coverage (NaN: the worker sent none)
        self.segments: list[GestureSegment] = []
        self.truth_source: str | None = None  # "simulator" (truth messages) or the labels file
        self.classes: list[str] | None = None  # the worker's class names (its status messages)
        self.class_names: dict[int, str] = {}  # names seen in predictions, for a worker that sends no classes
        self.num_classes = 0
        self.ending: str | None = None  # why the recording stopped (``ENDINGS``; set by ``record``)
        self.prediction_us = array("q")  # when each prediction arrived here (transport clock)
        self.prediction_worker = array("q")  # index into worker_ids of each prediction's worker (-1: none)
        self.worker_ids: list[str] = []  # in the order they were first seen
        self.worker_counters: dict[str | None, dict] = {}  # the latest counters of each worker
        self.stride_us: int | None = None
        self.stopped_us: int | None = None  # when the recording stopped (set by ``record``)
        self.worker_busy_s: dict = {}  # the latest worker's busy seconds by part (its stats)
        self.counters: dict = {}
        self.background_activity: dict | None = None  # the latest status's noise-filter window and floor
        self.input_coverage: dict | None = None  # the latest status's recent input coverage
        self.source: dict = {}
        self.backend: str | None = None
        self.sensor: list[int] | None = None
        self.ended = False
        self.first_us: int | None = None
        self.last_us: int | None = None
        self.last_prediction: dict | None = None
        self.malformed = 0  # messages that were not the worker's

    def add_labels(self, segments: Iterable[GestureSegment], source: str) -> None:
        """Ground truth from a labels file (``source``: its path), on the events' clock: counted
        exactly as the simulator's truth messages are."""
        self.segments.extend(segments)
        self.truth_source = source

    def add(self, message: Message, recv_us: int) -> dict | None:
        """Record one message received at ``recv_us`` (transport clock, µs); one that is not the
        worker's (``inference.messages``) is counted in ``malformed`` and skipped. Returns the
        prediction's data when the message was a prediction (else None)."""
        received = read_worker_message(message)
        if received is None:
            self.malformed += 1
            return None
        self.first_us = recv_us if self.first_us is None else self.first_us
        self.last_us = recv_us
        kind, data = received
        if kind == "truth":
            self.segments.extend(data)
            self.truth_source = self.truth_source or "simulator"
            return None
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
            self.binning_ms.append(_number(timing.get("recv_to_binned_ms")))
            self.model_ms.append(_number(timing.get("inference_ms")))
            self.model_cpu_ms.append(_number(timing.get("inference_cpu_ms")))
            self.e2e_ms.append((recv_us - int(timing["source_send_us"])) / 1000.0)
            coverage = _number(data["window"].get("coverage"))
            self.coverage.append(coverage if 0 <= coverage <= 1 and data["window"]["events"] > 0 else float("nan"))
            self.class_names.setdefault(int(data["class_index"]), data["class_name"])
            self.num_classes = max(self.num_classes, len(data["probabilities"]))
            self.last_prediction = data
        else:
            self.source = data.get("source") or self.source
            self.ended = self.ended or kind == "end"
            if data.get("classes"):
                self.classes = list(data["classes"])
            if isinstance(data.get("busy_s"), dict):
                self.worker_busy_s = data["busy_s"]
            if "background_activity" in data:
                self.background_activity = read_background_activity(data["background_activity"])
            if "input_coverage" in data:
                self.input_coverage = read_input_coverage(data["input_coverage"]) or self.input_coverage
            window = data.get("window")
            if isinstance(window, dict) and self.stride_us is None:
                self.stride_us = window.get("stride_us")
        if isinstance(data.get("counters"), dict):
            self.worker_counters[worker_id] = data["counters"]
            self.counters = sum_counters(self.worker_counters.values())
        self.backend = data.get("backend", self.backend)
        self.sensor = data.get("sensor", self.sensor)
        return data if kind == "prediction" else None

    def class_list(self) -> list[str]:
        """The worker's class names (from its status), else those seen in predictions (``"<i>"``
        for a class never predicted)."""
        if self.classes:
            return list(self.classes)
        count = max(self.num_classes, max(self.class_names, default=-1) + 1)
        return [self.class_names.get(index, str(index)) for index in range(count)]

    def run_coverage(self) -> dict | None:
        """``stream.coverage.coverage_summary`` of every window with events in the run, against the
        training median the worker's status named (None: no such window)."""
        coverages = np.asarray(self.coverage, dtype=np.float64)
        coverages = coverages[np.isfinite(coverages)]
        return coverage_summary(coverages, self.input_coverage["training_median"] if self.input_coverage else None)

    def window_rate(self) -> float | None:
        """Predictions received per second between the first and the last one (None: fewer than 2)."""
        if len(self.prediction_us) < 2:
            return None
        span_s = (self.prediction_us[-1] - self.prediction_us[0]) / 1e6
        return round((len(self.prediction_us) - 1) / span_s, 1) if span_s > 0 else None

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
            "binning_ms": latency_summary(self.binning_ms),
            "model_ms": latency_summary(self.model_ms),
            "e2e_latency_ms": latency_summary(self.e2e_ms),
            "model_cpu_ms": latency_summary(self.model_cpu_ms),
            "windows": counters.get("windows", len(self.class_index)),
            "windows_skipped": counters.get("windows_skipped", 0),
            "window_rate": self.window_rate(),
            "events_in": counters.get("events_in", 0),
            "events_dropped": counters.get("events_dropped", 0),
            "events_lost": counters.get("events_lost", 0),
            "event_rate": round(counters.get("events_in", 0) / active_s, 1) if active_s > 0 else None,
            "backend": self.backend,
            "checkpoint": checkpoint,
            "sensor": self.sensor,
            "background_activity": self.background_activity,
            "input_coverage": self.run_coverage(),
            "wall_s": round(wall_s, 3),
            "ended": self.ending or ("end of stream" if self.ended else "duration"),
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
            classes = self.class_list()
            count = max(len(classes), max(segment.label for segment in self.segments) + 1)
            classes += [str(index) for index in range(len(classes), count)]
            confusion = confusion_matrix(self.class_index, truth, count)
            report.update(
                truth=self.truth_source,
                accuracy=accuracy,
                stable_accuracy=stable_accuracy,
                windows_labelled=labelled,
                classes=classes,
                per_class_accuracy=per_class_accuracy(confusion, classes),
                confusion=confusion.tolist(),
                time_to_decision_ms={"median": summary["p50"], "p90": summary["p90"], "decided": len(decided),
                                     "undecided": undecided},  # fmt: skip
            )
        return report


def _number(value: Any) -> float:
    """A timing field as a float (NaN when a worker did not send it: left out of the percentiles)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def format_summary(report: dict) -> str:
    """A small markdown table of the report's main figures."""

    def ms(summary: dict) -> str:
        if not summary or summary.get("p50") is None:
            return "n/a"
        return f"{summary['p50']:.1f} / {summary['p90']:.1f} / {summary['p99']:.1f} / {summary['max']:.1f}"

    rate = report.get("window_rate")
    rows = [
        ("backend", report.get("backend")),
        ("checkpoint", Path(str(report.get("checkpoint"))).name),
        ("compute latency p50/p90/p99/max (ms)", ms(report["latency_ms"])),
        ("  of which binning p50/p90/p99/max (ms)", ms(report.get("binning_ms", {}))),
        ("  of which model p50/p90/p99/max (ms)", ms(report.get("model_ms", {}))),
        ("  model's own CPU time p50/p90/p99/max (ms)", ms(report.get("model_cpu_ms", {}))),
        ("end-to-end latency p50/p90/p99/max (ms)", ms(report["e2e_latency_ms"])),
        ("windows inferred / skipped", f"{report['windows']} / {report['windows_skipped']}"),
        ("inference rate (windows/s)", "n/a" if rate is None else f"{rate:g}"),
        ("events in / dropped (lost)", f"{report['events_in']} / {report['events_dropped']} ({report['events_lost']})"),
        ("event rate (ev/s)", report.get("event_rate")),
        ("noise filter at the end", background_activity_text(report.get("background_activity")) or "n/a"),
        ("input coverage (run median)", coverage_text(report.get("input_coverage")) or "n/a"),
        ("worker restarts", report.get("worker_restarts", 0)),
        ("stage restarts (launcher)", _restarts_text(report.get("stage_restarts", {}))),
        (f"gaps > {report.get('gap_threshold_s', 1.0):g} s", _gaps_text(report.get("gaps", []))),
    ]
    environment = report.get("environment")
    if environment:
        load = environment.get("load_average")
        rows.append(("machine", f"{environment['cpu']}, {environment['cpus']} CPUs"
                                + (f", load {load[0]:g}" if load else "")))  # fmt: skip
        commit = environment.get("commit")
        rows.append(("version", f"{environment.get('version')}"
                                + (f" ({commit[:10]}{', modified' if environment.get('commit_modified') else ''})"
                                   if commit else "")))  # fmt: skip
    if "ended" in report:
        rows.append(("ended", report["ended"]))
    if "accuracy" in report:
        accuracy, stable = report["accuracy"], report.get("stable_accuracy")
        rows.append(("ground truth", report.get("truth") or "n/a"))
        rows.append(("accuracy (windows inside gestures)",
                     "n/a" if accuracy is None else f"{accuracy:.3f} over {report['windows_labelled']}"))  # fmt: skip
        rows.append(("stable accuracy (same windows)", "n/a" if stable is None else f"{stable:.3f}"))
        decision = report["time_to_decision_ms"]
        rows.append(("time to decision median / p90 (ms)",
                     f"{decision['median']} / {decision['p90']} ({decision['decided']} decided, "
                     f"{decision['undecided']} not)"))  # fmt: skip
    lines = ["| metric | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    if report.get("confusion") and report.get("windows_labelled"):
        lines += ["", format_confusion(report)]
    return "\n".join(lines)


def format_confusion(report: dict) -> str:
    """Per-class accuracy and the confusion matrix of a report with truth, as a markdown table:
    one row per true class that has windows, columns = predicted class (by number)."""
    classes, confusion = report["classes"], np.asarray(report["confusion"])
    header = "| true \\ predicted | windows | accuracy | " + " | ".join(str(i) for i in range(len(classes))) + " |"
    lines = [header, "|---" * (len(classes) + 3) + "|"]
    for index, name in enumerate(classes):
        total = int(confusion[index].sum())
        if total == 0:
            continue
        accuracy = report["per_class_accuracy"][name]
        cells = " | ".join(str(int(count)) if count else "." for count in confusion[index])
        lines.append(f"| {index} {name} | {total} | {accuracy:.2f} | {cells} |")
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


class PredictionWriter:
    """Writes one row per prediction to ``path`` as the predictions arrive (``.csv`` or ``.jsonl``,
    the columns of the module docstring), so an interrupted run keeps every row up to then.

    Args:
        path: the output file (its folder is created).
        classes: class names for the CSV's ``p_<class>`` columns (None: ``p_0``, ``p_1``, ...).
    """

    COLUMNS = ("start_us", "end_us", "class_index", "class_name", "stable_index", "stable_name", "stable_confidence",
               "truth", "events", "compute_ms", "binning_ms", "model_ms", "e2e_ms")  # fmt: skip

    def __init__(self, path: str | os.PathLike, classes: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in PREDICTION_FORMATS:
            raise ValueError(f"--predictions-out {self.path}: the name must end in .csv or .jsonl")
        self.classes = list(classes) if classes else None
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file) if self.path.suffix.lower() == ".csv" else None
        self._header_written = False

    def write(self, prediction: dict, recv_us: int, truth: int) -> None:
        """One prediction message's data (received at ``recv_us``, transport clock µs) and its
        window's true class (-1: none)."""
        window, stable, timing = prediction["window"], prediction["stable"], prediction["timing"]
        row = {
            "start_us": window["start_us"], "end_us": window["end_us"], "class_index": prediction["class_index"],
            "class_name": prediction["class_name"], "stable_index": stable["index"], "stable_name": stable["name"],
            "stable_confidence": stable["confidence"], "truth": int(truth), "events": window["events"],
            "compute_ms": round(float(timing["compute_ms"]), 3), "binning_ms": timing.get("recv_to_binned_ms"),
            "model_ms": timing.get("inference_ms"), "e2e_ms": round((recv_us - int(timing["source_send_us"])) / 1000, 3),
        }  # fmt: skip
        probabilities = prediction["probabilities"]
        if self._csv is None:
            self._file.write(json.dumps({**row, "probabilities": probabilities}) + "\n")
        else:
            if not self._header_written:
                names = self.classes if self.classes and len(self.classes) == len(probabilities) else None
                self._csv.writerow([*self.COLUMNS, *(f"p_{name}" for name in (names or range(len(probabilities))))])
                self._header_written = True
            self._csv.writerow([*row.values(), *probabilities])
        self.rows += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    stop: threading.Event | None = None,
    labels: tuple[list[GestureSegment], str] | None = None,
    writer: PredictionWriter | None = None,
) -> tuple[HeadlessRecorder, float, list[str]]:
    """Subscribe to the worker at ``endpoint`` and record until its end message, ``duration_s``,
    ``stop`` (set by a signal handler: Ctrl-C, SIGTERM) or (with a ``launch.Supervisor``) a stage
    failing. Returns the recorder (its ``ending`` says which), the wall time (s) and the failures
    (one line each). ``on_ready()`` runs once the subscriber exists (e.g. start the stages),
    ``on_first_message()`` when the first message arrives (``duration_s`` counts from it); no
    message at all within ``startup_timeout_s`` is a failure (once messages flow, pauses are gaps,
    never a failure). ``labels``: ground truth (segments, where they came from) from a labels file;
    ``writer``: every prediction goes to it as it arrives. ``curve``: CurveZMQ keys of this
    subscriber (a tcp endpoint only; ``curve.server_key`` is the worker's public key);
    ``allow_remote``: allow a non-loopback tcp endpoint."""
    recorder = HeadlessRecorder()
    if labels is not None:
        recorder.add_labels(*labels)
    failures: list[str] = []
    topics = ("prediction", "status", "truth")
    stop = stop or threading.Event()

    def add(message: Message, received_us: int) -> None:
        prediction = recorder.add(message, received_us)
        if prediction is not None and writer is not None:
            window = prediction["window"]
            truth = window_truth(np.array([window["start_us"]]), np.array([window["end_us"]]), recorder.segments)
            writer.write(prediction, received_us, int(truth[0]))

    with Subscriber(endpoint, topics, rcvhwm=10_000, curve=curve, allow_remote=allow_remote) as subscriber:
        if on_ready is not None and not stop.is_set():
            on_ready()  # e.g. start the stages once this subscriber exists
        started = time.monotonic()
        deadline = None  # --duration counts from the first message: model loading is not included
        next_progress = started + 1.0
        all_exited_at = None
        ending = "end of stream"
        while not recorder.ended:
            if stop.is_set():
                ending = "interrupted"
                drain_until = time.monotonic() + INTERRUPT_DRAIN_S
                while time.monotonic() < drain_until and (message := subscriber.recv(0)) is not None:
                    add(message, now_us())  # what had arrived before the signal
                break
            message = subscriber.recv(POLL_MS)
            now = time.monotonic()
            if message is not None:
                if recorder.first_us is None and on_first_message is not None:
                    on_first_message()
                add(message, now_us())
                if deadline is None and duration_s is not None:
                    deadline = now + duration_s
            if deadline is not None and now >= deadline:
                ending = "duration"
                break
            if recorder.first_us is None and now - started > startup_timeout_s:
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
        recorder.ending = "failure" if failures else ending
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


def project_version() -> dict:
    """This project's ``version`` (installed metadata), its git ``commit`` (None outside a git
    checkout) and ``commit_modified`` (tracked files changed since that commit)."""
    try:
        version = metadata.version("spikeformer-live")
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit, modified = None, None
    if (REPO_ROOT / ".git").exists():
        try:
            git = ["git", "-C", str(REPO_ROOT)]
            head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
            if head.returncode == 0:
                commit = head.stdout.strip()
                status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                        text=True, timeout=10)  # fmt: skip
                modified = bool(status.stdout.strip()) if status.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {"version": version, "commit": commit, "commit_modified": modified}


def environment_info() -> dict:
    """This project's version and commit, Python, OS, CPU (model, count, load average) and
    package versions of this machine."""
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
        **project_version(),
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


def run_headless(args: Any, endpoints: Any, supervisor: Any, curve: CurveConfig | None = None,
                 stop: threading.Event | None = None, labels: tuple[list[GestureSegment], str] | None = None,
                 classes: Sequence[str] | None = None) -> int:  # fmt: skip
    """``launch.py --headless``: start the stages, record, print the summary, write ``--report``
    (atomically) and ``--predictions-out``. ``curve``: CurveZMQ keys for the predictions endpoint
    (its ``server_key``: the worker's); ``stop``: set by the launcher's SIGINT/SIGTERM handler (the
    summary and the report then hold everything measured up to then, exit code 130); ``labels``:
    ground truth from a labels file and its path; ``classes``: the model's class names (CSV columns).
    Exit code 0, 1 after a failure, 130 when interrupted."""
    predictions_out = getattr(args, "predictions_out", None)
    writer = PredictionWriter(predictions_out, classes) if predictions_out is not None else None
    try:
        recorder, wall_s, failures = record(
            endpoints.predictions, supervisor=supervisor, duration_s=args.duration, quiet=args.quiet,
            on_ready=supervisor.start, curve=curve, allow_remote=bool(getattr(args, "allow_remote", False)),
            stop=stop, labels=labels, writer=writer,
        )  # fmt: skip
    finally:
        if writer is not None:
            writer.close()
    report = build_report(recorder, str(args.checkpoint), wall_s, failures, supervisor)
    for failure in failures:
        print(f"launch: {failure}", file=sys.stderr)
    if recorder.ending == "interrupted":
        print("launch: interrupted; the summary and the report hold what was measured until then", file=sys.stderr)
    print(format_summary(report), flush=True)
    if writer is not None:
        print(f"{writer.rows} predictions written to {writer.path}")
    if args.report is not None:
        write_atomically(args.report, (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
        print(f"report written to {args.report}", flush=True)
    if failures:
        return 1
    return 130 if recorder.ending == "interrupted" else 0
