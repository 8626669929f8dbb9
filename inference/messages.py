"""The inference worker's messages: what the worker publishes, and what the GUI and the headless
recorder read. One schema, written here, for all three.

On the worker's endpoint (the wire format is ``stream.transport.wire``):

* ``Kind.PREDICTION``, one per inferred window (``prediction``): ``worker_id`` (random, new at every
  start of the worker process, so a consumer sees a restart), ``seq``, ``class_index``,
  ``class_name``, ``probabilities``, ``stable`` {``index`` (-1 = no gesture), ``name``,
  ``confidence``}, ``window`` {``start_us``, ``end_us`` (stream time, µs), ``stride_us``,
  ``events``, ``coverage``: the fraction of the window's input cells that fired,
  ``stream.coverage``}, ``timing`` (transport clock ``time.monotonic_ns() // 1000``, µs:
  ``source_send_us`` of the message that completed the window, ``recv_us`` when the worker got it,
  ``binned_us``, ``published_us``; and ``recv_to_binned_ms``, ``inference_ms``, ``compute_ms`` =
  published - recv; ``inference_cpu_ms``: the worker thread's CPU time while the model ran: what
  ``inference_ms`` has beyond it, the worker waited for a CPU), ``counters`` (``inference.worker.WorkerCounters``), ``backend``, ``sensor``.
* ``Kind.STATUS`` ``{"type": "stats", ...}`` about once a second and ``{"type": "end", ...}`` after
  the source's end (``worker_status``): ``worker_id``, ``counters``, ``backend``, ``sensor``,
  ``window``, ``classes`` (the model's class names, in the order of ``class_index`` and
  ``probabilities``), ``background_activity`` (the noise filter's window now, ``window_us``, and its
  noise floor, ``noise_floor_hz``, Hz per pixel; None without that filter), ``input_coverage`` (the
  median coverage of the recent windows against the checkpoint's training data,
  ``stream.coverage.coverage_summary``; None before a window with events), ``source`` (the source's
  own latest stats), ``source_paused``, ``busy_s`` (seconds spent receiving, binning, inferring,
  publishing) and ``uptime_s``.
* ``Kind.TRUTH``: the source's gesture segments, forwarded unchanged.

``read_worker_message`` turns a received message into a ``WorkerMessage`` and refuses (None) one
that lacks what the consumers use, so a malformed message from the network is skipped and counted,
never a crash in a consumer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from stream.coverage import compare_coverage
from stream.events import GestureSegment
from stream.transport.wire import Kind, Message, Status

WORKER_KINDS = ("prediction", "stats", "end", "truth")


class WorkerMessage(NamedTuple):
    """A message from the worker's endpoint: ``kind`` one of ``WORKER_KINDS``; ``data`` the JSON
    object (a list of ``GestureSegment`` for ``truth``)."""

    kind: str
    data: Any

    @property
    def worker_id(self) -> str | None:
        return self.data.get("worker_id") if isinstance(self.data, dict) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has(data: Any, fields: dict[str, Any]) -> bool:
    """``data`` is a dict whose ``fields`` pass their checks (a check: a predicate or a nested dict)."""
    if not isinstance(data, dict):
        return False
    for name, check in fields.items():
        value = data.get(name)
        if not (_has(value, check) if isinstance(check, dict) else check(value)):
            return False
    return True


PREDICTION_FIELDS: dict[str, Any] = {
    "worker_id": lambda v: isinstance(v, str),
    "seq": _is_int,
    "class_index": _is_int,
    "class_name": lambda v: isinstance(v, str),
    "probabilities": lambda v: isinstance(v, list) and all(_is_number(p) for p in v),
    "stable": {"index": _is_int, "name": lambda v: isinstance(v, str), "confidence": _is_number},
    "window": {"start_us": _is_int, "end_us": _is_int, "stride_us": _is_int, "events": _is_int},
    "timing": {"source_send_us": _is_int, "recv_us": _is_int, "compute_ms": _is_number},
    "counters": lambda v: isinstance(v, dict),
}
STATUS_FIELDS: dict[str, Any] = {
    "worker_id": lambda v: isinstance(v, str),
    "counters": lambda v: isinstance(v, dict),
    # optional (a worker of an older version sends none): the class names, in logit order
    "classes": lambda v: v is None or (isinstance(v, list) and all(isinstance(name, str) for name in v)),
}


def prediction(
    *, worker_id: str, seq: int, classes: list[str], probabilities: list[float], class_index: int, stable: Any,
    window: dict[str, int], timing: dict[str, Any], counters: dict[str, Any], backend: str, sensor: list[int],
) -> dict[str, Any]:  # fmt: skip
    """A prediction message (see the module docstring); ``stable`` is a ``StableLabel``."""
    return {
        "type": "prediction",
        "worker_id": worker_id,
        "seq": seq,
        "class_index": class_index,
        "class_name": classes[class_index],
        "probabilities": [round(float(v), 5) for v in probabilities],
        "stable": {"index": stable.index, "name": stable.name, "confidence": round(stable.confidence, 5)},
        "window": window,
        "timing": timing,
        "counters": counters,
        "backend": backend,
        "sensor": sensor,
    }


MAX_WINDOW_US = 10**9  # what a status may say of the noise filter: longer windows or higher rates are malformed
MAX_NOISE_HZ = 1e9


def read_background_activity(value: Any) -> dict[str, Any] | None:
    """A status's ``background_activity`` (the worker's noise filter now) checked: ``{"window_us":
    int, "noise_floor_hz": float or None}``, or None when absent or malformed (it comes from the
    network: out-of-range, non-finite or huge numbers are refused, never raised on)."""
    if not isinstance(value, dict):
        return None
    window_us, floor = value.get("window_us"), value.get("noise_floor_hz")
    if not _is_int(window_us) or not 1 <= window_us <= MAX_WINDOW_US:
        return None
    if floor is not None and not (_is_number(floor) and 0 <= floor <= MAX_NOISE_HZ):
        return None  # a comparison, not a conversion: NaN fails it and a huge int never becomes a float
    return {"window_us": window_us, "noise_floor_hz": None if floor is None else float(floor)}


def read_input_coverage(value: Any) -> dict[str, Any] | None:
    """A status's ``input_coverage`` checked (``stream.coverage.coverage_summary``), its ratio and
    verdict worked out again here from the two medians; None when absent or malformed (it comes
    from the network)."""
    if not isinstance(value, dict):
        return None
    median, windows, training = value.get("median"), value.get("windows"), value.get("training_median")
    if not (_is_number(median) and 0 <= median <= 1 and _is_int(windows) and 1 <= windows <= 10**9):
        return None
    if training is not None and not (_is_number(training) and 0 < training <= 1):
        return None
    return compare_coverage(float(median), windows, None if training is None else float(training))


def background_activity_text(value: Any) -> str | None:
    """A status's ``background_activity`` as text, e.g. "BA filter 0.271 ms (noise 7.5 Hz/px)": the
    background-activity filter's window and the noise floor it measured; None when the message has
    none or it is malformed (``read_background_activity``)."""
    checked = read_background_activity(value)
    if checked is None:
        return None
    text = f"BA filter {checked['window_us'] / 1000:.3g} ms"
    floor = checked["noise_floor_hz"]
    return text if floor is None else f"{text} (noise {floor:.2g} Hz/px)"


def read_worker_message(message: Message) -> WorkerMessage | None:
    """What a message from the worker's endpoint is, or None when it is not one of the worker's
    (a source status on the wrong endpoint, or a prediction or status without the fields above)."""
    if message.kind == Kind.TRUTH:
        return WorkerMessage("truth", list[GestureSegment](message.data))
    if message.kind == Kind.PREDICTION:
        return WorkerMessage("prediction", message.data) if _has(message.data, PREDICTION_FIELDS) else None
    if message.kind == Kind.STATUS and isinstance(message.data, Status) and message.data.type in ("stats", "end"):
        fields = message.data.fields
        return WorkerMessage(message.data.type, fields) if _has(fields, STATUS_FIELDS) else None
    return None
