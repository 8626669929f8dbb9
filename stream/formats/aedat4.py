"""iniVation AEDAT4 files: streaming reader and streaming writer.

Reading goes through faery's ``aedat.Decoder`` (Rust), packet by packet, after this module has
checked the file's IOHeader and the framing of every packet in Python/Numba (sizes against the
file, LZ4/Zstd frame and block headers, an upper bound of each packet's decompressed size):
faery trusts those sizes (a size of -1 makes it allocate 4 GiB and abort the process) and panics
on some malformed headers (turned into ``EventFormatError`` here). dv-processing is not used for
reading files: on a recording with one or two corrupted bytes in an LZ4 packet its
``MonoCameraRecording.getNextEventBatch`` never returned in about half of the cases tried, and
crashed with SIGSEGV in a few (dv-processing 2.0.4; see
``tests/test_fuzz.py::test_corrupt_lz4_packet_that_hung_dv_processing``); faery reports the same
damage as an error.
Writing from Python through dv-processing means one ``push_back`` per event, so the writer uses
faery's ``aedat.Encoder``, which takes NumPy packets at > 10 M events/s. Files written here open in
dv-processing and DV.

Reader guarantees:
  * events of the FIRST event stream of the file (lowest stream id), in file order, in the
    canonical ``EVENT_DTYPE`` (t in microseconds);
  * ``sensor_size`` from that stream's ``sizeX``/``sizeY``; ``camera`` from its ``source``;
  * no timestamp-order check here (``stream.formats`` checks it); DV and this writer write
    non-decreasing timestamps (faery raises a timestamp smaller than the previous one of its stream
    to that one, so such a file reads as non-decreasing);
  * memory per packet is bounded by min(128 MiB, 1 MiB + 1024 x the packet's size in the file);
  * a damaged or cut file raises ``EventFormatError``; with ``allow_truncated=True`` every
    complete packet before the damage is yielded and ``reader.damage`` says what stopped it.
"""

from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator, NamedTuple

import faery
import numba
import numpy as np

from stream.events import (
    TRUNCATED_HINT,
    EventFormatError,
    SensorSize,
    check_events,
    concatenate_events,
    from_aedat,
    to_aedat,
)

_aedat = faery.aedat  # faery's compiled AEDAT4 codec (Decoder, Encoder, DescriptionNode, ...)

MAGIC = b"#!AER-DAT4.0\r\n"
MAX_HEADER_BYTES = 1 << 24  # the IOHeader holds a few kB of XML
MAX_PACKET_BYTES = 1 << 28  # bytes of one packet in the file
MAX_DECODED_PACKET_BYTES = 1 << 27  # one packet decompressed: 8 M events (DV writes far smaller ones)
DECODED_BASE_BYTES, DECODED_PER_BYTE = 1 << 20, 1024  # and at most 1 MiB + 1024 x its size in the file
COMPRESSIONS = {"lz4": ("lz4", 1), "zstd": ("zstd", 3), None: None}
COMPRESSION_NAMES = {0: "none", 1: "LZ4", 2: "LZ4 high", 3: "Zstd", 4: "Zstd high"}
DEFAULT_CAMERA = "spikeformer-live"


class _Layout(NamedTuple):
    """Where things are in an AEDAT4 file (byte offsets)."""

    data_start: int  # first packet
    data_end: int  # the FileDataTable's position, or the file size when the file has none
    file_size: int
    cut: bool  # the data table lies past the end of the file: the file was truncated
    compression: int  # IOHeader CompressionType: 0 none, 1 LZ4, 2 LZ4 high, 3 Zstd, 4 Zstd high


def _check_io_header(path: Path) -> _Layout:
    """Check the file's magic and IOHeader (a FlatBuffer: compression, dataTablePosition, the XML
    description) in Python, and return where the packets are.

    faery reads the IOHeader without verifying it and panics (a BaseException, not an error) on
    bad offsets, so every field is checked here first: offsets against the header, the
    description for well-formed XML, the data table position against the file.
    """
    with open(path, "rb") as file:  # clear OSErrors for missing files and directories
        file_size = os.fstat(file.fileno()).st_size
        magic = file.read(len(MAGIC))
        if not magic:
            raise EventFormatError(f"{path}: empty file (expected an AEDAT4 header)")
        if magic != MAGIC:
            raise EventFormatError(f"{path}: not an AEDAT4 file (first bytes {magic[:16]!r})")
        size_bytes = file.read(4)
        if len(size_bytes) < 4:
            raise EventFormatError(f"{path}: truncated AEDAT4 header at byte {len(MAGIC)}")
        (size,) = struct.unpack("<I", size_bytes)
        if size > MAX_HEADER_BYTES:
            raise EventFormatError(f"{path}: AEDAT4 header claims {size} bytes (limit {MAX_HEADER_BYTES})")
        if len(MAGIC) + 4 + size > file_size:
            raise EventFormatError(
                f"{path}: truncated AEDAT4 header (needs {size} bytes, {file_size - len(MAGIC) - 4} left)"
            )
        header = file.read(size)

    def read(fmt: str, offset: int) -> int:
        if not 0 <= offset <= len(header) - struct.calcsize(fmt):
            raise EventFormatError(f"{path}: corrupt AEDAT4 header (offset {offset} outside {size} bytes)")
        return struct.unpack_from(fmt, header, offset)[0]

    table = read("<I", 0)
    vtable = table - read("<i", table)
    vtable_size, table_size = read("<H", vtable), read("<H", vtable + 2)
    read("<B", vtable + vtable_size - 1)  # the whole vtable lies in the header
    read("<B", table + max(table_size, 1) - 1)  # and so does the table

    def field(index: int, fmt: str) -> int | None:
        """Offset of field ``index`` in the table, None when absent (the schema default applies)."""
        at = read("<H", vtable + 4 + 2 * index) if vtable_size >= 6 + 2 * index else 0
        if not at:
            return None
        if at + struct.calcsize(fmt) > table_size:
            raise EventFormatError(f"{path}: corrupt AEDAT4 header (field {index} outside its table)")
        return table + at

    compression_at, position_at, info_at = field(0, "<i"), field(1, "<q"), field(2, "<I")
    compression = 0 if compression_at is None else read("<i", compression_at)
    if compression not in COMPRESSION_NAMES:
        raise EventFormatError(f"{path}: AEDAT4 header names unknown compression {compression}")
    data_start = len(MAGIC) + 4 + size
    data_end = -1 if position_at is None else read("<q", position_at)
    if data_end == -1:
        data_end = file_size
    elif data_end < data_start:
        raise EventFormatError(f"{path}: corrupt AEDAT4 header (data table at byte {data_end}, before the packets)")
    if info_at is None:
        raise EventFormatError(f"{path}: AEDAT4 header has no description")
    text_at = info_at + read("<I", info_at)
    length = read("<I", text_at)
    if text_at + 4 + length > size:
        raise EventFormatError(f"{path}: corrupt AEDAT4 header (description runs past the header)")
    try:
        ElementTree.fromstring(header[text_at + 4 : text_at + 4 + length].decode("utf-8"))
    except (UnicodeDecodeError, ElementTree.ParseError) as error:
        raise EventFormatError(f"{path}: corrupt AEDAT4 description ({error})") from None
    return _Layout(data_start, min(data_end, file_size), file_size, data_end > file_size, compression)


# --- packet framing check -----------------------------------------------------------------------
# faery and dv-processing trust the sizes in a file: a packet size of -1 makes faery allocate 4 GiB
# and abort the process, and a compressed packet can expand without limit (a Zstd RLE block turns
# 4 bytes into 128 KiB). So every packet's framing, and an upper bound of its decompressed size from
# its LZ4 / Zstd frame and block headers, is checked in one pass before either library sees the
# file (one 8-byte read per packet and a few bytes per block: about a page of I/O per packet).
# Memory per packet is then at most min(128 MiB, 1 MiB + 1024 x its size in the file).

_PROBLEMS = (
    "",
    "truncated packet header",
    "negative stream id",
    "packet size out of range",
    "packet runs past the end of the packets",
    "corrupt LZ4 data",
    "corrupt Zstd frame",
    "packet would decompress to more than the limit",
    "packet too short to hold an event packet",
)
MIN_PACKET_BYTES = 12  # decompressed: size prefix, root offset and the "EVTS" identifier (faery panics on less)


@numba.njit(cache=True, nogil=True)
def _u32(data: np.ndarray, at: int) -> int:
    """Little-endian u32 at data[at] as a signed int64 (numba turns int64 + uint64 into float64)."""
    return np.int64(data[at]) | np.int64(data[at + 1]) << 8 | np.int64(data[at + 2]) << 16 | np.int64(data[at + 3]) << 24


@numba.njit(cache=True, nogil=True)
def _lz4_length(data: np.ndarray, at: int, end: int, length: int) -> tuple[int, int]:
    """Add an LZ4 length continuation (bytes of 255 ... then one < 255) to ``length``: (length, at), at -1 if cut."""
    while True:
        if at >= end:
            return length, -1
        byte = np.int64(data[at])
        at += 1
        length += byte
        if byte != 255:
            return length, at


@numba.njit(cache=True, nogil=True)
def _lz4_block(data: np.ndarray, at: int, end: int, history: int, block_max: int) -> int:
    """Decompressed size of the LZ4 block data[at:end] (every sequence checked: lengths inside the
    block, match offsets inside the window), or -1 if it is not a valid block. ``history``: bytes
    of the frame before this block that matches may reach (0 for independent blocks)."""
    out = 0
    while True:
        if at >= end:
            return -1
        token = np.int64(data[at])
        at += 1
        literals = token >> 4
        if literals == 15:
            literals, at = _lz4_length(data, at, end, literals)
            if at < 0:
                return -1
        at += literals
        out += literals
        if at > end or out > block_max:
            return -1
        if at == end:  # the last sequence holds literals only
            return out
        if end - at < 2:
            return -1
        offset = np.int64(data[at]) | np.int64(data[at + 1]) << 8
        at += 2
        if offset == 0 or offset > history + out:
            return -1
        match = token & 15
        if match == 15:
            match, at = _lz4_length(data, at, end, match)
            if at < 0:
                return -1
        out += match + 4
        if out > block_max:
            return -1


@numba.njit(cache=True, nogil=True)
def _lz4_size(data: np.ndarray, at: int, end: int) -> tuple[int, int]:
    """Exact decompressed size of the LZ4 frames in data[at:end] as ``(size, size)``, or ``(-1, -1)``
    if any frame or block is malformed. Checksums are left to the decompressor."""
    total = 0
    while at < end:
        if end - at < 7:
            return -1, -1
        magic = _u32(data, at)
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
            if end - at < 8:
                return -1, -1
            at += 8 + _u32(data, at + 4)
            continue
        if magic != 0x184D2204:
            return -1, -1
        flags, block_code = np.int64(data[at + 4]), (np.int64(data[at + 5]) >> 4) & 7
        if flags >> 6 != 1 or flags & 2 or block_code < 4:
            return -1, -1
        block_max = 1 << (2 * block_code + 8)  # 4: 64 KiB, 5: 256 KiB, 6: 1 MiB, 7: 4 MiB
        linked = (flags & 32) == 0
        at += 7 + (8 if flags & 8 else 0) + (4 if flags & 1 else 0)
        block_checksum = 4 if flags & 16 else 0
        frame_out = 0
        while True:
            if end - at < 4:
                return -1, -1
            block = _u32(data, at)
            at += 4
            if block == 0:  # end mark
                break
            size = block & 0x7FFFFFFF
            if size > block_max or size > end - at:
                return -1, -1
            if block & 0x80000000:  # stored uncompressed
                decoded = size
            else:
                decoded = _lz4_block(data, at, at + size, min(frame_out, 1 << 16) if linked else 0, block_max)
                if decoded < 0:
                    return -1, -1
            frame_out += decoded
            at += size + block_checksum
        total += frame_out
        at += 4 if flags & 4 else 0
    return (total, total) if at == end else (-1, -1)


@numba.njit(cache=True, nogil=True)
def _zstd_bounds(data: np.ndarray, at: int, end: int) -> tuple[int, int]:
    """``(lower, upper)`` bounds of the decompressed size of the Zstd frames in data[at:end] from
    their frame and block headers (exact when frames state their content size), or ``(-1, -1)``."""
    lower = upper = 0
    while at < end:
        if end - at < 6:
            return -1, -1
        magic = _u32(data, at)
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
            if end - at < 8:
                return -1, -1
            at += 8 + _u32(data, at + 4)
            continue
        if magic != 0xFD2FB528:
            return -1, -1
        descriptor = np.int64(data[at + 4])
        if descriptor & 8:  # reserved bit
            return -1, -1
        single_segment = (descriptor >> 5) & 1
        content_size_code = descriptor >> 6
        content_size_bytes = (1 << content_size_code) if content_size_code else single_segment  # 0|1, 2, 4, 8
        dictionary_bytes = (1 << (descriptor & 3)) >> 1  # 0, 1, 2, 4
        at += 5 + (1 - single_segment) + dictionary_bytes
        if end - at < content_size_bytes:
            return -1, -1
        content_size = -1
        if content_size_bytes:
            content_size = 0
            for index in range(min(content_size_bytes, 7)):  # 8-byte sizes beyond 2^56 are refused below anyway
                content_size |= np.int64(data[at + index]) << (8 * index)
            if content_size_bytes == 8 and data[at + 7]:
                content_size = 1 << 62
            content_size += 256 if content_size_bytes == 2 else 0
        at += content_size_bytes
        frame_lower = frame_upper = 0
        while True:
            if end - at < 3:
                return -1, -1
            header = np.int64(data[at]) | np.int64(data[at + 1]) << 8 | np.int64(data[at + 2]) << 16
            at += 3
            block_type, size = (header >> 1) & 3, header >> 3
            if block_type == 3 or size > 1 << 17:
                return -1, -1
            at += 1 if block_type == 1 else size
            frame_lower += size if block_type < 2 else 0
            frame_upper += size if block_type < 2 else 1 << 17  # raw and RLE: exactly size; compressed: <= 128 KiB
            if header & 1:  # last block
                break
        if content_size >= 0:  # the decompressor checks the stated size
            if not frame_lower <= content_size <= frame_upper:
                return -1, -1
            frame_lower = frame_upper = content_size
        lower += frame_lower
        upper += frame_upper
        at += 4 if descriptor & 4 else 0
    return (lower, upper) if at == end else (-1, -1)


@numba.njit(cache=True, nogil=True)
def _scan_packets(
    data: np.ndarray, start: int, end: int, compression: int, max_packet_bytes: int, max_decoded_bytes: int
) -> tuple[int, int, int, int]:
    """Walk the packets in data[start:end]: ``(packets, offset, problem, value)``; problem indexes _PROBLEMS
    (0: every packet fine), offset is where the first bad packet starts, value its bad number."""
    packets = 0
    at = start
    while at < end:
        if end - at < 8:
            return packets, at, 1, end - at
        stream_id, size = _u32(data, at), _u32(data, at + 4)
        if stream_id >= 1 << 31:
            return packets, at, 2, stream_id - (1 << 32)
        if size >= 1 << 31 or size > max_packet_bytes:
            return packets, at, 3, size - (1 << 32) if size >= 1 << 31 else size
        if size > end - at - 8:
            return packets, at, 4, size
        body = at + 8
        if compression == 1 or compression == 2:
            _, upper = _lz4_size(data, body, body + size)
            problem = 5
        elif compression == 3 or compression == 4:
            _, upper = _zstd_bounds(data, body, body + size)
            problem = 6
        else:
            upper, problem = size, 0
        if upper < 0:
            return packets, at, problem, size
        if upper > min(max_decoded_bytes, DECODED_BASE_BYTES + DECODED_PER_BYTE * size):
            return packets, at, 7, upper
        if upper < MIN_PACKET_BYTES:  # surely too short (Zstd without a content size may still be)
            return packets, at, 8, upper
        at = body + size
        packets += 1
    return packets, at, 0, 0


def _check_packets(path: Path, layout: _Layout) -> tuple[int, str]:
    """``(complete packets, damage)``: damage is "" when every packet's framing is sound."""
    if layout.data_end <= layout.data_start:
        return 0, "file truncated after its header" if layout.cut else ""
    data = np.memmap(path, dtype=np.uint8, mode="r", shape=(layout.file_size,))
    try:
        packets, offset, problem, value = _scan_packets(
            data, layout.data_start, layout.data_end, layout.compression, MAX_PACKET_BYTES, MAX_DECODED_PACKET_BYTES
        )
        if not problem and layout.data_end < layout.file_size:  # the FileDataTable is compressed too
            table = (
                _lz4_size(data, layout.data_end, layout.file_size)[1] if layout.compression in (1, 2)
                else _zstd_bounds(data, layout.data_end, layout.file_size)[1] if layout.compression in (3, 4)
                else layout.file_size - layout.data_end
            )  # fmt: skip
            table_bytes = layout.file_size - layout.data_end
            if not 0 <= table <= min(MAX_DECODED_PACKET_BYTES, DECODED_BASE_BYTES + DECODED_PER_BYTE * table_bytes):
                return packets, f"corrupt file data table at byte {layout.data_end}"
    finally:
        del data
    if problem:
        return packets, f"{_PROBLEMS[problem]} at byte {offset} (value {value}) after {packets} packets"
    if layout.cut:
        return packets, f"file truncated at byte {layout.file_size}, before its data table, after {packets} packets"
    return packets, ""


def _info_attributes(description: list, stream_id: int) -> dict[str, object]:
    """The ``/mainloop/.../outInfo/<stream_id>/info/`` attributes of a description tree."""
    pending = list(description)
    while pending:
        node = pending.pop()
        if node.name == "info" and (node.path or "").rstrip("/").endswith(f"outInfo/{stream_id}/info"):
            return {key: attribute.value for key, attribute in node.attributes.items()}
        pending.extend(node.nodes)
    return {}


def _is_native_error(error: BaseException) -> bool:
    """An error raised by faery on bad data: a RuntimeError, or a Rust panic inside
    faery (pyo3's ``PanicException`` derives from BaseException, so ``except Exception`` misses it)."""
    return isinstance(error, RuntimeError) or type(error).__name__ == "PanicException"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Aedat4Reader:
    """Reads the events of an AEDAT4 file packet by packet. A context manager.

    Args:
        path: the .aedat4 file.
        allow_truncated: stop quietly at the first damaged packet instead of raising.

    Attributes: ``sensor_size`` (pixels), ``camera`` (str, "" if the file names none),
    ``stream_id`` (the event stream read), ``damage`` ("" or what stopped an allow_truncated read).
    """

    format = "aedat4"

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False) -> None:
        self.path = Path(path)
        self.allow_truncated = allow_truncated
        self.damage = ""
        layout = _check_io_header(self.path)
        self._packet_limit, damage = _check_packets(self.path, layout)
        if damage:
            if not allow_truncated:
                raise EventFormatError(f"{self.path}: damaged or truncated: {damage}; {TRUNCATED_HINT}")
            self.damage = damage
        else:
            self._packet_limit = None
        self._decoder = None
        try:
            self._decoder = _aedat.Decoder(self.path).__enter__()
            tracks = self._decoder.tracks()
            description = self._decoder.description()
        except BaseException as error:
            self.close()
            if not _is_native_error(error):
                raise
            raise EventFormatError(f"{self.path}: unreadable AEDAT4 header ({_first_line(error)})") from None
        event_tracks = sorted((track for track in tracks if track.data_type == "events"), key=lambda track: track.id)
        try:
            if not event_tracks:
                raise EventFormatError(f"{self.path}: AEDAT4 file has no event stream")
            track = event_tracks[0]
            try:
                self.sensor_size = SensorSize(*track.dimensions).validated()
            except (TypeError, ValueError) as error:
                raise EventFormatError(f"{self.path}: bad event stream dimensions {track.dimensions}: {error}") from None
        except EventFormatError:
            self.close()
            raise
        self.stream_id = track.id
        self.camera = str(_info_attributes(description, track.id).get("source", ""))

    def packets(self) -> Iterator[np.ndarray]:
        """Yield each event packet of the stream as canonical events, in file order."""
        delivered = 0
        try:
            read = 0
            while self._packet_limit is None or read < self._packet_limit:  # faery never sees the damage
                item = next(self._decoder, None)
                if item is None:
                    break
                read += 1
                track, packet = item
                if track.id == self.stream_id:
                    delivered += len(packet)
                    yield from_aedat(packet)
        except BaseException as error:
            if not _is_native_error(error):
                raise
            message = f"damaged or truncated after {delivered} events ({_first_line(error)})"
            if not self.allow_truncated:
                raise EventFormatError(f"{self.path}: {message}; {TRUNCATED_HINT}") from None
            self.damage = message

    def chunks(self, chunk_events: int = 1 << 18) -> Iterator[np.ndarray]:
        """Yield the file's packets in order, each cut into arrays of at most ``chunk_events``.

        Packets are not merged: copying them together would cost as much as decoding them.
        """
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        for packet in self.packets():
            for start in range(0, len(packet), chunk_events):
                yield packet[start : start + chunk_events]

    def read_all(self) -> np.ndarray:
        """All events of the stream in one array."""
        return concatenate_events(list(self.packets()))

    def close(self) -> None:
        if self._decoder is not None:
            decoder, self._decoder = self._decoder, None
            decoder.__exit__(None, None, None)

    def __enter__(self) -> "Aedat4Reader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_aedat4(path: str | os.PathLike, *, allow_truncated: bool = False) -> tuple[np.ndarray, SensorSize]:
    """Read every event of the first event stream of an AEDAT4 file, and its sensor size."""
    with Aedat4Reader(path, allow_truncated=allow_truncated) as reader:
        return reader.read_all(), reader.sensor_size


def iter_aedat4(
    path: str | os.PathLike, chunk_events: int = 1 << 18, *, allow_truncated: bool = False
) -> Iterator[np.ndarray]:
    """Yield an AEDAT4 file's events in chunks of ``chunk_events`` (bounded memory)."""
    with Aedat4Reader(path, allow_truncated=allow_truncated) as reader:
        yield from reader.chunks(chunk_events)


class Aedat4Writer:
    """Streams events into an AEDAT4 file (one event stream, DV-compatible). A context manager.

    ``with Aedat4Writer(path, SensorSize(346, 260), camera_name="DAVIS346_1") as writer:
    writer.write(events)`` (repeatedly), or ``open()`` / ``write()`` / ``close()`` by hand.
    Each ``write`` appends packets of at most ``packet_events`` events. Timestamps must be >= 0 and
    never decrease across writes; coordinates must lie on the sensor (ValueError otherwise, nothing
    written). If the process dies before ``close()``, the file lacks its index: ``open_events`` with
    ``allow_truncated=True`` still reads every packet written.

    Args:
        path: the .aedat4 file to create (overwritten).
        sensor_size: width, height in pixels.
        camera_name: stored as the stream's ``source`` (DV shows it as the camera).
        compression: "lz4" (DV's default), "zstd" or None.
        packet_events: most events per packet.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sensor_size: SensorSize,
        camera_name: str = DEFAULT_CAMERA,
        *,
        compression: str | None = "lz4",
        packet_events: int = 1 << 15,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
        if packet_events < 1:
            raise ValueError(f"packet_events must be >= 1, got {packet_events}")
        self.path = Path(path)
        self.sensor_size = SensorSize(*sensor_size).validated()
        self.camera_name = camera_name
        self.compression = compression
        self.packet_events = packet_events
        self.events_written = 0
        self._last_t = 0
        self._encoder = None

    def _description(self) -> list:
        node, attribute = _aedat.DescriptionNode, _aedat.DescriptionAttribute
        root = "/mainloop/Recorder/outInfo/"
        stream = {
            "compression": attribute("string", (self.compression or "none").upper()),
            "originalModuleName": attribute("string", "spikeformer-live"),
            "originalOutputName": attribute("string", "events"),
            "typeIdentifier": attribute("string", "EVTS"),
            "typeDescription": attribute("string", "Array of events (polarity ON/OFF)."),
        }
        info = {
            "sizeX": attribute("int", self.sensor_size.width),
            "sizeY": attribute("int", self.sensor_size.height),
            "source": attribute("string", self.camera_name),
        }
        return [node("outInfo", root, {}, [node("0", root + "0/", stream, [node("info", root + "0/info/", info, [])])])]

    def open(self) -> "Aedat4Writer":
        """Create the file and write its header. Returns self."""
        if self._encoder is None:
            encoder = _aedat.Encoder(self.path, self._description(), COMPRESSIONS[self.compression])
            self._encoder = encoder.__enter__()
        return self

    def write(self, events: np.ndarray) -> None:
        """Append events (t in microseconds, non-decreasing, continuing the previous write)."""
        if self._encoder is None:
            raise ValueError(f"{self.path}: writer is not open")
        check_events(events)
        if not len(events):
            return
        self._check(events)
        for start in range(0, len(events), self.packet_events):
            self._encoder.write(0, to_aedat(events[start : start + self.packet_events]))
        self._last_t = int(events["t"][-1])
        self.events_written += len(events)

    def _check(self, events: np.ndarray) -> None:
        t = events["t"]
        if int(t[0]) < self._last_t or int(t[0]) < 0:
            raise ValueError(f"timestamps must be >= 0 and continue from {self._last_t} µs, got {int(t[0])}")
        backwards = np.flatnonzero(t[1:] < t[:-1])
        if len(backwards):
            index = int(backwards[0]) + 1
            raise ValueError(f"timestamps decrease at event {index} ({int(t[index - 1])} -> {int(t[index])} µs)")
        for axis, side in (("x", self.sensor_size.width), ("y", self.sensor_size.height)):
            low, high = int(events[axis].min()), int(events[axis].max())
            if low < 0 or high >= side:
                raise ValueError(f"event {axis} must be in 0..{side - 1} for a {self.sensor_size} sensor, got {low}..{high}")

    def close(self) -> None:
        """Write the file's index and close it (safe to call twice)."""
        if self._encoder is not None:
            encoder, self._encoder = self._encoder, None
            encoder.__exit__(None, None, None)

    def __enter__(self) -> "Aedat4Writer":
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_aedat4(
    path: str | os.PathLike,
    events: np.ndarray,
    sensor_size: SensorSize,
    camera_name: str = DEFAULT_CAMERA,
    *,
    compression: str | None = "lz4",
) -> None:
    """Write events (t in microseconds, non-decreasing) as an AEDAT4 file in one call."""
    with Aedat4Writer(path, sensor_size, camera_name, compression=compression) as writer:
        writer.write(events)
