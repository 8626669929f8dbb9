"""The formats of #18: Prophesee RAW (EVT 2.0, EVT 3.0), DAT, HDF5 and jAER's AEDAT 2.0; header
geometry; --format/--sensor; conversion; a 1280x720 file through the pipeline.

Files written by faery are compared with the events they were written from (faery's own EVT 3.0
decoder loses the time after the 24-bit clock's first lap, 16.78 s, so it is no reference).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import faery
import numpy as np
import pytest
from helpers import random_events, run_launch, run_module

from stream.__main__ import main as stream_main
from stream.events import EventFormatError, SensorSize
from stream.formats import convert, detect_format, file_info, open_events, read_events
from stream.formats.aedat2 import write_aedat2
from stream.formats.evt3 import Evt3Writer
from stream.formats.prophesee import read_header

HD, VGA, DAVIS, DVS128 = SensorSize(1280, 720), SensorSize(640, 480), SensorSize(346, 260), SensorSize(128, 128)


def faery_file(path: Path, events: np.ndarray, sensor: SensorSize, version: str | None) -> Path:
    """``events`` written by faery's own file writer (.raw: EVT ``version``, .dat: DAT 2)."""
    packet = np.empty(len(events), dtype=faery.EVENTS_DTYPE)
    packet["t"], packet["x"], packet["y"], packet["on"] = events["t"], events["x"], events["y"], events["p"] == 1
    faery.events_stream_from_array(packet, tuple(sensor)).to_file(path, **({"version": version} if version else {}))
    return path


def evt3_words(*words: int, header: bytes = b"% evt 3.0\n% geometry 64x32\n") -> bytes:
    return header + struct.pack(f"<{len(words)}H", *words)


def evt2_words(*words: int, header: bytes = b"% evt 2.0\n% geometry 64x32\n") -> bytes:
    return header + struct.pack(f"<{len(words)}I", *words)


def triples(events: np.ndarray) -> list[tuple[int, int, int, int]]:
    return [(int(e["t"]), int(e["x"]), int(e["y"]), int(e["p"])) for e in events]


# --- files written by faery ------------------------------------------------------------------------


@pytest.mark.parametrize("name, version, fmt", [("a.raw", "evt3", "evt3"), ("a.raw", "evt2", "evt2"), ("a.dat", None, "dat")])
def test_files_written_by_faery_read_back_exactly(tmp_path, name, version, fmt):
    """20 s of events (past EVT 3.0's 16.78 s clock lap), with faery's '% t0' offset."""
    events = random_events(HD, 5_000, 20_005_000, count=20_000)
    path = faery_file(tmp_path / name, events, HD, version)
    with open_events(path, chunk_events=3000) as reader:
        chunks = list(reader)
        assert (reader.format, reader.sensor_size, reader.sensor_from) == (fmt, HD, "the header")
        assert reader.clamped == 0 and max(len(chunk) for chunk in chunks) <= 3000
    np.testing.assert_array_equal(np.concatenate(chunks), events)
    assert detect_format(path) == fmt


# --- hand-built words --------------------------------------------------------------------------------


def test_evt3_vectors_addresses_and_time_words(tmp_path):
    path = tmp_path / "hand.raw"
    path.write_bytes(evt3_words(
        0x8001,  # TIME_HIGH 1 -> t = 4096
        0x6005,  # TIME_LOW 5 -> t = 4101
        0x0007,  # ADDR_Y 7
        0x2803,  # ADDR_X x=3, ON
        0x3002,  # VECT_BASE_X 2, OFF
        0x4805,  # VECT_12 bits 0, 2, 11 -> x 2, 4, 13; base 14
        0x5081,  # VECT_8 bits 0, 7 -> x 14, 21; base 22
        0xA101,  # EXT_TRIGGER: skipped, counted
        0x7003, 0xE000, 0xF123,  # CONTINUED_4, OTHERS, CONTINUED_12: ignored
        0x6010,  # TIME_LOW 16 -> t = 4112
        0x0009,  # ADDR_Y 9
        0x2004,  # ADDR_X x=4, OFF
        0x8002,  # TIME_HIGH 2 -> t = 8192
        0x2005,
    ))  # fmt: skip
    with open_events(path) as reader:
        got = np.concatenate(list(reader))
        assert reader.skipped == {"triggers": 1}
    assert triples(got) == [(4101, 3, 7, 1), (4101, 2, 7, 0), (4101, 4, 7, 0), (4101, 13, 7, 0), (4101, 14, 7, 0),
                            (4101, 21, 7, 0), (4112, 4, 9, 0), (8192, 5, 9, 0)]  # fmt: skip


def test_evt3_time_high_wraps_after_the_24_bit_lap(tmp_path):
    path = tmp_path / "wrap.raw"
    path.write_bytes(evt3_words(0x8FFF, 0x6FFF, 0x0001, 0x2001,  # t = 2^24 - 1
                                0x8000, 0x6002, 0x2002))  # next lap: t = 2^24 + 2  # fmt: skip
    got, _ = read_events(path)
    assert got["t"].tolist() == [(1 << 24) - 1, (1 << 24) + 2]


def test_a_time_that_steps_back_is_clamped_and_counted(tmp_path):
    path = tmp_path / "back.raw"
    path.write_bytes(evt3_words(0x8001, 0x6010, 0x0001, 0x2001, 0x6008, 0x2002, 0x6020, 0x2003))
    info = file_info(path)
    got, _ = read_events(path)
    assert got["t"].tolist() == [4096 + 16, 4096 + 16, 4096 + 32] and info["clamped"] == 1


def test_evt2_words_time_high_and_lap(tmp_path):
    path = tmp_path / "hand.raw"
    path.write_bytes(evt2_words(
        0x8000_0002,  # TIME_HIGH 2 -> 128 µs
        (0x1 << 28) | (5 << 22) | (10 << 11) | 20,  # ON at t=133, x=10, y=20
        (0x0 << 28) | (63 << 22) | (11 << 11) | 21,  # OFF at t=191
        0xA000_0101,  # trigger
        0xE000_0000, 0x3000_0000,  # OTHERS, reserved: ignored
        0x8FFF_FFFF, (1 << 28) | (1 << 22) | (1 << 11) | 1,  # last high before the 2^34 lap
        0x8000_0000, (1 << 28) | (2 << 22) | (2 << 11) | 2,  # next lap
    ))  # fmt: skip
    with open_events(path) as reader:
        got = np.concatenate(list(reader))
        assert reader.skipped == {"triggers": 1}
    top = ((1 << 28) - 1) << 6
    assert triples(got) == [(133, 10, 20, 1), (191, 11, 21, 0), (top + 1, 1, 1, 1), ((1 << 34) + 2, 2, 2, 1)]


def aedat2_bytes(records: list[tuple[int, int]], chip: str | None) -> bytes:
    header = b"#!AER-DAT2.0\r\n# Data format is int32 address, int32 timestamp (8 bytes total)\r\n"
    if chip:
        header += f"# AEChip: {chip}\r\n".encode()
    return header + b"".join(struct.pack(">II", address, stamp) for address, stamp in records)


def test_aedat2_davis_layout_skips_and_counts_aps_imu_and_special_events(tmp_path):
    path = tmp_path / "davis.aedat"
    path.write_bytes(aedat2_bytes([
        ((10 << 22) | (300 << 12) | (1 << 11), 100),  # DVS ON, raw x 300, raw y 10
        ((200 << 22) | (5 << 12), 200),  # DVS OFF, raw x 5, raw y 200
        (0x8000_0000 | (3 << 22) | (4 << 12) | 0x3FF, 210),  # APS reset read
        (0x8000_0000 | (1 << 10) | 17, 220),  # APS signal read
        (0x8000_0C00 | 0x1234, 230),  # IMU word
        (1 << 10, 240),  # external input event
        ((259 << 22) | (345 << 12) | (1 << 11), 0xFFFF_FFF0),  # last corner, just before the lap
        ((0 << 22) | (0 << 12), 5),  # after the 2^32 µs lap: raw origin
    ], "eu.seebetter.ini.chips.davis.Davis346B"))  # fmt: skip
    with open_events(path) as reader:
        got = np.concatenate(list(reader))
        assert (reader.sensor_size, reader.sensor_from, reader.camera) == (DAVIS, "AEChip Davis346B", "Davis346B")
        assert reader.skipped == {"APS samples": 2, "IMU words": 1, "special events": 1}
    # canonical: x = 345 - raw x (jAER mirrors x), y = 259 - raw y (jAER's origin is the bottom left)
    assert triples(got) == [(100, 45, 249, 1), (200, 340, 59, 0), (0xFFFF_FFF0, 0, 0, 1), ((1 << 32) + 5, 345, 259, 0)]


def test_aedat2_dvs128_layout(tmp_path):
    path = tmp_path / "dvs128.aedat"
    path.write_bytes(aedat2_bytes([
        ((5 << 8) | (7 << 1) | 0, 10),  # raw polarity 0 = ON in jAER's DVS128 extractor
        ((120 << 8) | (0 << 1) | 1, 20),  # raw 1 = OFF
        (0x8000 | (3 << 8), 30),  # bit 15: external input, skipped
    ], chip=None))  # fmt: skip
    with open_events(path) as reader:
        got = np.concatenate(list(reader))
        assert (reader.sensor_size, reader.sensor_from, reader.skipped) == (DVS128, "the DVS128 layout", {"special events": 1})
    assert triples(got) == [(10, 120, 122, 1), (20, 127, 7, 0)]


@pytest.mark.parametrize("layout, sensor, chip", [("DAVIS", DAVIS, None), ("DAVIS", SensorSize(240, 180), ""),
                                                  ("DVS128", DVS128, None), ("DVS128", DVS128, "")])
def test_aedat2_writer_and_reader_agree(tmp_path, layout, sensor, chip):
    events = random_events(sensor, 0, 2_000_000, count=5000, seed=3)
    events["x"][0], events["y"][0] = sensor.width - 1, sensor.height - 1  # the corner that sizes a headerless file
    write_aedat2(tmp_path / "w.aedat", events, sensor, layout=layout, chip=chip)
    got, size = read_events(tmp_path / "w.aedat")
    assert size == sensor
    np.testing.assert_array_equal(got, events)


def test_dat_version_1_layout_and_a_trigger_file(tmp_path):
    path = tmp_path / "v1.dat"
    data = (7 << 0) | (9 << 9) | (1 << 17)
    path.write_bytes(b"% Data file containing CD events.\n% Version 1\n% Width 304\n% Height 240\n\x0c\x08"
                     + struct.pack("<II", 1000, data) + struct.pack("<II", 2000, 300))  # fmt: skip
    got, size = read_events(path)
    assert size == SensorSize(304, 240) and triples(got) == [(1000, 7, 9, 1), (2000, 300, 0, 0)]
    path.write_bytes(b"% Version 2\n\x0e\x08" + bytes(16))
    with pytest.raises(EventFormatError, match="0x0E is not CD events"):
        read_events(path)


# --- the sensor size ---------------------------------------------------------------------------------


def gen3_like(path: Path, header: bytes, max_x: int = 599, max_y: int = 475) -> Path:
    """An EVT 2.0 file whose addresses stop short of the sensor's edge, as a real recording's do."""
    path.write_bytes(evt2_words(0x8000_0001, (1 << 28) | (max_x << 11) | 3, (1 << 28) | (4 << 11) | max_y, header=header))
    return path


@pytest.mark.parametrize("header, size, source", [
    (b"% evt 2.0\n% geometry 1280x720\n", HD, "the header"),
    (b"% format EVT2;height=480;width=640\n", VGA, "the header"),
    (b"% Date 2020-06-25\n% plugin_name hal_plugin_gen31_fx3\n% system_ID 28\n", VGA, "system_ID 28 (Gen3.1 EVK)"),
    (b"% plugin_name hal_plugin_gen3_fx3\n% evt 2.0\n% end\n", VGA, "plugin_name hal_plugin_gen3_fx3"),
    (b"% plugin_name hal_plugin_genx320_evk3\n% evt 2.0\n", SensorSize(600, 476), "plugin_name hal_plugin_genx320_evk3, widened to the largest address"),
    (b"% evt 2.0\n", VGA, "the largest address"),
])  # fmt: skip
def test_sensor_size_from_the_header(tmp_path, header, size, source):
    """geometry, then the camera (system_ID, plugin_name) widened to the largest address, then the
    smallest known sensor that holds the largest address: a Gen3 file with addresses to 599x475 is 640x480."""
    with open_events(gen3_like(tmp_path / "g.raw", header)) as reader:
        assert (reader.format, reader.sensor_size, reader.sensor_from) == ("evt2", size, source)
        assert len(np.concatenate(list(reader))) == 2


def test_headerless_evt2_needs_format_and_takes_sensor(tmp_path):
    """A GenX320 board's dump: EVT 2.0 words and nothing else."""
    events = random_events(SensorSize(320, 320), 0, 1_000_000, count=3000)
    packet = np.empty(len(events), dtype=faery.EVENTS_DTYPE)
    packet["t"], packet["x"], packet["y"], packet["on"] = events["t"], events["x"], events["y"], events["p"] == 1
    with faery.evt.Encoder(str(tmp_path / "x.raw"), "evt2", False, (320, 320), True) as encoder:
        encoder.write({"events": packet})
    data = (tmp_path / "x.raw").read_bytes()
    path = tmp_path / "dump.bin"
    path.write_bytes(data[read_header(tmp_path / "x.raw").length :])
    with pytest.raises(EventFormatError, match="unknown event file format.*--format evt2 --sensor"):
        read_events(path)
    got, size = read_events(path, format="evt2", sensor_size=SensorSize(320, 320))
    assert size == SensorSize(320, 320)
    np.testing.assert_array_equal(got, events)
    with pytest.raises(EventFormatError, match=r"outside the 100x100 sensor \(size from --sensor"):
        read_events(path, format="evt2", sensor_size=SensorSize(100, 100))


def test_forced_sensor_and_format_on_other_formats(tmp_path):
    events = random_events(DVS128, 0, 100_000, count=500)
    write_aedat2(tmp_path / "a.aedat", events, DVS128, layout="DVS128")
    info = file_info(tmp_path / "a.aedat", sensor_size=SensorSize(200, 200))
    assert (info["width"], info["height"], info["sensor_from"]) == (200, 200, "--sensor")
    with pytest.raises(ValueError, match="format must be one of"):
        open_events(tmp_path / "a.aedat", format="mp4")


@pytest.mark.parametrize("header, message", [
    (b"% format EVT21;height=720;width=1280\n", "'evt2.1' files are not supported"),
    (b"% date 2024-01-01\n", "names no event encoding; give --format"),
    (b"% geometry 12x\n% evt 3.0\n", "bad sensor size in the header"),
])  # fmt: skip
def test_unusable_headers_are_one_line(tmp_path, header, message):
    path = tmp_path / "h.raw"
    path.write_bytes(header + bytes(8))
    with pytest.raises(EventFormatError, match=message):
        read_events(path)


# --- HDF5 ----------------------------------------------------------------------------------------------


def test_hdf5_reads_prophesee_layout_and_names_the_ecf_codec(tmp_path):
    h5py = pytest.importorskip("h5py")
    from stream.formats.hdf5 import ECF_FILTER, write_hdf5

    events = random_events(HD, 0, 1_000_000, count=4000)
    write_hdf5(tmp_path / "a.hdf5", events, HD)
    got, size = read_events(tmp_path / "a.hdf5")
    assert size == HD and detect_format(tmp_path / "a.hdf5") == "hdf5"
    np.testing.assert_array_equal(got, events)

    ecf = tmp_path / "ecf.hdf5"  # a dataset whose pipeline names ECF (optional: h5py writes it unfiltered)
    with h5py.File(ecf, "w") as file:
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((16,))
        plist.set_filter(ECF_FILTER, h5py.h5z.FLAG_OPTIONAL)
        space = h5py.h5s.create_simple((16,), (h5py.h5s.UNLIMITED,))
        kind = h5py.h5t.py_create(np.dtype([("x", "<u2"), ("y", "<u2"), ("p", "<i2"), ("t", "<i8")]))
        file.create_group("CD")
        h5py.h5d.create(file.id, b"CD/events", kind, space, plist)
    with pytest.raises(EventFormatError, match="ECF codec .*HDF5_PLUGIN_PATH.*metavision_file_to_dat"):
        read_events(ecf)
    with h5py.File(tmp_path / "other.hdf5", "w") as file:
        file["data"] = np.arange(3)
    with pytest.raises(EventFormatError, match="no CD/events dataset"):
        read_events(tmp_path / "other.hdf5")


@pytest.mark.parametrize("chunk_events", [1000, 4096, 5000, 1 << 18])
@pytest.mark.parametrize("layout", ["chunked", "contiguous", "gzip"])
def test_hdf5_chunks_are_exact_whatever_the_stored_layout(tmp_path, layout, chunk_events):
    """Unfiltered chunked datasets are read a stored chunk at a time (read_direct_chunk), others in
    row blocks: both hand out the same events in chunks of chunk_events, the last one shorter."""
    h5py = pytest.importorskip("h5py")
    from stream.formats.hdf5 import RECORD_DTYPE

    events = random_events(HD, 0, 1_000_000, count=10_001)
    records = np.empty(len(events), dtype=RECORD_DTYPE)
    for field in "xypt":
        records[field] = events[field]
    path = tmp_path / f"{layout}.hdf5"
    with h5py.File(path, "w") as file:
        file.attrs["geometry"] = "1280x720"
        options = {"chunked": {"chunks": (4096,)}, "contiguous": {}, "gzip": {"chunks": (4096,), "compression": "gzip"}}
        file.create_dataset("CD/events", data=records, **options[layout])
    with open_events(path, chunk_events=chunk_events) as reader:
        chunks = list(reader)
    assert [len(chunk) for chunk in chunks[:-1]] == [chunk_events] * (len(chunks) - 1)
    np.testing.assert_array_equal(np.concatenate(chunks), events)

    records["x"][7_000] = 1280  # off the sensor: the events before it are handed out, then one line
    with h5py.File(path, "r+") as file:
        file["CD/events"][7_000] = records[7_000]
    with open_events(path, chunk_events=chunk_events) as reader:
        got = []
        with pytest.raises(EventFormatError, match="event 7000 at x=1280, y=.* outside the 1280x720 sensor"):
            for chunk in reader:
                got.append(chunk)
    np.testing.assert_array_equal(np.concatenate(got), events[:7_000])


def test_a_truncated_unfiltered_hdf5_file_is_one_line(tmp_path):
    """HDF5 checks the file's end before anything is read: a cut file is refused whole, in one line."""
    pytest.importorskip("h5py")
    from stream.formats.hdf5 import write_hdf5

    write_hdf5(tmp_path / "whole.hdf5", random_events(HD, 0, 1_000_000, count=50_000), HD, compression=None)
    data = (tmp_path / "whole.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[: len(data) * 3 // 4])
    for allow_truncated in (False, True):
        with pytest.raises(EventFormatError, match=r"cut.hdf5: unreadable HDF5 file \(.*truncated file"):
            open_events(tmp_path / "cut.hdf5", allow_truncated=allow_truncated)


# --- conversion -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_format(tmp_path_factory) -> tuple[np.ndarray, dict[str, Path]]:
    """The same events (on a 346x260 sensor) in every format that can hold them."""
    folder = tmp_path_factory.mktemp("every")
    events = random_events(DAVIS, 1_000, 3_001_000, count=20_000, seed=5)
    events["x"][0], events["y"][0] = DAVIS.width - 1, DAVIS.height - 1
    files = {"evt3": faery_file(folder / "a.raw", events, DAVIS, "evt3"),
             "evt2": faery_file(folder / "b.raw", events, DAVIS, "evt2"),
             "dat": faery_file(folder / "c.dat", events, DAVIS, None),
             "aedat2": folder / "d.aedat"}  # fmt: skip
    write_aedat2(files["aedat2"], events, DAVIS)
    return events, files


@pytest.mark.parametrize("fmt", ["evt3", "evt2", "dat", "aedat2"])
def test_convert_every_format_to_aedat4_and_evt3_exactly(every_format, tmp_path, fmt):
    events, files = every_format
    for suffix in (".aedat4", ".raw"):
        target = tmp_path / f"out{suffix}"
        result = convert(files[fmt], target)
        assert result["events"] == len(events)
        got, size = read_events(target)
        assert size == DAVIS
        np.testing.assert_array_equal(got, events)


def test_evt3_writer_round_trip_through_aedat4(tmp_path):
    events = random_events(HD, 10, 40_000_010, count=30_000, seed=8)  # two laps of the 24-bit clock
    with Evt3Writer(tmp_path / "a.raw", HD) as writer:
        writer.write(events[:10_000])
        writer.write(events[10_000:])
    assert run_module("stream", "convert", tmp_path / "a.raw", tmp_path / "b.aedat4").returncode == 0
    convert(tmp_path / "b.aedat4", tmp_path / "c.raw")
    assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "c.raw").read_bytes()
    np.testing.assert_array_equal(read_events(tmp_path / "c.raw")[0], events)
    with pytest.raises(ValueError, match="11 bits"):
        Evt3Writer(tmp_path / "big.raw", SensorSize(4096, 16))


def test_info_text_names_the_sensor_source_and_skipped_samples(every_format, capsys):
    _, files = every_format
    assert stream_main(["info", str(files["aedat2"])]) == 0
    out = capsys.readouterr().out
    assert "format:     aedat2" in out and "346x260 pixels (from AEChip Davis346B)" in out
    assert stream_main(["info", str(files["evt3"]), "--json", "--format", "evt3", "--sensor", "400x300"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["width"], info["height"], info["sensor_from"], info["events"]) == (400, 300, "--sensor", 20_000)


# --- bad files -----------------------------------------------------------------------------------------


BAD = ["evt3-cut-in-a-word", "evt3-outside-the-sensor", "dat-header-only", "aedat2-cut-in-a-record", "evt2-random"]


def bad_file(tmp_path: Path, every_format, case: str) -> Path:
    _, files = every_format
    path = tmp_path / f"{case}.bin"
    if case == "evt3-cut-in-a-word":
        path.write_bytes(files["evt3"].read_bytes()[:-1])
    elif case == "evt3-outside-the-sensor":
        path.write_bytes(evt3_words(0x8001, 0x0001, 0x2000 | 2000))  # x 2000 on a 64x32 sensor
    elif case == "dat-header-only":
        path.write_bytes(b"% Version 2\n% Width 640\n% Height 480\n")
    elif case == "aedat2-cut-in-a-record":
        data = files["aedat2"].read_bytes()
        path.write_bytes(data[: data.index(b"Davis346B\r\n") + 11 + 12])
    else:
        path.write_bytes(b"% evt 2.0\n% geometry 320x320\n" + np.random.default_rng(0).bytes(4000))
    return path


@pytest.mark.parametrize("case", BAD)
def test_bad_files_are_one_error_line(tmp_path, every_format, case, capfd):
    path = bad_file(tmp_path, every_format, case)
    capfd.readouterr()
    assert stream_main(["info", str(path)]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_a_cut_word_reads_with_allow_truncated(every_format, tmp_path):
    events, files = every_format
    path = tmp_path / "cut.raw"
    path.write_bytes(files["evt3"].read_bytes()[:-1])
    info = file_info(path, allow_truncated=True)
    assert "1 bytes into a 2-byte word" in info["damage"] and info["events"] >= len(events) - 12


# --- large sensors through the pipeline -----------------------------------------------------------------


def test_a_1280x720_raw_file_replays_headless_with_every_event_counted(tiny_checkpoint, stage_env, tmp_path):
    """launch.py --headless --source file:X.raw --speed max --all-windows: the worker maps 1280x720
    to the checkpoint's input (centre crop and area downsampling) and every event arrives."""
    events = random_events(HD, 1_000, 2_001_000, rate_hz=300_000, seed=11)
    path = faery_file(tmp_path / "hd.raw", events, HD, "evt3")
    result = run_launch(stage_env, "--source", f"file:{path}", "--speed", "max", "--all-windows",
                        "--checkpoint", tiny_checkpoint, "--report", tmp_path / "report.json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ended"] == "end of stream" and report["events_in"] == len(events) and report["events_lost"] == 0
    assert report["windows"] > 0



def test_a_headerless_dump_replays_with_format_and_sensor_and_is_refused_without(tiny_checkpoint, stage_env, tmp_path):
    """launch.py --format evt2 --sensor WxH reaches the source stage; without them the launcher
    refuses the file at once with one line (exit 2)."""
    events = random_events(SensorSize(320, 320), 1_000, 1_001_000, count=20_000, seed=5)
    raw = faery_file(tmp_path / "x.raw", events, SensorSize(320, 320), "evt2")
    path = tmp_path / "dump.bin"
    path.write_bytes(raw.read_bytes()[read_header(raw).length :])
    refused = run_launch(stage_env, "--source", f"file:{path}", "--checkpoint", tiny_checkpoint)
    assert refused.returncode == 2 and refused.stderr.count("error:") == 1 and "--format evt2" in refused.stderr
    result = run_launch(stage_env, "--source", f"file:{path}", "--format", "evt2", "--sensor", "320x320", "--speed",
                        "max", "--all-windows", "--checkpoint", tiny_checkpoint, "--report", tmp_path / "r.json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["events_in"] == len(events) and report["events_lost"] == 0
