"""training.augment: frame-level augmentations of one [T, 2, H, W] count window (issue #15)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from training import augment
from training.augment import AUGMENT_PRESETS, AugmentConfig, Occluder, augment_window


def poisson_window(seed: int, shape: tuple[int, ...] = (16, 2, 64, 64), rate: float = 0.3) -> np.ndarray:
    """A float32 count window with Poisson(rate) counts everywhere."""
    return np.random.default_rng(seed).poisson(rate, size=shape).astype(np.float32)


def moving_blob(bins: int = 16, size: int = 64, counts: float = 40.0) -> np.ndarray:
    """A 6x6 blob of ON events moving right and down over the window (x 10 -> 46, y 16 -> 40)."""
    frames = np.zeros((bins, 2, size, size), dtype=np.float32)
    for k in range(bins):
        x, y = 10 + round(36 * k / (bins - 1)), 16 + round(24 * k / (bins - 1))
        frames[k, 1, y : y + 6, x : x + 6] = counts
    return frames


# --- contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
@pytest.mark.parametrize("shape", [(16, 2, 64, 64), (16, 2, 128, 128), (8, 2, 48, 64)])
def test_presets_keep_shape_dtype_and_whole_counts(preset, shape):
    frames = poisson_window(1, shape)
    before = frames.copy()
    for seed in range(5):
        out, label = augment_window(frames, 3, np.random.default_rng(seed), AUGMENT_PRESETS[preset],
                                    mirrored_class=MIRRORED_CLASS)  # fmt: skip
        assert out.shape == shape and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and np.array_equal(out, np.round(out))
        assert label in (3, MIRRORED_CLASS[3])
    np.testing.assert_array_equal(frames, before)  # the input is never written to


def test_empty_and_single_bin_windows():
    for frames in (np.zeros((16, 2, 64, 64), dtype=np.float32), poisson_window(14, (1, 2, 16, 24))):
        for seed in range(20):
            out, _ = augment_window(frames, 0, np.random.default_rng(seed), AUGMENT_PRESETS["full"],
                                    mirrored_class=MIRRORED_CLASS)  # fmt: skip
            assert out.shape == frames.shape and out.min() >= 0


def test_identity_config_is_exactly_the_identity_and_draws_nothing():
    frames = poisson_window(2)
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    out, label = augment_window(frames, 5, rng, AugmentConfig.none(), mirrored_class=MIRRORED_CLASS)
    assert label == 5 and out.dtype == np.float32 and np.array_equal(out, frames)
    assert rng.bit_generator.state == state
    counts = frames.astype(np.uint8)  # the cache's dtype: same values, as float32
    out, _ = augment_window(counts, 5, rng, AugmentConfig(), mirrored_class=None)
    assert out.dtype == np.float32 and np.array_equal(out, frames)


def test_same_seed_same_result_other_seed_other_result():
    frames = poisson_window(3)
    config = AUGMENT_PRESETS["full"]
    runs = [augment_window(frames, 1, np.random.default_rng([4, 0, i % 2]), config, mirrored_class=MIRRORED_CLASS)
            for i in range(4)]  # fmt: skip
    assert np.array_equal(runs[0][0], runs[2][0]) and runs[0][1] == runs[2][1]
    assert np.array_equal(runs[1][0], runs[3][0])
    assert not np.array_equal(runs[0][0], runs[1][0])


def test_config_round_trip_validation_and_what_is_not_offered():
    config = AUGMENT_PRESETS["full"]
    assert AugmentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert AugmentConfig.from_dict({}) == AugmentConfig.none()
    assert augment.augment_preset("basic") == AUGMENT_PRESETS["basic"]
    for bad in ({"flip_prob": 1.5}, {"scale_range": (0.0, 1.0)}, {"scale_range": (1.2, 0.8)}, {"max_rotation_deg": 90},
                {"max_aspect": 0.9}, {"max_shear": 1.0}, {"jitter_prob": 0.5, "jitter_px": 0},
                {"max_drop": -0.1}, {"max_shift_px": 2.5}, {"max_occluders": 0}, {"occluder_size": (0.2, 1.5)},
                {"max_noise_rate": math.nan}, {"max_hot_pixel_rate": 0.5}, {"flip_prob": "x"}):  # fmt: skip
        with pytest.raises(ValueError):
            AugmentConfig(**bad)
    with pytest.raises(ValueError, match="unknown key"):
        AugmentConfig.from_dict({"time_reversal_prob": 0.5})
    with pytest.raises(ValueError, match="preset"):
        augment.augment_preset("nope")
    names = " ".join(field.name for field in dataclasses.fields(AugmentConfig))
    assert "revers" not in names and "polarity" not in names  # forbidden: they change the class


# --- geometry ------------------------------------------------------------------------------------


def test_flip_mirrors_x_and_maps_every_label():
    frames = poisson_window(5)
    config = AugmentConfig(flip_prob=1.0)
    for label in range(len(GESTURE_CLASSES)):
        out, new_label = augment_window(frames, label, np.random.default_rng(label), config,
                                        mirrored_class=MIRRORED_CLASS)  # fmt: skip
        assert new_label == MIRRORED_CLASS[label]
        np.testing.assert_array_equal(out, frames[..., ::-1])
    out, label = augment_window(frames, 3, np.random.default_rng(0), config, mirrored_class=None)
    assert label == 3 and np.array_equal(out, frames)  # classes without a known mirror: never flipped


def shifted(frames: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Frames moved right by dx and down by dy, zero fill (the reference of an integer shift)."""
    out = np.zeros_like(frames)
    height, width = frames.shape[-2:]
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = frames[
        ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def test_integer_shift_is_exact_with_zero_fill():
    frames = poisson_window(6, (4, 2, 20, 30))
    for dx, dy in ((3, -2), (-5, 4), (0, 7)):
        matrix = augment.affine_matrix(20, 30, shift=(dx, dy))
        np.testing.assert_array_equal(augment.warp_scatter(frames, matrix), shifted(frames, dx, dy))
        np.testing.assert_array_equal(augment.warp_gather(frames, matrix), shifted(frames, dx, dy))
    config = AugmentConfig(max_shift_px=3)
    for seed in range(10):
        out, _ = augment_window(frames, 0, np.random.default_rng(seed), config, mirrored_class=None)
        assert any(np.array_equal(out, shifted(frames, dx, dy)) for dx in range(-3, 4) for dy in range(-3, 4))


def mapped_inside(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] bool: the pixel's centre maps inside the frame (the math of a forward mapping)."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    col = np.floor(matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2])
    row = np.floor(matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2])
    return (col >= 0) & (col < width) & (row >= 0) & (row < height)


def test_forward_mapping_keeps_every_event_that_lands_inside_the_frame():
    """Invariant of zoom-out / rotation: per bin and polarity, the output holds exactly the events
    of the source pixels whose centre maps inside the frame; none is invented."""
    frames = poisson_window(8, (4, 2, 64, 64), rate=2.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        matrix = augment.affine_matrix(64, 64, flip=bool(rng.random() < 0.5), scale=rng.uniform(0.6, 1.0),
                                       rotation_deg=rng.uniform(-10, 10), centre=rng.uniform(16, 48, 2),
                                       shift=rng.integers(-4, 5, 2))  # fmt: skip
        out = augment.warp_scatter(frames, matrix)
        inside = mapped_inside(matrix, 64, 64)
        np.testing.assert_array_equal(out.sum(axis=(2, 3)), (frames * inside).sum(axis=(2, 3)))
        assert np.array_equal(out, np.round(out))
    # About the frame centre a zoom-out keeps the whole frame inside, a rotation a centred disc.
    y, x = np.mgrid[0:64, 0:64] + 0.5
    disc = frames * ((x - 32) ** 2 + (y - 32) ** 2 <= 31**2)
    for source, scale, rotation in ((frames, 0.7, 0.0), (disc, 1.0, 10.0), (disc, 0.9, -8.0)):
        out = augment.warp_scatter(source, augment.affine_matrix(64, 64, scale=scale, rotation_deg=rotation))
        np.testing.assert_array_equal(out.sum(axis=(2, 3)), source.sum(axis=(2, 3)))


@pytest.mark.parametrize("rotation, expected_row", [(10.0, 28), (-10.0, 36)])
def test_small_rotation_moves_a_single_event_where_the_math_says(rotation, expected_row):
    # Pixel (col 52, row 32), centre (52.5, 32.5), rotated about (32, 32) by +10 degrees
    # (counter-clockwise on screen, y down): x' = 32 + 20.5 cos + 0.5 sin = 52.28,
    # y' = 32 - 20.5 sin + 0.5 cos = 28.93: pixel (52, 28), 3.5 rows up; -10 degrees: (52.10, 36.05).
    frames = np.zeros((3, 2, 64, 64), dtype=np.float32)
    frames[1, 0, 32, 52] = 3
    a = math.radians(rotation)
    x, y = 32 + 20.5 * math.cos(a) + 0.5 * math.sin(a), 32 - 20.5 * math.sin(a) + 0.5 * math.cos(a)
    assert (int(x), int(y)) == (52, expected_row)
    out = augment.warp_scatter(frames, augment.affine_matrix(64, 64, rotation_deg=rotation))
    assert out[1, 0, expected_row, 52] == 3 and out.sum() == 3


def test_zoom_in_copies_a_count_onto_its_s_squared_footprint():
    frames = np.zeros((2, 2, 64, 64), dtype=np.float32)
    frames[0, 1, 40, 20] = 5  # spans x [20, 21), y [40, 41); x2 about (32, 32): x [8, 10), y [48, 50)
    out = augment.warp_gather(frames, augment.affine_matrix(64, 64, scale=2.0))
    expected = np.zeros_like(frames)
    expected[0, 1, 48:50, 8:10] = 5
    np.testing.assert_array_equal(out, expected)


def test_body_shape_change_stretches_one_axis_squeezes_the_other_and_keeps_the_area():
    # About the centre (32, 32): aspect 1.44 stretches x by 1.2 and squeezes y by 1.2; shear 0.25
    # then moves a point 8 rows below the centre 2 pixels right (before the stretch: 2.4 after).
    matrix = augment.affine_matrix(64, 64, aspect=1.44, shear=0.25)
    np.testing.assert_allclose(matrix @ [32, 32, 1], [32, 32, 1])
    np.testing.assert_allclose(matrix @ [42, 32, 1], [44, 32, 1])  # 10 right -> 12 right
    np.testing.assert_allclose(matrix @ [32, 44, 1], [32 + 1.2 * 0.25 * 12, 42, 1])  # 12 down -> 10 down
    assert math.isclose(np.linalg.det(matrix[:2, :2]), 1.0)
    # With the zoom and rotation, the area scales by scale**2 only.
    matrix = augment.affine_matrix(64, 64, scale=0.8, rotation_deg=7, aspect=0.8, shear=-0.1)
    assert math.isclose(np.linalg.det(matrix[:2, :2]), 0.64)


def test_augment_window_shape_change_gathers_when_an_axis_is_stretched():
    """A horizontal bar 12 px long stretched along x (aspect 1.44, no zoom) is 14-15 px long and
    keeps its one row and count per pixel (copied, not thinned): a longer limb fires as densely."""
    frames = np.zeros((2, 2, 64, 64), dtype=np.float32)
    frames[:, 1, 32, 26:38] = 3
    config = AugmentConfig(zoom_prob=1.0, max_aspect=1.44, centre_range=0.0)
    widths = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        out, _ = augment_window(frames, 0, rng, config, mirrored_class=None)
        assert set(np.unique(out)) <= {0.0, 3.0}
        widths.append(int((out[0, 1] > 0).sum(axis=1).max()))
    assert min(widths) >= 9 and max(widths) >= 14  # squeezed (aspect < 1) and stretched draws both occur


def test_outline_jitter_moves_each_event_at_most_r_pixels_and_keeps_those_inside():
    frames = np.zeros((3, 2, 40, 50), dtype=np.float32)
    frames[1, 0, 20, 25] = 400
    frames[2, 1, 0, 0] = 90  # a corner: 5 of the 9 targets fall outside the frame
    moved = augment.jitter(augment._events_of(frames), np.random.default_rng(0), 1, 40, 50)
    out = augment._frames_of(frames.shape, moved)
    assert out[1, 0].sum() == 400 and out[1, 0, 19:22, 24:27].sum() == 400 and (out[1, 0, 19:22, 24:27] > 20).all()
    assert out[1, 1].sum() == 0 and out[0].sum() == 0  # no event changes bin or polarity
    assert 20 <= out[2, 1].sum() <= 60 and out[2, 1, :2, :2].sum() == out[2, 1].sum()  # 4/9 of 90 stay
    wide = augment.jitter(augment._events_of(frames[1:2]), np.random.default_rng(1), 2, 40, 50)
    rows, cols = np.divmod(wide.pixel, 50)
    assert np.abs(rows - 20).max() == 2 and np.abs(cols - 25).max() == 2


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.25, 2.0])
def test_zoom_keeps_the_event_density_of_the_subject(scale):
    """Like a real nearer or farther subject: events per pixel stay, the total scales with s**2."""
    frames = poisson_window(9, (4, 2, 64, 64), rate=2.0)
    config = AugmentConfig(zoom_prob=1.0, scale_range=(scale, scale), centre_range=0.0)
    out, _ = augment_window(frames, 0, np.random.default_rng(1), config, mirrored_class=None)
    covered = slice(32 - int(32 * min(scale, 1)), 32 + int(32 * min(scale, 1)))  # the image of the frame
    density = out[..., covered, covered].mean()
    assert density == pytest.approx(2.0, rel=0.03)
    if scale < 1:
        assert out.sum() == pytest.approx(frames.sum() * scale**2, rel=0.03)


# --- occluders -----------------------------------------------------------------------------------


def brute_force_footprint(occluder: Occluder, tau: float, height: int, width: int) -> np.ndarray:
    """[H, W] bool: pixel centres inside the occluder at window fraction tau (the definition)."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    cx = occluder.start[0] + tau * (occluder.end[0] - occluder.start[0])
    cy = occluder.start[1] + tau * (occluder.end[1] - occluder.start[1])
    c, s = math.cos(occluder.angle), math.sin(occluder.angle)
    u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    a, b = occluder.size[0] / 2, occluder.size[1] / 2
    if occluder.ellipse:
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    return (np.abs(u) <= a) & (np.abs(v) <= b)


def test_occluder_footprint_moves_linearly_and_matches_its_shape():
    bar = Occluder(start=(10.0, 32.0), end=(54.0, 32.0), size=(8.0, 8.0), angle=0.0, ellipse=False, leading_polarity=0)
    masks = augment.occluder_masks(bar, 16, 64, 64)
    assert masks.shape == (17, 64, 64)
    # Bins 0 and 15: centre x = 10 + 44 * 0.5 / 16 = 11.375 and 10 + 44 * 15.5 / 16 = 52.625; a
    # column is covered when its centre col + 0.5 lies within 4 of it.
    first, last = masks[1], masks[16]
    assert np.flatnonzero(first.any(axis=0)).tolist() == list(range(7, 15))
    assert np.flatnonzero(last.any(axis=0)).tolist() == list(range(49, 57))
    assert np.flatnonzero(first.any(axis=1)).tolist() == list(range(28, 36))
    rng = np.random.default_rng(0)
    config = AugmentConfig(occluder_size=(0.1, 0.5), max_occluders=3)
    for _ in range(30):
        for occluder in augment.random_occluders(rng, config, 48, 64):
            masks = augment.occluder_masks(occluder, 8, 48, 64)
            for k in range(9):
                expected = brute_force_footprint(occluder, (k - 0.5) / 8, 48, 64)
                assert (masks[k] != expected).sum() <= 1  # a pixel centre exactly on the boundary may differ


def test_occluders_erase_events_inside_their_moving_footprint_and_only_there():
    frames = poisson_window(10, rate=1.0)
    rng = np.random.default_rng(3)
    config = AugmentConfig(occluder_size=(0.2, 0.4))
    for _ in range(10):
        occluders = augment.random_occluders(rng, config, 64, 64)
        covered = np.zeros((16, 64, 64), dtype=bool)
        for occluder in occluders:
            covered |= augment.occluder_masks(occluder, 16, 64, 64)[1:]
        out = augment.occlude(frames, occluders, rng)
        np.testing.assert_array_equal(out, frames * ~covered[:, None])
        assert covered.any() and not np.array_equal(covered[0], covered[-1])  # it moves


def test_augment_window_occluders_only_erase_when_their_edges_are_silent():
    frames = poisson_window(15, rate=1.0)
    config = AugmentConfig(occluder_prob=1.0, occluder_size=(0.2, 0.4))
    erased = []
    for seed in range(20):
        out, _ = augment_window(frames, 0, np.random.default_rng(seed), config, mirrored_class=None)
        assert np.all((out == frames) | (out == 0))  # an event is kept or erased, never changed
        erased.append(1 - out.sum() / frames.sum())
    assert min(erased) > 0.005 and max(erased) < 0.9


def test_occluder_edges_fire_on_their_leading_and_trailing_pixels_only():
    frames = poisson_window(11, rate=0.5)
    occluder = Occluder(start=(8.0, 20.0), end=(50.0, 40.0), size=(14.0, 10.0), angle=0.4, ellipse=True,
                        leading_polarity=0)  # fmt: skip
    masks = augment.occluder_masks(occluder, 16, 64, 64)
    erased = frames * ~masks[1:, None]
    out = augment.occlude(frames, [occluder], np.random.default_rng(0), edge_rate=3.0)
    added = out - erased
    leading, trailing = masks[1:] & ~masks[:-1], masks[:-1] & ~masks[1:]
    assert added.min() >= 0 and added.sum() > 0
    assert not added[:, 0][~leading].any() and not added[:, 1][~trailing].any()
    assert added[:, 0][leading].mean() == pytest.approx(3.0, rel=0.2)


# --- drop-out and noise --------------------------------------------------------------------------


@pytest.mark.parametrize("n, p", [(1, 0.3), (5, 0.75), (40, 0.5), (64, 0.9), (100, 0.6)])
def test_binomial_sampler_matches_the_binomial_distribution(n, p):
    samples = augment.binomial(np.full(100_000, n), p, np.random.default_rng(n))
    assert samples.min() >= 0 and samples.max() <= n
    observed = np.bincount(samples, minlength=n + 1) / samples.size
    pmf = np.array([math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)])
    assert np.all(np.abs(observed - pmf) <= 5 * np.sqrt(pmf * (1 - pmf) / samples.size) + 1e-4)


def test_dropout_thins_counts_binomially():
    frames = np.full((16, 2, 32, 32), 8.0, dtype=np.float32)
    out = augment.thin(frames, 0.7, np.random.default_rng(0))
    assert out.min() >= 0 and out.max() <= 8
    assert out.mean() == pytest.approx(8 * 0.7, rel=0.01)
    assert out.var() == pytest.approx(8 * 0.7 * 0.3, rel=0.05)  # binomial, not a scaled copy
    window = poisson_window(12, rate=1.5)
    config = AugmentConfig(max_drop=0.5)
    kept = []
    for seed in range(200):
        result, _ = augment_window(window, 0, np.random.default_rng(seed), config, mirrored_class=None)
        assert np.all(result <= window)  # drop-out never adds nor moves an event
        kept.append(result.sum() / window.sum())
    kept = np.array(kept)
    assert kept.min() > 0.49 and kept.max() <= 1.0
    assert kept.mean() == pytest.approx(0.75, abs=0.03)  # keep uniform in [0.5, 1]


def test_noise_adds_poisson_background_and_hot_pixels():
    empty = np.zeros((16, 2, 64, 64), dtype=np.float32)
    noisy = augment.add_noise(empty, np.random.default_rng(0), rate=0.05)
    assert noisy.sum() / (16 * 64 * 64) == pytest.approx(0.05, rel=0.05)
    assert noisy[:, 0].sum() == pytest.approx(noisy[:, 1].sum(), rel=0.1)
    hot = augment.add_noise(empty, np.random.default_rng(1), rate=0.0, hot_pixels=3, max_hot_pixel_rate=4.0)
    firing = (hot > 0).all(axis=0)  # [2, H, W]: fires in every bin
    assert 1 <= firing.sum() <= 3 and np.array_equal(firing, hot.any(axis=0))
    frames = poisson_window(13)
    assert np.all(augment.add_noise(frames, np.random.default_rng(2), rate=0.02, hot_pixels=2) >= frames)


# --- what must not change ------------------------------------------------------------------------


def motion(frames: np.ndarray) -> tuple[float, float] | None:
    """Slopes (pixels per bin) of the x and y of the strong events' centroid over the bins where
    they are many; None when fewer than 4 such bins (the blob occluded or out of the frame)."""
    strong = np.where(frames >= 4, frames, 0).sum(axis=1)  # [T, H, W]
    mass = strong.sum(axis=(1, 2))
    bins = np.flatnonzero(mass >= 150)
    if len(bins) < 4:
        return None
    y, x = np.mgrid[0 : frames.shape[2], 0 : frames.shape[3]]
    cx = (strong[bins] * x).sum(axis=(1, 2)) / mass[bins]
    cy = (strong[bins] * y).sum(axis=(1, 2)) / mass[bins]
    return float(np.polyfit(bins, cx, 1)[0]), float(np.polyfit(bins, cy, 1)[0])


def test_no_time_reversal_motion_keeps_its_direction():
    """A blob moving right and down keeps moving down, and right unless flipped (then the label says so)."""
    frames = moving_blob()
    assert motion(frames)[0] > 2 and motion(frames)[1] > 1
    measured = 0
    for seed in range(150):
        out, label = augment_window(frames, 1, np.random.default_rng(seed), AUGMENT_PRESETS["full"],
                                    mirrored_class=MIRRORED_CLASS)  # fmt: skip
        slopes = motion(out)
        if slopes is None:
            continue
        measured += 1
        assert slopes[1] > 0.5, (seed, slopes)
        assert (slopes[0] > 0.5) if label == 1 else (label == MIRRORED_CLASS[1] and slopes[0] < -0.5), (seed, slopes)
    assert measured >= 120


def test_polarity_is_never_swapped():
    frames = moving_blob()  # ON events only
    config = dataclasses.replace(AUGMENT_PRESETS["full"], noise_prob=0.0, occluder_prob=1.0, occluder_edge_rate=0.0)
    for seed in range(50):
        out, _ = augment_window(frames, 1, np.random.default_rng(seed), config, mirrored_class=MIRRORED_CLASS)
        assert out[:, 0].sum() == 0
