"""Live event sources: ``open_source(spec)`` builds one from a string, ``parse_spec`` checks one.

``stream.sources.base`` has the protocol every source follows; the sources are ``file``
(``FileSource``), ``live`` (``CameraSource``, ``NetworkSource``) and ``simulated``
(``SimulatorSource``). Each loads its libraries only when it is opened.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from stream.sources.base import DEFAULT_DV_PORT, Source, SourceError

log = logging.getLogger("stream.sources")

SPECS = "camera, camera:SERIAL, file:PATH, dv:HOST:PORT, sim, sim:directed, auto"


class SourceSpec(NamedTuple):
    """A parsed source spec: ``kind`` (camera, file, dv, sim, auto) and its argument (a camera's
    serial, a file path, ``HOST:PORT``; "" when none)."""

    kind: str
    argument: str = ""


def parse_spec(spec: str, *, check_file: bool = False) -> SourceSpec:
    """Parse a source spec (``SPECS``) without opening anything; ``SourceError`` naming the problem.
    With ``check_file``, a ``file:PATH`` must exist and be an event file of a known format."""
    kind, colon, rest = spec.partition(":")
    if kind == "camera":
        if colon and not rest:
            raise SourceError(f"source {spec!r}: camera:SERIAL needs a serial number")
    elif kind == "file":
        if not rest:
            raise SourceError(f"source {spec!r}: file:PATH needs a path")
        if check_file:
            from stream.formats import detect_format

            detect_format(rest)  # EventFormatError: missing, a directory, empty, unknown format
    elif kind == "dv":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise SourceError(f"source {spec!r}: expected dv:HOST:PORT, e.g. dv:127.0.0.1:{DEFAULT_DV_PORT}")
    elif spec not in ("auto", "sim", "sim:directed"):
        raise SourceError(f"unknown source {spec!r}; expected one of: {SPECS}")
    return SourceSpec(kind, rest)


def open_source(spec: str, **options) -> Source:
    """Open a source from a spec string; ``options`` go to the source's constructor.

    Specs: ``camera`` (first camera), ``camera:SERIAL``, ``file:PATH`` (FileSource: speed, loop,
    start_offset_us, ...), ``dv:HOST:PORT`` (NetworkSource), ``sim`` (SimulatorSource),
    ``sim:directed`` (a simulated person who performs on cue: ``perform``), ``auto`` (the first
    connected camera, else the simulator; options go to whichever is opened).
    """
    kind, argument = parse_spec(spec)
    if kind == "file":
        from stream.sources.file import FileSource

        return FileSource(argument, **options)
    if kind == "sim":
        from stream.sources.simulated import SimulatorSource

        return SimulatorSource(**options, directed=argument == "directed")
    from stream.sources.live import CameraSource, NetworkSource, list_cameras  # dv-processing loads here

    if kind == "dv":
        host, _, port = argument.rpartition(":")
        return NetworkSource(host.strip("[]"), int(port), **options)
    if kind == "camera" or list_cameras():  # auto: the first camera, else the simulator
        return CameraSource(argument or None, **options)
    log.warning("source auto: no camera found; using the simulator (--source camera to require one)")
    return open_source("sim", **options)
