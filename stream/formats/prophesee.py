"""The ``%`` text header of Prophesee files (RAW EVT 2.0 / 3.0, DAT) and what it says.

A header is a run of lines ``% key value`` at the start of the file, ended by ``% end`` (Metavision
3 and later) or by the first line that is not one (older files, DAT files, files written by faery).
A header line is printable text starting with ``%``; the binary data begins right after the last.
Keys used here (case-insensitive):

    evt 3.0 | format EVT3;height=720;width=1280     the event encoding (RAW files)
    geometry 1280x720                                 the sensor size (Metavision 2.2 and later)
    plugin_name hal_plugin_imx636_evk4, system_ID 49  the camera (older files have nothing else)
    serial_number 00050423                            the camera's serial
    Version 2, Width 640, Height 480                  DAT files
    t0 6013                                           faery's time offset (µs), added to every timestamp

The sensor size comes, in this order, from ``--sensor`` (``sensor_size=``), the header's geometry
(``geometry``, ``format ...;width=;height=``, DAT's ``Width``/``Height``), the camera named by
``system_ID`` or ``plugin_name`` (``SYSTEMS``, ``PLUGINS``), else from the largest address in the
file; a size guessed from the camera is widened to hold the largest address (``stream.formats.words``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from stream.events import EventFormatError, SensorSize
from stream.formats.words import WordFileReader

MAX_HEADER_BYTES = 1 << 20  # a header is a few hundred bytes; bounds the scan of random input
MAX_LINE_BYTES = 4096
VGA, HD, GENX320 = SensorSize(640, 480), SensorSize(1280, 720), SensorSize(320, 320)
KNOWN_SENSORS = (GENX320, VGA, HD)  # the smallest that holds every address is taken when nothing else says

# system_ID (decimal in headers) -> (camera, sensor, encoding), after openeb's table of systems.
SYSTEMS: dict[int, tuple[str, SensorSize, str]] = {
    0x15: ("Gen3.0 EVK", VGA, "evt2"),
    0x17: ("Gen3.0 embedded", VGA, "evt2"),
    0x97: ("Gen3.0 embedded EVK", VGA, "evt2"),
    0x19: ("Gen3.0 embedded", VGA, "evt2"),
    0x99: ("Gen3.0 embedded EVK", VGA, "evt2"),
    0x1D: ("Gen3.0 embedded EVK bridge", VGA, "evt2"),
    0x21: ("Gen3.0 VisionCam", VGA, "evt2"),
    0xA1: ("Gen3.0 VisionCam EVK", VGA, "evt2"),
    0x1C: ("Gen3.1 EVK", VGA, "evt2"),
    0x22: ("Gen3.1 VisionCam", VGA, "evt2"),
    0xA2: ("Gen3.1 VisionCam EVK", VGA, "evt2"),
    0x23: ("Gen3.1 EVK3 EVT2", VGA, "evt2"),
    0x29: ("Gen3.1 EVK2", VGA, "evt2"),
    0x28: ("Gen3.1 EVK2 EVT3", VGA, "evt3"),
    0x1A: ("Gen4.0 HD", HD, "evt2"),
    0x9A: ("Gen4.0 HD EVK", HD, "evt2"),
    0x1F: ("Gen4.0 EVK2", HD, "evt2"),
    0x1E: ("Gen4.0 CCam5", HD, "evt3"),
    0x2E: ("Gen4.0 CCam5 fixed frame", HD, "evt3"),
    0x27: ("Gen4.1 EVK2", HD, "evt2"),
    0x30: ("Gen4.1 HD EVK3", HD, "evt3"),
    0x31: ("IMX636 HD EVK3", HD, "evt3"),
    0x32: ("IMX636 HD EVK2", HD, "evt3"),
    0x35: ("IMX646 HD EVK3", HD, "evt3"),
    0x3A: ("IMX636 HD RDK2", HD, "evt3"),
    0x3B: ("GenX320 EVK3", GENX320, "evt3"),
    0x40: ("GenX320 ES EVK3", GENX320, "evt3"),
}
# plugin_name fragment -> sensor (first match wins: 'genx320' before 'gen3', 'gen41' before 'gen4').
PLUGINS: tuple[tuple[str, SensorSize], ...] = (
    ("genx320", GENX320),
    ("imx636", HD),
    ("imx646", HD),
    ("gen41", HD),
    ("gen4", HD),
    ("gen31", VGA),
    ("gen3", VGA),
)
ENCODINGS = {"2": "evt2", "2.0": "evt2", "evt2": "evt2", "evt2.0": "evt2", "3": "evt3", "3.0": "evt3",
             "evt3": "evt3", "evt3.0": "evt3", "2.1": "evt2.1", "evt2.1": "evt2.1", "evt21": "evt2.1"}  # fmt: skip
_LINE = re.compile(rb"%[ \t]?[\x20-\x7e\t]*\r?\n")


@dataclass
class PropheseeHeader:
    """A parsed ``%`` header: ``fields`` (lower-case key -> value, the last line of a key wins),
    ``lines`` (every line, without the ``%``) and ``length`` (bytes: where the data starts)."""

    fields: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    length: int = 0

    def encoding(self) -> str | None:
        """"evt2", "evt3", "evt2.1", another format's name, "dat", or None when the header does not say."""
        fmt = self.fields.get("format")
        if fmt:
            name = fmt.split(";")[0].strip().lower()
            return ENCODINGS.get(name, name)
        evt = self.fields.get("evt")
        if evt:
            return ENCODINGS.get(evt.strip().lower(), "evt " + evt.strip())
        if "version" in self.fields or "width" in self.fields or any("data file" in line.lower() for line in self.lines):
            return "dat"
        system = self.system()
        return system[2] if system else None

    def system(self) -> tuple[str, SensorSize, str] | None:
        """The camera named by ``system_ID``, if known."""
        try:
            return SYSTEMS.get(int(self.fields.get("system_id", ""), 0))
        except ValueError:
            return None

    def geometry(self, path: Path) -> SensorSize | None:
        """The sensor size the header states (``geometry``, ``format`` options, DAT's Width/Height), or None."""
        text = self.fields.get("geometry")
        options = dict(
            part.strip().lower().split("=", 1) for part in self.fields.get("format", "").split(";")[1:] if "=" in part
        )
        try:
            if text:
                return SensorSize.parse(text.strip())
            if "width" in options and "height" in options:
                return SensorSize(int(options["width"]), int(options["height"])).validated()
            if "width" in self.fields and "height" in self.fields:
                return SensorSize(int(self.fields["width"]), int(self.fields["height"])).validated()
        except ValueError as error:
            raise EventFormatError(f"{path}: bad sensor size in the header: {error}") from None
        return None

    def camera_guess(self) -> tuple[str, SensorSize] | None:
        """``(what, sensor)`` from ``system_ID`` or ``plugin_name`` (older files state no geometry)."""
        system = self.system()
        if system:
            return f"system_ID {self.fields['system_id']} ({system[0]})", system[1]
        plugin = self.fields.get("plugin_name", "").lower()
        for fragment, size in PLUGINS:
            if fragment in plugin:
                return f"plugin_name {self.fields['plugin_name']}", size
        return None

    def camera(self) -> str:
        """The camera as the header names it ("" if it does not)."""
        system = self.system()
        name = self.fields.get("plugin_name") or (system[0] if system else "")
        serial = self.fields.get("serial_number", "")
        return f"{name} {serial}".strip() if name else ""

    def t0(self, path: Path) -> int:
        """faery's ``% t0`` offset in µs (0 when absent)."""
        text = self.fields.get("t0", "0")
        if not text.isdigit() or int(text) >= 1 << 62:
            raise EventFormatError(f"{path}: bad t0 in the header: {text!r}")
        return int(text)


def read_header(path: str | os.PathLike) -> PropheseeHeader:
    """Parse the ``%`` header at the start of ``path`` (an empty header if the file has none)."""
    with open(path, "rb") as file:
        head = file.read(MAX_HEADER_BYTES)
    header = PropheseeHeader()
    at = 0
    while at < len(head) and head[at : at + 1] == b"%":
        match = _LINE.match(head, at, min(len(head), at + MAX_LINE_BYTES))
        if match is None:  # binary data that starts with '%', or a line cut by the end of the file
            break
        text = match.group()[1:].decode("ascii").strip()
        at = match.end()
        if text.lower() == "end":
            break
        header.lines.append(text)
        key, _, value = text.partition(" ")
        if key:
            header.fields[key.lower()] = value.strip()
    header.length = at
    return header


class PropheseeWordReader(WordFileReader):
    """Base of the EVT 2.0, EVT 3.0 and DAT readers: the ``%`` header, the sensor size and t0.

    Args:
        path: the file.
        allow_truncated: read the whole words of a file cut inside a word instead of refusing it.
        sensor_size: force the sensor size (``--sensor``); else as the module docstring says.
    """

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False,
                 sensor_size: SensorSize | None = None) -> None:  # fmt: skip
        super().__init__(path, allow_truncated=allow_truncated)
        self.header = read_header(self.path)
        self._open_words(self._data_start())
        try:
            self.params[0] = self.header.t0(self.path)
            self._configure()
            stated, stated_from = (
                (SensorSize(*sensor_size).validated(), "--sensor") if sensor_size is not None
                else (self.header.geometry(self.path), "the header")
            )  # fmt: skip
            self._set_sensor(*self._sensor(stated, stated_from, self.header.camera_guess(), KNOWN_SENSORS))
            self.camera = self.header.camera()
        except BaseException:
            self.close()
            raise

    def _data_start(self) -> int:
        """Where the words start (bytes)."""
        return self.header.length

    def _configure(self) -> None:
        """Set the kernel's own ``params`` (slot 0 is t0) before the file is first decoded."""
