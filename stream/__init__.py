"""Event I/O, live sources, the simulator, binning and the ZeroMQ transport."""

from stream.events import EVENT_DTYPE, EventFormatError, SensorSize

__all__ = ["EVENT_DTYPE", "EventFormatError", "SensorSize"]
