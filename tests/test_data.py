"""training.data: data specs, window positions, cache, orientation, augmentation, loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stream.formats.aedat31 import write_aedat31
from stream.formats.labels import write_gesture_labels, write_trials
from stream.binning import WindowSpec
from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import EVENT_DTYPE, GestureSegment, SensorSize, make_events
from training import data
from training.augment import AugmentConfig

SENSOR = SensorSize(128, 128)
WINDOW = WindowSpec(bins=8, bin_us=25_000, stride_us=25_000)  # 200 ms windows
INPUT = SensorSize(32, 32)


def dot_events(start_us: int, end_us: int, *, centre=(64.0, 64.0), radius=30.0, turns_per_s=1.0,
               clockwise_y_up: bool = True, step_us: int = 100) -> np.ndarray:
    """A dot circling ``centre``, one event every ``step_us``: decreasing math angle with
    ``clockwise_y_up`` (clockwise when y points up), else increasing (clockwise when y points down)."""
    t = np.arange(start_us, end_us, step_us, dtype=np.int64)
    sign = -1.0 if clockwise_y_up else 1.0  # clockwise with y up = decreasing math angle
    angle = sign * 2 * np.pi * turns_per_s * (t - start_us) / 1e6
    x = np.round(centre[0] + radius * np.cos(angle)).astype(np.int16)
    y = np.round(centre[1] + radius * np.sin(angle)).astype(np.int16)
    return make_events(t, x, y, (np.arange(len(t)) % 2).astype(np.int8))


def labelled_recording(labels: list[int], *, seed: int, gesture_us: int = 600_000, gap_us: int = 200_000):
    """Events of a dot doing one label-dependent motion per segment, and the segments (µs)."""
    rng = np.random.default_rng(seed)
    pieces, segments, t = [], [], gap_us
    for label in labels:
        centre = (20.0 + 8 * label, 40.0 + 4 * label)
        pieces.append(dot_events(t, t + gesture_us, centre=centre, radius=10.0,
                                 turns_per_s=1.0 + label, clockwise_y_up=bool(label % 2)))
        segments.append(GestureSegment(label, t, t + gesture_us))
        t += gesture_us + gap_us + int(rng.integers(0, 1000))
    noise_t = np.sort(rng.integers(0, t, 500))
    noise = make_events(noise_t, rng.integers(0, 128, 500), rng.integers(0, 128, 500), rng.integers(0, 2, 500))
    events = np.concatenate(pieces + [noise]).astype(EVENT_DTYPE)  # concatenate drops the padding
    return events[np.argsort(events["t"], kind="stable")], segments


def write_gesture_dir(root: Path, recordings: dict[str, tuple[np.ndarray, list[GestureSegment]]],
                      test_names: set[str]) -> Path:
    """A DVS128-Gesture-layout directory (AEDAT 3.1 + labels CSV + trials lists)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, (events, segments) in recordings.items():
        write_aedat31(root / f"{name}.aedat", events, SENSOR)
        write_gesture_labels(root / f"{name}_labels.csv", segments)
    write_trials(root / "trials_to_train.txt", [f"{n}.aedat" for n in recordings if n not in test_names])
    write_trials(root / "trials_to_test.txt", [f"{n}.aedat" for n in recordings if n in test_names])
    return root


@pytest.fixture
def gesture_dir(tmp_path: Path) -> Path:
    recordings = {
        "user01_led": labelled_recording([0, 1, 2, 3], seed=1),
        "user02_lab": labelled_recording([3, 1], seed=2),
        "user03_natural": labelled_recording([2, 0], seed=3),
    }
    return write_gesture_dir(tmp_path / "dvs", recordings, {"user03_natural"})


def load(source: data.DataSource, split: str, plan: data.WindowPlan, cache: Path, window: WindowSpec = WINDOW):
    return data.load_windows(source.split(split), plan, window, INPUT, cache_dir=cache)


# --- specs --------------------------------------------------------------------------------------


def test_parse_data_spec():
    assert data.DataSpec.parse("sim:1200") == data.DataSpec("sim", "1200")
    assert data.DataSpec.parse("folder:C:/x.csv") == data.DataSpec("folder", "C:/x.csv")
    for bad in ("sim", "nope:dir", "tonic:", "dvsgesture"):
        with pytest.raises(ValueError, match="KIND:LOCATION"):
            data.DataSpec.parse(bad)


def test_missing_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="not a directory"):
        data.open_source(f"dvsgesture:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match="trials_to_train.txt"):
        data.open_source(f"dvsgesture:{tmp_path}")


# --- window positions -----------------------------------------------------------------------------


def test_window_positions_lie_inside_segments():
    segment = GestureSegment(3, 1_000_000, 2_500_000)
    window_us = 800_000
    starts = data.eval_window_starts(segment, window_us, 5)
    assert starts[0] == segment.start_us and starts[-1] + window_us == segment.end_us
    assert np.all(np.diff(starts) > 0)
    rng = np.random.default_rng(0)
    starts, stretches = data.train_window_plan(segment, window_us, 500, rng, stretch=1.2)
    covered = np.ceil(stretches * window_us).astype(np.int64)
    assert np.all(starts >= segment.start_us) and np.all(starts + covered <= segment.end_us)
    assert stretches.min() < 0.9 and stretches.max() > 1.1  # really stretched both ways (1/1.2 .. 1.2)
    assert stretches.min() >= 1 / 1.2 - 1e-9
    assert len(np.unique(starts)) > 400  # random positions
    short = GestureSegment(0, 0, window_us - 1)
    assert len(data.eval_window_starts(short, window_us, 3)) == 0
    assert len(data.train_window_plan(short, window_us, 3, rng)[0]) == 0


def test_onset_windows_begin_before_the_gesture_and_their_lead_steps_are_the_empty_ones():
    """An onset window's first ``lead_steps`` bins end before the gesture (no events of it), the next holds its
    first events; stretched windows too. Windows stay after ``earliest_us`` and inside the segment."""
    window = WindowSpec(bins=16, bin_us=50_000, stride_us=50_000)
    segment = GestureSegment(3, 1_000_000, 4_000_000)
    starts, stretches, leads = data.onset_window_plan(segment, window, 400, np.random.default_rng(0), stretch=1.5,
                                                      earliest_us=200_000)  # fmt: skip
    assert len(starts) == 400 and set(leads.tolist()) == set(range(1, 16))
    assert np.all(starts < segment.start_us) and np.all(starts >= 200_000)
    assert np.all(starts + np.ceil(stretches * window.window_us) <= segment.end_us)
    assert stretches.min() < 0.8 and stretches.max() > 1.3
    gesture = make_events(np.arange(segment.start_us, segment.end_us, 20, dtype=np.int64), 64, 64, 1)
    frames = data.bin_windows(gesture, data.SensorMapping.create(SENSOR, INPUT), window, starts, stretches)
    per_step = frames.sum(axis=(2, 3, 4))  # [N, T]
    steps = np.arange(window.bins)
    assert np.all(per_step[steps[None, :] < leads[:, None]] == 0)  # nothing of the gesture before its onset
    assert np.all(per_step[np.arange(len(leads)), leads] > 0)  # the onset falls in the first labelled step
    # Little idle time before the onset: as many lead steps as fit; none without a step's room.
    _, _, near = data.onset_window_plan(segment, window, 200, np.random.default_rng(1), earliest_us=880_000)
    assert set(near.tolist()) == {1, 2}  # 120 ms of room: at most two 50 ms steps
    assert len(data.onset_window_plan(segment, window, 50, np.random.default_rng(1), earliest_us=960_000)[0]) == 0
    short = GestureSegment(3, 1_000_000, 1_300_000)  # 300 ms: only windows that lead by 500 ms or more end in it
    _, _, short_leads = data.onset_window_plan(short, window, 100, np.random.default_rng(2))
    assert 0 < len(short_leads) < 100 and short_leads.min() >= 10


def test_loaded_onset_windows_add_to_the_same_pool_and_label_only_the_gesture_steps(gesture_dir: Path, tmp_path: Path):
    source = data.open_source(f"dvsgesture:{gesture_dir}")
    plain = load(source, "train", data.WindowPlan("train", 3, seed=1), tmp_path)
    with_onsets = load(source, "train", data.WindowPlan("train", 3, seed=1, onsets=2), tmp_path)
    again = load(source, "train", data.WindowPlan("train", 3, seed=1, onsets=2), tmp_path)
    assert (with_onsets.cache_misses, again.cache_hits) == (2, 2)
    np.testing.assert_array_equal(again.lead_steps, with_onsets.lead_steps)
    onset = with_onsets.lead_steps > 0
    assert not plain.lead_steps.any() and onset.any()
    np.testing.assert_array_equal(with_onsets.starts_us[~onset], plain.starts_us)  # the ordinary pool is unchanged
    segments = [s for r in source.split("train") for s in r.segments]
    onset_segments = [segments[group] for group in with_onsets.groups[onset]]
    assert all(start < segment.start_us for start, segment in zip(with_onsets.starts_us[onset], onset_segments))
    assert all(label == segment.label for label, segment in zip(with_onsets.labels[onset], onset_segments))
    # A causal model's labels: one per step, none before the onset; the left-right flip swaps them all.
    index = int(np.flatnonzero(onset)[0])
    evaluation = data.WindowDataset(with_onsets, normalisation=None, step_labels=True)
    _, steps = evaluation[index]
    lead, label = int(with_onsets.lead_steps[index]), int(with_onsets.labels[index])
    assert steps.tolist() == [data.IGNORED_STEP] * lead + [label] * (WINDOW.bins - lead)
    flipped = data.WindowDataset(with_onsets, normalisation=None, augmentation=AugmentConfig(flip_prob=1.0),
                                 step_labels=True)  # fmt: skip
    for item in range(len(flipped)):
        _, steps = flipped[item]
        assert steps[-1] in MIRRORED_CLASS and set(steps.tolist()) <= {data.IGNORED_STEP, int(steps[-1])}
    with pytest.raises(ValueError, match="for training only"):
        data.WindowPlan("eval", 2, onsets=1)


def test_loaded_windows_inside_segments_eval_fixed_train_random(gesture_dir: Path, tmp_path: Path):
    source = data.open_source(f"dvsgesture:{gesture_dir}")
    assert [r.path.name for r in source.split("test")] == ["user03_natural.aedat"]
    segments = [s for r in source.split("train") for s in r.segments]
    eval_a = load(source, "train", data.WindowPlan("eval", 3), tmp_path / "c1")
    eval_b = load(source, "train", data.WindowPlan("eval", 3), tmp_path / "c2")  # fresh cache: rebuilt
    assert eval_a.cache_misses == eval_b.cache_misses == 2
    np.testing.assert_array_equal(eval_a.starts_us, eval_b.starts_us)
    np.testing.assert_array_equal(eval_a.frames, eval_b.frames)
    train_a = load(source, "train", data.WindowPlan("train", 4, seed=1, stretch=1.1), tmp_path / "c1")
    train_b = load(source, "train", data.WindowPlan("train", 4, seed=2, stretch=1.1), tmp_path / "c1")
    assert not np.array_equal(train_a.starts_us, train_b.starts_us)
    for windows in (eval_a, train_a):
        assert len(windows) == len(segments) * (3 if windows is eval_a else 4)
        assert windows.segments == len(segments)
        covered = np.ceil(windows.stretches * WINDOW.window_us).astype(np.int64)
        for start, length, label, group in zip(windows.starts_us, covered, windows.labels, windows.groups):
            segment = segments[group]
            assert segment.label == label
            assert segment.start_us <= start and start + length <= segment.end_us
        assert windows.frames.shape[1:] == (WINDOW.bins, 2, INPUT.height, INPUT.width)
        assert windows.frames.sum(axis=(1, 2, 3, 4)).min() > 0  # every window saw the dot


def test_cache_hits_second_time_and_misses_when_window_changes(gesture_dir: Path, tmp_path: Path):
    source = data.open_source(f"dvsgesture:{gesture_dir}")
    plan = data.WindowPlan("eval", 2)
    first = load(source, "train", plan, tmp_path)
    second = load(source, "train", plan, tmp_path)
    assert (first.cache_hits, first.cache_misses) == (0, 2)
    assert (second.cache_hits, second.cache_misses) == (2, 0)
    np.testing.assert_array_equal(first.frames, second.frames)
    other = load(source, "train", plan, tmp_path, WindowSpec(bins=8, bin_us=20_000, stride_us=20_000))
    assert (other.cache_hits, other.cache_misses) == (0, 2)
    assert len(list((tmp_path / "windows").glob("*.npz"))) == 4
    # A changed source file (size/mtime) is a miss too.
    events, segments = labelled_recording([0, 1, 2, 3], seed=9)
    write_aedat31(gesture_dir / "user01_led.aedat", events, SENSOR)
    third = load(source, "train", plan, tmp_path)
    assert (third.cache_hits, third.cache_misses) == (1, 1)


def test_windows_of_recordings_with_different_count_dtypes_are_exact(tmp_path: Path):
    """One recording's counts fit uint8, the other's (a pixel firing 400 times in a bin) need uint16:
    the set holds both exactly, in uint16, whether binned afresh or read from the cache."""
    quiet, quiet_segments = labelled_recording([0, 1], seed=1)
    busy, busy_segments = labelled_recording([2, 3], seed=2)
    burst_t = busy_segments[0].start_us + 10 + np.arange(400, dtype=np.int64)
    burst = make_events(burst_t, np.full(400, 5), np.full(400, 7), np.ones(400, dtype=np.int8))
    busy = np.concatenate([busy, burst]).astype(EVENT_DTYPE)
    busy = busy[np.argsort(busy["t"], kind="stable")]
    root = write_gesture_dir(tmp_path / "dvs", {"user01_led": (quiet, quiet_segments),
                                                "user02_lab": (busy, busy_segments)}, {"user01_led", "user02_lab"})  # fmt: skip
    source = data.open_source(f"dvsgesture:{root}")
    plan = data.WindowPlan("eval", 2)
    pieces = [data.load_recording_windows(recording, plan, WINDOW, INPUT, cache_dir=tmp_path / "one")[0]["frames"]
              for recording in source.split("test")]  # fmt: skip
    assert sorted(piece.dtype.name for piece in pieces) == ["uint16", "uint8"]
    expected = np.concatenate([piece.astype(np.uint16) for piece in pieces])
    for turn in ("fresh", "cached"):
        windows = load(source, "test", plan, tmp_path / "set")
        assert windows.cache_hits == (2 if turn == "cached" else 0)
        assert windows.frames.dtype == np.uint16 and np.array_equal(windows.frames, expected)


def test_cache_files_hold_no_pickles(gesture_dir: Path, tmp_path: Path):
    source = data.open_source(f"dvsgesture:{gesture_dir}")
    load(source, "test", data.WindowPlan("eval", 2), tmp_path)
    for path in (tmp_path / "windows").glob("*.npz"):
        with np.load(path, allow_pickle=False) as stored:  # raises if anything needs unpickling
            assert {"frames", "labels", "segments", "starts_us"} <= set(stored.files)
            assert stored["frames"].dtype in (np.uint8, np.uint16)


# --- orientation ----------------------------------------------------------------------------------


def test_clockwise_dvs128_motion_is_clockwise_in_frames(tmp_path: Path):
    """DVS128 Gesture's files hold top-left addresses (cAER's DVS128 driver inverted y): a dot
    turning clockwise on screen (y down) in the file must turn clockwise in the binned frames too
    (image angle atan2(row, col) increases): the loader must not flip it."""
    events = dot_events(0, 1_000_000, turns_per_s=1.0, clockwise_y_up=False)  # clockwise with y down
    segment = GestureSegment(3, 0, 1_000_000)  # "right arm clockwise"
    root = write_gesture_dir(tmp_path / "dvs", {"user01_led": (events, [segment])}, {"user01_led"})
    source = data.open_source(f"dvsgesture:{root}")
    window = WindowSpec(bins=16, bin_us=50_000, stride_us=50_000)
    windows = data.load_windows(source.split("test"), data.WindowPlan("eval", 1), window, SensorSize(64, 64),
                                cache_dir=tmp_path / "cache")
    frames = windows.frames[0].astype(np.float64).sum(axis=1)  # [T, H, W]
    rows, cols = np.mgrid[0:64, 0:64]
    mass = frames.sum(axis=(1, 2))
    cy = (frames * rows).sum(axis=(1, 2)) / mass - 31.5
    cx = (frames * cols).sum(axis=(1, 2)) / mass - 31.5
    steps = np.diff(np.unwrap(np.arctan2(cy, cx)))
    assert np.all(steps > 0), steps  # clockwise on screen
    np.testing.assert_allclose(steps.mean(), 2 * np.pi * 0.05, rtol=0.1)  # 1 turn/s, 50 ms bins
    # The premise: the file's own coordinates already turn clockwise on screen (y down).
    raw_angle = np.unwrap(np.arctan2(events["y"] - 64.0, events["x"] - 64.0))
    assert raw_angle[-1] > raw_angle[0]


def test_orientation_table_and_flip():
    assert data.ORIENTATION == {"dvsgesture": "top-left", "tonic": "top-left", "sim": "top-left", "folder": "top-left"}
    events = make_events([0, 1], [3, 4], [0, 9], [1, 0])
    flipped = data.to_top_left(events, SensorSize(10, 10), "bottom-left")
    assert flipped["y"].tolist() == [9, 0] and events["y"].tolist() == [0, 9]
    assert data.to_top_left(events, SensorSize(10, 10), "top-left") is events


# --- augmentation and the Dataset -----------------------------------------------------------------


def _window_set() -> tuple[np.ndarray, data.WindowSet]:
    """Six random windows of three segments (two each)."""
    frames = np.random.default_rng(0).poisson(3.0, size=(6, 4, 2, 16, 16)).astype(np.uint8)
    windows = data.WindowSet(frames=frames, labels=np.array([1, 1, 3, 3, 0, 0]), groups=np.array([0, 0, 1, 1, 2, 2]),
                             starts_us=np.zeros(6, dtype=np.int64), stretches=np.ones(6))  # fmt: skip
    return frames, windows


def test_dataset_with_augmentation_gives_one_augmented_window_per_segment_with_its_flipped_class():
    frames, windows = _window_set()
    always_flip = AugmentConfig(flip_prob=1.0)
    dataset = data.WindowDataset(windows, normalisation=None, augmentation=always_flip, seed=3)
    assert len(dataset) == 3  # one item per segment per epoch
    assert [dataset[i][1] for i in range(3)] == [MIRRORED_CLASS[1], MIRRORED_CLASS[3], MIRRORED_CLASS[0]]
    x, _ = dataset[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (4, 2, 16, 16)
    assert any(np.array_equal(x.numpy(), frames[i, ..., ::-1]) for i in (0, 1))  # one of its segment's, mirrored
    own_classes = data.WindowDataset(windows, normalisation=None, augmentation=always_flip, mirrored_class=None)
    assert [own_classes[i][1] for i in range(3)] == [1, 3, 0]  # no class permutation: no flip


def test_dataset_augmentation_is_seeded_by_epoch_and_index():
    frames, windows = _window_set()
    thinning = AugmentConfig(max_shift_px=2, max_drop=0.5)
    dataset = data.WindowDataset(windows, normalisation=None, augmentation=thinning, seed=3)
    first = [dataset[i][0] for i in range(3)]
    assert all(torch.equal(a, dataset[i][0]) for i, a in enumerate(first))  # same (seed, epoch, index)
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i][0]) for i, a in enumerate(first))
    assert sum(float(item.sum()) for item in first) < frames.sum() / 2 * 0.98  # the drop-out removed events


def test_relabelled_windows_keep_the_classes_named_in_the_target_list():
    """Rehearsal data labelled by another class list: known names are renumbered, the rest dropped."""
    frames, windows = _window_set()  # labels 1, 1, 3, 3, 0, 0 of three segments
    kept = windows.relabelled(("a", "b", "c", "d"), into=("d", "x", "b"))
    assert kept.labels.tolist() == [2, 2, 0, 0] and kept.groups.tolist() == [0, 0, 1, 1] and kept.segments == 2
    np.testing.assert_array_equal(kept.frames, frames[:4])
    assert len(windows.relabelled(("a", "b", "c", "d"), into=("x",))) == 0


def test_dataset_with_items_draws_that_many_windows_from_segments_shuffled_per_epoch():
    """``items`` (rehearsal): a fixed count per epoch, every segment once per round, another order each epoch."""
    _, windows = _window_set()
    dataset = data.WindowDataset(windows, normalisation=None, augmentation=AugmentConfig(), mirrored_class=None,
                                 items=6)  # fmt: skip
    assert len(dataset) == 6
    orders = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        labels = [dataset[i][1] for i in range(6)]
        assert sorted(labels[:3]) == [0, 1, 3] and labels[3:] == labels[:3]  # each segment once per round
        orders.append(labels[:3])
    assert len({tuple(order) for order in orders}) > 1
    with pytest.raises(ValueError, match="needs augmentation"):
        data.WindowDataset(windows, items=6)
    both = data.WindowDatasets([dataset, data.WindowDataset(windows, augmentation=AugmentConfig(), seed=1)])
    both.set_epoch(7)
    assert len(both) == 9 and all(part.epoch == 7 for part in both.datasets)


def test_dataset_without_augmentation_gives_every_window_normalised():
    frames, windows = _window_set()
    evaluation = data.WindowDataset(windows, normalisation={"kind": "log1p"})
    assert len(evaluation) == 6
    np.testing.assert_allclose(evaluation[2][0].numpy(), np.log1p(frames[2].astype(np.float32)), rtol=1e-6)
    assert evaluation[2][1] == 3


# --- other loaders -------------------------------------------------------------------------------


def test_tonic_loader(tmp_path: Path):
    from stream.formats.tonic_npy import sample_path, write_tonic_npy

    events = dot_events(0, 600_000, clockwise_y_up=True, step_us=1000)
    for train, user, label in ((True, 1, 3), (True, 2, 5), (False, 3, 3)):
        write_tonic_npy(sample_path(tmp_path, train=train, user=user, lighting="led", label=label), events)
    source = data.open_source(f"tonic:{tmp_path}")
    assert len(source.split("train")) == 2 and len(source.split("test")) == 1
    windows = data.load_windows(source.split("train"), data.WindowPlan("eval", 2), WINDOW, INPUT,
                                cache_dir=tmp_path / "cache")
    assert sorted(set(windows.labels.tolist())) == [3, 5] and len(windows) == 4
    assert windows.frames.sum() > 0


def test_folder_loader_csv_classes_and_splits(tmp_path: Path):
    from stream.formats.aedat4 import write_aedat4

    events, _ = labelled_recording([0, 1], seed=4)
    write_aedat4(tmp_path / "mine.aedat4", events, SENSOR)
    (tmp_path / "labels.csv").write_text(
        "file,class,start_us,end_us,split\n"
        "mine.aedat4,wave,200000,800000,train\n"
        "mine.aedat4,clap,1000000,1600000,test\n"
        "mine.aedat4,wave,1000000,1500000,train\n"
    )
    source = data.open_source(f"folder:{tmp_path / 'labels.csv'}")
    assert source.classes == ("wave", "clap")
    assert [s.label for s in source.split("train")[0].segments] == [0, 0]
    windows = data.load_windows(source.split("test"), data.WindowPlan("eval", 1), WINDOW, INPUT,
                                cache_dir=tmp_path / "cache")
    assert windows.labels.tolist() == [1]
    (tmp_path / "gestures.csv").write_text("file,class,start_us,end_us\nmine.aedat4,hand clapping,0,9\nmine.aedat4,3,10,20\n")
    assert data.open_source(f"folder:{tmp_path / 'gestures.csv'}").classes == GESTURE_CLASSES
    (tmp_path / "bad.csv").write_text("file,class,start_us,end_us\nmine.aedat4,0,50,10\n")
    with pytest.raises(ValueError, match="line 2"):
        data.open_source(f"folder:{tmp_path / 'bad.csv'}")
    (tmp_path / "cols.csv").write_text("file,label\nmine.aedat4,0\n")
    with pytest.raises(ValueError, match="missing column"):
        data.open_source(f"folder:{tmp_path / 'cols.csv'}")

