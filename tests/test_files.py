"""AEDAT4 and tonic .npy files, open_events/file_info, and the `python -m stream info|convert` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dv_processing as dv
import numpy as np
import pytest
from helpers import random_events, run_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.__main__ import main as stream_main
from stream.events import EVENT_DTYPE, EventFormatError, SensorSize, from_dv, make_events
from stream.formats import convert, detect_format, file_info, first_invalid, open_events, read_events
from stream.formats.aedat4 import Aedat4Reader, Aedat4Writer, read_aedat4, write_aedat4
from stream.formats.aedat31 import write_aedat31
from stream.formats.tonic_npy import list_samples, read_tonic_npy, sample_path, write_tonic_npy

REPO = Path(__file__).resolve().parents[1]
DAVIS = SensorSize(346, 260)
DVS128 = SensorSize(128, 128)


# --- AEDAT4 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lz4", "zstd", None])
def test_aedat4_round_trip_through_dv_processing(tmp_path: Path, compression: str | None) -> None:
    events = random_events(DAVIS, 1_000, 501_000, count=50_000)
    path = tmp_path / "rt.aedat4"
    with Aedat4Writer(path, DAVIS, camera_name="DAVIS346_test", compression=compression, packet_events=4096) as writer:
        writer.write(events[:10_000])
        writer.write(events[10_000:10_000])  # empty packets are fine
        writer.write(events[10_000:])
    got, sensor = read_aedat4(path)
    assert sensor == DAVIS and got.dtype == EVENT_DTYPE
    np.testing.assert_array_equal(got, events)

    recording = dv.io.MonoCameraRecording(str(path))  # the real DV reader sees the same file
    assert recording.getCameraName() == "DAVIS346_test"
    assert tuple(recording.getEventResolution()) == (346, 260)
    batches = []
    while (batch := recording.getNextEventBatch()) is not None:
        batches.append(from_dv(batch.numpy()).copy())
    np.testing.assert_array_equal(np.concatenate(batches), events)


def test_aedat4_reads_dv_processing_file(tmp_path: Path) -> None:
    events = random_events(DAVIS, 1_000, 21_000, count=2000)
    path = tmp_path / "dv.aedat4"
    store = dv.EventStore()
    for event in events[:200]:  # dv's writer takes events one by one: keep it small
        store.push_back(int(event["t"]), int(event["x"]), int(event["y"]), bool(event["p"]))
    config = dv.io.MonoCameraWriter.EventOnlyConfig("DVXplorer_test", (346, 260))
    writer = dv.io.MonoCameraWriter(str(path), config)
    writer.writeEvents(store)
    del writer
    with open_events(path) as reader:
        assert (reader.format, reader.camera, reader.sensor_size) == ("aedat4", "DVXplorer_test", DAVIS)
        np.testing.assert_array_equal(np.concatenate(list(reader)), events[:200])


def test_aedat4_writer_rejects_bad_events(tmp_path: Path) -> None:
    with Aedat4Writer(tmp_path / "w.aedat4", DAVIS) as writer:
        writer.write(make_events([10, 20], [0, 1], [0, 1], [1, 0]))
        with pytest.raises(ValueError, match="continue from 20"):
            writer.write(make_events([5], [0], [0], [1]))
        with pytest.raises(ValueError, match="decrease at event 1"):
            writer.write(make_events([30, 25], [0, 0], [0, 0], [1, 1]))
        with pytest.raises(ValueError, match="x must be in 0..345"):
            writer.write(make_events([40], [346], [0], [1]))
    assert read_aedat4(tmp_path / "w.aedat4")[0]["t"].tolist() == [10, 20]
    with pytest.raises(ValueError, match="not open"):
        Aedat4Writer(tmp_path / "x.aedat4", DAVIS).write(make_events([1], [0], [0], [1]))


def test_aedat4_truncated(tmp_path: Path) -> None:
    events = random_events(DAVIS, 1_000, 401_000, count=40_000)
    path = tmp_path / "t.aedat4"
    with Aedat4Writer(path, DAVIS, compression=None, packet_events=10_000) as writer:
        writer.write(events)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cuts the second of four packets
    with pytest.raises(EventFormatError, match="truncated"):
        read_aedat4(path)
    with Aedat4Reader(path, allow_truncated=True) as reader:
        got = reader.read_all()  # every complete packet before the cut (about half the file)
        assert reader.damage
    assert 10_000 <= len(got) <= 20_000
    np.testing.assert_array_equal(got, events[: len(got)])


def test_aedat4_unclosed_writer_is_readable_with_allow_truncated(tmp_path: Path) -> None:
    """A recording whose writer never closed (crash) has no index; every written packet survives."""
    events = random_events(DAVIS, 1_000, 31_000, count=3000)
    path = tmp_path / "crash.aedat4"
    script = (
        "import numpy as np, os; from stream.formats.aedat4 import Aedat4Writer; from stream.events import SensorSize\n"
        f"events = np.load({str(tmp_path / 'e.npy')!r})\n"
        f"w = Aedat4Writer({str(path)!r}, SensorSize(346, 260)).open(); w.write(events); os._exit(0)\n"
    )
    np.save(tmp_path / "e.npy", events)
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    got, _ = read_events(path, allow_truncated=True)
    np.testing.assert_array_equal(got, events)


# --- tonic npy ------------------------------------------------------------------------------


def test_tonic_npy_matches_tonic_dataset_loading(tmp_path: Path) -> None:
    events = random_events(DVS128, 1_000, 7_501_000, count=5000)
    events["t"] -= events["t"] % 1000  # tonic stores whole milliseconds
    path = sample_path(tmp_path, train=True, user=3, lighting="fluorescent_led", label=7)
    write_tonic_npy(path, events)
    assert path == tmp_path / "ibmGestureTrain" / "user03_fluorescent_led" / "7.npy"

    # what tonic 1.7.0's DVSGesture.__getitem__ does with the file
    raw = np.load(path)
    raw[:, 3] *= 1000
    tonic_events = np.lib.recfunctions.unstructured_to_structured(
        raw, np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
    )
    np.testing.assert_array_equal(tonic_events["t"], events["t"])
    np.testing.assert_array_equal(tonic_events["x"], events["x"])
    np.testing.assert_array_equal(tonic_events["p"], events["p"] == 1)

    got, sensor = read_tonic_npy(path)
    assert sensor == DVS128
    np.testing.assert_array_equal(got, events)
    assert list_samples(tmp_path, train=True) == [(path, 3, "fluorescent_led", 7)]


def test_tonic_npy_reads_float_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "0.npy"
    np.save(path, np.array([[1, 2, 1, 0.5], [3, 4, 0, 2.0]], dtype=np.float64))
    got, _ = read_tonic_npy(path)
    assert got["t"].tolist() == [500, 2000] and got["x"].tolist() == [1, 3]


def test_tonic_npy_truncated_and_bad(tmp_path: Path) -> None:
    path = tmp_path / "1.npy"
    write_tonic_npy(path, random_events(DVS128, 1_000, 1_501_000, count=1000))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(EventFormatError, match="truncated"):
        read_tonic_npy(path)
    got, _ = read_tonic_npy(path, allow_truncated=True)
    assert len(got) == 1000 - 4  # 100 bytes = 3.1 rows of 32 bytes lost
    np.save(path, np.zeros((3, 5)))
    with pytest.raises(EventFormatError, match=r"\(N, 4\)"):
        read_tonic_npy(path)
    np.save(path, np.array([[200, 0, 1, 5]]))
    with pytest.raises(EventFormatError, match="x outside 0..127"):
        read_tonic_npy(path)
    np.save(path, np.array([object()] * 4, dtype=object).reshape(1, 4), allow_pickle=True)
    with pytest.raises(EventFormatError):
        read_tonic_npy(path)


# --- open_events / file_info / convert ------------------------------------------------------


@pytest.fixture
def three_files(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    events = random_events(DVS128, 1_000, 45_001_000, count=30_000)
    events["t"] -= events["t"] % 1000
    files = {
        "aedat4": tmp_path / "a.aedat4",
        "aedat3.1": tmp_path / "b.aedat",
        "tonic-npy": tmp_path / "c.npy",
    }
    write_aedat4(files["aedat4"], events, DVS128, "DVS128_test")
    write_aedat31(files["aedat3.1"], events, DVS128)
    write_tonic_npy(files["tonic-npy"], events)
    return {name: (path, events) for name, path in files.items()}


@pytest.mark.parametrize("fmt", ["aedat4", "aedat3.1", "tonic-npy"])
def test_open_events_every_format(three_files: dict, fmt: str, tmp_path: Path) -> None:
    path, events = three_files[fmt]
    renamed = tmp_path / "no_extension"
    renamed.write_bytes(path.read_bytes())  # detection uses magic bytes, not the extension
    assert detect_format(renamed) == fmt
    with open_events(renamed, chunk_events=7000) as reader:
        chunks = list(reader)
        assert reader.format == fmt and reader.sensor_size == DVS128
    sizes = [len(chunk) for chunk in chunks]
    if fmt == "aedat4":  # packets are passed on as they are, cut only where longer than chunk_events
        assert max(sizes) <= 7000 and sum(sizes) == 30_000
    else:
        assert sizes == [7000] * 4 + [2000]
    assert all(chunk.dtype == EVENT_DTYPE for chunk in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), events)
    info = file_info(path)
    assert info["events"] == 30_000 and info["t_start_us"] == int(events["t"][0])
    assert info["duration_s"] == pytest.approx((events["t"][-1] - events["t"][0]) / 1e6)


def test_backwards_timestamps_are_reported(tmp_path: Path) -> None:
    events = make_events([10, 20, 15, 30], [0, 1, 2, 3], [0, 0, 0, 0], [1, 1, 0, 0])
    write_aedat31(tmp_path / "b.aedat", events, DVS128)
    with pytest.raises(EventFormatError, match=r"back in time at event 2 \(20 -> 15"):
        read_events(tmp_path / "b.aedat")
    with open_events(tmp_path / "b.aedat", chunk_events=2) as reader:  # across a chunk boundary
        with pytest.raises(EventFormatError, match="at event 2"):
            list(reader)


@pytest.mark.parametrize("source_fmt", ["aedat3.1", "tonic-npy", "aedat4"])
@pytest.mark.parametrize("suffix", [".aedat4", ".aedat", ".npy"])
def test_convert(three_files: dict, source_fmt: str, suffix: str, tmp_path: Path) -> None:
    source, events = three_files[source_fmt]
    target = tmp_path / f"out{suffix}"
    result = run_module("stream", "convert", str(source), str(target)) if (source_fmt, suffix) == ("aedat3.1", ".aedat4") else None
    if result is not None:
        assert result.returncode == 0, result.stderr
    else:
        convert(source, target)
    got, sensor = read_events(target)
    assert sensor == DVS128
    np.testing.assert_array_equal(got, events)


def test_convert_removes_partial_output(tmp_path: Path) -> None:
    events = make_events([10, 20, 15], [0, 1, 2], [0, 0, 0], [1, 1, 0])
    write_aedat31(tmp_path / "b.aedat", events, DVS128)
    with pytest.raises(EventFormatError):
        convert(tmp_path / "b.aedat", tmp_path / "out.aedat4")
    assert not (tmp_path / "out.aedat4").exists()


def test_info_json_and_text(three_files: dict) -> None:
    path, events = three_files["aedat4"]
    result = run_module("stream", "info", str(path), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {"format", "camera", "width", "height", "events", "t_start_us", "t_end_us", "duration_s", "event_rate"} <= set(info)
    assert (info["format"], info["camera"], info["width"], info["height"], info["events"]) == (
        "aedat4", "DVS128_test", 128, 128, 30_000
    )
    assert info["event_rate"] == pytest.approx(info["events"] / info["duration_s"])
    text = run_module("stream", "info", str(path))
    assert text.returncode == 0 and "format:     aedat4" in text.stdout and "128x128" in text.stdout


BAD_FILES = ["missing", "directory", "empty", "random", "wrong-magic"] + [
    f"{fmt}-{damage}" for fmt in ("aedat4", "aedat3.1", "tonic-npy") for damage in ("truncated-mid", "truncated-header",
                                                                                   "garbage")]  # fmt: skip


def bad_file(tmp_path: Path, three_files: dict, case: str) -> Path:
    """A broken input of kind ``case`` (one of ``BAD_FILES``)."""
    fixed = {"missing": None, "directory": tmp_path, "empty": b"", "random": np.random.default_rng(0).bytes(4000),
             "wrong-magic": b"#!AER-DAT2.0\r\n" + bytes(100)}  # fmt: skip
    if case in fixed:
        if case == "directory":
            return tmp_path
        path = tmp_path / f"{case}.aedat4"
        if fixed[case] is not None:
            path.write_bytes(fixed[case])
        return path
    fmt, damage = next((fmt, case[len(fmt) + 1 :]) for fmt in three_files if case.startswith(fmt + "-"))
    source, _events = three_files[fmt]
    data = source.read_bytes()
    broken = {"truncated-mid": data[: len(data) // 2], "truncated-header": data[:20],
              "garbage": data[:14] + np.random.default_rng(1).bytes(3000)}[damage]  # fmt: skip
    path = tmp_path / f"{case}{source.suffix}"
    path.write_bytes(broken)
    return path


@pytest.mark.parametrize("case", BAD_FILES)
def test_info_on_a_bad_file_is_one_error_line(tmp_path: Path, three_files: dict, case: str, capfd) -> None:
    """In process (``python -m stream``'s own entry point), so native code writing to stderr (a Rust
    panic in a reader) is seen too (capfd)."""
    path = bad_file(tmp_path, three_files, case)
    capfd.readouterr()
    assert stream_main(["info", str(path)]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "panicked" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def test_cli_errors_exit_2_with_one_error_line(tmp_path: Path) -> None:
    result = run_module("stream", "convert", str(tmp_path / "missing.aedat"), str(tmp_path / "o.aedat4"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    result = run_module("stream", "info")
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_allow_truncated_on_cli(three_files: dict, tmp_path: Path) -> None:
    path, events = three_files["aedat3.1"]
    cut = tmp_path / "cut.aedat"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) - 100])
    result = run_module("stream", "info", str(cut), "--json", "--allow-truncated")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["events"] == 8192 * 3 and "truncated" in info["damage"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from([b"#!AER-DAT4.0\r\n", b"#!AER-DAT3.1\r\n", b"\x93NUMPY", b""]), body=st.binary(max_size=400))
def test_fuzz_open_events(tmp_path: Path, magic: bytes, body: bytes) -> None:
    path = tmp_path / "fuzz.bin"
    path.write_bytes(magic + body)
    try:
        events, _ = read_events(path, allow_truncated=bool(len(body) % 2))
    except EventFormatError:
        return
    assert events.dtype == EVENT_DTYPE


def test_real_recording(real_aedat4: Path) -> None:
    info = file_info(real_aedat4)
    assert (info["format"], info["width"], info["height"]) == ("aedat4", 346, 260)
    assert info["events"] > 0 and info["camera"].startswith("DAVIS346")
    recording = dv.io.MonoCameraRecording(str(real_aedat4))  # faery (our reader) and DV agree on every event
    batches = []
    while (batch := recording.getNextEventBatch()) is not None:
        batches.append(from_dv(batch.numpy()).copy())
    np.testing.assert_array_equal(read_events(real_aedat4)[0], np.concatenate(batches))


def test_first_invalid_finds_each_broken_rule() -> None:
    """The one-pass check behind open_events: order, sensor bounds and polarity."""
    good = make_events([1, 2, 2, 5], [0, 9, 3, 0], [0, 0, 7, 3], [0, 1, 1, 0])
    assert first_invalid(good, 1, 10, 8) == (-1, 0)
    assert first_invalid(good, 2, 10, 8) == (0, 1)  # the previous chunk ended at t = 2
    for field, value, problem in (("t", 0, 1), ("x", 10, 2), ("x", -1, 2), ("y", 8, 2), ("p", 2, 3), ("p", -1, 3)):
        bad = good.copy()
        bad[field][2] = value
        assert first_invalid(bad, 0, 10, 8) == (2, problem), (field, value)

