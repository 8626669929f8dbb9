"""AEDAT 3.1 reader/writer and the DVS128 Gesture side files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import random_events
from stream.formats.aedat31 import Aedat31Reader, iter_aedat31, read_aedat31, write_aedat31
from stream.formats.labels import read_gesture_labels, read_trials, write_gesture_labels, write_trials
from stream.events import EventFormatError, GestureSegment, SensorSize, make_events

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-04-24\r\n#!END-HEADER\r\n"


def packet(event_type: int, overflow: int, events: list[tuple[int, int]], capacity: int | None = None) -> bytes:
    """One packet built by hand: events are (data, timestamp) pairs, padded to ``capacity``."""
    capacity = len(events) if capacity is None else capacity
    header = struct.pack("<hhiiiiii", event_type, 1, 8, 4, overflow, capacity, len(events), len(events))
    body = b"".join(struct.pack("<II", data, ts) for data, ts in events)
    return header + body + b"\0" * 8 * (capacity - len(events))


def polarity_word(x: int, y: int, p: int, valid: int = 1) -> int:
    return (x << 17) | (y << 2) | (p << 1) | valid


def test_reads_hand_built_file(tmp_path: Path) -> None:
    first = [(polarity_word(3, 5, 1), 100), (polarity_word(127, 0, 0), 200), (polarity_word(9, 9, 1, valid=0), 250)]
    other = struct.pack("<hhiiiiii", 2, 1, 16, 12, 0, 2, 2, 2) + bytes(32)  # a non-polarity packet: skipped
    second = [(polarity_word(0, 127, 1), 5)]  # overflow 1 -> t = 2**31 + 5
    path = tmp_path / "hand.aedat"
    path.write_bytes(HEADER + packet(1, 0, first, capacity=4) + other + packet(1, 1, second))

    events, sensor = read_aedat31(path)

    assert sensor == SensorSize(128, 128)
    assert events["t"].tolist() == [100, 200, 2**31 + 5]
    assert events["x"].tolist() == [3, 127, 0]
    assert events["y"].tolist() == [5, 0, 127]
    assert events["p"].tolist() == [1, 0, 1]


@pytest.mark.parametrize("sensor", [SensorSize(128, 128), SensorSize(346, 260), SensorSize(100, 37)])
def test_round_trip(tmp_path: Path, sensor: SensorSize) -> None:
    events = random_events(sensor, 2**31 - 300_000, 2**31 + 200_000, count=20_000)  # crosses the 31-bit overflow
    path = tmp_path / "rt.aedat"
    write_aedat31(path, events, sensor, packet_events=1000)
    got, got_sensor = read_aedat31(path)
    assert got_sensor == sensor
    np.testing.assert_array_equal(got, events)
    chunks = list(iter_aedat31(path, chunk_events=3000))
    assert [len(chunk) for chunk in chunks] == [3000] * 6 + [2000]
    np.testing.assert_array_equal(np.concatenate(chunks), events)


def test_writer_is_deterministic_and_header_is_jaer_like(tmp_path: Path) -> None:
    events = random_events(SensorSize(128, 128), count=100)
    write_aedat31(tmp_path / "a.aedat", events, SensorSize(128, 128))
    write_aedat31(tmp_path / "b.aedat", events, SensorSize(128, 128))
    data = (tmp_path / "a.aedat").read_bytes()
    assert data == (tmp_path / "b.aedat").read_bytes()
    assert data.startswith(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n")
    write_aedat31(tmp_path / "c.aedat", events, SensorSize(128, 128), start_time="2017-04-24 12:25:37 (TZ+0200)")
    with Aedat31Reader(tmp_path / "c.aedat") as reader:
        assert "#Start-Time: 2017-04-24 12:25:37 (TZ+0200)" in reader.header_lines
        assert reader.camera == "DVS128"


def test_empty_events_round_trip(tmp_path: Path) -> None:
    write_aedat31(tmp_path / "e.aedat", make_events([], [], [], []), SensorSize(128, 128))
    events, _ = read_aedat31(tmp_path / "e.aedat")
    assert len(events) == 0


def test_writer_rejects_bad_events(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="x must be in 0..127"):
        write_aedat31(tmp_path / "x.aedat", make_events([1], [128], [0], [1]), SensorSize(128, 128))
    with pytest.raises(ValueError, match=">= 0"):
        write_aedat31(tmp_path / "x.aedat", make_events([-1], [0], [0], [1]), SensorSize(128, 128))


def test_truncated_file(tmp_path: Path) -> None:
    events = random_events(SensorSize(128, 128), count=5000)
    path = tmp_path / "t.aedat"
    write_aedat31(path, events, SensorSize(128, 128), packet_events=1000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # cuts the last packet
    with pytest.raises(EventFormatError, match=r"truncated packet at byte \d+"):
        read_aedat31(path)
    got, _ = read_aedat31(path, allow_truncated=True)
    np.testing.assert_array_equal(got, events[:4000])
    path.write_bytes(data[: len(data) - 1000 * 8 - 10])  # cuts inside the last packet header
    with Aedat31Reader(path, allow_truncated=True) as reader:
        np.testing.assert_array_equal(reader.read_all(), events[:4000])
        assert "truncated packet header" in reader.damage


@pytest.mark.parametrize(
    "fields, message",
    [
        ((1, 1, 8, 4, 0, 10, 11, 11), "corrupt packet header"),  # number > capacity
        ((1, 1, 0, 4, 0, 10, 10, 10), "corrupt packet header"),  # eventSize 0
        ((1, 1, 16, 4, 0, 10, 10, 10), "expected 8, 4"),
        ((7, 1, 1 << 20, 4, 0, 1 << 20, 1, 1), "claims"),
        ((1, 1, 8, 4, 0, 1 << 24, 1, 1), "truncated packet"),
    ],
)
def test_corrupt_packet_headers(tmp_path: Path, fields: tuple[int, ...], message: str) -> None:
    path = tmp_path / "c.aedat"
    path.write_bytes(HEADER + packet(1, 0, [(polarity_word(1, 1, 1), 1)]) + struct.pack("<hhiiiiii", *fields) + bytes(80))
    with pytest.raises(EventFormatError, match=message):
        read_aedat31(path)
    got, _ = read_aedat31(path, allow_truncated=True)
    assert got["t"].tolist() == [1]


def test_events_outside_sensor(tmp_path: Path) -> None:
    path = tmp_path / "o.aedat"
    path.write_bytes(HEADER + packet(1, 0, [(polarity_word(200, 1, 1), 1)]))
    with pytest.raises(EventFormatError, match="outside the 128x128 sensor"):
        read_aedat31(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"#!AER-DAT2.0\r\n", "not an AEDAT 3.x"),
        (b"\x89PNG\r\n", "not an AEDAT 3.x"),
        (b"#!AER-DAT3.1\r\n#Format: RAW\r\n", "without '#!END-HEADER'"),
        (b"#!AER-DAT3.1\r\nhello\r\n", "does not start with '#'"),
    ],
)
def test_bad_headers(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.aedat"
    path.write_bytes(content)
    with pytest.raises(EventFormatError, match=message):
        read_aedat31(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=600), keep_header=st.booleans())
def test_fuzz_random_bytes(tmp_path: Path, body: bytes, keep_header: bool) -> None:
    path = tmp_path / "fuzz.aedat"
    path.write_bytes((HEADER if keep_header else b"") + body)
    try:
        events, _ = read_aedat31(path)
    except EventFormatError:
        return
    assert events.dtype.names == ("t", "x", "y", "p")


def test_labels_round_trip(tmp_path: Path) -> None:
    segments = [GestureSegment(0, 80048239, 85092709), GestureSegment(10, 90000000, 91000000)]
    path = tmp_path / "user01_fluorescent_labels.csv"
    write_gesture_labels(path, segments)
    assert path.read_text().splitlines() == [
        "class,startTime_usec,endTime_usec",
        "1,80048239,85092709",
        "11,90000000,91000000",
    ]
    assert read_gesture_labels(path) == segments


def test_labels_reads_dataset_style_crlf(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"class,startTime_usec,endTime_usec\r\n3,10,20\r\n\r\n")
    assert read_gesture_labels(path) == [GestureSegment(2, 10, 20)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "first line"),
        ("class,startTime_usec,endTime_usec\n12,1,2\n", "class must be 1..11"),
        ("class,startTime_usec,endTime_usec\n0,1,2\n", "class must be 1..11"),
        ("class,startTime_usec,endTime_usec\n1,5,2\n", "start <= end"),
        ("class,startTime_usec,endTime_usec\n1,a,2\n", "line 2: expected three integers"),
    ],
)
def test_bad_labels(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(EventFormatError, match=message):
        read_gesture_labels(path)


def test_trials_round_trip(tmp_path: Path) -> None:
    names = ["user01_fluorescent.aedat", "user01_lab.aedat"]
    path = tmp_path / "trials_to_train.txt"
    write_trials(path, names)
    assert read_trials(path) == names
    path.write_bytes(b"user02_led.aedat\r\n\r\nuser03_natural.aedat\r\n")
    assert read_trials(path) == ["user02_led.aedat", "user03_natural.aedat"]
    with pytest.raises(ValueError):
        write_trials(path, ["a\nb"])
