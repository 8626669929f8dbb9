"""Live event sources: camera, file replay, DV network stream, simulator.

The source protocol (every source follows it; the pipeline, GUI and transport rely on it):

* ``source.sensor_size`` (``SensorSize``, pixels) and ``source.name`` (``str``, for logs and the GUI)
  are known right after construction. Construction opens the device, file or connection, so a
  missing camera, file or server fails early with ``SourceError`` (a ``ValueError``).
* ``for events in source:`` yields chunks of canonical events (1-D ``EVENT_DTYPE`` arrays, ``t`` in
  microseconds). Chunks are time-ordered within and across chunks (``t`` never decreases).
  A chunk may be empty: live and paced sources yield an empty chunk at least every
  ``IDLE_YIELD_S`` (0.05 s) of wall time while nothing arrives, so a consumer loop never blocks
  for long and can check its own stop flags. Never ``None``.
* Iteration ends when the data ends (end of file without ``loop``, camera unplugged, server gone
  and reconnection given up) or after ``source.stop()``.
* ``source.stop()`` may be called from any thread, any number of times; iteration returns within
  about ``IDLE_YIELD_S``. It does not release resources.
* A source is a context manager; ``close()`` (called by ``__exit__``) stops it and releases the
  camera, file or socket. Iterate a source once; open a new one to start again.
* Optional ground truth: a source that knows what happens in its stream (the simulator) also has
  ``drain_truth() -> list[GestureSegment]``: the segments whose start has been emitted since the
  last call (times in the same microsecond clock as the events). Check with
  ``isinstance(source, TruthSource)``.

Sources are small independent classes that satisfy ``Source`` structurally (``typing.Protocol``);
there is no base class to inherit from. ``open_source(spec)`` builds one from a string such as
``"camera"``, ``"camera:SERIAL"``, ``"file:PATH"``, ``"dv:HOST:PORT"``, ``"sim"`` or ``"auto"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from stream.events import GestureSegment, SensorSize

IDLE_YIELD_S = 0.05  # a live source yields (possibly an empty chunk) at least this often, seconds


class SourceError(ValueError):
    """A source cannot be opened or used (no camera, no server, bad spec). The message says why."""


@runtime_checkable
class Source(Protocol):
    """What every event source provides. See the module docstring for the full contract."""

    sensor_size: SensorSize
    name: str

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Source": ...

    def __exit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class TruthSource(Source, Protocol):
    """A source that also reports ground-truth gesture segments (e.g. the simulator)."""

    def drain_truth(self) -> list[GestureSegment]: ...
