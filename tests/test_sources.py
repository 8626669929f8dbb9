"""Live sources: timeline rules, paced file replay, real dv-processing network stream and camera discovery."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import dv_processing as dv
import numpy as np
import pytest

from stream.events import EVENT_DTYPE, SensorSize, make_events
from stream.sources import (
    IDLE_YIELD_S,
    CameraSource,
    FileSource,
    NetworkSource,
    Source,
    SourceError,
    Timeline,
    list_cameras,
    open_source,
)

SENSOR = SensorSize(64, 48)
WAIT_S = 10.0  # bound on every wait for a real signal


def synthetic_events(duration_us: int = 500_000, count: int = 5_000, start_us: int = 1_000_000) -> np.ndarray:
    """``count`` events evenly spread over ``duration_us`` (first at start_us, last at start_us + duration_us)."""
    t = start_us + np.linspace(0, duration_us, count).astype(np.int64)
    index = np.arange(count)
    return make_events(t, index % SENSOR.width, index % SENSOR.height, index % 2)


def collect(source, limit: int | None = None) -> tuple[np.ndarray, int]:
    """All events a source yields (up to ``limit``), and how many empty chunks it yielded."""
    chunks, empties, total = [], 0, 0
    for chunk in source:
        assert chunk.dtype == EVENT_DTYPE and chunk.ndim == 1
        empties += len(chunk) == 0
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total >= limit:
            source.stop()
    events = np.concatenate(chunks) if chunks else np.zeros(0, EVENT_DTYPE)
    return events, empties


def assert_time_ordered(events: np.ndarray) -> None:
    assert np.all(np.diff(events["t"]) >= 0)


# --- Timeline -----------------------------------------------------------------------------------


def test_timeline_passes_ordered_events_through_unchanged():
    timeline = Timeline(max_jump_us=1_000_000)
    events = synthetic_events()
    chunk = events[:100]
    assert timeline.apply(chunk) is chunk  # nothing to fix: no copy
    assert np.array_equal(timeline.apply(events[100:]), events[100:])
    assert (timeline.dropped_backward, timeline.jumps_compressed, timeline.restarts) == (0, 0, 0)


def test_timeline_compresses_forward_jumps_across_chunks():
    timeline = Timeline(max_jump_us=1_000)
    first = timeline.apply(make_events([0, 10, 20], 0, 0, 1))
    second = timeline.apply(make_events([3_600_000_000, 3_600_000_010], 0, 0, 1))  # an hour later
    assert first["t"].tolist() == [0, 10, 20]
    assert second["t"].tolist() == [1_020, 1_030]
    assert timeline.jumps_compressed == 1


def test_timeline_drops_small_backward_steps_and_restarts_on_big_ones():
    timeline = Timeline(max_jump_us=1_000)
    out = timeline.apply(make_events([100, 200, 150, 250, 300, 5, 15], 0, 0, 1))
    # 150 goes back 50 µs: dropped; 5 goes back 295 µs: dropped; no restart below max_jump_us
    assert out["t"].tolist() == [100, 200, 250, 300]
    assert timeline.dropped_backward == 3
    out = timeline.apply(make_events([-10_000, -9_990], 0, 0, 1))  # back 10 ms: a clock restart
    assert out["t"].tolist() == [300 + (-10_000 + 10_000 - 15 + 15), 310]
    assert timeline.restarts == 1


def test_timeline_rebase_continues_after_last_event():
    timeline = Timeline()
    timeline.apply(make_events([500, 600], 0, 0, 1))
    timeline.rebase()
    assert timeline.apply(make_events([0, 50], 0, 0, 1))["t"].tolist() == [601, 651]
    timeline.rebase()
    # already ahead of the last event: the shift in force (601 µs) is kept, not reset
    assert timeline.apply(make_events([10_000], 0, 0, 1))["t"].tolist() == [10_601]


# --- FileSource -----------------------------------------------------------------------------------


def test_paced_replay_at_10x_takes_a_tenth_of_the_recording():
    events = synthetic_events(duration_us=500_000)
    source = FileSource.from_events(events, SENSOR, speed=10.0, slice_us=2_000)
    assert isinstance(source, Source)
    start = time.monotonic()
    late_by = []
    out = []
    for chunk in source:
        if len(chunk):
            due = (int(chunk["t"][-1]) - int(events["t"][0])) / 10e6
            late_by.append(time.monotonic() - start - due)
            assert chunk["t"][-1] - chunk["t"][0] < 2_000  # sub-chunks of one slice
            out.append(chunk)
    elapsed = time.monotonic() - start
    assert np.array_equal(np.concatenate(out), events)
    assert 0.045 <= elapsed < 0.5, elapsed  # 0.05 s of pacing; generous upper bound for a busy box
    assert min(late_by) > -0.002  # never released before its time (monotonic clock)


def test_as_fast_as_possible_yields_everything_unchanged():
    events = synthetic_events(duration_us=60_000_000, count=20_000)  # a minute of recording
    start = time.monotonic()
    out, empties = collect(FileSource.from_events(events, SENSOR, speed=None, chunk_events=3_000))
    assert time.monotonic() - start < 2.0
    assert np.array_equal(out, events) and empties == 0


def test_loop_keeps_time_increasing():
    events = synthetic_events(duration_us=10_000, count=100)
    out, _ = collect(FileSource.from_events(events, SENSOR, speed=None, loop=True), limit=250)
    assert len(out) >= 250
    assert_time_ordered(out)
    assert np.all(np.diff(out["t"]) > 0)
    second_pass = out[100:200]
    assert second_pass["t"][0] == events["t"][-1] + 1
    assert np.array_equal(second_pass["t"] - second_pass["t"][0], events["t"] - events["t"][0])
    assert np.array_equal(second_pass[["x", "y", "p"]], events[["x", "y", "p"]])


def test_start_offset_skips_the_beginning():
    events = synthetic_events(duration_us=100_000, count=1_001)  # one event every 100 µs
    out, _ = collect(FileSource.from_events(events, SENSOR, speed=None, start_offset_us=25_000))
    assert np.array_equal(out, events[250:])


def test_start_offset_past_the_end_is_an_error():
    source = FileSource.from_events(synthetic_events(100_000), SENSOR, speed=None, start_offset_us=200_000)
    with pytest.raises(SourceError, match="past the last event"):
        collect(source)


def test_long_gap_is_compressed_and_empty_chunks_show_time_passing():
    events = make_events([0, 1_000, 3_600_000_000, 3_600_001_000], 0, 0, 1)  # an hour of silence
    source = FileSource.from_events(events, SENSOR, speed=1.0, max_jump_us=200_000)
    start = time.monotonic()
    out, empties = collect(source)
    elapsed = time.monotonic() - start
    assert out["t"].tolist() == [0, 1_000, 201_000, 202_000]
    assert source.stats.jumps_compressed == 1
    assert 0.19 <= elapsed < 2.0
    assert empties >= 2  # yielded while waiting through the 0.2 s gap


def test_stop_from_another_thread_ends_iteration_promptly():
    source = FileSource.from_events(synthetic_events(duration_us=30_000_000), SENSOR, speed=1.0)
    first_chunk = threading.Event()
    stop_called = []

    def stopper() -> None:
        if first_chunk.wait(WAIT_S):
            stop_called.append(time.monotonic())
            source.stop()

    thread = threading.Thread(target=stopper)
    thread.start()
    with source:
        for _ in source:  # 30 s of recording: only stop() can end this loop in time
            first_chunk.set()
    ended = time.monotonic()
    thread.join(WAIT_S)
    assert stop_called and ended - stop_called[0] < 2 * IDLE_YIELD_S + 0.5


def test_bad_replay_arguments():
    events = synthetic_events()
    for speed in (0.0, 0.05, 101.0):
        with pytest.raises(ValueError, match="speed"):
            FileSource.from_events(events, SENSOR, speed=speed)
    with pytest.raises(ValueError, match="start_offset_us"):
        FileSource.from_events(events, SENSOR, start_offset_us=-1)


def test_file_source_reads_a_real_aedat4_file(tmp_path):
    from stream.aedat4 import Aedat4Writer

    events = synthetic_events(duration_us=200_000, count=3_000)
    path = tmp_path / "walk.aedat4"
    with Aedat4Writer(path, SENSOR) as writer:
        writer.write(events)
    with open_source(f"file:{path}", speed=None) as source:
        assert source.sensor_size == SENSOR and "walk.aedat4" in source.name
        out, _ = collect(source)
    assert np.array_equal(out, events)


def test_file_source_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        FileSource(tmp_path / "absent.aedat4")


# --- dv-processing network stream -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dv_store(events: np.ndarray) -> dv.EventStore:
    store = dv.EventStore()
    for t, x, y, p in events.tolist():  # test helper only: dv.EventStore has no numpy constructor
        store.push_back(t, x, y, bool(p))
    return store


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        threading.Event().wait(0.001)  # polling a C++ object that offers no signal to wait on


def test_network_source_reads_a_real_network_writer():
    port = free_port()
    writer = dv.io.NetworkWriter("127.0.0.1", port, dv.io.Stream.EventStream(0, "events", "TestCam_42", SENSOR))
    events = synthetic_events(count=3_000)
    try:
        with open_source(f"dv:127.0.0.1:{port}") as source:
            assert source.sensor_size == SENSOR and "TestCam_42" in source.name and source.connected
            wait_for(lambda: writer.getClientCount() == 1, "the server to accept the client")
            for start in range(0, len(events), 1_000):
                writer.writeEvents(dv_store(events[start : start + 1_000]))
            out, _ = collect(source, limit=len(events))
        assert np.array_equal(out, events)
    finally:
        # dv-processing 2.0.4: destroying a NetworkWriter that still counts a client deadlocks
        # (it holds the GIL while its I/O thread needs it), so wait until it has seen the client go.
        wait_for(lambda: writer.getClientCount() == 0, "the server to see the client leave")
        del writer


def test_network_source_without_server_is_a_clear_error():
    with pytest.raises(SourceError, match="cannot connect to DV stream at 127.0.0.1"):
        NetworkSource("127.0.0.1", free_port())


SERVER = """
import sys, time
import dv_processing as dv
port, start = int(sys.argv[1]), int(sys.argv[2])
writer = dv.io.NetworkWriter("127.0.0.1", port, dv.io.Stream.EventStream(0, "events", "Server_1", (64, 48)))
print("ready", flush=True)
t = start
while True:
    if writer.getClientCount():
        store = dv.EventStore()
        for i in range(10):
            store.push_back(t, i, i, True)
            t += 100
        writer.writeEvents(store)
    time.sleep(0.005)
"""


def start_server(port: int, start_us: int) -> subprocess.Popen:
    """A NetworkWriter in its own process, so that it can really disappear (killed)."""
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(start_us)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def stop_server(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(WAIT_S)
    process.stdout.close()


def test_network_source_ends_cleanly_when_server_stops_without_reconnect():
    port = free_port()
    server = start_server(port, 1_000)
    try:
        source = NetworkSource("127.0.0.1", port, reconnect=False)
        chunks = iter(source)
        wait_for(lambda: len(next(chunks)) > 0, "events")
        stop_server(server)
        start = time.monotonic()
        for _ in chunks:  # ends by itself: the server is gone
            assert time.monotonic() - start < WAIT_S
        assert source.disconnects == 1 and not source.connected
        source.close()
    finally:
        if server.poll() is None:
            stop_server(server)


def test_network_source_reconnects_after_server_restart():
    port = free_port()
    server = start_server(port, 1_000_000)
    with NetworkSource("127.0.0.1", port, max_backoff_s=0.2) as source:
        chunks = iter(source)
        wait_for(lambda: len(next(chunks)) > 0, "events")
        stop_server(server)
        wait_for(lambda: len(next(chunks)) == 0 and source.disconnects == 1, "the disconnect")
        server = start_server(port, 1_000)  # a new server whose clock starts earlier
        try:
            seen = []
            wait_for(lambda: seen.append(next(chunks)) or (source.reconnects == 1 and len(seen[-1]) > 0), "reconnection")
            assert source.connected
            after = np.concatenate(seen)
            assert_time_ordered(after)
            assert after["t"][-1] > 1_000_000  # rebased to continue after the first server's events
        finally:
            source.close()
            stop_server(server)


def test_network_source_stop_while_reconnecting_ends_iteration():
    port = free_port()
    server = start_server(port, 1_000)
    source = NetworkSource("127.0.0.1", port)
    chunks = iter(source)
    wait_for(lambda: len(next(chunks)) > 0, "events")
    stop_server(server)
    wait_for(lambda: len(next(chunks)) == 0 and source.disconnects == 1, "the disconnect")
    source.stop()
    start = time.monotonic()
    rest = list(chunks)  # ends: stop() interrupts the backoff wait
    assert time.monotonic() - start < 2 * IDLE_YIELD_S + 0.5
    assert all(len(chunk) == 0 for chunk in rest)
    source.close()


# --- camera and specs ------------------------------------------------------------------------------


def test_list_cameras_calls_real_discovery():
    cameras = list_cameras()
    assert isinstance(cameras, list)
    assert all(isinstance(model, str) and isinstance(serial, str) for model, serial in cameras)


def test_camera_none_connected_message():
    if list_cameras():
        pytest.skip("a camera is connected here")
    with pytest.raises(SourceError, match="no event camera connected"):
        CameraSource()
    with pytest.raises(SourceError, match="no event camera connected"):
        open_source("camera:DXA00093")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "unknown source"),
        ("webcam", "unknown source"),
        ("sim:3", "unknown source"),
        ("camera:", "needs a serial"),
        ("file:", "needs a path"),
        ("dv:127.0.0.1", "expected dv:HOST:PORT"),
        ("dv:127.0.0.1:http", "expected dv:HOST:PORT"),
        ("dv::7777", "expected dv:HOST:PORT"),
        ("dv:127.0.0.1:70000", "port must be 1..65535"),
    ],
)
def test_open_source_spec_errors(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_open_source_sim_and_auto():
    try:
        from stream.simulator import SimulatorSource  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="simulator source is not available"):
            open_source("sim")
        return
    if list_cameras():
        pytest.skip("a camera is connected here")
    for spec in ("sim", "auto"):
        with open_source(spec) as source:
            assert isinstance(source, Source)
