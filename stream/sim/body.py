"""The simulated person: body geometry, the 11 gesture trajectories, and the capsules to draw.

Coordinates are image pixels, origin top-left, x right, y down. The subject FACES the camera, so
the subject's right arm hangs on the IMAGE LEFT (small x). Angles are image angles in radians:
direction ``(cos a, sin a)`` with y down, so an increasing angle turns CLOCKWISE as seen by the camera.

A pose is four absolute limb angles per time step, ``[right upper arm, right forearm, left upper arm,
left forearm]``, plus a whole-body offset in pixels. Left-arm classes are built by mirroring the
right-arm ones (angle -> pi - angle, arms swapped), exactly as ``stream.classes.MIRRORED_CLASS`` says.
Everything is vectorised over time (one NumPy call per limb, no per-step Python).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.events import SensorSize

TWO_PI = 2.0 * np.pi

# Drawing order (back to front) and which shapes are skin (the rest wear the shirt).
SHAPE_NAMES = (
    "torso", "neck", "head",
    "right upper arm", "right forearm", "right hand",
    "left upper arm", "left forearm", "left hand",
)
SKIN_SHAPES = ("neck", "head", "right hand", "left hand")


@dataclass(frozen=True)
class Body:
    """Body geometry in pixels. ``center_x``/``shoulder_y`` place the midpoint between the shoulders."""

    center_x: float
    shoulder_y: float
    scale: float  # body size unit (about the sensor's short side)
    shoulder_half_width: float
    upper_arm: float  # shoulder -> elbow
    forearm: float  # elbow -> wrist
    upper_arm_radius: float
    forearm_radius: float
    hand_radius: float
    head_radius: float
    torso_radius: float
    torso_length: float  # shoulder line -> hip

    @property
    def reach(self) -> float:
        return self.upper_arm + self.forearm


def draw_body(rng: np.random.Generator, sensor_size: SensorSize) -> Body:
    """A random person filling the frame the way DVS128 Gesture subjects do (head to hips)."""
    width, height = sensor_size
    scale = min(width, height) * rng.uniform(1.0, 1.2)  # "S": body size unit in pixels
    return Body(
        center_x=width * (0.5 + rng.uniform(-0.07, 0.07)),
        shoulder_y=height * (0.4 + rng.uniform(-0.04, 0.05)),
        scale=scale,
        shoulder_half_width=scale * rng.uniform(0.19, 0.22),
        upper_arm=scale * rng.uniform(0.18, 0.2),
        forearm=scale * rng.uniform(0.16, 0.18),
        upper_arm_radius=scale * rng.uniform(0.04, 0.05),
        forearm_radius=scale * rng.uniform(0.032, 0.04),
        hand_radius=scale * rng.uniform(0.04, 0.05),
        head_radius=scale * rng.uniform(0.085, 0.1),
        torso_radius=scale * rng.uniform(0.14, 0.16),
        torso_length=scale * rng.uniform(0.34, 0.4),
    )


class Pose(NamedTuple):
    """Limb angles ``[n, 4]`` (radians, image angles) and body offset ``[n, 2]`` (pixels)."""

    angles: np.ndarray
    offset: np.ndarray


# --- helpers -----------------------------------------------------------------------------------

REST_ANGLES = np.array([np.pi / 2 + 0.12, np.pi / 2 + 0.04, np.pi / 2 - 0.12, np.pi / 2 - 0.04])


def _pose(n: int, right: tuple | None = None, left: tuple | None = None, offset=None) -> Pose:
    angles = np.repeat(REST_ANGLES[None, :], n, axis=0)
    if right is not None:
        angles[:, 0], angles[:, 1] = right
    if left is not None:
        angles[:, 2], angles[:, 3] = left
    return Pose(angles, np.zeros((n, 2)) if offset is None else offset)


def _ik(body: Body, side: float, hand_x: np.ndarray, hand_y: np.ndarray, bend: float) -> tuple:
    """Two-link inverse kinematics: (upper, forearm) angles putting the wrist at (hand_x, hand_y).

    Hand targets are relative to the shoulder midpoint (pixels). ``side`` is -1 for the right
    arm (image left), +1 for the left. ``bend`` +1 puts the elbow on the outward-down side of the
    shoulder->hand line (hands in front of the body), -1 on the other side (hands above the shoulder).
    """
    shoulder_x = side * body.shoulder_half_width
    dx, dy = hand_x - shoulder_x, hand_y
    l1, l2 = body.upper_arm, body.forearm
    distance = np.clip(np.hypot(dx, dy), abs(l1 - l2) + 1e-3, l1 + l2 - 1e-3)
    direction = np.arctan2(dy, dx)
    opening = np.arccos(np.clip((l1 * l1 + distance * distance - l2 * l2) / (2 * l1 * distance), -1.0, 1.0))
    upper = direction - side * bend * opening
    elbow_x, elbow_y = shoulder_x + l1 * np.cos(upper), l1 * np.sin(upper)
    forearm = np.arctan2(hand_y - elbow_y, hand_x - elbow_x)
    return upper, forearm


def _rest_hand(body: Body, side: float) -> tuple[float, float]:
    """Wrist position of the hanging arm, relative to the shoulder midpoint."""
    a_upper, a_fore = (REST_ANGLES[0], REST_ANGLES[1]) if side < 0 else (REST_ANGLES[2], REST_ANGLES[3])
    x = side * body.shoulder_half_width + body.upper_arm * np.cos(a_upper) + body.forearm * np.cos(a_fore)
    y = body.upper_arm * np.sin(a_upper) + body.forearm * np.sin(a_fore)
    return float(x), float(y)


def mirror_pose(pose: Pose) -> Pose:
    """The left-right mirror image of a pose: arms swapped, angles a -> pi - a, offset x negated."""
    angles = np.pi - pose.angles[:, [2, 3, 0, 1]]
    offset = pose.offset * np.array([-1.0, 1.0])
    return Pose(angles, offset)


def _phase(t_s: np.ndarray, rng: np.random.Generator, period_s: tuple[float, float]) -> np.ndarray:
    """2*pi*t/period with a random period and start phase."""
    return TWO_PI * t_s / rng.uniform(*period_s) + rng.uniform(0, TWO_PI)


# --- the gestures (right-handed versions; the left ones are mirrors) ---------------------------


def _clap(body: Body, t_s: np.ndarray, rng: np.random.Generator) -> Pose:
    s = body.scale
    phi = _phase(t_s, rng, (0.35, 0.7))
    gap = body.hand_radius * 0.9 + rng.uniform(0.1, 0.18) * s * 0.5 * (1 - np.cos(phi))
    y = rng.uniform(0.2, 0.27) * s + 0.02 * s * np.sin(phi)
    right = _ik(body, -1, -gap, y, +1)
    left = _ik(body, +1, gap, y, +1)
    return _pose(len(t_s), right, left)


def _wave(body: Body, t_s: np.ndarray, rng: np.random.Generator) -> Pose:
    phi = _phase(t_s, rng, (0.35, 0.7))
    upper = np.pi - rng.uniform(0.5, 1.0) + 0.08 * np.sin(phi)  # elbow out and a little down
    forearm = -np.pi / 2 + rng.uniform(-0.2, 0.2) + rng.uniform(0.4, 0.7) * np.sin(phi)
    return _pose(len(t_s), right=(upper, forearm))


def _circle(direction: float) -> Callable:
    """Right arm turning round the shoulder; direction +1 = clockwise as seen by the camera."""

    def gesture(body: Body, t_s: np.ndarray, rng: np.random.Generator) -> Pose:
        phi = _phase(t_s, rng, (0.7, 1.3))
        upper = direction * phi
        forearm = upper + direction * rng.uniform(-0.1, 0.4) + 0.1 * np.sin(phi)
        return _pose(len(t_s), right=(upper, forearm))

    return gesture


def _arm_roll(body: Body, t_s: np.ndarray, rng: np.random.Generator) -> Pose:
    s = body.scale
    phi = _phase(t_s, rng, (0.35, 0.6)) * rng.choice([-1.0, 1.0])
    radius = rng.uniform(0.05, 0.07) * s
    center_y, half_gap = rng.uniform(0.18, 0.24) * s, rng.uniform(0.01, 0.04) * s
    right = _ik(body, -1, -half_gap + radius * np.cos(phi), center_y + radius * np.sin(phi), +1)
    left = _ik(body, +1, half_gap - radius * np.cos(phi), center_y - radius * np.sin(phi), +1)
    return _pose(len(t_s), right, left)


def _air_drums(body: Body, t_s: np.ndarray, rng: np.random.Generator) -> Pose:
    s = body.scale
    phi = _phase(t_s, rng, (0.35, 0.6))
    base_y, lift = rng.uniform(0.22, 0.28) * s, rng.uniform(0.09, 0.14) * s
    spread = rng.uniform(0.05, 0.11) * s
    wander = 0.03 * s * np.sin(phi / 2 + rng.uniform(0, TWO_PI))
    right = _ik(body, -1, -spread + wander, base_y - lift * (0.5 - 0.5 * np.cos(phi)) ** 1.5, +1)
    left = _ik(body, +1, spread + wander, base_y - lift * (0.5 + 0.5 * np.cos(phi)) ** 1.5, +1)
    return _pose(len(t_s), right, left)


def _air_guitar(body: Body, t_s: np.ndarray, rng: np.random.Generator) -> Pose:
    s = body.scale
    strum = _phase(t_s, rng, (0.2, 0.35))
    slide = _phase(t_s, rng, (0.8, 1.6))
    right = _ik(body, -1, -rng.uniform(0.0, 0.06) * s,
                rng.uniform(0.22, 0.27) * s + rng.uniform(0.04, 0.07) * s * np.sin(strum), +1)
    left = _ik(body, +1, rng.uniform(0.3, 0.36) * s + 0.03 * s * np.sin(slide),
               rng.uniform(0.06, 0.14) * s + 0.01 * s * np.sin(slide), +1)
    return _pose(len(t_s), right, left)


def _other(body: Body, t_s: np.ndarray, rng: np.random.Generator) -> Pose:
    """A motion that is none of the ten: one of several everyday movements, drawn at random."""
    s = body.scale
    n = len(t_s)
    kind = rng.integers(5)
    if kind == 0:  # both arms raised sideways and lowered together (jumping-jack arms)
        phi = _phase(t_s, rng, (0.9, 1.5))
        raise_angle = 0.12 + rng.uniform(1.6, 2.5) * 0.5 * (1 - np.cos(phi))
        pose = _pose(n, right=(np.pi / 2 + raise_angle, np.pi / 2 + raise_angle + 0.1))
        pose.angles[:, 2:] = np.pi - pose.angles[:, :2]
        return pose
    if kind == 1:  # one hand up to the head, scratch, and back down
        phi = _phase(t_s, rng, (1.6, 2.6))
        up = np.clip(1.6 * 0.5 * (1 - np.cos(phi)), 0.0, 1.0)
        rest_x, rest_y = _rest_hand(body, -1)
        scratch = 0.015 * s * np.sin(_phase(t_s, rng, (0.2, 0.3)))
        head_x, head_y = -0.07 * s + scratch, -0.17 * s
        right = _ik(body, -1, rest_x + up * (head_x - rest_x), rest_y + up * (head_y - rest_y), -1)
        return _pose(n, right=right)
    if kind == 2:  # hands wander slowly (sum of slow sinusoids)
        def wander(base_x: float) -> tuple[np.ndarray, np.ndarray]:
            x = np.full(n, base_x)
            y = np.full(n, rng.uniform(0.2, 0.28) * s)
            for _ in range(3):
                x += 0.04 * s * np.sin(_phase(t_s, rng, (0.8, 3.0)))
                y += 0.04 * s * np.sin(_phase(t_s, rng, (0.8, 3.0)))
            return x, y

        right = _ik(body, -1, *wander(-0.12 * s), +1)
        left = _ik(body, +1, *wander(0.12 * s), +1)
        return _pose(n, right, left)
    if kind == 3:  # body sways or bows, arms hanging
        phi = _phase(t_s, rng, (1.0, 2.0))
        amplitude = rng.uniform(0.04, 0.08) * s
        offset = np.stack([amplitude * np.sin(phi), 0.4 * amplitude * np.sin(2 * phi)], axis=1)
        pose = _pose(n, offset=offset)
        pose.angles[:] += 0.1 * np.sin(phi - 0.5)[:, None]
        return pose
    # arms fold across the chest and unfold
    phi = _phase(t_s, rng, (1.4, 2.4))
    fold = np.clip(1.5 * 0.5 * (1 - np.cos(phi)), 0.0, 1.0)
    hands = []
    for side in (-1.0, 1.0):
        rest_x, rest_y = _rest_hand(body, side)
        target_x, target_y = -side * 0.13 * s, (0.2 + 0.03 * side) * s
        hands.append(_ik(body, side, rest_x + fold * (target_x - rest_x), rest_y + fold * (target_y - rest_y), +1))
    return _pose(n, hands[0], hands[1])


_RIGHT_HANDED: dict[int, Callable] = {
    0: _clap,
    1: _wave,
    3: _circle(+1.0),
    4: _circle(-1.0),
    7: _arm_roll,
    8: _air_drums,
    9: _air_guitar,
    10: _other,
}


def gesture_pose(label: int, t_s: np.ndarray, body: Body, rng: np.random.Generator) -> Pose:
    """The pose of gesture class ``label`` at times ``t_s`` (seconds from the gesture's start).

    Speed, amplitude and phase are drawn from ``rng``. Left-arm classes are mirrored right-arm ones;
    mirror-symmetric classes (clapping, roll, drums, guitar, other) are mirrored at random too.
    """
    if not 0 <= label < len(GESTURE_CLASSES):
        raise ValueError(f"gesture label must be 0..{len(GESTURE_CLASSES) - 1}, got {label}")
    t_s = np.asarray(t_s, dtype=np.float64)
    if label in _RIGHT_HANDED:
        pose = _RIGHT_HANDED[label](body, t_s, rng)
        mirrored = MIRRORED_CLASS[label] == label and rng.random() < 0.5
    else:
        pose = _RIGHT_HANDED[MIRRORED_CLASS[label]](body, t_s, rng)
        mirrored = True
    return mirror_pose(pose) if mirrored else pose


def rest_pose(t_s: np.ndarray, body: Body) -> Pose:
    """Standing still: arms hanging, a faint breathing sway (well under a pixel)."""
    t_s = np.asarray(t_s, dtype=np.float64)
    offset = np.zeros((len(t_s), 2))
    offset[:, 1] = 0.15 * np.sin(TWO_PI * t_s / 4.0)
    return _pose(len(t_s), offset=offset)


def blend_with_rest(pose: Pose, t_s: np.ndarray, duration_s: float, ramp_s: float) -> Pose:
    """Fade a gesture in from the rest pose over ``ramp_s`` and back out before ``duration_s``."""
    t_s = np.asarray(t_s, dtype=np.float64)
    if ramp_s <= 0 or len(t_s) == 0:
        return pose
    ramp_in = np.clip(t_s / ramp_s, 0, 1)
    ramp_out = np.clip((duration_s - t_s) / ramp_s, 0, 1)
    weight = np.minimum(ramp_in, ramp_out)
    weight = weight * weight * (3 - 2 * weight)  # smoothstep
    # Unwrap angles relative to rest, so turning arms fade through the short way at each end.
    delta = np.unwrap(pose.angles - REST_ANGLES, axis=0)
    start_shift = np.round(delta[0] / TWO_PI) * TWO_PI
    end_shift = np.round(delta[-1] / TWO_PI) * TWO_PI
    first_half = (t_s < duration_s / 2)[:, None]
    delta = delta - np.where(first_half, start_shift, end_shift)
    angles = REST_ANGLES + weight[:, None] * delta
    return Pose(angles, pose.offset * weight[:, None])


def capsules(body: Body, pose: Pose) -> np.ndarray:
    """Shapes to draw, ``[n, len(SHAPE_NAMES), 5]``: (ax, ay, bx, by, radius) in pixels.

    Each shape is a capsule (segment a-b swept by a disc); a circle has a == b.
    """
    n = len(pose.angles)
    out = np.empty((n, len(SHAPE_NAMES), 5))
    cx = body.center_x + pose.offset[:, 0]
    cy = body.shoulder_y + pose.offset[:, 1]
    head_y = cy - 0.9 * body.head_radius - 0.12 * body.torso_length - body.head_radius
    out[:, 0] = np.stack([cx, cy + 0.2 * body.torso_radius, cx, cy + body.torso_length,
                          np.full(n, body.torso_radius)], axis=1)
    out[:, 1] = np.stack([cx, cy, cx, head_y, np.full(n, 0.45 * body.head_radius)], axis=1)
    out[:, 2] = np.stack([cx, head_y, cx, head_y - 0.15 * body.head_radius,
                          np.full(n, body.head_radius)], axis=1)
    for arm, side in ((0, -1.0), (1, 1.0)):
        upper, fore = pose.angles[:, 2 * arm], pose.angles[:, 2 * arm + 1]
        sx, sy = cx + side * body.shoulder_half_width, cy + 0.25 * body.upper_arm_radius
        ex, ey = sx + body.upper_arm * np.cos(upper), sy + body.upper_arm * np.sin(upper)
        wx, wy = ex + body.forearm * np.cos(fore), ey + body.forearm * np.sin(fore)
        hx, hy = wx + 0.6 * body.hand_radius * np.cos(fore), wy + 0.6 * body.hand_radius * np.sin(fore)
        first = 3 + 3 * arm
        out[:, first] = np.stack([sx, sy, ex, ey, np.full(n, body.upper_arm_radius)], axis=1)
        out[:, first + 1] = np.stack([ex, ey, wx, wy, np.full(n, body.forearm_radius)], axis=1)
        out[:, first + 2] = np.stack([hx, hy, hx, hy, np.full(n, body.hand_radius)], axis=1)
    return out
