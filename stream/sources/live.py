"""Live dv-processing inputs: a camera (``CameraSource``) and a DV network stream
(``NetworkSource``), sharing one reconnect loop (``_LiveInput``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import dv_processing as dv
import numpy as np

from stream.events import SensorSize, empty_events, from_dv
from stream.sources.base import DEFAULT_DV_PORT, IDLE_YIELD_S, SourceError, Timeline

log = logging.getLogger(__name__)

POLL_S = 0.001  # how often a dv-processing input is polled when it has nothing, seconds
LIVE_CLOCK_MARGIN_S = 0.02  # a live clock stays this far behind "last event + wall time since it"
FIRST_BACKOFF_S = 0.05  # first wait between reconnection attempts, seconds (doubles each time)


def _first_line(error: BaseException) -> str:
    """The first line of a native library's error, without Boost's source location
    (``connect: Connection refused [system:111 at /vcpkg/.../reactive_socket_service.hpp:588 ...]``)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line.split(" [system:", 1)[0].strip() or type(error).__name__


def _check_reconnect(max_backoff_s: float, give_up_after_s: float | None) -> None:
    if not max_backoff_s > 0:
        raise ValueError(f"max_backoff_s must be > 0 s, got {max_backoff_s}")
    if give_up_after_s is not None and not give_up_after_s >= 0:
        raise ValueError(f"give_up_after_s must be >= 0 s or None, got {give_up_after_s}")


class _LiveInput:
    """A dv-processing input (camera or network reader) that reconnects when it is lost: the one
    loop behind ``CameraSource`` and ``NetworkSource``.

    ``chunks()`` yields time-ordered chunks (an empty one at least every ``IDLE_YIELD_S``). When
    the device stops (unplugged, server gone, a dv-processing error) it counts a disconnect, logs
    "<label> lost; reconnecting" and calls ``open_device()`` with exponential backoff
    (``FIRST_BACKOFF_S`` doubling to ``max_backoff_s``) until it returns a device with the same
    sensor size (logged "<label> reconnected"). Events after a reconnection continue after the
    clock given out meanwhile (``Timeline.rebase``). Iteration ends on ``stop``, without
    ``reconnect``, after ``give_up_after_s`` without a device, or when the device comes back
    with another sensor size (``SourceError``). A lock keeps ``release()`` from destroying the
    device while another thread is inside a dv-processing call.

    Args:
        device: the opened dv-processing input.
        open_device: opens it again; raises ``SourceError`` while it is not there.
        label: names the input in log lines ("camera DVXplorer_DXA00093", "DV stream host:port").
        reconnect, max_backoff_s, give_up_after_s: see ``CameraSource`` / ``NetworkSource``.
    """

    def __init__(self, device, open_device: Callable[[], object], label: str, *, reconnect: bool,
                 max_backoff_s: float, give_up_after_s: float | None) -> None:  # fmt: skip
        self.device = device  # the arguments were checked by the source, before it opened the device
        self.sensor_size = SensorSize(*device.getEventResolution())
        self.open_device = open_device
        self.label = label
        self.reconnect = reconnect
        self.max_backoff_s = max_backoff_s
        self.give_up_after_s = give_up_after_s
        self.connected = True
        self.disconnects = 0
        self.reconnects = 0
        self.timeline = Timeline()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._last_event_wall = time.monotonic()  # when the newest event arrived

    def clock_us(self) -> int | None:
        """The newest event's time plus the wall time since it arrived, less
        ``LIVE_CLOCK_MARGIN_S`` (µs; None before any event). It keeps running while disconnected.
        The value given out is a promise: a later event earlier than it is raised to it
        (``Timeline.promise``; ``timeline.raised`` counts them)."""
        last = self.timeline.last_us
        if last is None:
            return None
        elapsed_s = max(0.0, time.monotonic() - self._last_event_wall - LIVE_CLOCK_MARGIN_S)
        clock = last + int(elapsed_s * 1e6)
        if self.timeline.floor_us is not None:
            clock = max(clock, self.timeline.floor_us)  # never back
        self.timeline.promise(clock)
        return clock

    def chunks(self) -> Iterator[np.ndarray]:
        while True:
            yield from self._poll()
            if self.stop.is_set() or self.device is None:
                return
            self.connected = False
            self.disconnects += 1
            self.release()
            if not self.reconnect:
                log.warning("%s closed", self.label)
                return
            log.warning("%s lost; reconnecting", self.label)
            device = yield from self._reopen()
            if device is None:
                return
            self.timeline.rebase(floor_us=self.clock_us())  # after the clock given out meanwhile
            with self._lock:
                if self.stop.is_set():
                    return  # closed while connecting: drop the new device
                self.device = device
            self.connected = True

    def _poll(self) -> Iterator[np.ndarray]:
        """Chunks while the device runs."""
        last_yield = time.monotonic()
        while not self.stop.is_set():
            with self._lock:
                if self.device is None or not self.device.isRunning():
                    return
                try:
                    batch = self.device.getNextEventBatch()
                except RuntimeError as error:  # a broken connection or device
                    log.warning("%s: %s", self.label, _first_line(error))
                    return
            if batch is not None and batch.size() > 0:
                chunk = self.timeline.apply(from_dv(batch.numpy()))
                last_yield = time.monotonic()
                if len(chunk):
                    self._last_event_wall = last_yield
                yield chunk
            elif time.monotonic() - last_yield >= IDLE_YIELD_S:
                yield empty_events()
                last_yield = time.monotonic()
            else:
                self.stop.wait(POLL_S)

    def _reopen(self):
        """Open the device again with backoff, yielding empty chunks; the device, or None."""
        delay, start = FIRST_BACKOFF_S, time.monotonic()
        while not self.stop.is_set():
            try:
                device = self.open_device()
            except SourceError as error:
                if self.give_up_after_s is not None and time.monotonic() - start >= self.give_up_after_s:
                    log.error("%s: giving up after %.1f s: %s", self.label, self.give_up_after_s, error)
                    return None
                wake = time.monotonic() + delay
                while (remaining := wake - time.monotonic()) > 0:
                    if self.stop.wait(min(remaining, IDLE_YIELD_S)):
                        return None
                    yield empty_events()
                delay = min(delay * 2, self.max_backoff_s)
                continue
            size = SensorSize(*device.getEventResolution())
            if size != self.sensor_size:
                raise SourceError(f"{self.label} came back with sensor {size}, was {self.sensor_size}")
            self.reconnects += 1
            log.warning("%s reconnected", self.label)
            return device
        return None

    def release(self) -> None:
        with self._lock:
            self.device = None  # dv-processing closes the device or socket when the object goes


class _LiveSource:
    """What ``CameraSource`` and ``NetworkSource`` share: iteration, clock, state, stop and close
    all go to their ``_LiveInput`` (``self._input``)."""

    name: str
    sensor_size: SensorSize
    _input: _LiveInput

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._input.chunks()

    @property
    def connected(self) -> bool:
        """False from the loss of the device or server until it is back."""
        return self._input.connected

    @property
    def disconnects(self) -> int:
        """How often the device or server was lost."""
        return self._input.disconnects

    @property
    def reconnects(self) -> int:
        """How often it came back."""
        return self._input.reconnects

    @property
    def raised_to_clock(self) -> int:
        """Events that came earlier than a clock already given out and were raised to it."""
        return self._input.timeline.raised

    def clock_us(self) -> int | None:
        """Stream time (µs) before which no further event will come (None before the first
        event); see ``_LiveInput.clock_us``."""
        return self._input.clock_us()

    def stop(self) -> None:
        """End iteration (thread-safe), also while reconnecting."""
        self._input.stop.set()

    def close(self) -> None:
        self.stop()
        self._input.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _camera_api() -> tuple[str, object]:
    """Which camera API this dv-processing has: ("2.x", dv.io.camera) or ("1.x", dv.io)."""
    camera = getattr(dv.io, "camera", None)
    if camera is not None and hasattr(camera, "discover") and hasattr(camera, "open"):
        return "2.x", camera
    if hasattr(dv.io, "CameraCapture"):
        return "1.x", dv.io
    raise SourceError(f"dv-processing {getattr(dv, '__version__', '?')} has no camera API (dv.io.camera or CameraCapture)")


def list_cameras() -> list[tuple[str, str]]:
    """The event cameras connected to this machine, as ``(model name, serial number)`` pairs."""
    version, api = _camera_api()
    if version == "2.x":
        return [(getattr(d.cameraModel, "name", str(d.cameraModel)), str(d.serialNumber)) for d in api.discover()]
    names = api.discoverDevices() if hasattr(api, "discoverDevices") else []  # 1.x: "DVXplorer_DXA00093"
    return [tuple(name.rsplit("_", 1)) if "_" in name else (name, "") for name in names]


def open_camera(serial: str | None = None) -> tuple[object, str]:
    """Open the camera with ``serial`` (None: the first one found) through dv-processing;
    returns the dv-processing camera and its serial number.

    Raises ``SourceError`` naming the cameras found when none is connected or none has
    ``serial``, or when it cannot be opened or has no event stream.
    """
    cameras = list_cameras()
    if not cameras:
        raise SourceError("no event camera connected (dv-processing found none; check the USB cable and udev rules)")
    found = ", ".join(f"{model} {number}" for model, number in cameras)
    if serial is not None and serial not in [number for _, number in cameras]:
        raise SourceError(f"no camera with serial {serial!r} connected; found: {found}")
    serial = serial if serial is not None else cameras[0][1]
    version, api = _camera_api()
    try:
        if version == "2.x":
            device = api.open(serial)
        else:
            model = next(model for model, number in cameras if number == serial)
            device = api.CameraCapture(f"{model}_{serial}" if serial else model)
    except RuntimeError as error:
        raise SourceError(f"cannot open camera {serial!r}: {_first_line(error)}") from None
    if not device.isEventStreamAvailable():
        raise SourceError(f"camera {device.getCameraName()} has no event stream")
    return device, serial


class CameraSource(_LiveSource):
    """A live event camera (DVS128, DAVIS, DVXplorer, ...) through dv-processing.

    Args:
        serial: serial number of the camera to open; None opens the first one found.
        reconnect: when the camera is lost (unplugged), open it again by its serial number with
            exponential backoff (logged) and keep going; if False, iteration ends.
        max_backoff_s: longest wait between reconnection attempts, seconds.
        give_up_after_s: end iteration after this long without the camera (None: never).

    Construction opens the camera (``SourceError`` naming the cameras found when none is
    connected or none has ``serial``). Timestamps are the camera's (microseconds, usually since
    the Unix epoch). While the camera is lost the source yields empty chunks every
    ``IDLE_YIELD_S``; ``connected``, ``disconnects`` and ``reconnects`` tell the state.
    """

    def __init__(self, serial: str | None = None, *, reconnect: bool = True, max_backoff_s: float = 2.0,
                 give_up_after_s: float | None = None) -> None:  # fmt: skip
        _check_reconnect(max_backoff_s, give_up_after_s)
        device, self.serial = open_camera(serial)
        self.name: str = device.getCameraName()
        self.sensor_size: SensorSize = SensorSize(*device.getEventResolution())
        self._input = _LiveInput(device, lambda: open_camera(self.serial)[0], f"camera {self.name}",
                                 reconnect=reconnect, max_backoff_s=max_backoff_s, give_up_after_s=give_up_after_s)  # fmt: skip


class NetworkSource(_LiveSource):
    """A DV network event stream (DV software's network output or dv-processing's NetworkWriter).

    Args:
        host: server address (TCP).
        port: server port.
        reconnect: when the server goes away, reconnect with exponential backoff (logged) and keep
            going; if False, iteration ends.
        max_backoff_s: longest wait between reconnection attempts, seconds.
        give_up_after_s: end iteration after this long without a server (None: never).

    Construction connects (``SourceError`` if no server answers or it sends no events). While
    disconnected the source yields empty chunks every ``IDLE_YIELD_S``; ``connected``,
    ``disconnects`` and ``reconnects`` tell the state. If a reconnected server's clock went
    back, timestamps are shifted to continue after the last event emitted (``Timeline.rebase``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_DV_PORT,
        *,
        reconnect: bool = True,
        max_backoff_s: float = 2.0,
        give_up_after_s: float | None = None,
    ) -> None:
        if not 1 <= int(port) <= 65535:
            raise SourceError(f"port must be 1..65535, got {port}")
        _check_reconnect(max_backoff_s, give_up_after_s)
        self.host, self.port = host, int(port)
        reader = self._connect()
        self.sensor_size: SensorSize = SensorSize(*reader.getEventResolution())
        self.name: str = f"dv:{host}:{self.port} ({reader.getCameraName()})"
        self._input = _LiveInput(reader, self._connect, f"DV stream {host}:{self.port}", reconnect=reconnect,
                                 max_backoff_s=max_backoff_s, give_up_after_s=give_up_after_s)  # fmt: skip

    def _connect(self):
        where = f"{self.host}:{self.port}"
        try:
            reader = dv.io.NetworkReader(self.host, self.port)
        except RuntimeError as error:
            raise SourceError(f"cannot connect to DV stream at {where} (is a DV server running?): {_first_line(error)}") from None
        if not reader.isEventStreamAvailable() or reader.getEventResolution() is None:
            raise SourceError(f"the DV stream at {where} carries no events")
        return reader
