"""stream.binning: tonic as the oracle, streaming == offline, mapping/flips, bad input, CLI."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tonic

from helpers import random_events
from stream.commands import frames_main
from stream.binning import (
    MIN_EVENTS_PER_THREAD,
    BackgroundActivityFilter,
    EventFilter,
    FlickerFilter,
    HotPixelFilter,
    SensorMapping,
    StreamingBinner,
    WindowSpec,
    apply_normalisation,
    bin_window,
    check_filters,
    check_normalisation,
    default_threads,
    warmup,
)
from stream.binning import _pieces  # the split the threads work on
from stream.events import SensorSize, empty_events, make_events, to_tonic


def random_chunks(events: np.ndarray, seed: int, pieces: int) -> list[np.ndarray]:
    cuts = np.sort(np.random.default_rng(seed).integers(0, len(events) + 1, pieces - 1))
    return np.split(events, cuts)


def identity(sensor: tuple[int, int]) -> SensorMapping:
    return SensorMapping.create(sensor, sensor)


# --- tonic as the oracle ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sensor", [(128, 128), (40, 24)])
@pytest.mark.parametrize("include_incomplete", [False, True])
def test_equal_to_tonic_to_frame(seed: int, sensor: tuple[int, int], include_incomplete: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    bin_us = int(rng.integers(1_000, 50_000))
    count, start_us = int(rng.integers(1, 30_000)), int(rng.integers(0, 10**6))
    events = random_events(sensor, start_us, 2 * 10**6, count=count, seed=seed)
    oracle = tonic.transforms.ToFrame(
        sensor_size=(*sensor, 2), time_window=bin_us, include_incomplete=include_incomplete
    )(to_tonic(events))
    # tonic: bins of [t0 + k*bin_us, t0 + (k+1)*bin_us) from the first event, [T, P, H, W] int16;
    # without include_incomplete the last partial bin is left out, so T comes from tonic.
    assert oracle.shape[1:] == (2, sensor[1], sensor[0])
    frames = bin_window(events, identity(sensor), WindowSpec(oracle.shape[0], bin_us, bin_us), int(events["t"][0]))
    assert frames.dtype == np.float32
    np.testing.assert_array_equal(frames, oracle)


def test_layout_matches_tonic_on_one_event() -> None:
    """Channel = polarity, then rows = y, columns = x, on a non-square sensor."""
    events = make_events([5, 6], [3, 7], [1, 2], [1, 0])
    oracle = tonic.transforms.ToFrame(sensor_size=(10, 4, 2), time_window=10, include_incomplete=True)(to_tonic(events))
    frames = bin_window(events, identity((10, 4)), WindowSpec(1, 10, 10), 5)
    assert frames.shape == oracle.shape == (1, 2, 4, 10)
    assert frames[0, 1, 1, 3] == 1 and frames[0, 0, 2, 7] == 1 and frames.sum() == 2
    np.testing.assert_array_equal(frames, oracle)


# --- offline ------------------------------------------------------------------------------------


def test_bin_window_ignores_order_window_and_sensor_bounds() -> None:
    events = random_events((64, 48), 0, 100_000, count=5_000, seed=7)
    spec = WindowSpec(10, 5_000, 5_000)
    mapping = identity((64, 48))
    expected = bin_window(events, mapping, spec, 20_000)
    shuffled = events[np.random.default_rng(1).permutation(len(events))]
    np.testing.assert_array_equal(bin_window(shuffled, mapping, spec, 20_000), expected)
    inside = (events["t"] >= 20_000) & (events["t"] < 70_000)
    assert expected.sum() == inside.sum()
    junk = make_events([30_000] * 5, [-1, 64, 0, 3, 3], [0, 0, -5, 48, 3], [1, 1, 1, 0, 2])
    out = np.full(expected.shape, 7.0, dtype=np.float32)
    result = bin_window(np.concatenate([events, junk], dtype=events.dtype), mapping, spec, 20_000, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


def test_bin_window_rejects_bad_out_and_bad_events() -> None:
    spec = WindowSpec(2, 10, 10)
    with pytest.raises(ValueError, match="out must be"):
        bin_window(empty_events(), identity((8, 8)), spec, 0, out=np.zeros((2, 2, 8, 9), np.float32))
    with pytest.raises(ValueError, match="EVENT_DTYPE"):
        bin_window(np.zeros(3), identity((8, 8)), spec, 0)


# --- threads ------------------------------------------------------------------------------------

THREADED = 3 * MIN_EVENTS_PER_THREAD + 1_000  # enough events for three pieces


def add_at_frames(events: np.ndarray, sensor: tuple[int, int], spec: WindowSpec, start_us: int) -> np.ndarray:
    """Independent reference: np.add.at over the valid events of the window (identity mapping)."""
    k = (events["t"] - start_us) // spec.bin_us
    valid = (k >= 0) & (k < spec.bins) & (events["x"] >= 0) & (events["x"] < sensor[0])
    valid &= (events["y"] >= 0) & (events["y"] < sensor[1]) & ((events["p"] == 0) | (events["p"] == 1))
    frames = np.zeros((spec.bins, 2, sensor[1], sensor[0]), dtype=np.float32)
    np.add.at(frames, (k[valid], events["p"][valid], events["y"][valid], events["x"][valid]), 1.0)
    return frames


def threaded_events(seed: int) -> np.ndarray:
    """Sorted events from before to after a 16 x 1 ms window at 0, with some outside the 40x30
    sensor and some of polarity 2 sprinkled in."""
    events = random_events((42, 31), -3_000, 19_000, count=THREADED, seed=seed)
    events["p"][::997] = 2
    return events


def test_pieces_cut_sorted_events_at_bin_edges() -> None:
    events = threaded_events(0)
    edges, cuts = _pieces(events["t"], 0, 1_000, 0, 16, threads=8)
    assert len(edges) == len(cuts) == 4  # three pieces: THREADED // MIN_EVENTS_PER_THREAD
    assert edges[0] == 0 and edges[-1] == 16 and edges == sorted(set(edges))
    assert cuts[0] == 0 and cuts[-1] == len(events) and cuts == sorted(cuts)
    bins = events["t"] // 1_000
    for c in range(3):
        piece = bins[cuts[c] : cuts[c + 1]]
        inside = piece[(piece >= 0) & (piece < 16)]
        assert inside.min() >= edges[c] and inside.max() < edges[c + 1]
        assert len(piece) >= MIN_EVENTS_PER_THREAD // 2
    few = MIN_EVENTS_PER_THREAD + 5  # too few events for two pieces: one
    assert _pieces(events["t"][:few], 0, 1_000, 0, 16, threads=8) == ([0, 16], [0, few])
    assert _pieces(events["t"], 0, 1_000, 0, 16, threads=1) == ([0, 16], [0, len(events)])


@pytest.mark.parametrize("order", ["sorted", "shuffled", "swapped"])
def test_threads_bin_every_event_once_in_any_order(order: str) -> None:
    events = threaded_events(1)
    if order == "shuffled":
        events = events[np.random.default_rng(2).permutation(len(events))]
    elif order == "swapped":  # sorted but for a few events moved into other pieces' bins
        for i in (10, 150_000, 250_000):
            events[[i, -i]] = events[[-i, i]]
    spec = WindowSpec(16, 1_000, 1_000)
    if order != "sorted":  # some events lie in another piece's bins: the serial pass must bin them
        edges, cuts = _pieces(events["t"], 0, spec.bin_us, 0, spec.bins, threads=3)
        bins = events["t"] // spec.bin_us
        misplaced = sum(
            np.count_nonzero((bins[a:b] >= 0) & (bins[a:b] < 16) & ((bins[a:b] < lo) | (bins[a:b] >= hi)))
            for a, b, lo, hi in zip(cuts, cuts[1:], edges, edges[1:])
        )
        assert len(edges) > 2 and misplaced >= 4
    mapping = identity((40, 30))
    expected = add_at_frames(events, (40, 30), spec, 0)
    assert expected.sum() > 0.6 * len(events)  # 16 of the 22 ms, 40x30 of the 42x31 pixels
    for threads in (1, 2, 3, 8):
        np.testing.assert_array_equal(bin_window(events, mapping, spec, 0, threads=threads), expected)


def test_streaming_large_chunk_same_with_threads_and_counted() -> None:
    events = threaded_events(3)
    events = events[events["t"] >= 0]
    spec = WindowSpec(16, 1_000, 1_000)
    mapping = SensorMapping.create((40, 30), (20, 15))
    results = []
    for threads in (1, 3):
        for emit in ("all", "latest"):
            binner = StreamingBinner(mapping, spec, threads=threads)
            windows = binner.push(events[:100]) + binner.push(events[100:], now_us=19_000, emit=emit)
            results.append((windows, binner.stats))
    for (windows, stats), (threaded_windows, threaded_stats) in zip(results[:2], results[2:]):
        assert stats == threaded_stats
        assert [w.end_us for w in windows] == [w.end_us for w in threaded_windows]
        for window, threaded in zip(windows, threaded_windows):
            np.testing.assert_array_equal(window.frames, threaded.frames)
            assert window.events == threaded.events
    windows, stats = results[2]
    assert len(windows) == 19 and stats.dropped_out_of_sensor > 0 and stats.dropped_bad_polarity > 0
    assert stats.events_binned + stats.dropped_out_of_sensor + stats.dropped_bad_polarity == len(events)
    np.testing.assert_array_equal(windows[-1].frames, bin_window(events, mapping, spec, 3_000))


def test_threads_argument_is_checked() -> None:
    assert default_threads() >= 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            bin_window(empty_events(), identity((8, 8)), WindowSpec(2, 10, 10), 0, threads=bad)
        with pytest.raises(ValueError, match="threads"):
            StreamingBinner(identity((8, 8)), WindowSpec(2, 10, 10), threads=bad)


def test_window_spec_validation_and_round_trip() -> None:
    spec = WindowSpec(16, 50_000, 100_000)
    assert spec.window_us == 800_000
    assert WindowSpec.from_dict(spec.to_dict()) == spec
    for bad in [(0, 10, 10), (4, -1, 10), (4, 10, 15), (4, 10, 0), (4.0, 10, 10), (True, 10, 10)]:
        with pytest.raises(ValueError, match="WindowSpec"):
            WindowSpec(*bad)
    with pytest.raises(ValueError, match="missing"):
        WindowSpec.from_dict({"bins": 4, "bin_us": 10})


# --- sensor mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sensor", "crop"),
    [((346, 260), (43, 0, 260, 260)), ((640, 480), (80, 0, 480, 480)), ((320, 240), (40, 0, 240, 240)), ((128, 128), (0, 0, 128, 128))],
)
def test_area_mapping_to_128(sensor: tuple[int, int], crop: tuple[int, int, int, int]) -> None:
    mapping = SensorMapping.create(sensor, (128, 128))
    assert mapping.crop == crop
    x0, y0, crop_w, crop_h = crop
    # every sensor column in the crop lands in exactly one input column, in order, covering 0..127
    columns = mapping.x_table[x0 : x0 + crop_w]
    assert columns.min() == 0 and columns.max() == 127 and np.all(np.diff(columns) >= 0)
    assert set(np.bincount(columns)) <= {crop_w // 128, -(-crop_w // 128)}
    assert np.all(mapping.x_table[:x0] == -1) and np.all(mapping.x_table[x0 + crop_w :] == -1)
    # counts are summed: every event in the crop is counted once; events outside it are unmapped
    events = random_events(sensor, 0, 1_000, count=20_000, seed=3)
    frames = bin_window(events, mapping, WindowSpec(1, 1_000, 1_000), 0)
    in_crop = (events["x"] >= x0) & (events["x"] < x0 + crop_w) & (events["y"] >= y0) & (events["y"] < y0 + crop_h)
    assert frames.shape == (1, 2, 128, 128) and frames.sum() == in_crop.sum()
    binner = StreamingBinner(mapping, WindowSpec(1, 1_000, 1_000))
    binner.push(events, now_us=1_000)
    assert binner.stats.events_binned == in_crop.sum()
    assert binner.stats.events_unmapped == len(events) - in_crop.sum()


def test_nearest_mapping_samples_one_pixel_per_input_pixel() -> None:
    mapping = SensorMapping.create((640, 480), (128, 96), method="nearest")
    assert mapping.crop == (0, 0, 640, 480)
    for table, side in ((mapping.x_table, 128), (mapping.y_table, 96)):
        used = table[table >= 0]
        assert np.array_equal(np.sort(used), np.arange(side))  # each input pixel: one sensor pixel
    assert mapping.x_table[2] == 0 and mapping.x_table[7] == 1 and mapping.x_table[0] == -1  # centres of 5-px cells


def test_mapping_round_trip_with_another_sensor_and_errors() -> None:
    mapping = SensorMapping.create((128, 128), (64, 64), flip_y=True, method="nearest")
    stored = mapping.to_dict()
    assert stored == {"input_width": 64, "input_height": 64, "method": "nearest", "flip_x": False, "flip_y": True}
    assert SensorMapping.from_dict(stored, (128, 128)) == mapping
    live = SensorMapping.from_dict(stored, SensorSize(346, 260))
    assert live.sensor_size == (346, 260) and live.input_size == (64, 64) and live.flip_y
    with pytest.raises(ValueError, match="upsampling"):
        SensorMapping.create((64, 64), (128, 128))
    with pytest.raises(ValueError, match="method"):
        SensorMapping.create((64, 64), (32, 32), method="bilinear")
    with pytest.raises(ValueError, match="flip_x"):
        SensorMapping.create((64, 64), (32, 32), flip_x="yes")
    with pytest.raises(ValueError, match="missing"):
        SensorMapping.from_dict({"input_width": 64}, (128, 128))


def rotating_dot(sensor: tuple[int, int], turns: float, duration_us: int, radius: float) -> np.ndarray:
    """A dot turning clockwise on screen (x right, y down: the angle grows), 3x3 pixels per step."""
    steps = np.arange(2_000)
    angle = 2 * np.pi * turns * steps / len(steps)
    cx = sensor[0] / 2 + radius * np.cos(angle)
    cy = sensor[1] / 2 + radius * np.sin(angle)
    dx, dy = np.meshgrid(np.arange(-1, 2), np.arange(-1, 2))
    x = np.rint(cx[:, None] + dx.ravel()).astype(np.int16).ravel()
    y = np.rint(cy[:, None] + dy.ravel()).astype(np.int16).ravel()
    t = np.repeat(steps * duration_us // len(steps), 9)
    return make_events(t, x, y, np.ones_like(t))


def clockwise_turns(frames: np.ndarray) -> float:
    """Signed turns of the ON centroid around the frame centre across bins (>0: clockwise on screen)."""
    height, width = frames.shape[2:]
    yy, xx = np.mgrid[0:height, 0:width]
    on = frames[:, 1]
    mass = on.sum(axis=(1, 2))
    assert np.all(mass > 0)
    cx = (on * xx).sum(axis=(1, 2)) / mass - (width - 1) / 2
    cy = (on * yy).sum(axis=(1, 2)) / mass - (height - 1) / 2
    return float(np.unwrap(np.arctan2(cy, cx))[-1] - np.arctan2(cy, cx)[0]) / (2 * np.pi)


@pytest.mark.parametrize(
    ("flip_x", "flip_y", "direction"), [(False, False, 1), (False, True, -1), (True, False, -1), (True, True, 1)]
)
@pytest.mark.parametrize("sensor", [(346, 260), (640, 480)])
def test_flips_turn_clockwise_into_counter_clockwise(sensor, flip_x: bool, flip_y: bool, direction: int) -> None:
    events = rotating_dot(sensor, turns=0.75, duration_us=160_000, radius=sensor[1] / 3)
    mapping = SensorMapping.create(sensor, (128, 128), flip_x=flip_x, flip_y=flip_y)
    frames = bin_window(events, mapping, WindowSpec(16, 10_000, 10_000), 0)
    turns = clockwise_turns(frames)
    assert turns == pytest.approx(direction * 0.75 * 15 / 16, abs=0.05)


# --- streaming == offline -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "spec", [WindowSpec(8, 1_000, 1_000), WindowSpec(5, 2_000, 4_000), WindowSpec(3, 1_000, 5_000), WindowSpec(1, 700, 700)]
)
def test_streaming_equals_offline_with_random_chunking(seed: int, spec: WindowSpec) -> None:
    rng = np.random.default_rng(seed)
    events = random_events((32, 24), int(rng.integers(0, 50_000)), 120_000, count=6_000, seed=seed)
    # a silent stretch longer than the window (and than two strides) in the middle
    events["t"][events["t"] > 80_000] += 3 * spec.window_us + 2 * spec.stride_us
    mapping = SensorMapping.create((32, 24), (16, 12))
    binner = StreamingBinner(mapping, spec)
    windows = []
    for chunk in random_chunks(events, seed, int(rng.integers(1, 60))):
        windows += binner.push(chunk, now_us=int(chunk["t"][-1]) if len(chunk) and rng.random() < 0.3 else None)
    end_time = int(events["t"][-1]) + spec.window_us + spec.stride_us
    windows += binner.push(empty_events(), now_us=end_time)
    ends = [w.end_us for w in windows]
    assert ends == sorted(set(ends)) and all(e % spec.stride_us == 0 for e in ends)
    for window in windows:
        expected = bin_window(events, mapping, spec, window.end_us - spec.window_us)
        np.testing.assert_array_equal(window.frames, expected)
        assert window.events == expected.sum()
    # every grid end from the first event to the end is emitted, unless it lies wholly in the gap
    first = events["t"][0] // spec.stride_us + 1
    all_ends = np.arange(first, end_time // spec.stride_us + 1) * spec.stride_us
    holds_data = [np.any((events["t"] >= e - spec.window_us) & (events["t"] < e)) for e in all_ends]
    stats = binner.stats
    assert stats.gaps >= 1 and stats.windows_in_gaps > 0
    assert set(all_ends[holds_data]) <= set(ends)
    # the first window of each silence is emitted, empty: the consumer sees the silence begin
    empty_after_data = [e for e, was, now in zip(all_ends[1:], holds_data, holds_data[1:]) if was and not now]
    assert empty_after_data and set(empty_after_data) <= set(ends)
    assert stats.windows_emitted + stats.windows_in_gaps == len(all_ends)
    # every event is accounted for exactly once
    if spec.stride_us <= spec.window_us:
        assert stats.events_binned == len(events) and stats.events_unused == 0
    assert stats.events_binned + stats.events_unused == len(events)


@pytest.mark.parametrize("seed", range(3))
def test_emit_latest_skips_cheaply_and_equals_offline(seed: int) -> None:
    spec = WindowSpec(4, 1_000, 2_000)
    events = random_events((16, 16), 0, 200_000, count=20_000, seed=seed)
    mapping = identity((16, 16))
    binner = StreamingBinner(mapping, spec)
    windows = []
    for chunk in random_chunks(events, seed, 12):
        latest = binner.push(chunk, emit="latest")
        assert len(latest) <= 1
        windows += latest
    for window in windows:
        np.testing.assert_array_equal(window.frames, bin_window(events, mapping, spec, window.end_us - spec.window_us))
    stats = binner.stats
    due = events["t"][-1] // spec.stride_us - events["t"][0] // spec.stride_us
    assert stats.windows_emitted == len(windows) and stats.windows_emitted + stats.windows_skipped == due
    assert stats.events_unused > 0 and stats.events_binned + stats.events_unused == len(events)


def test_normalisation_identical_in_both_modes() -> None:
    events = random_events((8, 8), 0, 40_000, count=30_000, seed=5)
    mapping = identity((8, 8))
    spec = WindowSpec(4, 5_000, 5_000)
    for norm in ({"kind": "clip", "max": 8}, {"kind": "log1p"}):
        binner = StreamingBinner(mapping, spec, normalisation=norm)
        windows = binner.push(events, now_us=50_000)
        assert windows
        for window in windows:
            start = window.end_us - spec.window_us
            raw = bin_window(events, mapping, spec, start)
            assert raw.max() > 8
            np.testing.assert_array_equal(window.frames, bin_window(events, mapping, spec, start, normalisation=norm))
            np.testing.assert_array_equal(window.frames, apply_normalisation(raw.copy(), norm))
    assert check_normalisation(None) is None
    for bad in ({"kind": "clip"}, {"kind": "clip", "max": 0}, {"kind": "zscore"}, "log1p"):
        with pytest.raises(ValueError, match="normalisation|clip"):
            check_normalisation(bad)


# --- bad input ----------------------------------------------------------------------------------


def test_out_of_sensor_and_bad_polarity_dropped_and_counted() -> None:
    spec = WindowSpec(2, 100, 100)
    binner = StreamingBinner(identity((10, 10)), spec)
    events = make_events([0, 10, 20, 30, 40, 50], [1, 10, -1, 2, 3, 4], [1, 1, 1, 10, 3, 4], [1, 1, 0, 0, -1, 0])
    (window,) = binner.push(events, now_us=100)
    assert binner.stats.dropped_out_of_sensor == 3 and binner.stats.dropped_bad_polarity == 1
    assert binner.stats.events_binned == 2 and window.events == 2
    assert window.frames[1, 1, 1, 1] == 1 and window.frames[1, 0, 4, 4] == 1 and window.frames.sum() == 2


def test_backwards_timestamps_dropped_never_binned() -> None:
    spec = WindowSpec(4, 100, 100)
    mapping = identity((4, 4))
    binner = StreamingBinner(mapping, spec)
    first = make_events([1_000, 1_050, 1_150], [0, 0, 0], [0, 0, 0], [1, 1, 1])
    assert [w.end_us for w in binner.push(first)] == [1_100]
    backwards = make_events([1_100, 1_200, 1_160, 1_300, 900], [1, 1, 2, 1, 3], [1, 1, 2, 1, 3], [0, 0, 0, 0, 0])
    windows = binner.push(backwards) + binner.push(empty_events(), now_us=1_300)
    assert binner.stats.dropped_backwards == 3  # 1_100 < 1_150, 1_160 < 1_200, 900
    assert binner.push(empty_events(), now_us=1_250) == []  # now going backwards is ignored
    kept = make_events([1_000, 1_050, 1_150, 1_200, 1_300], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 0, 0])
    assert [w.end_us for w in windows] == [1_200, 1_300]
    for window in windows:
        np.testing.assert_array_equal(window.frames, bin_window(kept, mapping, spec, window.end_us - spec.window_us))
    assert windows[-1].frames[:, :, 2, 2].sum() == 0 and windows[-1].frames[:, :, 3, 3].sum() == 0


def test_one_hour_jump_is_bounded_work_and_clears_the_ring() -> None:
    spec = WindowSpec(16, 1_000, 1_000)
    mapping = identity((8, 8))
    binner = StreamingBinner(mapping, spec)
    before = random_events((8, 8), 0, 50_000, count=1_000, seed=1)
    binner.push(before)
    hour = 3_600_000_000
    after = make_events([hour + 10, hour + 500, hour + 1_500], [1, 2, 3], [1, 2, 3], [1, 1, 1])
    started = time.perf_counter()
    windows = binner.push(after)
    assert time.perf_counter() - started < 0.5  # not one window per millisecond of the hour
    stats = binner.stats
    assert stats.gaps == 1 and stats.windows_in_gaps > 3_500_000
    # windows holding the data before the gap are emitted, one empty one, then only the one after it
    assert len(windows) == 16 + 1 + 1 and windows[15].end_us == 65_000 and windows[-1].end_us == hour + 1_000
    assert windows[16].end_us == 66_000 and windows[16].events == 0 and windows[16].frames.sum() == 0
    last = windows[-1]
    assert last.events == 2 and last.frames.sum() == 2  # the ring was cleared: nothing from before the hour
    np.testing.assert_array_equal(last.frames, bin_window(after, mapping, spec, hour + 1_000 - spec.window_us))
    # a now_us jump of an hour with no events: same, bounded
    windows = binner.push(empty_events(), now_us=2 * hour)
    assert stats.gaps == 2 and len(windows) == 16 + 1
    assert windows[-2].end_us == hour + 17_000 and windows[-2].frames.sum() == 1
    assert windows[-1].end_us == hour + 18_000 and windows[-1].events == 0


def test_a_silence_up_to_gap_us_emits_its_windows_empty_and_a_longer_one_does_not() -> None:
    """A step model's binner (one-bin windows, ``gap_us`` = the model's window): the bins of a short
    silence are emitted, empty, so the model is fed every bin; past ``gap_us`` they are not."""
    spec = WindowSpec(1, 1_000, 1_000)
    binner = StreamingBinner(identity((4, 4)), spec, gap_us=4_000)
    windows = binner.push(make_events([500, 3_500], [1, 2], [1, 2], [1, 1]))
    assert [(w.end_us, w.events) for w in windows] == [(1_000, 1), (2_000, 0), (3_000, 0)]
    windows = binner.push(make_events([20_000], [3], [3], [1]), now_us=20_000)
    # 3_500 + gap_us = 7_500: the windows ending 4_000-7_000 are emitted, then the first beyond (8_000),
    # and 9_000-20_000 lie in the gap
    assert [(w.end_us, w.events) for w in windows] == [(4_000, 1), (5_000, 0), (6_000, 0), (7_000, 0), (8_000, 0)]
    assert binner.stats.gaps == 1 and binner.stats.windows_in_gaps == 12
    (window,) = binner.push(empty_events(), now_us=21_000)
    assert window.end_us == 21_000 and window.events == 1 and window.frames[0, 1, 3, 3] == 1
    binner.reset()
    assert binner.gap_us == 4_000
    with pytest.raises(ValueError, match="gap_us"):
        StreamingBinner(identity((4, 4)), WindowSpec(4, 1_000, 1_000), gap_us=1_000)


def test_empty_chunks_and_now_us_advance_time() -> None:
    spec = WindowSpec(4, 10, 10)
    binner = StreamingBinner(identity((4, 4)), spec)
    assert binner.push(empty_events()) == []
    assert binner.push(empty_events(), now_us=100) == []  # the first time seen: nothing before it
    assert [w.end_us for w in binner.push(empty_events(), now_us=135)] == [110, 120, 130]
    binner.push(make_events([137], [1], [1], [1]))
    (window,) = binner.push(empty_events(), now_us=140)
    assert window.end_us == 140 and window.events == 1 and window.frames[3, 1, 1, 1] == 1
    with pytest.raises(ValueError, match="emit"):
        binner.push(empty_events(), emit="oldest")


def test_read_only_events_are_accepted_and_give_the_same_results() -> None:
    """Events decoded from received bytes (``np.frombuffer``) are read-only: every kernel takes them."""
    sensor, spec = (64, 48), WindowSpec(4, 1_000, 2_000)
    events = random_events(sensor, 0, 20_000, count=5_000, seed=7)
    events["t"][100] = 0  # one event going back in time: the streaming binner drops it (a copy)
    read_only = np.frombuffer(events.tobytes(), dtype=events.dtype)
    assert not read_only.flags.writeable
    mapping = SensorMapping.create(sensor, (32, 32))
    np.testing.assert_array_equal(bin_window(read_only, mapping, spec, 4_000), bin_window(events, mapping, spec, 4_000))
    writable_binner, read_only_binner = StreamingBinner(mapping, spec), StreamingBinner(mapping, spec)
    expected, got = writable_binner.push(events, emit="all"), read_only_binner.push(read_only, emit="all")
    assert [w.end_us for w in got] == [w.end_us for w in expected] and len(got) == 9
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.frames, b.frames)
    assert read_only_binner.stats == writable_binner.stats and read_only_binner.stats.dropped_backwards == 1
    filters = (lambda: BackgroundActivityFilter(sensor, 500), lambda: HotPixelFilter(sensor, period_us=5_000, max_events=2),
               lambda: FlickerFilter(sensor))  # fmt: skip
    for make_filter in filters:
        np.testing.assert_array_equal(make_filter()(read_only), make_filter()(events))
    assert not read_only.flags.writeable  # nothing was written into the caller's array


def test_warmup_and_window_emission_shapes() -> None:
    warmup()
    spec = WindowSpec(16, 1_000, 1_000)
    binner = StreamingBinner(SensorMapping.create((346, 260), (128, 128)), spec)
    windows = binner.push(random_events((346, 260), 0, 20_000, count=10_000, seed=2), now_us=20_000)
    assert all(w.frames.shape == (16, 2, 128, 128) and w.frames.dtype == np.float32 for w in windows)
    assert not np.shares_memory(windows[0].frames, windows[1].frames)


# --- noise filters ------------------------------------------------------------------------------


def test_background_activity_filter_keeps_supported_events_across_chunks() -> None:
    noise = BackgroundActivityFilter((10, 10), dt_us=100)
    first = make_events([0, 10, 20, 30], [5, 5, 0, 9], [5, 5, 0, 9], [1, 1, 1, 1])  # same pixel twice: no support
    assert len(noise(first)) == 0
    second = make_events([50, 60, 200, 210, 400, 400], [6, 0, 6, 7, 20, 3], [6, 1, 6, 7, 1, -1], [0, 0, 1, 1, 1, 1])
    kept = noise(second)
    # (6,6)@50 <- (5,5)@10; (0,1)@60 <- (0,0)@20; (6,6)@200: neighbours last fired at 10 -> too old;
    # (7,7)@210 <- (6,6)@200; outside the sensor: dropped
    assert kept["t"].tolist() == [50, 60, 210]
    assert noise.events_in == 10 and noise.events_kept == 3


def test_adaptive_background_activity_window_follows_the_noise_floor_and_not_the_chunking() -> None:
    """``adapt``: every half second the noise floor (10th percentile of the pixels' rates over the
    last 2 s) sets the window, ``max * (knee / floor) ** power`` above the knee, the longest below it.
    Uniform noise is the worst case for a mean: on a 10 Hz-per-pixel sensor the floor reads 7 Hz
    (Poisson counts over 2 s), which the knee and power are fitted against (README)."""
    sensor, adapt = (64, 64), {"knee_hz": 1.0, "power": 1.5}
    noisy = random_events(sensor, 0, 4_000_000, rate_hz=10.0 * 64 * 64, seed=3)
    whole = BackgroundActivityFilter(sensor, 5_000, adapt)
    assert whole.noise_hz is None and whole.dt_us == 5_000  # no block has ended yet
    kept = whole(noisy)
    assert 6.0 <= whole.noise_hz <= 8.0
    assert whole.dt_us == round(5_000 * (1.0 / whole.noise_hz) ** 1.5)  # about 270 µs
    fixed = BackgroundActivityFilter(sensor, 5_000)
    assert len(kept) < 0.5 * len(fixed(noisy))  # the fixed 5 ms window keeps far more of the noise
    chunked = BackgroundActivityFilter(sensor, 5_000, adapt)  # live chunks, one block edge inside some
    pieces = [chunked(chunk) for chunk in np.array_split(noisy, 997)]
    np.testing.assert_array_equal(np.concatenate(pieces), kept)
    at_edges = BackgroundActivityFilter(sensor, 5_000, adapt)  # chunks cut exactly at the block edges
    edges = np.searchsorted(noisy["t"], np.arange(500_000, 4_000_000, 500_000))
    np.testing.assert_array_equal(np.concatenate([at_edges(chunk) for chunk in np.split(noisy, edges)]), kept)
    assert (chunked.noise_hz, chunked.dt_us) == (whole.noise_hz, whole.dt_us)
    live = StreamingBinner(SensorMapping.create(sensor, (16, 16)), WindowSpec(4, 10_000, 10_000),
                           filters={"background_activity_us": 5_000, "background_activity_adapt": adapt})  # fmt: skip
    assert live.event_filter.background_activity() == {"window_us": 5_000, "noise_floor_hz": None}
    live.push(noisy)  # what the worker reports in its status
    assert live.event_filter.background_activity() == {"window_us": whole.dt_us, "noise_floor_hz": whole.noise_hz}
    assert EventFilter({"flicker": {"min_hz": 80, "max_hz": 150}}, sensor).background_activity() is None
    quiet = BackgroundActivityFilter(sensor, 5_000, adapt)  # 0.2 Hz: below the knee, the longest window
    quiet(random_events(sensor, 0, 4_000_000, rate_hz=0.2 * 64 * 64, seed=4))
    assert quiet.noise_hz < 1.0 and quiet.dt_us == 5_000
    # A silence (no events: a paused source) is not taken for a quiet sensor: the estimate keeps what it saw
    whole(random_events(sensor, 10_000_000, 10_400_000, count=10, seed=5))  # 6 s later, within one block
    assert whole.noise_hz >= 6.0 and whole.dt_us < 1_000
    whole(random_events(sensor, 10_600_000, 13_000_000, rate_hz=0.2 * 64 * 64, seed=6))  # then a quiet room
    assert whole.noise_hz < 1.0 and whole.dt_us == 5_000
    # A first block seen in part counts for the time it was seen (50 Hz from 0.3 s: 0.2 s of the first block)
    late = BackgroundActivityFilter(sensor, 5_000, adapt)
    late(random_events(sensor, 300_000, 600_000, rate_hz=50.0 * 64 * 64, seed=7))
    assert late.noise_hz >= 25.0  # 0.5 s instead of 0.2 s would read about 12 Hz
    # Events back in time or outside the sensor: counted in the current block, dropped, never an error
    odd = BackgroundActivityFilter(sensor, 5_000, adapt)
    odd(make_events([100, 50, 60, 600_000], [1, 70, 2, 3], [1, 1, -1, 3], [0, 1, 0, 1]))
    assert odd.noise_hz == 0.0 and odd.dt_us == 5_000


def test_adaptive_background_activity_specs_round_trip_and_need_a_window() -> None:
    from training.train import format_filters, parse_filters

    spec = parse_filters("flicker:80:150,ba:5000:1:1.5")
    assert spec["background_activity_adapt"] == {"knee_hz": 1.0, "power": 1.5}
    assert format_filters(spec) == "flicker:80:150,ba:5000:1:1.5" and check_filters(spec) == spec
    assert "background_activity_adapt" not in parse_filters("ba:5000")  # the key is left out when None
    assert EventFilter(spec, (8, 8)).filters[1].adapt == {"knee_hz": 1.0, "power": 1.5}
    for bad in ({"background_activity_adapt": {"knee_hz": 1, "power": 1}},  # no window to adapt
                {"background_activity_us": 5000, "background_activity_adapt": {"knee_hz": 0, "power": 1}},
                {"background_activity_us": 5000, "background_activity_adapt": {"knee_hz": 1}}):  # fmt: skip
        with pytest.raises(ValueError, match="background_activity_adapt"):
            check_filters(bad)
    with pytest.raises(ValueError, match="--filters"):
        parse_filters("ba:5000:1")


def test_a_chunk_the_filter_empties_still_moves_the_windows_on() -> None:
    # Isolated noise (every event removed) for 5 strides, then supported events: each push must
    # return the windows due by its own last event, as without the filter, and none is passed over.
    spec = WindowSpec(4, 1_000, 1_000)
    mapping = SensorMapping.create((32, 32), (32, 32))
    filtered = StreamingBinner(mapping, spec, filters={"background_activity_us": 200})
    plain = StreamingBinner(mapping, spec)
    rng = np.random.default_rng(0)
    for start in range(0, 5_000, 500):
        t = np.arange(start, start + 500, 100)
        if start < 3_000:  # far-apart pixels, never within 200 µs of a neighbour: all filtered
            x, y = (t // 100 * 7) % 32, (t // 100 * 13) % 32
        else:  # a moving pair of neighbours: supported
            x, y = (t // 100) % 31, np.full(len(t), 5)
            t, x, y = np.repeat(t, 2), np.stack([x, x + 1], 1).ravel(), np.repeat(y, 2)
        chunk = make_events(t, x, y, rng.integers(0, 2, len(t)))
        ends = [w.end_us for w in filtered.push(chunk, emit="latest")]
        assert ends == [w.end_us for w in plain.push(chunk, emit="latest")], start
    assert filtered.stats.windows_skipped == plain.stats.windows_skipped == 0
    assert filtered.stats.events_filtered >= 30


def test_hot_pixel_filter_mutes_a_pixel_for_the_next_period() -> None:
    hot_pixel = HotPixelFilter((8, 8), period_us=1_000, max_events=10)
    def period(start: int, hot_count: int) -> np.ndarray:
        t = np.concatenate([np.linspace(start, start + 999, hot_count).astype(np.int64), [start + 500] * 3])
        order = np.argsort(t, kind="stable")
        x = np.concatenate([np.full(hot_count, 2), [1, 4, 5]])
        return make_events(t[order], x[order], np.full(len(t), 3)[order], np.ones(len(t), np.int8))
    assert len(hot_pixel(period(0, 50))) == 53  # judged on the next period
    muted = hot_pixel(period(1_000, 50))
    assert len(muted) == 3 and hot_pixel.hot[3, 2] and hot_pixel.hot.sum() == 1
    assert len(hot_pixel(period(2_000, 5))) == 3  # still hot: it fired 50 times in the period before
    assert len(hot_pixel(period(3_000, 5))) == 8 and not hot_pixel.hot.any()  # quiet again


def _bursts(x: int, starts_us, polarity: int, events: int = 3, gap_us: int = 700) -> list[tuple[int, int, int, int]]:
    """(t, x, y, p) of a burst of ``events`` same-polarity events at pixel (x, 0) from each start."""
    return [(start + k * gap_us, x, 0, polarity) for start in starts_us for k in range(events)]


def _events(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    t, x, y, p = np.array(sorted(rows), dtype=np.int64).T
    return make_events(t, x, y, p)


def test_flicker_filter_drops_pixels_that_follow_the_mains_and_keeps_motion() -> None:
    flicker = FlickerFilter((8, 1), min_hz=80, max_hz=150)
    rows = (_bursts(0, range(0, 200_000, 10_000), 1) + _bursts(0, range(5_000, 200_000, 10_000), 0)  # 100 Hz
            + _bursts(1, range(0, 200_000, 8_333), 1)  # 120 Hz, ON only
            + _bursts(2, range(0, 200_000, 30_000), 1)  # an arm passing every 30 ms (33 Hz)
            + _bursts(3, range(0, 200_000, 3_000), 1, events=1)  # a fast texture, 333 Hz: above the band
            + _bursts(4, [50_000], 1, events=6))  # an edge passing once  # fmt: skip
    first, second = _events([r for r in rows if r[0] < 100_000]), _events([r for r in rows if r[0] >= 100_000])
    kept = np.concatenate([flicker(first), flicker(second)])  # state carries across chunks
    per_pixel = np.bincount(kept["x"], minlength=5)
    assert per_pixel[0] == 2 * 2 * 3  # the first two bursts of each polarity start the rhythm; the rest go
    assert per_pixel[1] == 2 * 3
    for pixel in (2, 3, 4):
        assert per_pixel[pixel] == np.sum(np.array([r[1] for r in rows]) == pixel), pixel
    # The rhythm broken (a 50 ms pause), the pixel passes again for two bursts, then is dropped again.
    restart = _events(_bursts(0, range(250_000, 300_000, 10_000), 1))
    assert flicker(restart)["t"].tolist() == [250_000, 250_700, 251_400, 260_000, 260_700, 261_400]


def test_filter_specs_with_flicker_round_trip_and_bad_ones_are_one_error() -> None:
    from training.train import format_filters, parse_filters

    spec = parse_filters("ba:5000,flicker:80:150")
    assert spec == {"background_activity_us": 5000, "hot_pixels": None, "flicker": {"min_hz": 80.0, "max_hz": 150.0}}
    for text in ("none", "ba:5000", "flicker:80:150,ba:250,hot:1000000:1000", "flicker:99.5:120", "hot:5:6"):
        assert format_filters(parse_filters(text)) == text  # what finetune hands to train --filters
    assert check_filters(spec) == spec and check_filters({"flicker": {"min_hz": 100, "max_hz": 120}})["flicker"] == {
        "min_hz": 100.0, "max_hz": 120.0}  # fmt: skip
    assert [type(f) for f in EventFilter(spec, (8, 8)).filters] == [FlickerFilter, BackgroundActivityFilter]
    for bad in ({"flicker": {"min_hz": 150, "max_hz": 80}}, {"flicker": {"min_hz": 0, "max_hz": 80}},
                {"flicker": {"min_hz": "80", "max_hz": 150}}, {"flicker": {"max_hz": 150}}, {"flicker": 100}):  # fmt: skip
        with pytest.raises(ValueError, match="flicker"):
            check_filters(bad)
    with pytest.raises(ValueError, match="--filters"):
        parse_filters("flicker:80")


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_bad_arguments_give_one_error_line(capsys) -> None:
    from stream.__main__ import main as dispatcher

    assert dispatcher(["frames", "missing.aedat4", "--bins", "0", "--bin-us", "10", "--out", "x.npy"]) == 2
    assert "WindowSpec.bins" in capsys.readouterr().err
    assert dispatcher(["frames", "x", "--bins", "2", "--bin-us", "10", "--size", "12by3", "--out", "x.npy"]) == 2
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(ValueError, match="--out"):
        frames_main(["in.aedat4", "--bins", "2", "--bin-us", "10"])


def test_cli_writes_frames_of_one_window(tmp_path) -> None:
    pytest.importorskip("stream.formats")
    from stream.__main__ import main as dispatcher
    from stream.formats.aedat4 import write_aedat4

    events = random_events((346, 260), 1_000, 500_000, count=50_000, seed=9)
    path = tmp_path / "rec.aedat4"
    write_aedat4(path, events, SensorSize(346, 260))
    out = tmp_path / "frames.npy"
    argv = ["frames", str(path), "--bins", "8", "--bin-us", "10000", "--start-us", "200000", "--size", "64x64",
            "--flip-y", "--out", str(out)]  # fmt: skip
    assert dispatcher(argv) == 0
    frames = np.load(out, allow_pickle=False)
    mapping = SensorMapping.create((346, 260), (64, 64), flip_y=True)
    np.testing.assert_array_equal(frames, bin_window(events, mapping, WindowSpec(8, 10_000, 10_000), 200_000))
    assert dispatcher(["frames", str(tmp_path / "nope.aedat4"), "--bins", "8", "--bin-us", "10", "--out", str(out)]) == 2


def test_cli_frames_says_when_the_window_misses_the_recording(tmp_path, capsys) -> None:
    from stream.__main__ import main as dispatcher
    from stream.formats.aedat4 import write_aedat4

    events = random_events((64, 48), 1_000_000, 2_000_000, count=5_000, seed=9)
    path, out = tmp_path / "rec.aedat4", tmp_path / "frames.npy"
    write_aedat4(path, events, SensorSize(64, 48))
    base = ["frames", str(path), "--bins", "4", "--bin-us", "10000", "--out", str(out)]
    assert dispatcher([*base, "--start-us", "0"]) == 0  # an offset where a timestamp was meant
    assert "ends before the recording's first event" in capsys.readouterr().err and not np.load(out).any()
    assert dispatcher([*base, "--start-us", "5000000"]) == 0
    assert f"starts after the recording's last event ({int(events['t'][-1])} µs)" in capsys.readouterr().err
    assert dispatcher([*base, "--start-us", "1500000"]) == 0
    assert capsys.readouterr().err == "" and np.load(out).any()
