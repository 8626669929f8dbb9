"""Fuzzing the file readers and the message decoder with hypothesis (issue #8, bad input).

Every input, random or a mutation of a valid file or message (bit flips, overwritten bytes,
inserted and deleted bytes, truncation, extreme 32/64-bit integers written over size fields),
must end in the project's error type (``EventFormatError``, ``MessageError``) or in valid events
(on the sensor, polarity 0/1, time never going back). Never another exception, a crash, a hang or
a large allocation: each fuzz test runs under an address-space limit a little above what the
process already uses (``RLIMIT_AS``; a native allocation beyond it aborts the run, a NumPy one
raises MemoryError, both fail) and under a watchdog that ends the run on a hang
(``faulthandler.dump_traceback_later``).

CI profile: derandomized (the same examples every run), no example database, a deadline per
example, about 150 examples per target (the module takes well under a minute).
Explore more with ``FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

import dv_processing as dv
import faery
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import random_events
from stream.formats.aedat2 import write_aedat2
from stream.formats.aedat4 import MAX_DECODED_PACKET_BYTES, Aedat4Writer
from stream.formats.aedat31 import write_aedat31
from stream.formats.evt3 import Evt3Writer
from stream.events import EVENT_DTYPE, EventFormatError, GestureSegment, SensorSize
from stream.formats import file_info, read_events
from stream.formats.tonic_npy import write_tonic_npy
from stream.transport.wire import Kind, Message, MessageError, decode, encode, encode_events, encode_json, encode_truth

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)),
    deadline=2000,  # ms per example; inputs are a few kB
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
MEMORY_HEADROOM_BYTES = 768 << 20  # a 10 kB input may use far less than this
HANG_TIMEOUT_S = 120  # one fuzz test, all its examples
SENSOR = SensorSize(128, 128)
EXTREME_INTS = [
    struct.pack("<i", value) for value in (-1, -(1 << 31), (1 << 31) - 1, 1 << 30, 1 << 24, 0, 65535, 28)
] + [struct.pack("<q", value) for value in (-1, (1 << 63) - 1, 1 << 40)]


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def bounded(extra_bytes: int = MEMORY_HEADROOM_BYTES, timeout_s: float = HANG_TIMEOUT_S):
    """Limit the address space to what the process uses now plus ``extra_bytes``, and end the
    process with a traceback if the block takes longer than ``timeout_s`` (a hang)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = _vm_size_bytes()
    limit = used + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, used + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    faulthandler.dump_traceback_later(timeout_s, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def assert_valid_events(events: np.ndarray, sensor: SensorSize) -> None:
    assert events.dtype == EVENT_DTYPE and events.ndim == 1
    if len(events):
        assert 0 <= events["x"].min() and events["x"].max() < sensor.width
        assert 0 <= events["y"].min() and events["y"].max() < sensor.height
        assert set(np.unique(events["p"]).tolist()) <= {0, 1}
        assert not np.any(np.diff(events["t"]) < 0)


OPS = ("flip", "set", "insert", "delete", "truncate", "int")
mutation = st.tuples(
    st.sampled_from(OPS),
    st.floats(0.0, 1.0, allow_nan=False),
    st.binary(min_size=1, max_size=8),
    st.sampled_from(EXTREME_INTS),
)


def mutate(data: bytes, mutations: list[tuple], start: int = 0) -> bytes:
    """Apply mutations at positions in data[start:] (position = a fraction of that length)."""
    out = bytearray(data)
    for op, where, blob, extreme in mutations:
        span = max(len(out) - start, 1)
        at = min(start + int(where * span), len(out))
        if op == "flip" and at < len(out):
            out[at] ^= blob[0] or 1
        elif op == "set":
            out[at : at + len(blob)] = blob
        elif op == "insert":
            out[at:at] = blob
        elif op == "delete":
            del out[at : at + len(blob)]
        elif op == "truncate":
            del out[at:]
        elif op == "int":
            out[at : at + len(extreme)] = extreme
    return bytes(out)


def read_or_refuse(path: Path, allow_truncated: bool) -> None:
    """The contract: valid events or EventFormatError (a ValueError), nothing else."""
    try:
        events, sensor = read_events(path, allow_truncated=allow_truncated)
    except EventFormatError as error:
        assert "\n" not in str(error).strip(), f"error message is not one line: {error!r}"
        return
    assert_valid_events(events, sensor)


# --- seed files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid files of every format (a few packets each), as bytes."""
    folder = tmp_path_factory.mktemp("seeds")
    events = random_events(SENSOR, 0, 100_000, count=300)
    for compression in ("lz4", "zstd", None):
        with Aedat4Writer(folder / f"{compression}.aedat4", SENSOR, compression=compression, packet_events=100) as writer:
            writer.write(events)
    store = dv.EventStore()
    for event in events[:60]:
        store.push_back(int(event["t"]), int(event["x"]), int(event["y"]), bool(event["p"]))
    writer = dv.io.MonoCameraWriter(str(folder / "dv.aedat4"), dv.io.MonoCameraWriter.EventOnlyConfig("DVX", (128, 128)))
    writer.writeEvents(store)
    del writer
    write_aedat31(folder / "a.aedat", events, SENSOR, packet_events=100)
    write_tonic_npy(folder / "t.npy", events)
    with Evt3Writer(folder / "e3.raw", SENSOR) as writer:
        writer.write(events)
    packet = np.empty(len(events), dtype=faery.EVENTS_DTYPE)
    packet["t"], packet["x"], packet["y"], packet["on"] = events["t"], events["x"], events["y"], events["p"] == 1
    with faery.evt.Encoder(str(folder / "e2.raw"), "evt2", False, tuple(SENSOR), True) as encoder:
        encoder.write({"events": packet})
    with faery.dat.Encoder(str(folder / "d.dat"), "dat2", "cd", False, tuple(SENSOR)) as encoder:
        encoder.write(packet.astype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("payload", "u1")]))
    write_aedat2(folder / "davis.aedat2", events, SENSOR, chip="eu.seebetter.ini.chips.davis.DAVIS240C")
    write_aedat2(folder / "dvs128.aedat2", events, SENSOR, layout="DVS128", chip="")
    try:
        from stream.formats.hdf5 import write_hdf5

        write_hdf5(folder / "h.hdf5", events[:100], SENSOR, compression="gzip")
        write_hdf5(folder / "h_raw.hdf5", events[:100], SENSOR, compression=None)  # read a stored chunk at a time
    except ImportError:  # h5py is an optional extra
        pass
    data = {path.name: path.read_bytes() for path in folder.iterdir()}
    for name in data:  # every seed is valid, and reading it warms numba's caches before the deadlines
        read_or_refuse(folder / name, allow_truncated=False)
        assert len(read_events(folder / name)[0]) > 0
    return data


def aedat4_body_start(data: bytes) -> int:
    return 18 + struct.unpack_from("<I", data, 14)[0]


# --- file readers -----------------------------------------------------------------------------


@FUZZ
@given(seed=st.sampled_from(["lz4.aedat4", "zstd.aedat4", "None.aedat4", "dv.aedat4"]),
       region=st.sampled_from(["anywhere", "packets"]), mutations=st.lists(mutation, min_size=1, max_size=4),
       allow_truncated=st.booleans())  # fmt: skip
def test_fuzz_aedat4(seeds, tmp_path, seed, region, mutations, allow_truncated):
    data = seeds[seed]
    path = tmp_path / "fuzz.aedat4"
    path.write_bytes(mutate(data, mutations, start=aedat4_body_start(data) if region == "packets" else 0))
    with bounded():
        read_or_refuse(path, allow_truncated)


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=4), allow_truncated=st.booleans())
def test_fuzz_aedat31(seeds, tmp_path, mutations, allow_truncated):
    path = tmp_path / "fuzz.aedat"
    path.write_bytes(mutate(seeds["a.aedat"], mutations))
    with bounded():
        read_or_refuse(path, allow_truncated)


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=4), allow_truncated=st.booleans())
def test_fuzz_tonic_npy(seeds, tmp_path, mutations, allow_truncated):
    path = tmp_path / "fuzz.npy"
    path.write_bytes(mutate(seeds["t.npy"], mutations))
    with bounded():
        read_or_refuse(path, allow_truncated)


WORD_SEEDS = ["e3.raw", "e2.raw", "d.dat", "davis.aedat2", "dvs128.aedat2"]


@FUZZ
@given(seed=st.sampled_from(WORD_SEEDS), region=st.sampled_from(["anywhere", "words"]),
       mutations=st.lists(mutation, min_size=1, max_size=4), allow_truncated=st.booleans())  # fmt: skip
def test_fuzz_word_formats(seeds, tmp_path, seed, region, mutations, allow_truncated):
    """EVT 3.0, EVT 2.0, DAT and AEDAT 2.0 (both layouts): bit flips, overwritten, inserted and
    deleted bytes, truncation and extreme integers, in the header or among the words."""
    data = seeds[seed]
    path = tmp_path / f"fuzz{Path(seed).suffix}"
    path.write_bytes(mutate(data, mutations, start=_data_start(data) if region == "words" else 0))
    with bounded():
        read_or_refuse(path, allow_truncated)


def _data_start(data: bytes) -> int:
    """Where the words of a seed start (after its last header line)."""
    marker = b"\n" if data.startswith(b"%") else b"\r\n"
    return data.rindex(marker, 0, 4096) + len(marker) if marker in data[:4096] else 0


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 60))
@given(seed=st.sampled_from(["h.hdf5", "h_raw.hdf5"]), mutations=st.lists(mutation, min_size=1, max_size=4),
       allow_truncated=st.booleans())  # fmt: skip
def test_fuzz_hdf5(seeds, tmp_path, seed, mutations, allow_truncated):
    """HDF5 through h5py: every error of the library on a damaged file becomes one line."""
    if "h.hdf5" not in seeds:
        pytest.skip("h5py is not installed")
    path = tmp_path / "fuzz.hdf5"
    path.write_bytes(mutate(seeds[seed], mutations))
    with bounded():
        read_or_refuse(path, allow_truncated)


@FUZZ
@given(magic=st.sampled_from([b"#!AER-DAT4.0\r\n", b"#!AER-DAT3.1\r\n#!END-HEADER\r\n", b"\x93NUMPY\x01\x00",
                              b"\x93NUMPY\x02\x00", b"", b"% evt 3.0\n", b"% evt 2.0\n% geometry 64x64\n",
                              b"% Version 2\n% Width 64\n% Height 64\n\x0c\x08", b"#!AER-DAT2.0\r\n",
                              b"\x89HDF\r\n\x1a\n"]),
       body=st.binary(max_size=2000), allow_truncated=st.booleans())  # fmt: skip
def test_fuzz_random_bytes(tmp_path, magic, body, allow_truncated):
    path = tmp_path / "fuzz.bin"
    path.write_bytes(magic + body)
    with bounded():
        read_or_refuse(path, allow_truncated)


# --- hand-made attacks on sizes -----------------------------------------------------------------


def zstd_bomb(blocks: int) -> bytes:
    """A Zstd frame of ``blocks`` RLE blocks of 128 KiB each: 4 bytes per block on disk."""
    frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")  # magic, descriptor (no size, no checksum), window 128 KiB
    for index in range(blocks):
        last = int(index == blocks - 1)
        header = last | (1 << 1) | ((1 << 17) << 3)  # RLE block of 131072 bytes
        frame += header.to_bytes(3, "little") + b"\x00"
    return bytes(frame)


def without_data_table(data: bytes) -> bytes:
    """An AEDAT4 file's header with dataTablePosition = -1 (as a recording cut short has), no table."""
    out = bytearray(data)
    header = data[18 : aedat4_body_start(data)]
    table = struct.unpack_from("<I", header, 0)[0]
    vtable = table - struct.unpack_from("<i", header, table)[0]
    position_field = struct.unpack_from("<H", header, vtable + 6)[0]  # field 1: dataTablePosition
    if position_field:
        old_position = struct.unpack_from("<q", header, table + position_field)[0]
        struct.pack_into("<q", out, 18 + table + position_field, -1)
        del out[old_position:]
    return bytes(out)


def replace_packets(data: bytes, body: bytes) -> bytes:
    """An AEDAT4 file whose packets are replaced by one packet of stream 0 holding ``body``."""
    data = without_data_table(data)
    start = aedat4_body_start(data)
    return data[:start] + struct.pack("<ii", 0, len(body)) + body


@pytest.mark.parametrize(
    "case",
    ["size_minus_one", "size_2g", "stream_id_negative", "zstd_bomb", "lz4_garbage", "header_length_4g",
     "npy_header_4g", "aedat31_capacity_2g", "geometry_4g", "t0_2e19", "dat_width_4g"],  # fmt: skip
)
def test_size_attacks_refused_within_bounds(seeds, tmp_path, case):
    """Sizes that claim gigabytes end in EventFormatError at once, in bounded memory."""
    unclosed = {name: without_data_table(seeds[name]) for name in ("zstd.aedat4", "lz4.aedat4", "None.aedat4")}
    start = aedat4_body_start(unclosed["None.aedat4"])
    attacks = {
        "size_minus_one": (unclosed["None.aedat4"][: start + 4] + struct.pack("<i", -1)
                           + unclosed["None.aedat4"][start + 8 :], "packet size out of range"),
        "size_2g": (unclosed["None.aedat4"][: start + 4] + struct.pack("<i", (1 << 31) - 1)
                    + unclosed["None.aedat4"][start + 8 :], "packet size out of range"),
        "stream_id_negative": (unclosed["None.aedat4"][:start] + struct.pack("<i", -5)
                               + unclosed["None.aedat4"][start + 4 :], "negative stream id"),
        "zstd_bomb": (replace_packets(unclosed["zstd.aedat4"], zstd_bomb(4096)), "would decompress to more"),
        "lz4_garbage": (replace_packets(unclosed["lz4.aedat4"], b"\x04\x22\x4d\x18" + bytes(40)), "corrupt LZ4"),
        "header_length_4g": (seeds["lz4.aedat4"][:14] + b"\xff\xff\xff\xff" + seeds["lz4.aedat4"][18:],
                             "header claims"),
        "npy_header_4g": (b"\x93NUMPY\x02\x00\xff\xff\xff\xff" + seeds["t.npy"][12:], "header claims"),
        "aedat31_capacity_2g": (_aedat31_with_capacity(seeds["a.aedat"], (1 << 31) - 1), "claims"),
        "geometry_4g": (b"% evt 3.0\n% geometry 4294967295x4294967295\n" + bytes(64), "bad sensor size"),
        "t0_2e19": (b"% evt 3.0\n% geometry 64x64\n% t0 20000000000000000000\n" + bytes(64), "bad t0"),
        "dat_width_4g": (b"% Version 2\n% Width 4294967295\n% Height 2\n\x0c\x08" + bytes(64), "bad sensor size"),
    }
    data, message = attacks[case]
    path = tmp_path / f"attack{'.npy' if 'npy' in case else '.bin'}"
    path.write_bytes(data)
    with bounded(extra_bytes=256 << 20, timeout_s=30):
        with pytest.raises(EventFormatError, match=message):
            read_events(path)
        with pytest.raises(EventFormatError):
            file_info(path, allow_truncated=False)


@pytest.mark.parametrize("data", [b"% evt 3.0\n% x " + b"y" * (1 << 21) + b"\n" + bytes(8),
                                  b"#!AER-DAT2.0\r\n#" + b"z" * (1 << 23) + b"\r\n" + bytes(8),
                                  b"% evt 3.0\n% geometry 2048x2048\n" + b"\xff\x4f" * (1 << 16)])  # fmt: skip
def test_oversized_headers_and_dense_vectors_stay_bounded(tmp_path, data):
    """Header lines of MiBs (the header scan stops at its bound: the rest reads as words) and
    2^16 VECT_12 words of 12 events each: events or one error line, in bounded memory and time."""
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    with bounded(extra_bytes=256 << 20, timeout_s=60):
        read_or_refuse(path, allow_truncated=False)


def _aedat31_with_capacity(data: bytes, capacity: int) -> bytes:
    start = data.index(b"#!END-HEADER\r\n") + len(b"#!END-HEADER\r\n")
    return data[: start + 16] + struct.pack("<i", capacity) + data[start + 20 :]  # eventCapacity


def test_zstd_bomb_keeps_complete_packets_when_truncation_is_allowed(seeds, tmp_path):
    data = without_data_table(seeds["zstd.aedat4"])
    start = aedat4_body_start(data)
    first_size = struct.unpack_from("<i", data, start + 4)[0]
    first_end = start + 8 + first_size
    bomb = zstd_bomb(4096)
    path = tmp_path / "bomb.aedat4"
    path.write_bytes(data[:first_end] + struct.pack("<ii", 0, len(bomb)) + bomb)
    with bounded(extra_bytes=256 << 20, timeout_s=30):
        events, sensor = read_events(path, allow_truncated=True)
        info = file_info(path, allow_truncated=True)
    assert len(events) == 100 and sensor == SENSOR
    assert "would decompress to more" in info["damage"]
    assert MAX_DECODED_PACKET_BYTES < 4096 << 17  # the bomb is over the fixed cap too


def test_faery_panic_becomes_event_format_error(seeds, tmp_path):
    """An IOHeader whose compression field points outside the header made faery panic (a
    BaseException); the header check refuses it first."""
    data = bytearray(seeds["lz4.aedat4"])
    header = data[18 : aedat4_body_start(bytes(data))]
    table = struct.unpack_from("<I", header, 0)[0]
    vtable = table - struct.unpack_from("<i", header, table)[0]
    struct.pack_into("<H", data, 18 + vtable + 4, 60_000)  # field 0 (compression) far outside
    path = tmp_path / "panic.aedat4"
    path.write_bytes(bytes(data))
    with pytest.raises(EventFormatError, match="corrupt AEDAT4 header"):
        read_events(path)


def test_corrupt_lz4_packet_that_hung_dv_processing(seeds, tmp_path):
    """Two corrupted bytes in the LZ4 packet of a dv-processing recording (found by this fuzzer):
    dv-processing 2.0.4's ``getNextEventBatch`` never returned on it (and on about half of 150
    such files tried; 2 of them crashed it with SIGSEGV), so files are read through faery, which
    reports the damage."""
    data = bytearray(seeds["dv.aedat4"])
    start = aedat4_body_start(bytes(data))
    data[start + 83 : start + 85] = b"\xff\x5b"
    path = tmp_path / "hung_dv.aedat4"
    path.write_bytes(bytes(data))
    with bounded(timeout_s=30):
        with pytest.raises(EventFormatError, match="LZ4"):
            read_events(path)
        events, _ = read_events(path, allow_truncated=True)
    assert len(events) == 0


def test_events_outside_the_sensor_are_refused(tmp_path):
    """dv-processing writes events outside the sensor without complaint; reading refuses them."""
    path = tmp_path / "outside.aedat4"
    store = dv.EventStore()
    store.push_back(10, 5, 5, True)
    store.push_back(20, 200, 5, True)  # x = 200 on a 128-wide sensor
    writer = dv.io.MonoCameraWriter(str(path), dv.io.MonoCameraWriter.EventOnlyConfig("DVX", (128, 128)))
    writer.writeEvents(store)
    del writer
    with pytest.raises(EventFormatError, match="x=200"):
        read_events(path)


# --- message decoder --------------------------------------------------------------------------


def valid_messages() -> list[list[bytes]]:
    frames = [
        encode_events(random_events(SensorSize(64, 48), 0, 100_000, count=20), SensorSize(64, 48), 3),
        encode_events(random_events(SENSOR, count=0), SENSOR, 4),
        encode_truth([GestureSegment(2, 10, 20)], 5),
        encode_json(Kind.PREDICTION, 6, {"label": 1, "scores": [0.5, 0.5]}),
        encode(Kind.PREDICTION, 7, b"\x00" * 32, count=1),
    ]
    return [[bytes(frame) if not isinstance(frame, np.ndarray) else frame.tobytes() for frame in message]
            for message in frames]  # fmt: skip


MESSAGES = valid_messages()


@FUZZ
@given(index=st.integers(0, len(MESSAGES) - 1), frame=st.integers(0, 2),
       mutations=st.lists(mutation, min_size=1, max_size=3), extra=st.integers(-1, 1))  # fmt: skip
def test_fuzz_decode_mutated_messages(index, frame, mutations, extra):
    frames = list(MESSAGES[index])
    frames[frame] = mutate(frames[frame], mutations)
    if extra > 0:
        frames.append(b"x")
    elif extra < 0:
        frames.pop()
    with bounded():
        check_decode(frames)


@FUZZ
@given(frames=st.lists(st.binary(max_size=200), max_size=4), topic=st.sampled_from([b"events", b"truth", b"x"]))
def test_fuzz_decode_random_frames(frames, topic):
    with bounded():
        check_decode([topic, *frames[1:]] if frames else frames)


def check_decode(frames: list[bytes]) -> None:
    try:
        message = decode(frames, max_payload_bytes=1 << 16)
    except MessageError as error:
        assert error.reason in str(error)
        return
    assert isinstance(message, Message)
    if message.kind == Kind.EVENTS:
        assert_valid_events(message.events, message.sensor_size)
        assert len(message.events) == message.count
    elif message.kind == Kind.TRUTH:
        assert all(isinstance(segment, GestureSegment) for segment in message.data)
