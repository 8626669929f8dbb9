"""The Python API: classify event windows, files and live sources with a checkpoint.

    from inference import Predictor
    predictor = Predictor.from_checkpoint()          # None: the built-in model
    rows = predictor.predict_file("rec.aedat4")      # one row per window; pandas.DataFrame(rows)

``Predictor`` drives the same ``InferenceWorker`` as the live worker stage: the same binning,
sensor mapping, normalisation, noise filters, model backend and decision rule, so a file gives
what the pipeline would have shown (every window: ``predict_file`` infers them all, as
``launch.py --all-windows`` does; ``stream`` keeps up with a live source as the worker does).
A causal checkpoint runs one bin at a time on a step backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from inference.worker import InferenceWorker, WorkerConfig
from stream.events import GestureSegment, SensorSize
from stream.transport.wire import now_us


class WindowResult(NamedTuple):
    """One prediction: the window ``[start_us, end_us)`` (stream µs), the model's class and
    probabilities, the stable label of the decision rule (index -1: no gesture / undecided), the
    events in the window, and the true class of the segment the window lies inside (-1: none or
    unknown)."""

    start_us: int
    end_us: int
    class_index: int
    class_name: str
    probabilities: tuple[float, ...]
    stable_index: int
    stable_name: str
    confidence: float
    events: int
    truth: int = -1
    compute_ms: float = 0.0  # the model's time for this prediction


class Predictions(Sequence[WindowResult]):
    """The windows of a file, in time order: a sized sequence (``pandas.DataFrame(predictions)``
    works), with ``classes`` and ``accuracy`` over the windows that have a truth."""

    def __init__(self, rows: list[WindowResult], classes: Sequence[str]) -> None:
        self.rows = rows
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # noqa: ANN001, ANN204 - Sequence protocol (int or slice)
        return self.rows[index]

    def column(self, name: str) -> np.ndarray:
        """One field of every row as an array (e.g. ``column("class_index")``)."""
        return np.array([getattr(row, name) for row in self.rows])

    @property
    def accuracy(self) -> float | None:
        """Fraction of the windows inside a labelled segment whose class is right (None: no labels)."""
        truth = self.column("truth") if self.rows else np.zeros(0)
        labelled = truth >= 0
        return float((self.column("class_index")[labelled] == truth[labelled]).mean()) if labelled.any() else None


def _truth(start_us: int, end_us: int, segments: Sequence[GestureSegment]) -> int:
    for segment in segments:
        if segment.start_us <= start_us and end_us <= segment.end_us:
            return segment.label
    return -1


class Predictor:
    """Classifies events with a checkpoint (see the module docstring).

    Args:
        backend: a window backend (``inference.backends.create_backend``) or a step backend.
        metadata: the checkpoint's metadata.
        config: the worker's options (stride, decision rule).
    """

    def __init__(self, backend: Any, metadata: dict, config: WorkerConfig = WorkerConfig()) -> None:
        self.backend = backend
        self.metadata = metadata
        self.config = config
        self.classes = tuple(metadata["classes"])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, *, backend: str = "auto",
                        device: str | None = None, config: WorkerConfig = WorkerConfig()) -> "Predictor":  # fmt: skip
        """A predictor for the checkpoint at ``path`` (None: the built-in model)."""
        from inference.worker_stage import load_backend
        from training import BUILTIN_CHECKPOINT

        loaded, metadata = load_backend(Path(path) if path is not None else BUILTIN_CHECKPOINT, backend, device)
        return cls(loaded, metadata, config)

    def _worker(self, all_windows: bool) -> InferenceWorker:
        config = WorkerConfig(self.config.stride_us, all_windows, self.config.smoothing)
        return InferenceWorker(self.backend, self.metadata, config, worker_id="predictor")

    @staticmethod
    def _row(message: dict, segments: Sequence[GestureSegment]) -> WindowResult:
        window, stable = message["window"], message["stable"]
        return WindowResult(window["start_us"], window["end_us"], message["class_index"], message["class_name"],
                            tuple(message["probabilities"]), stable["index"], stable["name"], stable["confidence"],
                            window["events"], _truth(window["start_us"], window["end_us"], segments),
                            message["timing"]["inference_ms"])  # fmt: skip

    def _run(self, worker: InferenceWorker, chunks, sensor_size: SensorSize, segments: Sequence[GestureSegment],
             newest_only: bool = False) -> Iterator[WindowResult]:  # fmt: skip
        for chunk in chunks:
            stamp = now_us()
            worker.push(chunk, sensor_size, stamp, stamp)
            while worker.has_window():
                yield self._row(worker.infer(), segments)
                if newest_only and not worker.infers_all:
                    break

    def predict_window(self, events: np.ndarray, sensor_size: SensorSize | tuple[int, int] = (128, 128)) -> WindowResult:
        """The prediction for one window of events (time-ordered; the window ends at the stride after
        the last event, as the live worker's would)."""
        worker = self._worker(all_windows=True)
        rows = list(self._run(worker, [events], SensorSize(*sensor_size), ()))
        worker.flush()
        while worker.has_window():
            rows.append(self._row(worker.infer(), ()))
        if not rows:
            raise ValueError("no window: the events are empty")
        return rows[-1]

    def predict_file(self, path: str | os.PathLike, labels: str | os.PathLike | Sequence[GestureSegment] | None = None,
                     *, chunk_events: int = 1 << 16) -> Predictions:  # fmt: skip
        """Every window of an event file (any format ``stream.formats`` reads). ``labels`` (a
        DVS128-Gesture labels CSV, a folder-format CSV, or segments) fill each row's ``truth``."""
        from inference.headless import model_segments
        from stream.formats import open_events

        if isinstance(labels, (str, os.PathLike)):
            segments = model_segments(path, labels, self.classes)
        else:
            segments = list(labels or ())
        worker = self._worker(all_windows=True)
        with open_events(path, chunk_events=chunk_events) as reader:
            rows = list(self._run(worker, reader, reader.sensor_size, segments))
        worker.flush()
        while worker.has_window():
            rows.append(self._row(worker.infer(), segments))
        return Predictions(rows, self.classes)

    def stream(self, source: Any) -> Iterator[WindowResult]:
        """Predictions of a live source (``stream.sources``) as they come: the newest window each
        time, as the live worker does (every bin for a causal model). Stops when the source ends."""
        worker = self._worker(all_windows=False)
        yield from self._run(worker, source, SensorSize(*source.sensor_size), (), newest_only=True)
