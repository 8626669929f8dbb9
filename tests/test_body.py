"""The simulated person's motion (``stream.sim.body``): valid poses for every class, mirror symmetry,
the turning sense of arm circles, variety of tempo, size and "other" movements, and the capsules
agreeing with the skeleton. Pure NumPy, no rendering: the whole file runs in a few seconds."""

from __future__ import annotations

import numpy as np
import pytest

from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import SensorSize
from stream.sim.body import (
    OTHER_MOVEMENTS,
    REST_ANGLES,
    REST_HANDS,
    SHAPE_NAMES,
    Body,
    Pose,
    blend_with_rest,
    capsules,
    draw_body,
    gesture_motion,
    gesture_pose,
    mirror_pose,
    rest_pose,
    skeleton,
)

SENSOR = SensorSize(128, 128)
T = np.arange(0.0, 2.0, 0.01)  # 100 Hz is plenty to follow the motion
POINTS = ("hips", "shoulders", "right_shoulder", "right_elbow", "right_wrist", "right_hand", "left_shoulder",
          "left_elbow", "left_wrist", "left_hand", "neck", "head")  # fmt: skip
CLOCKWISE = {3: True, 4: False, 5: True, 6: False}
BODY = Body(center_x=64.0, shoulder_y=50.0, scale=128.0, shoulder_half_width=26.0, upper_arm=24.0, forearm=22.0,
            upper_arm_radius=5.5, forearm_radius=4.5, hand_radius=5.5, head_radius=12.0, torso_radius=19.0,
            torso_length=47.0)  # fmt: skip


def instance(label: int, seed: int, t_s: np.ndarray = T):
    """A random body and one instance of ``label`` drawn from the same generator, as the simulator does."""
    rng = np.random.default_rng(seed)
    body = draw_body(rng, SENSOR)
    return body, gesture_motion(label, t_s, body, rng)


def moving_arm(points, label: int) -> tuple[np.ndarray, np.ndarray]:
    """(hand, shoulder) ``[n, 2]`` of the arm a one-armed class moves (right arm: image left)."""
    if label in (1, 3, 4):
        return points.right_hand, points.right_shoulder
    return points.left_hand, points.left_shoulder


def angle_round(hand: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Unwrapped image angle of ``hand`` round ``centre`` (increasing = clockwise as seen)."""
    d = hand - centre
    return np.unwrap(np.arctan2(d[:, 1], d[:, 0]))


def dominant_period(path: np.ndarray, dt: float) -> float:
    """Period (s) of the strongest frequency in a 2-D path ``[n, 2]``."""
    spectrum = (np.abs(np.fft.rfft(path - path.mean(axis=0), axis=0)) ** 2).sum(axis=1)
    frequencies = np.fft.rfftfreq(len(path), dt)
    return 1.0 / frequencies[1 + np.argmax(spectrum[1:])]


def random_pose(rng: np.random.Generator, n: int = 50) -> Pose:
    """A pose with every field set to random (plausible) values."""
    return Pose(REST_ANGLES + rng.uniform(-2, 2, (n, 4)), rng.uniform(-5, 5, (n, 2)), rng.uniform(-3, 3, (n, 2)),
                rng.uniform(-0.3, 0.3, n), rng.uniform(0, 1, (n, 2)), rng.uniform(0, 0.8, n),
                rng.uniform(-0.8, 0.8, n), rng.uniform(0.2, 1, (n, 4)))  # fmt: skip


@pytest.mark.parametrize("label", range(len(GESTURE_CLASSES)))
def test_every_class_gives_finite_poses_of_the_right_shapes(label):
    n = len(T)
    for seed in range(25):
        body, motion = instance(label, seed)
        pose = motion.pose.filled()
        shapes = [np.shape(field) for field in pose]
        assert shapes == [(n, 4), (n, 2), (n, 2), (n,), (n, 2), (n,), (n,), (n, 4)], motion.style
        assert all(np.isfinite(field).all() for field in pose), motion.style
        assert (pose.hands >= 0).all() and (pose.hands <= 1).all()
        assert (pose.limb_scale > 0).all() and (pose.limb_scale <= 1).all()
        assert np.abs(pose.lean).max() < 0.4 and np.abs(pose.bow).max() < 1.1 and np.abs(pose.turn).max() < 1.0
        shapes = capsules(body, pose)
        assert shapes.shape == (n, len(SHAPE_NAMES), 5) and np.isfinite(shapes).all()
        assert (shapes[..., 4] > 0).all()
        points = skeleton(body, pose)
        assert all(getattr(points, name).shape == (n, 2) for name in POINTS)


@pytest.mark.parametrize("label", [1, 3, 4])
def test_mirrored_classes_are_mirror_images(label):
    def reflect(point: np.ndarray, body: Body) -> np.ndarray:
        return np.stack([2 * body.center_x - point[:, 0], point[:, 1]], axis=1)

    for seed in range(10):
        body, plain = instance(label, seed)
        _, mirrored = instance(MIRRORED_CLASS[label], seed)
        assert mirrored.style == plain.style
        a, b = skeleton(body, plain.pose), skeleton(body, mirrored.pose)
        for name in POINTS:
            other = name.replace("right", "LEFT").replace("left", "right").replace("LEFT", "left")
            np.testing.assert_allclose(reflect(getattr(a, name), body), getattr(b, other), atol=1e-9, err_msg=name)
        np.testing.assert_allclose(a.hands[:, ::-1], b.hands)


def test_mirror_pose_reflects_every_capsule():
    pose = random_pose(np.random.default_rng(0))
    plain, mirrored = capsules(BODY, pose), capsules(BODY, mirror_pose(pose))
    swap = [0, 1, 2, 6, 7, 8, 3, 4, 5]  # right arm <-> left arm
    expected = plain[:, swap].copy()
    expected[..., [0, 2]] = 2 * BODY.center_x - expected[..., [0, 2]]
    np.testing.assert_allclose(mirrored, expected, atol=1e-9)


@pytest.mark.parametrize("label", [3, 4, 5, 6])
def test_arm_circles_turn_the_named_way_round_the_shoulder(label):
    styles = set()
    for seed in range(40):
        body, motion = instance(label, seed)
        angle = angle_round(*moving_arm(skeleton(body, motion.pose), label))
        if not CLOCKWISE[label]:
            angle = -angle
        turned = angle[-1] - angle[0]
        assert turned > 1.5 * np.pi, f"{GESTURE_CLASSES[label]} ({motion.style}): {turned:.2f} rad"
        backwards = np.max(np.maximum.accumulate(angle) - angle)
        assert backwards < 0.3, f"{GESTURE_CLASSES[label]} ({motion.style}) turns back by {backwards:.2f} rad"
        styles.add(motion.style.split()[0])
    assert styles == {"whole-arm", "forearm"}


@pytest.mark.parametrize("label", [1, 3])
def test_tempo_and_size_vary_from_instance_to_instance(label):
    t_s = np.arange(0.0, 4.0, 0.01)
    periods, sizes = [], []
    for seed in range(40):
        body, motion = instance(label, seed, t_s)
        hand, shoulder = moving_arm(skeleton(body, motion.pose), label)
        path = hand - shoulder
        periods.append(dominant_period(path, 0.01))
        sizes.append(np.sqrt(((path - path.mean(axis=0)) ** 2).sum(axis=1).mean()) / body.reach)
    low, high = np.percentile(periods, [10, 90])
    assert high > 2 * low, f"periods {low:.2f}..{high:.2f} s"
    low, high = np.percentile(sizes, [10, 90])
    assert high > 1.8 * low, f"sizes {low:.3f}..{high:.3f} reach"


def test_other_draws_many_distinct_everyday_movements():
    assert len(OTHER_MOVEMENTS) >= 12
    styles = [instance(10, seed, np.arange(0.0, 0.5, 0.05))[1].style for seed in range(300)]
    kinds = {style.removesuffix(" + sway") for style in styles}
    assert kinds <= set(OTHER_MOVEMENTS) and len(kinds) >= 12
    assert any(style.endswith(" + sway") for style in styles)


@pytest.mark.parametrize("kind", list(OTHER_MOVEMENTS))
def test_each_other_movement_moves_and_never_circles_a_hand(kind):
    rest = skeleton(BODY, rest_pose(T, BODY))
    for seed in range(5):
        pose = OTHER_MOVEMENTS[kind](BODY, T, np.random.default_rng(seed), float(T[-1]), 1.0)
        points = skeleton(BODY, pose)
        moved = max(np.abs(getattr(points, name) - getattr(rest, name)).max() for name in POINTS)
        assert moved > 1.0, f"{kind}: moves {moved:.2f} px"
        for hand, shoulder in ((points.right_hand, points.right_shoulder), (points.left_hand, points.left_shoulder)):
            angle = angle_round(hand, shoulder)
            assert np.ptp(angle) < 1.25 * np.pi, f"{kind}: a hand sweeps {np.ptp(angle):.2f} rad round its shoulder"


def test_capsules_are_built_from_the_skeleton():
    pose = random_pose(np.random.default_rng(1))
    shapes, points = capsules(BODY, pose), skeleton(BODY, pose)
    pairs = {
        "torso": (None, points.hips), "neck": (points.shoulders, points.head), "head": (points.head, None),
        "right upper arm": (points.right_shoulder, points.right_elbow),
        "right forearm": (points.right_elbow, points.right_wrist), "right hand": (points.right_hand, None),
        "left upper arm": (points.left_shoulder, points.left_elbow),
        "left forearm": (points.left_elbow, points.left_wrist), "left hand": (points.left_hand, None),
    }  # fmt: skip
    for index, name in enumerate(SHAPE_NAMES):
        a, b = pairs[name]
        if a is not None:
            np.testing.assert_allclose(shapes[:, index, 0:2], a, err_msg=name)
        if b is not None:
            np.testing.assert_allclose(shapes[:, index, 2:4], b, err_msg=name)


def test_lean_moves_the_shoulders_and_head_offset_moves_the_head():
    n = 5
    angles, offset = np.repeat(REST_ANGLES[None], n, axis=0), np.zeros((n, 2))
    upright = skeleton(BODY, Pose(angles, offset))
    lean = np.linspace(-0.3, 0.3, n)
    leaning = skeleton(BODY, Pose(angles, offset, lean=lean))
    np.testing.assert_allclose(leaning.hips, upright.hips)
    expected = upright.hips + BODY.torso_length * np.stack([np.sin(lean), -np.cos(lean)], axis=1)
    np.testing.assert_allclose(leaning.shoulders, expected)
    assert (np.diff(leaning.right_shoulder[:, 0]) > 0).all()  # positive lean: clockwise, shoulders to the right
    head = np.tile([3.0, -2.0], (n, 1))
    nodding = skeleton(BODY, Pose(angles, offset, head=head))
    np.testing.assert_allclose(nodding.head - upright.head, head)
    np.testing.assert_allclose(nodding.neck, upright.neck)
    fist, open_ = (capsules(BODY, Pose(angles, offset, hands=np.full((n, 2), h)))[:, 5] for h in (0.0, 1.0))
    assert (np.hypot(*(open_[:, 2:4] - open_[:, 0:2]).T) > np.hypot(*(fist[:, 2:4] - fist[:, 0:2]).T) + 1).all()


def test_pose_with_angles_and_offset_only_still_works():
    rng = np.random.default_rng(2)
    angles, offset = REST_ANGLES + rng.uniform(-1, 1, (20, 4)), rng.uniform(-3, 3, (20, 2))
    plain = Pose(angles, offset)
    explicit = Pose(angles, offset, np.zeros((20, 2)), np.zeros(20), np.full((20, 2), REST_HANDS), np.zeros(20),
                    np.zeros(20), np.ones((20, 4)))  # fmt: skip
    np.testing.assert_allclose(capsules(BODY, plain), capsules(BODY, explicit))
    np.testing.assert_allclose(capsules(BODY, mirror_pose(plain)), capsules(BODY, mirror_pose(explicit)))
    t_s = np.linspace(0, 1, 20)
    np.testing.assert_allclose(capsules(BODY, blend_with_rest(plain, t_s, 1.0, 0.2)),
                               capsules(BODY, blend_with_rest(explicit, t_s, 1.0, 0.2)))  # fmt: skip


def test_blend_with_rest_starts_and_ends_standing_still():
    t_s = np.linspace(0.0, 1.0, 101)
    blended = blend_with_rest(random_pose(np.random.default_rng(3), len(t_s)), t_s, 1.0, 0.2)
    rest = rest_pose(t_s, BODY).filled()
    for name, field, still in zip(Pose._fields, blended, rest):
        if name == "offset":
            still = np.zeros_like(still)  # a gesture's offset fades to 0 (breathing is added by the timeline)
        np.testing.assert_allclose(field[[0, -1]], still[[0, -1]], atol=1e-9, err_msg=name)


def test_bodies_cover_the_typical_and_the_wide_framing():
    width, height = SENSOR
    bodies = [draw_body(np.random.default_rng(seed), SENSOR) for seed in range(400)]
    scale = np.array([body.scale for body in bodies]) / min(SENSOR)
    center_x = np.array([body.center_x for body in bodies]) / width
    shoulder_y = np.array([body.shoulder_y for body in bodies]) / height
    typical = (scale >= 1.0) & (scale <= 1.2) & (np.abs(center_x - 0.5) <= 0.07) & (np.abs(shoulder_y - 0.405) <= 0.045)
    assert 0.4 < typical.mean() < 0.7
    assert 0.6 <= scale.min() < 0.7 and scale.max() > 1.35
    assert center_x.min() >= 0.25 and center_x.max() <= 0.75 and center_x.max() - center_x.min() > 0.3
    assert shoulder_y.min() >= 0.2 and shoulder_y.max() <= 0.6
    for body in bodies:  # both shoulders inside the frame: the gesturing arm is never wholly cut off
        assert body.shoulder_half_width < body.center_x < width - body.shoulder_half_width
    head = np.array([body.head_radius / body.scale for body in bodies])
    shoulders = np.array([body.shoulder_half_width / body.scale for body in bodies])
    assert head.max() > 1.3 * head.min() and shoulders.max() > 1.3 * shoulders.min()


def test_empty_times_and_bad_labels():
    body = draw_body(np.random.default_rng(0), SENSOR)
    empty = gesture_pose(3, np.zeros(0), body, np.random.default_rng(0))
    assert capsules(body, empty).shape == (0, len(SHAPE_NAMES), 5)
    with pytest.raises(ValueError, match="label"):
        gesture_pose(11, T, body, np.random.default_rng(0))
