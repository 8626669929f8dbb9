"""The gesture simulator: determinism, class semantics (left/right, clockwise), rates, data set, live source."""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time

import numpy as np
import pytest
from helpers import lagging_simulator

from stream.__main__ import main as stream_main
from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import EVENT_DTYPE, GestureSegment, SensorSize
from stream.formats.aedat31 import read_aedat31
from stream.formats.labels import read_gesture_labels, read_trials
from stream.sim.dataset import describe, write_dataset
from stream.sim.recording import simulate_gesture, simulate_recording
from stream.sim.scene import LIGHTINGS, LOOKS, draw_scene
from stream.sources.simulated import SimulatorSource
from stream.stage import value_or_range

SENSOR = SensorSize(128, 128)
FIRST_LIGHTING = next(iter(LIGHTINGS))  # the data-set writer's first lighting family


def assert_valid(events: np.ndarray, sensor: SensorSize) -> None:
    assert events.dtype == EVENT_DTYPE and events.ndim == 1
    assert np.all(np.diff(events["t"]) >= 0)
    assert events["x"].min() >= 0 and events["x"].max() < sensor.width
    assert events["y"].min() >= 0 and events["y"].max() < sensor.height
    assert set(np.unique(events["p"]).tolist()) <= {0, 1}


def join(chunks: list[np.ndarray]) -> np.ndarray:
    """Concatenate event chunks keeping EVENT_DTYPE (np.concatenate drops its padding)."""
    return np.concatenate(chunks).astype(EVENT_DTYPE) if chunks else np.zeros(0, EVENT_DTYPE)


def same_events(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and all(np.array_equal(a[field], b[field]) for field in "txyp")


def test_same_seed_same_events_other_seed_other_events():
    first, label = simulate_gesture(3, seed=5, duration_us=300_000)
    again, _ = simulate_gesture(3, seed=5, duration_us=300_000)
    other, _ = simulate_gesture(3, seed=6, duration_us=300_000)
    assert label == 3
    assert first.tobytes() == again.tobytes()
    assert len(other) != len(first) or other.tobytes() != first.tobytes()


@pytest.mark.parametrize("label", range(len(GESTURE_CLASSES)))
def test_every_class_gives_valid_events_at_a_realistic_rate(label):
    duration_us = 500_000
    for seed in (0, 1):
        events, got = simulate_gesture(label, seed=seed, duration_us=duration_us)
        assert got == label
        assert_valid(events, SENSOR)
        assert events["t"].min() >= 0 and events["t"].max() <= duration_us
        rate = len(events) / (duration_us * 1e-6)
        # a few thousand events/s (a small person, dim light, thresholds up to 0.5) to 1 M (a near one)
        assert 2e3 <= rate <= 1e6, f"{GESTURE_CLASSES[label]}: {rate:.0f} ev/s"
        assert 0.25 < events["p"].mean() < 0.75  # both polarities


def test_other_sensor_sizes():
    sensor = SensorSize(96, 64)
    events, _ = simulate_gesture(0, seed=2, sensor_size=sensor, duration_us=200_000)
    assert_valid(events, sensor)
    assert len(events) > 400  # > 2,000 events/s


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="label"):
        simulate_gesture(11, seed=0)
    with pytest.raises(ValueError, match="duration_us"):
        simulate_gesture(0, seed=0, duration_us=0)
    with pytest.raises(ValueError, match="lighting"):
        simulate_gesture(0, seed=0, lighting="moonlight")


@pytest.mark.parametrize("label", [1, 3, 4])
def test_mirror_is_the_sample_flipped_left_right_with_the_mirrored_label(label):
    plain, _ = simulate_gesture(label, seed=9, duration_us=200_000)
    mirrored, mirrored_label = simulate_gesture(label, seed=9, duration_us=200_000, mirror=True)
    assert mirrored_label == MIRRORED_CLASS[label]
    flipped = plain.copy()
    flipped["x"] = SENSOR.width - 1 - flipped["x"]
    assert same_events(mirrored, flipped)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_right_hand_waves_on_the_image_left_and_left_hand_on_the_right(seed):
    # the same seed: the same person, scene and noise; only the waving hand differs
    right, _ = simulate_gesture(1, seed=seed, duration_us=400_000)
    left, _ = simulate_gesture(2, seed=seed, duration_us=400_000)
    assert right["x"].mean() < left["x"].mean() - 8


def winding_around_shoulder(label: int, seed: int, look: str) -> float:
    """Total angle (radians, image coordinates) swept by the event centroid near the moving shoulder."""
    events, _ = simulate_gesture(label, seed=seed, duration_us=1_500_000, lighting="lab", look=look)
    scene = draw_scene(np.random.default_rng(seed), SENSOR, look=look, lighting="lab", duration_us=1_500_000)
    body = scene.body  # the same draws simulate_gesture made
    side = -1 if label in (3, 4) else 1  # right arm on the image left
    shoulder = np.array([body.center_x + side * body.shoulder_half_width]), np.array([body.shoulder_y])
    shoulder_x, shoulder_y = scene.framing.apply(*shoulder, np.zeros((1, 2)))  # as the camera sees it
    dx = events["x"] - shoulder_x[0]
    dy = events["y"] - shoulder_y[0]
    near = np.hypot(dx, dy) < 1.3 * body.reach * scene.framing.scale
    window = events["t"][near] // 20_000
    counts = np.bincount(window)
    keep = counts > 20
    mean_x = np.bincount(window, dx[near])[keep] / counts[keep]
    mean_y = np.bincount(window, dy[near])[keep] / counts[keep]
    return float(np.sum(np.diff(np.unwrap(np.arctan2(mean_y, mean_x)))))


@pytest.mark.parametrize("label, clockwise, look", [(3, True, "shaded"), (4, False, "capsules"), (5, True, "capsules"),
                                                   (6, False, "shaded"), (3, True, "polygons"), (4, False, "polygons")])  # fmt: skip
def test_arm_circles_turn_the_right_way_as_seen_by_the_camera(label, clockwise, look):
    # y points down, so an increasing image angle is clockwise on screen. A circle in a plane seen
    # edge-on, or a slow one, barely winds: every clear winding (> 2/3 of a turn) has the right sign.
    turned = np.array([winding_around_shoulder(label, seed, look) for seed in range(4)])
    clear = turned[np.abs(turned) > 4.0]
    assert len(clear) >= 1, f"{GESTURE_CLASSES[label]}: {np.round(turned, 1)} rad"
    assert np.all(clear > 0) if clockwise else np.all(clear < 0), f"{GESTURE_CLASSES[label]}: {np.round(turned, 1)} rad"


def test_recording_segments_lie_inside_and_idle_is_quiet():
    labels = [0, 7, 10]
    events, segments = simulate_recording(labels, seed=4, gesture_us=400_000, idle_us=300_000)
    assert_valid(events, SENSOR)
    assert [segment.label for segment in segments] == labels
    assert segments[0].start_us > 0 and segments[-1].end_us < events["t"].max()
    for before, after in itertools.pairwise(segments):
        assert before.start_us < before.end_us < after.start_us
    t = events["t"]
    in_gesture = np.zeros(len(t), bool)
    for segment in segments:
        in_gesture |= (t >= segment.start_us) & (t < segment.end_us)
    gesture_s = sum(segment.end_us - segment.start_us for segment in segments) * 1e-6
    idle_s = t.max() * 1e-6 - gesture_s
    gesture_rate, idle_rate = in_gesture.sum() / gesture_s, (~in_gesture).sum() / idle_s
    assert idle_rate < 0.25 * gesture_rate


def test_dataset_layout_determinism_and_orientation(tmp_path):
    options = {"samples": 13, "seed": 7, "gesture_us": 150_000, "idle_us": 80_000}
    paths = write_dataset(tmp_path / "a", **options)
    write_dataset(tmp_path / "b", **options)
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    lighting = FIRST_LIGHTING  # two recordings: two users under the first lighting family
    assert [path.name for path in paths] == [f"user01_{lighting}.aedat", f"user02_{lighting}.aedat"]
    assert read_trials(tmp_path / "a" / "trials_to_train.txt") == [f"user01_{lighting}.aedat"]
    assert read_trials(tmp_path / "a" / "trials_to_test.txt") == [f"user02_{lighting}.aedat"]
    segments = read_gesture_labels(tmp_path / "a" / f"user01_{lighting}_labels.csv")
    assert sorted(segment.label for segment in segments) == list(range(11))
    assert len(read_gesture_labels(tmp_path / "a" / f"user02_{lighting}_labels.csv")) == 2
    stored, sensor = read_aedat31(paths[0])
    assert sensor == SENSOR
    assert segments[-1].end_us < stored["t"].max()
    # Files are top-left, as DVS128 Gesture's are: they hold the simulator's own events unchanged.
    labels = [segment.label for segment in segments]
    canonical, _ = simulate_recording(labels, seed=[7, 0, 1], gesture_us=150_000, idle_us=80_000, lighting=lighting,
                                      look=LOOKS[0])  # the first recording's look  # fmt: skip
    assert np.array_equal(stored["y"], canonical["y"]) and np.array_equal(stored["x"], canonical["x"])
    assert np.array_equal(stored["t"], canonical["t"])
    # scenes.json: each file's scene and the style of each gesture, in the order of its labels file
    scenes = json.loads((tmp_path / "a" / "scenes.json").read_text())
    assert [len(scenes[path.name]["styles"]) for path in paths] == [11, 2]
    style = dict(zip(labels, scenes[paths[0].name]["styles"]))
    assert "clap" in style[0] and style[7].startswith("arm roll") and style[8].startswith("drums"), style
    assert "circle" in style[3] and "wave" in style[1], style


def test_cli_writes_a_dataset_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "set"
    assert stream_main(["simulate", "--out", str(out), "--samples", "2", "--gesture-ms", "100", "--idle-ms", "50"]) == 0
    assert (out / f"user01_{FIRST_LIGHTING}.aedat").is_file() and (out / "trials_to_train.txt").is_file()
    assert stream_main(["simulate", "--out", str(out), "--samples", "0"]) == 2
    assert "samples" in capsys.readouterr().err
    assert stream_main(["simulate", "--samples", "3"]) == 2


def stream_seconds(source: SimulatorSource) -> tuple[float, np.ndarray]:
    """Wall time from the first chunk to the end, and all events, of a finite source."""
    chunks, first_chunk_at = [], None
    for chunk in source:
        if first_chunk_at is None:
            first_chunk_at = time.monotonic()
        chunks.append(chunk)
    return time.monotonic() - first_chunk_at, join(chunks)


def test_live_source_keeps_real_time_pace_and_is_faster_at_speed_5():
    with SimulatorSource(seed=1, speed=1.0, duration_s=0.5) as source:
        real_time_s, events = stream_seconds(source)
    assert 0.4 < real_time_s < 0.9
    assert events.dtype == EVENT_DTYPE and np.all(np.diff(events["t"]) >= 0)
    assert 0 <= events["t"].min() and events["t"].max() <= 500_000
    with SimulatorSource(seed=1, speed=5.0, duration_s=0.5) as source:
        fast_s, fast_events = stream_seconds(source)
    assert fast_s < 0.4
    assert same_events(fast_events, events)  # pacing does not change the stream


def test_live_source_reports_truth_and_stops_from_another_thread():
    source = SimulatorSource(seed=2, speed=None, gesture_us=200_000, idle_us=100_000)
    assert source.sensor_size == SENSOR and "simulator" in source.name
    truth: list[GestureSegment] = []
    last_t = -1
    stopper = threading.Timer(0.5, source.stop)
    stopper.start()
    with source:
        for chunk in source:
            assert chunk.dtype == EVENT_DTYPE
            if len(chunk):
                assert chunk["t"][0] >= last_t
                last_t = int(chunk["t"][-1])
            for segment in source.drain_truth():
                assert segment.start_us <= last_t + source.chunk_us
                truth.append(segment)
    stopper.join()
    assert len(truth) >= 3  # ~0.3 s per gesture of stream, several seconds of stream rendered
    assert all(0 <= segment.label < 11 for segment in truth)
    assert all(a.end_us < b.start_us for a, b in itertools.pairwise(truth))


def test_live_source_rate_scale_replicates_events():
    def events_of(**options) -> np.ndarray:
        with SimulatorSource(seed=3, speed=None, duration_s=0.2, **options) as source:
            return join(list(source))

    plain, scaled = events_of(), events_of(rate_scale=10)
    assert len(scaled) == 10 * len(plain)
    assert np.all(np.diff(scaled["t"]) >= 0) and scaled["x"].max() < 128
    noisy = events_of(extra_noise_hz=1e6)
    assert 150_000 < len(noisy) - len(plain) < 250_000
    assert np.all(np.diff(noisy["t"]) >= 0)


def numpy_replicate(chunk: np.ndarray, copies: int, width: int, height: int) -> np.ndarray:
    """The former NumPy replication of ``rate_scale``: the oracle of the Numba kernel."""
    chunk = np.repeat(chunk, copies)
    copy = np.tile(np.arange(copies), len(chunk) // copies)
    chunk["x"] = (chunk["x"] + (copy * 37) % width) % width
    chunk["y"] = (chunk["y"] + (copy * 59) % height) % height
    return chunk


@pytest.mark.parametrize("width, height", [(128, 128), (346, 260), (640, 480), (7, 3)])
@pytest.mark.parametrize("copies", [2, 37, 300])
def test_rate_scale_replication_is_identical_to_the_numpy_version(width, height, copies):
    rng = np.random.default_rng(copies * 1000 + width)
    count = int(rng.integers(1, 500))
    chunk = np.zeros(count, EVENT_DTYPE)  # zero padding, as the simulator's arrays (compared byte for byte)
    chunk["t"] = np.sort(rng.integers(0, 2_000, count)) + 10**12
    chunk["x"], chunk["y"] = rng.integers(0, width, count), rng.integers(0, height, count)
    chunk["x"][:2], chunk["y"][:2] = (0, width - 1), (height - 1, 0)  # the edges wrap
    chunk["p"] = rng.integers(0, 2, count)
    source = SimulatorSource(sensor_size=SensorSize(width, height), rate_scale=copies)
    before = chunk.view(np.uint8).copy()  # bytes: a structured copy need not keep the padding
    amplified = source._amplify(chunk, 0, 2_000, np.random.default_rng(0))
    assert (
        amplified.dtype == EVENT_DTYPE
        and amplified.tobytes() == numpy_replicate(chunk, copies, width, height).tobytes()
    )
    assert chunk.tobytes() == before.tobytes()  # the input is not changed
    assert len(source._amplify(chunk[:0], 0, 2_000, np.random.default_rng(0))) == 0


def test_extra_noise_merges_in_time_order_like_np_insert_and_leaves_no_stale_padding():
    width = height = 128
    rng = np.random.default_rng(5)
    chunk = np.zeros(400, EVENT_DTYPE)
    chunk["t"] = np.sort(rng.integers(0, 2_000, 400))
    chunk["x"], chunk["y"], chunk["p"] = (
        rng.integers(0, width, 400),
        rng.integers(0, height, 400),
        rng.integers(0, 2, 400),
    )
    source = SimulatorSource(rate_scale=3, extra_noise_hz=2e6)
    garbage = np.full(1 << 16, 0x2020202020202020, np.int64)  # leave stale bytes on the heap
    del garbage
    amplified = source._amplify(chunk, 0, 2_000, np.random.default_rng(9))
    oracle_rng = np.random.default_rng(9)  # the same draws, merged the NumPy way
    replicated = numpy_replicate(chunk, 3, width, height)
    count = oracle_rng.poisson(2e6 * 2_000 * 1e-6)
    noise = np.zeros(count, EVENT_DTYPE)
    noise["t"] = np.sort(oracle_rng.integers(1, 2_001, count))
    noise["x"], noise["y"] = oracle_rng.integers(0, width, count), oracle_rng.integers(0, height, count)
    noise["p"] = oracle_rng.integers(0, 2, count)
    expected = np.insert(replicated, np.searchsorted(replicated["t"], noise["t"], side="right"), noise)
    assert count > 3_000 and len(amplified) == len(expected) == 1_200 + count
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(amplified[name], expected[name])
    assert not amplified.view(np.uint8).reshape(-1, 16)[:, 13:].any()  # padding bytes are zero


def test_live_clock_is_exact_and_never_passes_an_event_still_to_come_while_rendering_lags():
    clocks: list[tuple[int, int]] = []  # (clock read on an empty chunk, events yielded before it)
    chunks = []
    with lagging_simulator(seed=4, speed=1.0, duration_s=0.6, chunk_us=2_000) as source:
        assert source.clock_us() is None
        for chunk in source:
            if len(chunk):
                chunks.append(chunk)
            else:
                clocks.append((source.clock_us(), len(chunks)))
    events = join(chunks)
    assert len(events) > 1_000 and np.all(np.diff(events["t"]) >= 0)
    stalls = [(clock, seen) for clock, seen in clocks if clock is not None and seen < len(chunks)]
    assert len(stalls) > 20  # the consumer waited for the renderer many times
    for clock, seen in stalls:  # every event yielded after a clock reading is at or after it
        assert int(chunks[seen]["t"][0]) >= clock
    # and it is not behind what was handed over: at least the newest event yielded before it
    assert all(clock >= int(chunks[seen - 1]["t"][-1]) for clock, seen in stalls if seen)


def test_a_range_widens_a_scene_parameter_and_a_value_fixes_it():
    ranges = {"zoom": (0.5, 1.5), "threshold": (0.1, 0.7), "noise_hz": (0.02, 8.0), "flicker_depth": (0.1, 0.4)}
    scenes = [draw_scene(np.random.default_rng(seed), SENSOR, lighting="fluorescent", **ranges) for seed in range(40)]
    zooms = np.array([scene.framing.zoom for scene in scenes])
    noise = np.array([scene.pixels.noise_hz for scene in scenes])
    depths = np.array([scene.flicker_depth for scene in scenes])
    assert 0.5 <= zooms.min() < 0.7 and 1.2 < zooms.max() <= 1.5
    assert 0.02 <= noise.min() < 0.1 and 2.0 < noise.max() <= 8.0  # log-uniform: both decades reached
    assert 0.1 <= depths.min() and depths.max() <= 0.4 and len(set(depths)) == 40  # fluorescent light always flickers
    steady = draw_scene(np.random.default_rng(0), SENSOR, lighting="natural", flicker_depth=(0.1, 0.4))
    assert steady.flicker_depth == 0.0 and steady.flicker_hz == 0.0  # a range keeps steady light steady
    fixed = draw_scene(np.random.default_rng(0), SENSOR, lighting="natural", zoom=0.8, flicker_depth=0.2)
    assert fixed.framing.zoom == 0.8 and fixed.flicker_depth == 0.2  # a value fixes, and forces flicker
    default = describe(draw_scene(np.random.default_rng(3), SENSOR, lighting="lab"))
    assert default == describe(draw_scene(np.random.default_rng(3), SENSOR, lighting="lab", zoom=1.0))
    with pytest.raises(ValueError, match="low > 0"):
        draw_scene(np.random.default_rng(0), SENSOR, noise_hz=(0.0, 1.0))


@pytest.mark.parametrize("text, expected", [("0.8", 0.8), ("0.5:1.5", (0.5, 1.5)), ("2:2", (2.0, 2.0))])
def test_scene_parameters_take_a_value_or_a_range(text, expected):
    assert value_or_range(positive=True)(text) == expected


@pytest.mark.parametrize("text", ["0", "1.5:0.5", "a:b", "1:2:3", "nan", "inf", ""])
def test_a_bad_scene_parameter_is_one_clear_argparse_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="LOW:HIGH"):
        value_or_range(positive=True)(text)
    assert value_or_range(positive=False)("0") == 0.0


def test_a_noise_range_from_zero_is_refused_before_anything_is_written(tmp_path, capsys):
    assert stream_main(["simulate", "--out", str(tmp_path / "set"), "--samples", "1", "--noise-hz", "0:5"]) == 2
    assert "LOW must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "set").exists()
