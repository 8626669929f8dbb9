"""Live sources: timeline rules, paced file replay, real dv-processing network stream and camera discovery."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time

import dv_processing as dv
import numpy as np
import pytest
from helpers import free_port, kill, lagging_simulator, regular_events, start_dv_server, start_source, wait_until

from stream.events import EVENT_DTYPE, SensorSize, make_events
from stream.sources import open_source
from stream.sources.base import IDLE_YIELD_S, Source, SourceError, Timeline
from stream.sources.file import FileSource
from stream.sources.live import LIVE_CLOCK_MARGIN_S, CameraSource, NetworkSource, list_cameras

SENSOR = SensorSize(64, 48)
WAIT_S = 10.0  # bound on every wait for a real signal


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
    events = regular_events(SENSOR, 5_000)
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
    events = regular_events(SENSOR, 5_000)
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
    events = regular_events(SENSOR, 20_000, duration_us=60_000_000)  # a minute of recording
    start = time.monotonic()
    out, empties = collect(FileSource.from_events(events, SENSOR, speed=None, chunk_events=3_000))
    assert time.monotonic() - start < 2.0
    assert np.array_equal(out, events) and empties == 0


def test_loop_keeps_time_increasing():
    events = regular_events(SENSOR, 100, duration_us=10_000)
    out, _ = collect(FileSource.from_events(events, SENSOR, speed=None, loop=True), limit=250)
    assert len(out) >= 250
    assert_time_ordered(out)
    assert np.all(np.diff(out["t"]) > 0)
    second_pass = out[100:200]
    assert second_pass["t"][0] == events["t"][-1] + 1
    assert np.array_equal(second_pass["t"] - second_pass["t"][0], events["t"] - events["t"][0])
    assert np.array_equal(second_pass[["x", "y", "p"]], events[["x", "y", "p"]])


def test_start_offset_skips_the_beginning():
    events = regular_events(SENSOR, 1_001, duration_us=100_000)  # one event every 100 µs
    out, _ = collect(FileSource.from_events(events, SENSOR, speed=None, start_offset_us=25_000))
    assert np.array_equal(out, events[250:])


def test_start_offset_past_the_end_is_an_error():
    source = FileSource.from_events(regular_events(SENSOR, 5_000, duration_us=100_000), SENSOR, speed=None, start_offset_us=200_000)
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
    source = FileSource.from_events(regular_events(SENSOR, 5_000, duration_us=30_000_000), SENSOR, speed=1.0)
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
    events = regular_events(SENSOR, 5_000)
    for speed in (0.0, 0.05, 101.0):
        with pytest.raises(ValueError, match="speed"):
            FileSource.from_events(events, SENSOR, speed=speed)
    with pytest.raises(ValueError, match="start_offset_us"):
        FileSource.from_events(events, SENSOR, start_offset_us=-1)


def test_file_source_reads_a_real_aedat4_file(tmp_path):
    from stream.formats.aedat4 import Aedat4Writer

    events = regular_events(SENSOR, 3_000, duration_us=200_000)
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


def test_file_source_refuses_a_cut_file_unless_allow_truncated_then_replays_up_to_the_cut(tmp_path, caplog):
    from stream.formats.aedat4 import Aedat4Writer

    events = regular_events(SENSOR, 40_000, duration_us=400_000)
    path = tmp_path / "cut.aedat4"
    with Aedat4Writer(path, SENSOR) as writer:
        for begin in range(0, len(events), 4_000):  # 10 packets
            writer.write(events[begin : begin + 4_000])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # a recorder that died mid-packet
    with pytest.raises(ValueError, match="truncated.*--allow-truncated reads the events before it"):
        FileSource(path)
    with caplog.at_level("WARNING", logger="stream.sources"):
        with open_source(f"file:{path}", speed=None, allow_truncated=True) as source:
            out, _ = collect(source)
    assert 0 < len(out) < len(events) and len(out) % 4_000 == 0  # whole packets, up to the cut
    assert np.array_equal(out, events[: len(out)])
    assert "past the end" in source.stats.damage
    assert any("is damaged or cut" in record.getMessage() for record in caplog.records)


# --- FileSource control: pause, resume, seek, speed, clock ----------------------------------------


def test_pause_stops_events_and_the_clock_and_resume_continues_without_loss():
    events = regular_events(SENSOR, 10_000, duration_us=1_000_000)
    source = FileSource.from_events(events, SENSOR, speed=4.0)
    out, clocks_while_paused, during_pause = [], [], 0
    paused_at = resumed_at = None
    for chunk in source:
        if len(chunk):
            out.append(chunk)
        if paused_at is None and sum(map(len, out)) >= 1_000:
            source.pause()
            paused_at = time.monotonic()
            assert source.status()["paused"] is True
        elif paused_at is not None and resumed_at is None:
            during_pause += len(chunk)
            clocks_while_paused.append(source.clock_us())
            if time.monotonic() - paused_at > 0.2:
                source.resume()
                resumed_at = time.monotonic()
    assert during_pause == 0 and len(clocks_while_paused) >= 10  # empty chunks kept coming, no events
    assert len(set(clocks_while_paused)) == 1  # the replay clock stopped
    events_out = np.concatenate(out)
    assert np.array_equal(events_out, events)  # nothing lost or repeated
    assert clocks_while_paused[0] <= int(events_out["t"][1_000:][np.searchsorted(events_out["t"][1_000:], clocks_while_paused[0])])
    assert not source.paused and source.status()["position_s"] == pytest.approx(1.0)


def test_seek_forward_and_back_restarts_at_the_target_and_time_keeps_increasing():
    events = regular_events(SENSOR, 20_000, duration_us=2_000_000)  # t = 1.0 .. 3.0 s
    first_us = int(events["t"][0])
    source = FileSource.from_events(events, SENSOR, speed=10.0, chunk_events=2_000)  # chunks of 0.2 s
    assert source.duration_s == pytest.approx(2.0)
    chunks, marks = [], {}
    for chunk in source:
        if not len(chunk):
            continue
        chunks.append(chunk)
        if len(chunks) == 1:
            source.seek(1.5)
            assert source.position_s == pytest.approx(1.5)  # reported at once
            marks["forward"] = len(chunks)
        elif len(chunks) == marks["forward"] + 3:
            source.seek(0.25)
            marks["back"] = len(chunks)
            last_before_back = int(chunk["t"][-1])
    after_forward = chunks[marks["forward"]]
    target = int(np.searchsorted(events["t"], first_us + 1_500_000))
    assert int(after_forward["t"][0]) == int(events["t"][target])  # next events start at the target
    after_back = chunks[marks["back"]]
    start = int(np.searchsorted(events["t"], first_us + 250_000))
    assert int(after_back["t"][0]) > last_before_back  # output time never goes back ...
    for name in ("x", "y", "p"):  # ... but the content is the file's from 0.25 s on
        assert np.array_equal(after_back[name], events[name][start : start + len(after_back)])
    out = np.concatenate(chunks)
    assert np.all(np.diff(out["t"]) >= 0) and source.stats.seeks == 2
    assert source.stats.reads == 2  # the forward seek read on; the seek back read from the start again
    with pytest.raises(ValueError, match="past the end"):
        source.seek(2.5)
    with pytest.raises(ValueError, match=">= 0"):
        source.seek(-1)


def test_seek_within_the_chunk_being_replayed_and_before_the_first_event():
    """A seek to a point inside the chunk being released starts that chunk again at the target
    (no new read of the file); a seek made before anything was read is carried out at once."""
    events = regular_events(SENSOR, 20_000, duration_us=2_000_000)  # one chunk of 20,000 events
    first_us = int(events["t"][0])
    source = FileSource.from_events(events, SENSOR, speed=20.0, chunk_events=len(events), slice_us=10_000)
    source.seek(0.5)  # before iterating
    pieces = []
    for piece in source:
        if not len(piece):
            continue
        pieces.append(piece)
        if len(pieces) == 3:
            source.seek(0.5)  # back, but still inside the chunk being released: replay from 0.5 s
        if len(pieces) == 5:
            source.seek(1.8)  # forward
        if len(pieces) == 6:
            source.stop()
    at = {s: int(np.searchsorted(events["t"], first_us + round(s * 1e6))) for s in (0.5, 1.8)}
    assert int(pieces[0]["t"][0]) == int(events["t"][at[0.5]])
    for name in ("x", "y", "p"):
        assert np.array_equal(pieces[3][name], events[name][at[0.5] : at[0.5] + len(pieces[3])])
        assert np.array_equal(pieces[5][name], events[name][at[1.8] : at[1.8] + len(pieces[5])])
    out = np.concatenate(pieces)
    assert np.all(np.diff(out["t"]) >= 0)
    assert source.stats.seeks == 3 and source.stats.reads == 1


def test_set_speed_changes_the_replay_rate():
    events = regular_events(SENSOR, 40_000, duration_us=4_000_000)
    source = FileSource.from_events(events, SENSOR, speed=1.0)
    samples = {1.0: [], 5.0: []}
    start = time.monotonic()
    for chunk in source:
        now = time.monotonic() - start
        if len(chunk):
            samples[source.speed].append((now, int(chunk["t"][-1])))
        if source.speed == 1.0 and now > 0.25:
            source.set_speed(5.0)
        elif now > 0.5:
            source.stop()
    rates = {}
    for speed, points in samples.items():
        wall, t = np.asarray(points, dtype=np.float64).T
        rates[speed] = np.polyfit(wall, t, 1)[0] / 1e6  # event seconds per wall second
    assert rates[1.0] == pytest.approx(1.0, rel=0.3)
    assert rates[5.0] == pytest.approx(5.0, rel=0.3)
    with pytest.raises(ValueError, match="speed"):
        source.set_speed(1000.0)


def test_clock_advances_through_a_silent_gap_and_never_passes_the_next_event():
    events = make_events([0, 1_000, 2_000, 300_000, 301_000], 0, 0, 1)  # 0.3 s of silence
    source = FileSource.from_events(events, SENSOR, speed=1.0)
    assert source.clock_us() is None  # nothing released yet
    clocks = []
    for chunk in source:
        if not len(chunk) and 2_000 <= (source.clock_us() or 0):
            clocks.append(source.clock_us())
    assert len(clocks) >= 20 and clocks == sorted(clocks)
    assert clocks[0] < 50_000 and 250_000 < clocks[-1] <= 300_000


def test_loop_can_be_switched_while_playing():
    events = regular_events(SENSOR, 1_000, duration_us=100_000)
    source = FileSource.from_events(events, SENSOR, speed=None, loop=True)
    total = 0
    for chunk in source:
        total += len(chunk)
        if total >= 3 * len(events):
            source.set_loop(False)  # ends at the end of this pass
    assert total == 3 * len(events) and source.stats.passes == 3 and source.status()["loop"] is False


# --- dv-processing network stream -----------------------------------------------------------------


def dv_store(events: np.ndarray) -> dv.EventStore:
    store = dv.EventStore()
    for t, x, y, p in events.tolist():  # test helper only: dv.EventStore has no numpy constructor
        store.push_back(t, x, y, bool(p))
    return store


@contextlib.contextmanager
def network_writer(camera: str):
    """A dv-processing NetworkWriter serving an event stream (``camera``, SENSOR) on a free loopback
    port: ``(writer, port)``. On leaving it waits until its clients have gone (close them inside the
    block): dv-processing 2.0.4 deadlocks destroying a NetworkWriter that still counts a client (it
    holds the GIL while its I/O thread needs it)."""
    port = free_port()
    writer = dv.io.NetworkWriter("127.0.0.1", port, dv.io.Stream.EventStream(0, "events", camera, SENSOR))
    try:
        yield writer, port
    finally:
        wait_until(lambda: writer.getClientCount() == 0, "the server to see the client leave")


def test_network_source_reads_a_real_network_writer():
    events = regular_events(SENSOR, 3_000)
    with network_writer("TestCam_42") as (writer, port):
        with open_source(f"dv:127.0.0.1:{port}") as source:
            assert source.sensor_size == SENSOR and "TestCam_42" in source.name and source.connected
            wait_until(lambda: writer.getClientCount() == 1, "the server to accept the client")
            for start in range(0, len(events), 1_000):
                writer.writeEvents(dv_store(events[start : start + 1_000]))
            out, _ = collect(source, limit=len(events))
    assert np.array_equal(out, events)


def test_network_source_without_server_is_a_clear_error():
    with pytest.raises(SourceError, match="cannot connect to DV stream at 127.0.0.1") as error:
        NetworkSource("127.0.0.1", free_port())
    assert "[system:" not in str(error.value) and ".hpp" not in str(error.value)  # no Boost source location


def test_network_source_ends_cleanly_when_server_stops_without_reconnect():
    port = free_port()
    server = start_dv_server(port, 1_000)
    try:
        source = NetworkSource("127.0.0.1", port, reconnect=False)
        chunks = iter(source)
        wait_until(lambda: len(next(chunks)) > 0, "events")
        kill(server)
        start = time.monotonic()
        for _ in chunks:  # ends by itself: the server is gone
            assert time.monotonic() - start < WAIT_S
        assert source.disconnects == 1 and not source.connected
        source.close()
    finally:
        if server.poll() is None:
            kill(server)


def test_network_source_reconnects_after_server_restart():
    port = free_port()
    server = start_dv_server(port, 1_000_000)
    with NetworkSource("127.0.0.1", port, max_backoff_s=0.2) as source:
        chunks = iter(source)
        wait_until(lambda: len(next(chunks)) > 0, "events")
        kill(server)
        wait_until(lambda: len(next(chunks)) == 0 and source.disconnects == 1, "the disconnect")
        server = start_dv_server(port, 1_000)  # a new server whose clock starts earlier
        try:
            seen = []
            wait_until(lambda: seen.append(next(chunks)) or (source.reconnects == 1 and len(seen[-1]) > 0), "reconnection")
            assert source.connected
            after = np.concatenate(seen)
            assert_time_ordered(after)
            assert after["t"][-1] > 1_000_000  # rebased to continue after the first server's events
        finally:
            source.close()
            kill(server)


def test_network_source_stop_while_reconnecting_ends_iteration():
    port = free_port()
    server = start_dv_server(port, 1_000)
    source = NetworkSource("127.0.0.1", port)
    chunks = iter(source)
    wait_until(lambda: len(next(chunks)) > 0, "events")
    kill(server)
    wait_until(lambda: len(next(chunks)) == 0 and source.disconnects == 1, "the disconnect")
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
        from stream.sources.simulated import SimulatorSource  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="simulator source is not available"):
            open_source("sim")
        return
    if list_cameras():
        pytest.skip("a camera is connected here")
    for spec in ("sim", "auto"):
        with open_source(spec) as source:
            assert isinstance(source, Source)


# --- the source stage: clock messages and the control socket, over real sockets ----------------


class StageThread:
    """``stream_source`` on a real source and a real publisher in a thread; a real subscriber
    collects events and clock messages with the times the stage sent them (monotonic s, from the
    wire header: a consumer delayed by a busy machine does not shift them)."""

    def __init__(self, source, endpoint: str) -> None:
        from stream.source_stage import stream_source
        from stream.transport.sockets import Publisher, Subscriber

        self.source = source
        self.stop = threading.Event()
        self.publisher = Publisher(endpoint, stop=self.stop)
        self.subscriber = Subscriber(self.publisher.endpoint, ("events", "status"))
        assert self.publisher.wait_for_subscribers(1, b"events", timeout_s=WAIT_S)
        self.thread = threading.Thread(target=stream_source, args=(source, self.publisher), kwargs={"stop": self.stop})
        self.thread.start()

    def collect(self, seconds: float) -> tuple[list, list]:
        """(sent s, events) and (sent s, clock message) received for ``seconds``."""
        events, clocks = [], []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.subscriber.recv(round(remaining * 1000))
            if message is None:
                continue
            if message.events is not None:
                events.append((message.send_us / 1e6, message.events))
            elif message.data.type == "clock":
                clocks.append((message.send_us / 1e6, message.data.fields))
        return events, clocks

    def close(self) -> None:
        self.stop.set()
        self.source.stop()
        self.thread.join(WAIT_S)
        self.subscriber.close()
        self.publisher.close()


def test_silent_file_sends_advancing_clock_messages_and_a_paused_one_does_not_advance(tmp_path):
    events = make_events([1_000_000, 1_001_000, 1_002_000, 1_700_000], 0, 0, 1)  # 0.7 s of silence
    stage = StageThread(FileSource.from_events(events, SENSOR, speed=1.0), f"ipc://{tmp_path}/events")
    try:
        received, clocks = stage.collect(0.5)
        assert sum(len(e) for _, e in received) == 3
        sent_at = np.array([at for at, _ in clocks])
        times = np.array([clock["time_us"] for _, clock in clocks])
        assert len(clocks) >= 15 and not any(clock["paused"] for _, clock in clocks)
        assert np.all(np.diff(times) >= 0) and times[-1] < 1_700_000  # never past the next event
        assert np.percentile(np.diff(sent_at), 90) < 0.03  # about every 10 ms (20 ms promised; loaded box)
        slope = np.polyfit(sent_at - sent_at[0], times, 1)[0] / 1e6
        assert 0.7 < slope < 1.3  # the replay clock runs with the wall clock at speed 1
        stage.source.pause()
        stage.collect(0.05)  # what was on its way
        _, paused = stage.collect(0.25)
        assert len(paused) >= 8 and all(clock["paused"] for _, clock in paused)
        assert len({clock["time_us"] for _, clock in paused}) == 1  # paused: the clock stands still
    finally:
        stage.close()


def test_silent_network_stream_sends_clock_messages_that_follow_the_wall_clock(tmp_path):
    with network_writer("TestCam_7") as (writer, port):
        stage = None
        try:
            source = NetworkSource("127.0.0.1", port)
            wait_until(lambda: writer.getClientCount() == 1, "the server to accept the client")
            stage = StageThread(source, f"ipc://{tmp_path}/events")
            events = regular_events(SENSOR, 500, duration_us=10_000)
            writer.writeEvents(dv_store(events))
            received, clocks = stage.collect(0.4)  # then the camera is silent
            assert sum(len(e) for _, e in received) == 500
            last_event_at = received[-1][0]
            after = [(at, clock["time_us"]) for at, clock in clocks if at > last_event_at + 0.05]
            assert len(after) >= 10
            for at, time_us in after:  # last event time + wall time since it - the margin (within the delivery jitter)
                expected_us = (at - last_event_at - LIVE_CLOCK_MARGIN_S) * 1e6
                assert time_us - int(events["t"][-1]) == pytest.approx(expected_us, abs=30_000)
        finally:
            if stage is not None:
                stage.close()
                stage.source.close()


def write_aedat4(path, events) -> None:
    from stream.formats.aedat4 import Aedat4Writer

    with Aedat4Writer(path, SENSOR) as writer:
        writer.write(events)


class ControlledStage:
    """The source stage as a process replaying a real AEDAT4 file (6 s, 20 events per ms) at speed
    1, a subscriber to its events and a client of its control socket."""

    def __init__(self, tmp_path) -> None:
        from stream.transport.control import ControlClient
        from stream.transport.sockets import Subscriber

        events = regular_events(SENSOR, 120_000, duration_us=6_000_000)
        self.first_us = int(events["t"][0])
        write_aedat4(tmp_path / "rec.aedat4", events)
        self.stage = start_source(f"file:{tmp_path / 'rec.aedat4'}", f"ipc://{tmp_path}/events", None, "--control",
                                  f"ipc://{tmp_path}/control", stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.subscriber = Subscriber(f"ipc://{tmp_path}/events", ("events", "status"))
        self.client = ControlClient(f"ipc://{tmp_path}/control")
        assert self.subscriber.recv(30_000) is not None  # the stage starts (imports) and begins replaying

    def receive(self, seconds: float) -> tuple[list, list]:
        """(arrival s, events) and clock fields received for ``seconds``."""
        got, clocks = [], []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.subscriber.recv(round(remaining * 1000))
            if message is not None and message.events is not None:
                got.append((time.monotonic(), message.events))
            elif message is not None and message.data.type == "clock":
                clocks.append(message.data.fields)
        return got, clocks

    def ok(self, cmd: dict) -> dict:
        """The stage's status after ``cmd``, which must succeed."""
        reply = self.client.request(cmd, timeout_s=WAIT_S)
        assert reply["ok"], reply
        return reply["status"]

    def close(self) -> tuple[int, str]:
        self.client.close()
        self.subscriber.close()
        self.stage.terminate()
        _, stderr = self.stage.communicate(timeout=WAIT_S)
        return self.stage.returncode, stderr


@pytest.fixture
def controlled_stage(tmp_path):
    stage = ControlledStage(tmp_path)
    try:
        yield stage
    finally:
        code, stderr = stage.close()
    assert code == 0 and "Traceback" not in stderr  # SIGTERM: a clean stop


def replay_rate(packets) -> float:
    """Event time per wall second of (arrival s, events) packets."""
    wall = np.array([at for at, _ in packets])
    t = np.array([int(e["t"][-1]) for _, e in packets], dtype=np.float64)
    return np.polyfit(wall, t, 1)[0] / 1e6


def test_source_stage_control_status_names_its_controls_and_the_replay(controlled_stage):
    status = controlled_stage.ok({"cmd": "status"})
    assert status["controls"] == ["status", "pause", "resume", "seek", "speed", "loop"]
    assert status["speed"] == 1.0 and status["paused"] is False and "rec.aedat4" in status["source"]
    assert status["loop"] is False and controlled_stage.ok({"cmd": "loop", "loop": True})["loop"] is True


def test_source_stage_pause_stops_the_events_and_the_clock(controlled_stage):
    assert controlled_stage.ok({"cmd": "pause"})["paused"] is True
    controlled_stage.receive(0.05)  # packets already on their way
    got, clocks = controlled_stage.receive(0.3)
    assert not got and clocks and all(c["paused"] for c in clocks) and len({c["time_us"] for c in clocks}) == 1


def test_source_stage_seek_while_paused_resumes_at_the_target(controlled_stage):
    controlled_stage.ok({"cmd": "pause"})
    assert controlled_stage.ok({"cmd": "seek", "position_s": 3.0})["position_s"] == pytest.approx(3.0)
    controlled_stage.receive(0.05)  # packets already on their way
    got, _ = controlled_stage.receive(0.2)
    assert not got  # still paused
    controlled_stage.ok({"cmd": "resume"})
    got, _ = controlled_stage.receive(0.3)
    first_after_seek = int(got[0][1]["t"][0])
    assert 0 <= first_after_seek - (controlled_stage.first_us + 3_000_000) < 2_000  # the first slice from the target


def test_source_stage_speed_changes_the_replay_rate(controlled_stage):
    normal = replay_rate(controlled_stage.receive(0.5)[0])
    assert controlled_stage.ok({"cmd": "speed", "speed": 4})["speed"] == 4.0
    controlled_stage.receive(0.05)
    fast = replay_rate(controlled_stage.receive(0.4)[0])
    assert normal == pytest.approx(1.0, rel=0.35) and fast == pytest.approx(4.0, rel=0.35)


def test_source_stage_answers_bad_commands_with_one_line_errors_and_keeps_streaming(controlled_stage):
    client = controlled_stage.client
    # the file's duration is measured in the background: a seek past the end needs it known
    wait_until(lambda: controlled_stage.ok({"cmd": "status"})["duration_s"] is not None,
               "the stage to measure the file's duration", timeout_s=WAIT_S, poll_s=0.05)  # fmt: skip
    garbage = [b"\xff\xfe", b"not json", b"[" * 3000, b"[1, 2]", b'{"cmd": "explode"}',
               b'{"cmd": "seek", "position_s": "soon"}', b'{"cmd": "speed", "speed": 1000}',
               b'{"cmd": "loop", "loop": "yes"}', b'{"cmd": "seek", "position_s": 99}']  # fmt: skip
    for payload in garbage:
        client.socket.send_multipart([b"", payload])
        assert client.socket.poll(WAIT_S * 1000)
        (reply,) = client.replies()
        assert reply["ok"] is False and "\n" not in reply["error"] and reply["error"], payload
    client.socket.send_multipart([b"", b"x" * 10_000])  # over the limit: the socket refuses it
    status = controlled_stage.ok({"cmd": "status"})  # ... and the stage still answers
    assert status["speed"] == 1.0 and status["loop"] is False and status["paused"] is False  # nothing applied
    got, _ = controlled_stage.receive(0.2)
    assert got and controlled_stage.stage.poll() is None  # and keeps streaming


# --- a clock is a promise: (events, clock) on the wire under delays, every source ------------------


class WireStage:
    """``stream_source`` on a real source and publisher in a thread; a real subscriber in another
    thread records every message in arrival order (one ZeroMQ pipe keeps the send order).

    Args:
        source: the source.
        endpoint: where the publisher binds.
        nodrop: back-pressure publisher (a slow reader slows the stage down instead of losing packets).
        reader_pause_s: the reader waits this long after each message (a slow consumer).
        reader_start_s: the reader starts reading this long after the stage (a stalled consumer).
    """

    def __init__(self, source, endpoint: str, *, nodrop: bool = False, reader_pause_s: float = 0.0,
                 reader_start_s: float = 0.0, **options) -> None:  # fmt: skip
        from stream.transport.sockets import Publisher, Subscriber

        self.source = source
        self.stop = threading.Event()
        self.publisher = Publisher(endpoint, stop=self.stop, nodrop=nodrop, sndhwm=8)
        self.subscriber = Subscriber(self.publisher.endpoint, ("events", "status"), rcvhwm=8)
        assert self.publisher.wait_for_subscribers(1, b"events", timeout_s=WAIT_S)
        self.messages: list = []  # ("events", array) or a Status (type, fields), in arrival order
        self.counters = None
        self.error: BaseException | None = None
        self._reading = threading.Event()
        self._reader_pause_s = reader_pause_s
        self._reader_start_s = reader_start_s
        self._reader = threading.Thread(target=self._read)
        self._reader.start()
        self.thread = threading.Thread(target=self._run, kwargs=options)
        self.thread.start()

    def _run(self, **options) -> None:
        from stream.source_stage import stream_source

        try:
            self.counters = stream_source(self.source, self.publisher, stop=self.stop, stats_interval_s=0.2, **options)
        except BaseException as error:  # handed to the test
            self.error = error

    def _read(self) -> None:
        self._reading.wait(self._reader_start_s)  # the stalled consumer
        while not self._reading.is_set():
            message = self.subscriber.recv(20)
            if message is None:
                continue
            self.messages.append(("events", message.events) if message.events is not None else message.data)
            if self._reader_pause_s:
                self._reading.wait(self._reader_pause_s)  # the slow consumer

    def of_type(self, kind: str) -> list:
        return [data for name, data in list(self.messages) if name == kind]

    def check_promise(self) -> tuple[int, int]:
        """Asserts that no event comes after a clock message announcing a later time; (events, clocks)."""
        announced, events, clocks = None, 0, 0
        for kind, data in list(self.messages):
            if kind == "clock":
                assert announced is None or data["time_us"] >= announced  # never back
                announced, clocks = data["time_us"], clocks + 1
            elif kind == "events":
                assert announced is None or int(data["t"].min()) >= announced, (int(data["t"].min()), announced)
                events += len(data)
        return events, clocks

    def leave(self) -> None:
        """The subscriber stops reading and closes its socket (as a worker does after the end)."""
        self._reading.set()
        self._reader.join(WAIT_S)
        self.subscriber.close()

    def close(self) -> None:
        self.stop.set()
        self.source.stop()
        self.thread.join(WAIT_S)
        self.leave()
        self.publisher.close()


def gapped_events() -> np.ndarray:
    """Bursts of 300 events (over 20 ms) every 60 ms for 1.2 s: silent stretches for clock messages."""
    starts = 1_000_000 + 60_000 * np.arange(20)
    t = (starts[:, None] + np.linspace(0, 20_000, 300).astype(np.int64)[None, :]).ravel()
    index = np.arange(len(t))
    return make_events(t, index % SENSOR.width, index % SENSOR.height, index % 2)


def test_stage_publisher_counts_the_subscriptions_that_deliver_a_topic(tmp_path):
    import zmq

    from stream.transport.sockets import Publisher

    context = zmq.Context.instance()
    with Publisher(f"ipc://{tmp_path}/pub") as publisher:
        sockets = {}
        for prefix in (b"prediction", b"pred", b"", b"events", b"predictions"):
            sockets[prefix] = context.socket(zmq.SUB)
            sockets[prefix].setsockopt(zmq.SUBSCRIBE, prefix)
            sockets[prefix].connect(publisher.endpoint)
        try:
            # "predictions" is delivered to "predictions", "prediction", "pred" and ""
            assert publisher.wait_for_subscribers(4, b"predictions", timeout_s=WAIT_S)
            assert publisher.subscribed(b"predictions") == 4
            assert publisher.subscribed(b"prediction") == 3 and publisher.subscribed(b"events") == 2
            assert publisher.subscribed(b"truth") == 1  # only the empty prefix
            sockets.pop(b"").close(linger=0)
            assert publisher.wait_for_unsubscribed(b"truth", timeout_s=WAIT_S)  # the empty prefix left
            assert publisher.subscribed(b"truth") == 0 and publisher.subscribed(b"prediction") == 2
        finally:
            for sub in sockets.values():
                sub.close(linger=0)


def test_control_socket_with_keys_answers_only_clients_with_a_trusted_key(tmp_path):
    """``--control tcp://...`` with ``--curve-keys``: a CurveZMQ server like the events endpoint."""
    import shutil
    import threading

    from stream.sources.simulated import SimulatorSource
    from stream.transport.control import ControlClient, ControlServer
    from stream.transport.keys import CurveConfig, generate_keys

    generate_keys(tmp_path / "stage", "stage")
    generate_keys(tmp_path / "stranger", "stranger")
    shutil.copy(tmp_path / "stage" / "stage.key", tmp_path / "stranger" / "stage.key")
    keys = CurveConfig.from_directory(tmp_path / "stage")
    stranger = CurveConfig.from_directory(tmp_path / "stranger", "stranger", server="stage")
    source = SimulatorSource(speed=None)  # answers status; never iterated here
    stop = threading.Event()
    with ControlServer("tcp://127.0.0.1:*", curve=keys) as server:
        assert server.curve is keys and server.socket.curve_server

        def serve() -> None:  # the server socket is used in this thread only
            while not stop.is_set():
                if server.socket.poll(20):
                    server.poll(source)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with ControlClient(server.endpoint, curve=keys) as client:
                assert client.request({"cmd": "status"}, timeout_s=WAIT_S)["status"]["source"] == source.name
            for curve in (stranger, None):
                with ControlClient(server.endpoint, curve=curve) as outsider, pytest.raises(TimeoutError):
                    outsider.request({"cmd": "pause"}, timeout_s=1.0)
        finally:
            stop.set()
            thread.join()
    assert server.commands == 1  # the outsiders' commands never reached it


def test_file_source_clock_is_a_promise_under_a_slow_consumer(tmp_path):
    events = gapped_events()
    # long slices: a slice is released when the replay clock reaches its last event, so the clock
    # passes the slice's first event while the stage waits for it
    source = FileSource.from_events(events, SENSOR, speed=2.0, slice_us=20_000)
    stage = WireStage(source, f"ipc://{tmp_path}/events", nodrop=True, reader_pause_s=0.004)
    try:
        wait_until(lambda: stage.of_type("end") or stage.error, "the end of the replay")
        received, clocks = stage.check_promise()
        assert received == len(events) and clocks >= 10 and stage.error is None
        assert stage.of_type("end")[0]["late_events"] == 0  # the replay clock itself never ran ahead
    finally:
        stage.close()


def test_simulator_clock_is_a_promise_while_its_renderer_lags(tmp_path):
    stage = WireStage(lagging_simulator(seed=5, speed=1.0, duration_s=0.6), f"ipc://{tmp_path}/events", nodrop=True)
    try:
        wait_until(lambda: stage.of_type("end") or stage.error, "the end of the simulated stream")
        received, clocks = stage.check_promise()
        end = stage.of_type("end")[0]
        assert received == end["events_sent"] > 1_000 and clocks >= 10
        assert end["late_events"] == 0  # the exact clock waited for the renderer
    finally:
        stage.close()
        stage.source.close()


class WithoutClock:
    """A real source seen without its ``clock_us()``: the stage has to estimate the clock."""

    def __init__(self, source) -> None:
        self._source, self.name, self.sensor_size, self.speed = source, source.name, source.sensor_size, source.speed

    def __iter__(self):
        return iter(self._source)

    def stop(self) -> None:
        self._source.stop()


def test_estimated_clock_that_runs_ahead_is_kept_by_raising_late_events(tmp_path):
    simulator = lagging_simulator(seed=5, speed=1.0, duration_s=0.6)
    stage = WireStage(WithoutClock(simulator), f"ipc://{tmp_path}/events", nodrop=True)
    try:
        wait_until(lambda: stage.of_type("end") or stage.error, "the end of the simulated stream")
        received, clocks = stage.check_promise()  # holds on the wire although the estimate ran ahead
        end = stage.of_type("end")[0]
        assert received == end["events_sent"] and clocks >= 10
        assert end["late_events"] > 0  # the estimate ran ahead of the lagging renderer: raised, none lost
    finally:
        stage.close()
        simulator.close()


def test_raising_late_events_copies_them_with_zero_padding():
    """The padding goes on the wire: the copy made to raise late events must not carry stale heap
    bytes (a structured ``copy()`` leaves them there in NumPy 2)."""
    from stream.source_stage import StageClock

    clock = StageClock(FileSource.from_events(regular_events(SENSOR, 10, duration_us=1_000), SENSOR, speed=None))
    events = np.zeros(1_000, EVENT_DTYPE)
    events["t"] = np.arange(1_000) * 10
    clock.admit(events[:1], 0.0)
    clock.announced_us = 5_000
    garbage = np.full(1 << 16, 0x2020202020202020, np.int64)  # leave stale bytes on the heap
    del garbage
    raised, late = clock.admit(events, 1.0)
    assert late == 500 and raised is not events and int(raised["t"][0]) == 5_000 and int(events["t"][0]) == 0
    assert np.array_equal(raised["t"][500:], events["t"][500:])
    assert not raised.view(np.uint8).reshape(-1, 16)[:, 13:].any()


def test_network_source_clock_is_a_promise_when_events_arrive_late(tmp_path):
    with network_writer("TestCam_9") as (writer, port):
        stage = None
        try:
            source = NetworkSource("127.0.0.1", port)
            wait_until(lambda: writer.getClientCount() == 1, "the server to accept the client")
            stage = WireStage(source, f"ipc://{tmp_path}/events")
            first = regular_events(SENSOR, 500, start_us=1_000_000, duration_us=10_000)
            writer.writeEvents(dv_store(first))
            last_us = int(first["t"][-1])
            # silence: the stage announces the clock running on with the wall clock ...
            wait_until(lambda: any(c["time_us"] > last_us + 50_000 for c in stage.of_type("clock")), "clock messages")
            # ... then events stamped before that clock arrive (a camera's batch delivered late)
            late = regular_events(SENSOR, 400, start_us=last_us + 1, duration_us=40_000)
            writer.writeEvents(dv_store(late))
            wait_until(lambda: sum(len(e) for e in stage.of_type("events")) == 900, "the late events")
            received, clocks = stage.check_promise()
            assert received == 900 and clocks >= 3
            assert source.raised_to_clock > 0  # the source raised them to the clock it had given out
            stage.stop.set()
            stage.thread.join(WAIT_S)
            assert stage.counters.late_events == 0  # so the stage had nothing to fix
        finally:
            if stage is not None:
                stage.close()
                stage.source.close()


def test_end_message_waits_for_a_full_queue_longer_than_the_reliable_send_limit(tmp_path, monkeypatch):
    import stream.transport.sockets as stage_module

    monkeypatch.setattr(stage_module, "RELIABLE_SEND_S", 0.2)  # a reliable message's usual limit, made short
    events = regular_events(SENSOR, 2_000_000, duration_us=2_000_000)  # 31 packets of 1 MiB
    source = FileSource.from_events(events, SENSOR, speed=None)
    stage = WireStage(source, f"ipc://{tmp_path}/events", reader_start_s=1.0)  # dropping socket, reader stalled 1 s
    try:
        wait_until(lambda: stage.of_type("end") or stage.error, "the end message")
        end = stage.of_type("end")[0]
        assert end["events_sent"] == len(events) and stage.error is None
        received, _ = stage.check_promise()
        assert received < len(events)  # the queue was full: packets were dropped, the end was not
        assert stage.thread.is_alive()  # the stage waits for its subscriber to leave ...
        stage.leave()
        stage.thread.join(WAIT_S)  # ... and returns once it has
        assert not stage.thread.is_alive() and stage.counters.ended
    finally:
        stage.close()


# --- lost sources: reconnection (one loop for camera and network), stats, giving up ----------------


def test_stage_stats_tell_a_lost_and_reconnected_network_source_and_the_clock_holds(tmp_path):
    port = free_port()
    server = start_dv_server(port, 1_000_000)
    stage = WireStage(NetworkSource("127.0.0.1", port, max_backoff_s=0.2), f"ipc://{tmp_path}/events")
    try:
        wait_until(lambda: stage.of_type("events"), "events")
        assert stage.of_type("stats") == [] or stage.of_type("stats")[-1]["connected"] is True
        kill(server)
        wait_until(lambda: any(not s["connected"] for s in stage.of_type("stats")), "a stats message saying lost")
        lost = next(s for s in stage.of_type("stats") if not s["connected"])
        assert lost["disconnects"] == 1 and lost["reconnects"] == 0
        clocks_while_lost = len(stage.of_type("clock"))
        server = start_dv_server(port, 1_000)  # a new server whose clock starts earlier
        wait_until(lambda: stage.of_type("stats")[-1]["connected"], "a stats message saying reconnected")
        back = stage.of_type("stats")[-1]
        assert back["disconnects"] == 1 and back["reconnects"] == 1
        count = len(stage.of_type("events"))
        wait_until(lambda: len(stage.of_type("events")) > count, "events after the reconnection")
        assert len(stage.of_type("clock")) > clocks_while_lost  # the clock went on while the server was away
        stage.check_promise()  # and events after the reconnection come after every clock announced
    finally:
        stage.close()
        stage.source.close()
        kill(server)


def test_stage_with_a_source_that_gives_up_reconnecting_exits_with_an_error_and_no_end(tmp_path):
    from stream.sources.base import SourceLost

    port = free_port()
    server = start_dv_server(port, 1_000)
    source = NetworkSource("127.0.0.1", port, max_backoff_s=0.05, give_up_after_s=0.3)
    stage = WireStage(source, f"ipc://{tmp_path}/events")
    try:
        wait_until(lambda: stage.of_type("events"), "events")
        kill(server)
        stage.thread.join(WAIT_S)
        assert isinstance(stage.error, SourceLost) and "did not come back" in str(stage.error)
        assert stage.of_type("end") == []  # a lost source is not the end of the data
        assert not source.connected and source.disconnects == 1 and source.reconnects == 0
    finally:
        stage.close()
        source.close()


def test_shared_reconnect_loop_reopens_a_camera_by_serial_and_gives_up_with_the_camera_error(caplog):
    """No camera here: the loop camera and network share runs on a real network reader, and
    reopens through the camera opener (``open_camera(serial)``), as an unplugged camera does."""
    from stream.sources.live import _LiveInput, open_camera

    if list_cameras():
        pytest.skip("a camera is connected here")
    port = free_port()
    server = start_dv_server(port, 1_000)
    reader = dv.io.NetworkReader("127.0.0.1", port)
    live = _LiveInput(reader, lambda: open_camera("DXA00093")[0], "camera DVXplorer_DXA00093", reconnect=True,
                      max_backoff_s=0.05, give_up_after_s=0.3)  # fmt: skip
    chunks = live.chunks()
    try:
        wait_until(lambda: len(next(chunks)) > 0, "events")
        assert live.connected
        kill(server)
        start = time.monotonic()
        with caplog.at_level("WARNING", logger="stream.sources"):
            rest = list(chunks)  # reconnects (empty chunks) until it gives up
        assert 0.3 <= time.monotonic() - start < WAIT_S and rest and all(len(chunk) == 0 for chunk in rest)
        assert not live.connected and live.disconnects == 1 and live.reconnects == 0
        lines = [record.getMessage() for record in caplog.records]
        assert "camera DVXplorer_DXA00093 lost; reconnecting" in lines
        assert any("giving up after 0.3 s: no event camera connected" in line for line in lines)
    finally:
        live.stop.set()
        live.release()
        if server.poll() is None:
            kill(server)


def test_camera_stage_without_the_camera_is_one_error_line(tmp_path):
    command = [sys.executable, "-m", "stream.source_stage", "--source", "camera:NOPE123", "--pub", f"ipc://{tmp_path}/events"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("no event camera connected" in errors[0] or "no camera with serial 'NOPE123'" in errors[0])


def test_live_sources_reject_bad_reconnect_arguments_before_connecting():
    with pytest.raises(ValueError, match="max_backoff_s"):
        NetworkSource("127.0.0.1", free_port(), max_backoff_s=0)
    with pytest.raises(ValueError, match="give_up_after_s"):
        CameraSource("X", give_up_after_s=-1)


def test_timeline_promise_raises_earlier_events_to_it_and_never_goes_back():
    timeline = Timeline()
    timeline.apply(make_events([100, 200], 0, 0, 1))
    timeline.promise(500)
    timeline.promise(400)  # a promise never goes back
    out = timeline.apply(make_events([300, 450, 600, 700], 0, 0, 1))
    assert out["t"].tolist() == [500, 500, 600, 700] and timeline.raised == 2 and timeline.dropped_backward == 0
    unchanged = make_events([800, 900], 0, 0, 1)
    assert timeline.apply(unchanged) is unchanged  # nothing to raise: the input itself
