"""The simulated person: body geometry, the 11 gestures' motion in many styles, and the skeleton and
capsules a renderer draws.

Coordinates are image pixels, origin top-left, x right, y down. The subject FACES the camera, so
the subject's right arm hangs on the IMAGE LEFT (small x). Angles are image angles in radians:
direction ``(cos a, sin a)`` with y down, so an increasing angle turns CLOCKWISE as seen by the camera.

A ``Pose`` is, per time step, four absolute limb angles ``[right upper arm, right forearm, left upper
arm, left forearm]`` and a whole-body offset, plus optional head offset, torso lean, bow and turn,
hand opening and limb foreshortening (``None``: neutral). ``skeleton`` turns a pose into joint
positions (the one place that computes them); ``capsules`` turns the skeleton into the shapes the
capsule renderer draws. Left-arm classes are built by mirroring the right-arm ones
(``mirror_pose``), exactly as ``stream.classes.MIRRORED_CLASS`` says.

Each gesture instance draws its own style from the generator (``gesture_motion``): tempo, amplitude,
a slow start, tempo irregularity, hand height, elbow bend, the plane and size of arm circles, the
variant of the gesture (``Motion.style``). "Other gestures" is one of ``OTHER_MOVEMENTS`` (everyday
movements that are none of the ten), sometimes with a body sway. ``PARAMETERS`` lists the ranges.
Everything is vectorised over time (NumPy over all steps; Python loops only over limbs or a few
excursions, never over steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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

# --- style ranges (the README's simulator table is made from PARAMETERS below) ----------------

TEMPO_RANGE = (0.5, 2.0)  # x the gesture's typical tempo (log-uniform)
AMPLITUDE_RANGE = (0.6, 1.4)  # x the gesture's typical size
SLOW_START_PROBABILITY = 0.25
SLOW_START_S = (0.2, 0.8)  # the tempo and amplitude ramp up over this long
TEMPO_JITTER = 0.1  # relative amplitude of each of two slow tempo modulations
CIRCLE_TILT_MAX = np.radians(60.0)  # plane of an arm circle tilted away from the image plane
TYPICAL_FRAMING_PROBABILITY = 0.5  # bodies framed like DVS128 Gesture (head to hips, centred)
WIDE_SCALE = (0.6, 1.5)  # x the sensor's short side, log-uniform, for the other half
WIDE_CENTER_X = (0.25, 0.75)  # x the sensor width
WIDE_SHOULDER_Y = (0.2, 0.6)  # x the sensor height
CHILD_PROBABILITY = 0.25
SWAY_PROBABILITY = 0.35  # "other" movements that come with a body sway
REST_HANDS = 0.35  # hand opening of a relaxed hand (0 fist, 1 open)


@dataclass(frozen=True)
class Body:
    """Body geometry in pixels. ``center_x``/``shoulder_y`` place the midpoint between the shoulders."""

    center_x: float
    shoulder_y: float
    scale: float  # body size unit (about the sensor's short side for the typical framing)
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

    @property
    def neck_length(self) -> float:
        """Shoulder midpoint -> the base of the head (where the neck meets it)."""
        return 0.12 * self.torso_length + 0.9 * self.head_radius


def draw_body(rng: np.random.Generator, sensor_size: SensorSize) -> Body:
    """A random person: children to broad adults, framed like DVS128 Gesture (head to hips, centred)
    half of the time, else anywhere from small in the frame to filling it and cut off at the edges."""
    width, height = sensor_size
    short_side = min(width, height)
    if rng.random() < TYPICAL_FRAMING_PROBABILITY:
        scale = short_side * rng.uniform(1.0, 1.2)
        center_x = width * (0.5 + rng.uniform(-0.07, 0.07))
        shoulder_y = height * (0.4 + rng.uniform(-0.04, 0.05))
    else:
        scale = short_side * float(np.exp(rng.uniform(*np.log(WIDE_SCALE))))
        # Anywhere, but both shoulders inside the frame: the gesturing arm may be cut off, never all of it.
        inside = 0.205 * 1.12 * 1.08 * scale + 0.05 * scale
        low, high = max(WIDE_CENTER_X[0] * width, inside), min(WIDE_CENTER_X[1] * width, width - inside)
        center_x = rng.uniform(low, high) if low < high else width / 2
        shoulder_y = height * rng.uniform(*WIDE_SHOULDER_Y)
    child = rng.uniform(0.0, 1.0) if rng.random() < CHILD_PROBABILITY else 0.0  # big head, short limbs
    build = rng.uniform(-1.0, 1.0)  # slim .. broad

    def size(typical: float, factor: float = 1.0, spread: float = 0.1) -> float:
        return scale * typical * factor * rng.uniform(1.0 - spread, 1.0 + spread)

    return Body(
        center_x=center_x,
        shoulder_y=shoulder_y,
        scale=scale,
        shoulder_half_width=size(0.205, (1 + 0.12 * build) * (1 - 0.15 * child), 0.08),
        upper_arm=size(0.19, 1 - 0.12 * child, 0.12),
        forearm=size(0.17, 1 - 0.12 * child, 0.12),
        upper_arm_radius=size(0.045, 1 + 0.25 * build),
        forearm_radius=size(0.036, 1 + 0.25 * build),
        hand_radius=size(0.045, (1 + 0.1 * build) * (1 - 0.1 * child)),
        head_radius=size(0.092, 1 + 0.35 * child),
        torso_radius=size(0.15, (1 + 0.2 * build) * (1 - 0.1 * child), 0.08),
        torso_length=size(0.37, 1 - 0.12 * child, 0.12),
    )


# --- pose, skeleton, capsules ------------------------------------------------------------------

REST_ANGLES = np.array([np.pi / 2 + 0.12, np.pi / 2 + 0.04, np.pi / 2 - 0.12, np.pi / 2 - 0.04])
_ARM_SWAP = [2, 3, 0, 1]


class Pose(NamedTuple):
    """A person's pose at ``n`` time steps. Only ``angles`` and ``offset`` are required.

    angles: ``[n, 4]`` absolute limb angles (image radians): right upper arm, right forearm, left
        upper arm, left forearm.
    offset: ``[n, 2]`` whole-body offset (pixels).
    head: ``[n, 2]`` head offset relative to the neck (pixels; nod = y, turn/shake = x). None: 0.
    lean: ``[n]`` torso tilt about the hips in the image plane (radians, + = clockwise as seen, the
        shoulders move to the image right). None: 0.
    hands: ``[n, 2]`` hand opening, right and left (0 fist, 1 open, spread fingers). None: relaxed.
    bow: ``[n]`` torso tilt towards the camera (radians; the torso and neck foreshorten, the
        shoulders and head come down). None: 0.
    turn: ``[n]`` torso turn about the vertical axis (radians; the shoulders narrow). None: 0.
    limb_scale: ``[n, 4]`` projected length of each arm segment over its true length (the cosine
        of its angle out of the image plane; 1 = in the image plane), same order as ``angles``.
        None: 1.
    """

    angles: np.ndarray
    offset: np.ndarray
    head: np.ndarray | None = None
    lean: np.ndarray | None = None
    hands: np.ndarray | None = None
    bow: np.ndarray | None = None
    turn: np.ndarray | None = None
    limb_scale: np.ndarray | None = None

    def filled(self) -> Pose:
        """The same pose with every optional field as an array (neutral values where None)."""
        n = len(self.angles)

        def field(value, shape: tuple, default: float) -> np.ndarray:
            if value is None:
                return np.full(shape, default)
            return np.array(np.broadcast_to(np.asarray(value, dtype=np.float64), shape))

        return Pose(
            np.asarray(self.angles, dtype=np.float64),
            np.asarray(self.offset, dtype=np.float64),
            field(self.head, (n, 2), 0.0),
            field(self.lean, (n,), 0.0),
            field(self.hands, (n, 2), REST_HANDS),
            field(self.bow, (n,), 0.0),
            field(self.turn, (n,), 0.0),
            field(self.limb_scale, (n, 4), 1.0),
        )


class Skeleton(NamedTuple):
    """Per-step key points ``[n, 2]`` (image pixels) and hand opening ``[n, 2]`` (right, left).

    ``hips``: hip centre; ``shoulders``: shoulder-line midpoint; ``*_shoulder``: the arm's joint;
    ``*_hand``: palm centre; ``neck``: the top of the neck (base of the head); ``head``: head centre.
    The torso's apparent width follows the shoulders (they narrow as the torso turns).
    """

    hips: np.ndarray
    shoulders: np.ndarray
    right_shoulder: np.ndarray
    right_elbow: np.ndarray
    right_wrist: np.ndarray
    right_hand: np.ndarray
    left_shoulder: np.ndarray
    left_elbow: np.ndarray
    left_wrist: np.ndarray
    left_hand: np.ndarray
    neck: np.ndarray
    head: np.ndarray
    hands: np.ndarray


def _torso_axes(lean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors ``[n, 2]``: up the torso and across it (towards the image right)."""
    up = np.stack([np.sin(lean), -np.cos(lean)], axis=1)
    across = np.stack([np.cos(lean), np.sin(lean)], axis=1)
    return up, across


def _shoulder_joint(body: Body, side: float) -> tuple[float, float]:
    """An arm's joint relative to the shoulder midpoint of an upright, unturned torso (side -1: right arm)."""
    return side * body.shoulder_half_width, 0.25 * body.upper_arm_radius


def skeleton(body: Body, pose: Pose) -> Skeleton:
    """Joint positions of ``pose`` (the one place that computes them): see ``Skeleton``."""
    p = pose.filled()
    n = len(p.angles)
    up, across = _torso_axes(p.lean)
    hips = np.stack([np.full(n, body.center_x), np.full(n, body.shoulder_y + body.torso_length)], axis=1) + p.offset
    foreshorten = np.cos(p.bow)[:, None]
    shoulders = hips + body.torso_length * foreshorten * up
    half_width = (body.shoulder_half_width * np.cos(p.turn))[:, None]
    drop = -0.25 * body.upper_arm_radius * up
    neck = shoulders + body.neck_length * foreshorten * up
    head = neck + body.head_radius * up + p.head
    arms = []
    for arm, side in ((0, -1.0), (1, 1.0)):
        shoulder = shoulders + side * half_width * across + drop
        upper, fore = p.angles[:, 2 * arm], p.angles[:, 2 * arm + 1]
        upper_length = body.upper_arm * p.limb_scale[:, 2 * arm]
        fore_scale = p.limb_scale[:, 2 * arm + 1]
        fore_direction = np.stack([np.cos(fore), np.sin(fore)], axis=1)
        elbow = shoulder + upper_length[:, None] * np.stack([np.cos(upper), np.sin(upper)], axis=1)
        wrist = elbow + (body.forearm * fore_scale)[:, None] * fore_direction
        hand = wrist + (0.6 * body.hand_radius * fore_scale)[:, None] * fore_direction
        arms.append((shoulder, elbow, wrist, hand))
    (rs, re, rw, rh), (ls, le, lw, lh) = arms
    return Skeleton(hips, shoulders, rs, re, rw, rh, ls, le, lw, lh, neck, head, np.clip(p.hands, 0.0, 1.0))


def capsules(body: Body, pose: Pose) -> np.ndarray:
    """Shapes to draw, ``[n, len(SHAPE_NAMES), 5]``: (ax, ay, bx, by, radius) in pixels.

    Each shape is a capsule (segment a-b swept by a disc); a circle has a == b. Built from
    ``skeleton``: torso from just below the shoulders to the hips, neck from the shoulders to the
    head centre, head a short upright capsule from its centre, arm segments joint to joint, each
    hand from the palm centre towards the fingertips (longer and wider as it opens, a round fist).
    """
    p = pose.filled()
    k = skeleton(body, p)
    n = len(p.angles)
    up, _ = _torso_axes(p.lean)

    def capsule(a: np.ndarray, b: np.ndarray, radius) -> np.ndarray:
        return np.concatenate([a, b, np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,))[:, None]], axis=1)

    out = np.empty((n, len(SHAPE_NAMES), 5))
    out[:, 0] = capsule(k.shoulders - 0.2 * body.torso_radius * up, k.hips,
                        body.torso_radius * (0.75 + 0.25 * np.cos(p.turn)))  # fmt: skip
    out[:, 1] = capsule(k.shoulders, k.head, 0.45 * body.head_radius)
    out[:, 2] = capsule(k.head, k.head + 0.15 * body.head_radius * up, body.head_radius)
    for arm, joints in enumerate(((k.right_shoulder, k.right_elbow, k.right_wrist, k.right_hand),
                                  (k.left_shoulder, k.left_elbow, k.left_wrist, k.left_hand))):  # fmt: skip
        shoulder, elbow, wrist, hand = joints
        opening = k.hands[:, arm]
        fore = p.angles[:, 2 * arm + 1]
        fingers = (0.9 * body.hand_radius * opening * p.limb_scale[:, 2 * arm + 1])[:, None]
        tip = hand + fingers * np.stack([np.cos(fore), np.sin(fore)], axis=1)
        first = 3 + 3 * arm
        out[:, first] = capsule(shoulder, elbow, body.upper_arm_radius)
        out[:, first + 1] = capsule(elbow, wrist, body.forearm_radius)
        out[:, first + 2] = capsule(hand, tip, body.hand_radius * (0.8 + 0.15 * opening))
    return out


def mirror_pose(pose: Pose) -> Pose:
    """The left-right mirror image of a pose: arms swapped, angles a -> pi - a, x offsets, lean
    and turn negated, hands and limb scales swapped."""
    p = pose.filled()
    flip_x = np.array([-1.0, 1.0])
    return Pose(np.pi - p.angles[:, _ARM_SWAP], p.offset * flip_x, p.head * flip_x, -p.lean, p.hands[:, ::-1],
                p.bow, -p.turn, p.limb_scale[:, _ARM_SWAP])  # fmt: skip


def rest_pose(t_s: np.ndarray, body: Body) -> Pose:
    """Standing still: arms hanging, hands relaxed, a faint breathing sway (well under a pixel)."""
    t_s = np.asarray(t_s, dtype=np.float64)
    offset = np.zeros((len(t_s), 2))
    offset[:, 1] = 0.15 * np.sin(TWO_PI * t_s / 4.0)
    return _pose(len(t_s), offset=offset)


def blend_with_rest(pose: Pose, t_s: np.ndarray, duration_s: float, ramp_s: float) -> Pose:
    """Fade a gesture in from the rest pose over ``ramp_s`` and back out before ``duration_s``."""
    t_s = np.asarray(t_s, dtype=np.float64)
    p = pose.filled()
    if ramp_s <= 0 or len(t_s) == 0:
        return p
    ramp_in = np.clip(t_s / ramp_s, 0, 1)
    ramp_out = np.clip((duration_s - t_s) / ramp_s, 0, 1)
    weight = _smoothstep(np.minimum(ramp_in, ramp_out))
    column = weight[:, None]
    # Unwrap angles relative to rest, so turning arms fade through the short way at each end.
    delta = np.unwrap(p.angles - REST_ANGLES, axis=0)
    start_shift = np.round(delta[0] / TWO_PI) * TWO_PI
    end_shift = np.round(delta[-1] / TWO_PI) * TWO_PI
    first_half = (t_s < duration_s / 2)[:, None]
    delta = delta - np.where(first_half, start_shift, end_shift)
    return Pose(
        REST_ANGLES + column * delta,
        p.offset * column,
        p.head * column,
        p.lean * weight,
        REST_HANDS + column * (p.hands - REST_HANDS),
        p.bow * weight,
        p.turn * weight,
        1.0 + column * (p.limb_scale - 1.0),
    )


# --- helpers -----------------------------------------------------------------------------------


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _pose(n: int, right: tuple | None = None, left: tuple | None = None, offset=None, **fields) -> Pose:
    """A filled pose at rest, with the given arms ((upper, forearm) or (upper, forearm, upper_scale,
    forearm_scale)) and fields."""
    angles = np.repeat(REST_ANGLES[None, :], n, axis=0)
    limb_scale = np.ones((n, 4))
    for arm, limbs in ((0, right), (1, left)):
        if limbs is None:
            continue
        angles[:, 2 * arm], angles[:, 2 * arm + 1] = limbs[0], limbs[1]
        if len(limbs) == 4:
            limb_scale[:, 2 * arm], limb_scale[:, 2 * arm + 1] = limbs[2], limbs[3]
    pose = Pose(angles, np.zeros((n, 2)) if offset is None else offset, limb_scale=limb_scale, **fields)
    return pose.filled()


def _ik(body: Body, side: float, hand_x, hand_y, bend, upper_scale=1.0, fore_scale=1.0) -> tuple:
    """Two-link inverse kinematics: (upper, forearm) angles putting the wrist at (hand_x, hand_y).

    Hand targets are relative to the shoulder midpoint (pixels). ``side`` is -1 for the right
    arm (image left), +1 for the left. ``bend`` +1 puts the elbow on the outward-down side of the
    shoulder->hand line (hands in front of the body), -1 on the other side (hands above the shoulder).
    ``upper_scale``/``fore_scale`` foreshorten the segments (an elbow towards the camera).
    """
    shoulder_x, shoulder_y = _shoulder_joint(body, side)
    dx, dy = hand_x - shoulder_x, hand_y - shoulder_y
    l1, l2 = body.upper_arm * upper_scale, body.forearm * fore_scale
    distance = np.clip(np.hypot(dx, dy), np.abs(l1 - l2) + 1e-3, l1 + l2 - 1e-3)
    direction = np.arctan2(dy, dx)
    opening = np.arccos(np.clip((l1 * l1 + distance * distance - l2 * l2) / (2 * l1 * distance), -1.0, 1.0))
    upper = direction - side * bend * opening
    elbow_x, elbow_y = shoulder_x + l1 * np.cos(upper), shoulder_y + l1 * np.sin(upper)
    forearm = np.arctan2(hand_y - elbow_y, hand_x - elbow_x)
    return upper, forearm


def _rest_hand(body: Body, side: float) -> tuple[float, float]:
    """Wrist position of the hanging arm, relative to the shoulder midpoint."""
    a_upper, a_fore = (REST_ANGLES[0], REST_ANGLES[1]) if side < 0 else (REST_ANGLES[2], REST_ANGLES[3])
    shoulder_x, shoulder_y = _shoulder_joint(body, side)
    x = shoulder_x + body.upper_arm * np.cos(a_upper) + body.forearm * np.cos(a_fore)
    y = shoulder_y + body.upper_arm * np.sin(a_upper) + body.forearm * np.sin(a_fore)
    return float(x), float(y)


def _head_centre_y(body: Body) -> float:
    """Head centre height relative to the shoulder midpoint (upright; negative = above)."""
    return -(body.neck_length + body.head_radius)


def _reach_to(body: Body, side: float, u: np.ndarray, target_x, target_y, bend, upper_scale=1.0) -> tuple:
    """Arm angles moving the wrist from its resting place (u = 0) to the target (u = 1) in a straight line."""
    rest_x, rest_y = _rest_hand(body, side)
    return _ik(body, side, rest_x + u * (target_x - rest_x), rest_y + u * (target_y - rest_y), bend,
               1.0 + u * (upper_scale - 1.0))  # fmt: skip


def _straight_arm(side: float, elevation: np.ndarray, azimuth: np.ndarray, bend: float = 0.08) -> tuple:
    """A (nearly) straight arm raised by ``elevation`` (0 hanging, pi straight up) in the vertical
    plane at ``azimuth`` (0 towards the camera, pi/2 out to the side), as the camera sees it:
    (upper, forearm, upper_scale, forearm_scale)."""
    dx = side * np.sin(elevation) * np.sin(azimuth)
    dy = np.cos(elevation)
    upper = np.unwrap(np.arctan2(dy, dx))
    scale = np.clip(np.hypot(dx, dy), 0.08, 1.0)
    return upper, upper + side * bend, scale, scale


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


class Rhythm(NamedTuple):
    """The timing of one periodic gesture instance (``_phase``, ``_envelope``)."""

    frequency_hz: float  # at full tempo
    start_phase: float
    warmup_s: float  # 0: starts at full tempo and amplitude
    warmup_rate: float  # tempo at t = 0, fraction of the full one
    warmup_amplitude: float  # amplitude at t = 0, fraction of the full one
    jitter: np.ndarray  # [2, 3]: relative tempo modulation, its angular frequency (rad/s), phase


def _draw_rhythm(rng: np.random.Generator, period_s: tuple[float, float], limits_s: tuple[float, float],
                 warmup_amplitude: tuple[float, float] = (0.2, 0.6)) -> Rhythm:  # fmt: skip
    """A typical period from ``period_s``, times 1/tempo, kept inside ``limits_s`` (the gesture stays
    recognisable); a slow start on some instances; two slow tempo modulations."""
    tempo = _log_uniform(rng, *TEMPO_RANGE)
    period = float(np.clip(rng.uniform(*period_s) / tempo, *limits_s))
    warmup = rng.uniform(*SLOW_START_S) if rng.random() < SLOW_START_PROBABILITY else 0.0
    jitter = np.stack([rng.uniform(0.0, TEMPO_JITTER, 2), TWO_PI * rng.uniform(0.3, 1.5, 2),
                       rng.uniform(0.0, TWO_PI, 2)], axis=1)  # fmt: skip
    return Rhythm(1.0 / period, rng.uniform(0.0, TWO_PI), warmup, rng.uniform(0.3, 0.7),
                  rng.uniform(*warmup_amplitude), jitter)  # fmt: skip


def _phase(t_s: np.ndarray, rhythm: Rhythm) -> np.ndarray:
    """Phase (radians, increasing) at ``t_s``: the integral of the instantaneous tempo, closed form."""
    elapsed = t_s
    if rhythm.warmup_s > 0:  # tempo ramps from warmup_rate to 1 by a smoothstep over warmup_s
        x = np.clip(t_s / rhythm.warmup_s, 0.0, 1.0)
        ramp = rhythm.warmup_s * (x**3 - 0.5 * x**4) + np.maximum(t_s - rhythm.warmup_s, 0.0)
        elapsed = rhythm.warmup_rate * t_s + (1.0 - rhythm.warmup_rate) * ramp
    amplitude, omega, phase = rhythm.jitter[:, 0:1], rhythm.jitter[:, 1:2], rhythm.jitter[:, 2:3]
    wobble = (amplitude / omega * (np.cos(phase) - np.cos(omega * t_s[None, :] + phase))).sum(axis=0)
    return TWO_PI * rhythm.frequency_hz * (elapsed + wobble) + rhythm.start_phase


def _envelope(t_s: np.ndarray, rhythm: Rhythm) -> np.ndarray:
    """Amplitude factor at ``t_s``: 1, or a ramp up from ``warmup_amplitude`` during a slow start."""
    if rhythm.warmup_s <= 0:
        return np.ones_like(t_s)
    return rhythm.warmup_amplitude + (1.0 - rhythm.warmup_amplitude) * _smoothstep(t_s / rhythm.warmup_s)


def _excursions(t_s: np.ndarray, rng: np.random.Generator, duration_s: float, tempo: float,
                count: tuple[int, int] = (1, 1), rise_s: tuple[float, float] = (0.3, 0.7),
                hold_s: tuple[float, float] = (0.3, 1.0)) -> np.ndarray:  # fmt: skip
    """0 -> 1 -> 0 envelope ``[n]``: ``count`` times go there (smoothstep over a rise), stay (hold) and
    come back, at random times inside ``duration_s``; times are divided by ``tempo`` and shrunk to fit."""
    k = int(rng.integers(count[0], count[1] + 1))
    rises = rng.uniform(*rise_s, k) / tempo
    holds = rng.uniform(*hold_s, k) / tempo
    gaps = rng.uniform(0.05, 0.4, k + 1) / tempo
    total = 2 * rises.sum() + holds.sum() + gaps.sum()
    fit = min(1.0, duration_s / total) if total > 0 else 1.0
    rises, holds, gaps = rises * fit, holds * fit, gaps * fit
    gaps = gaps + max(0.0, duration_s - total * fit) * rng.dirichlet(np.ones(k + 1))
    starts = gaps[0] + np.concatenate([[0.0], np.cumsum(2 * rises + holds + gaps[1:])[:-1]])
    u = np.zeros_like(t_s)
    for start, rise, hold in zip(starts, rises, holds):  # a few excursions, each vectorised over time
        rise = max(rise, 1e-3)
        going, coming = _smoothstep((t_s - start) / rise), _smoothstep((start + 2 * rise + hold - t_s) / rise)
        u = np.maximum(u, np.minimum(going, coming))
    return u


def _follow(body: Body, pose: Pose, rng: np.random.Generator, head_gain=(0.02, 0.08), lean_gain=(0.0, 0.08)) -> Pose:
    """The head follows the hands' motion slightly and the torso leans a little with big movements."""
    if len(pose.angles) == 0:
        return pose
    k = skeleton(body, pose)
    wrists = 0.5 * (k.right_wrist + k.left_wrist) - k.shoulders
    motion = wrists - wrists.mean(axis=0)
    lean = rng.choice([-1.0, 1.0]) * rng.uniform(*lean_gain) * motion[:, 0] / body.reach
    return pose._replace(head=pose.head + rng.uniform(*head_gain) * motion, lean=pose.lean + lean)


# --- the ten gestures (right-handed versions; the left ones are mirrors) -----------------------

GestureFunction = Callable[[Body, np.ndarray, np.random.Generator, float], tuple[Pose, str]]


def _clap(body: Body, t_s: np.ndarray, rng: np.random.Generator, duration_s: float) -> tuple[Pose, str]:
    """Palms meet in front of the body: chest to belly height or up at the face, centred or to a side."""
    reach, length, n = body.reach, body.torso_length, len(t_s)
    rhythm = _draw_rhythm(rng, (0.35, 0.6), (0.22, 1.0))
    phi, envelope = _phase(t_s, rhythm), _envelope(t_s, rhythm)
    amplitude = rng.uniform(*AMPLITUDE_RANGE)
    y = length * (rng.uniform(-0.9, 0.15) if rng.random() < 0.25 else rng.uniform(0.15, 0.9))
    high = y < -0.3 * length  # hands above the shoulders: elbows out and down
    to_side = rng.random() < 0.3
    x = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.9) * body.shoulder_half_width if to_side else 0.0
    gap = amplitude * rng.uniform(0.15, 0.35) * reach * envelope  # half the widest gap
    open_ = (0.5 - 0.5 * np.cos(phi)) ** rng.uniform(0.6, 1.6)  # < 1: long open, sharp closing
    share = rng.uniform(0.35, 0.65)  # how much of the motion is the right hand's
    contact = 0.9 * body.hand_radius
    y = y + rng.uniform(0.0, 0.05) * reach * np.sin(phi + rng.uniform(0, TWO_PI))
    bend = -1.0 if high else 1.0
    right = _ik(body, -1, x - contact - 2 * share * gap * open_, y, bend)
    left = _ik(body, +1, x + contact + 2 * (1 - share) * gap * open_, y, bend)
    pose = _pose(n, right, left, hands=np.full((n, 2), rng.uniform(0.75, 1.0)))
    style = ("high clap" if high else "clap") + (" to one side" if to_side else "")
    return _follow(body, pose, rng), style


def _wave(body: Body, t_s: np.ndarray, rng: np.random.Generator, duration_s: float) -> tuple[Pose, str]:
    """The right hand waves on its own side: the forearm rocking about a raised elbow, a small fast
    hand wave by the shoulder, or the whole arm swinging above the head."""
    n = len(t_s)
    style = str(rng.choice(["forearm wave", "hand wave", "whole-arm wave"], p=[0.5, 0.25, 0.25]))
    amplitude = rng.uniform(*AMPLITUDE_RANGE)
    if style == "forearm wave":
        rhythm = _draw_rhythm(rng, (0.35, 0.7), (0.2, 1.1))
        upper0 = np.pi + rng.uniform(-1.2, 0.35)  # elbow out: well below the shoulder .. above it
        fore0 = -np.pi / 2 + rng.uniform(-0.35, 0.35)
        swing, upper_swing = amplitude * rng.uniform(0.3, 0.6), rng.uniform(0.03, 0.1)
    elif style == "hand wave":
        rhythm = _draw_rhythm(rng, (0.25, 0.45), (0.15, 0.8))
        upper0 = np.pi / 2 + rng.uniform(0.5, 1.2)  # elbow down at the side, hand by the shoulder
        fore0 = -np.pi / 2 + rng.uniform(-0.3, 0.25)
        swing, upper_swing = amplitude * rng.uniform(0.12, 0.28), 0.02
    else:
        rhythm = _draw_rhythm(rng, (0.6, 1.1), (0.35, 1.6))
        upper0 = -np.pi / 2 - rng.uniform(0.35, 0.7)  # arm up and out, swinging from the shoulder
        fore0 = upper0 + rng.uniform(-0.25, 0.1)
        swing = amplitude * rng.uniform(0.18, 0.35)
        upper_swing = swing
    phi, envelope = _phase(t_s, rhythm), _envelope(t_s, rhythm)
    wave = envelope * np.sin(phi + rng.uniform(0.0, 0.5) * np.sin(phi))  # a little asymmetric
    fore = np.minimum(fore0 + swing * wave, -np.pi / 2 + 1.0)  # never across to the other side
    upper = upper0 + upper_swing * envelope * np.sin(phi - rng.uniform(0.0, 0.6))
    if style == "whole-arm wave":
        fore = fore + (upper - upper0) * rng.uniform(0.0, 0.5)
    hands = np.full((n, 2), REST_HANDS)
    hands[:, 0] = rng.uniform(0.8, 1.0)
    pose = _pose(n, right=(upper, fore), hands=hands)
    return _follow(body, pose, rng), style


def _circle(direction: float) -> GestureFunction:
    """The right arm turning round the shoulder; direction +1 = clockwise as seen by the camera.

    The hand follows an ellipse (a circle in a plane tilted from the image plane by up to
    ``CIRCLE_TILT_MAX``, its axis at any angle) that encloses the shoulder, so the hand's angle round
    the shoulder always turns the named way: the straight arm from the shoulder (foreshortened where
    the plane tilts), or a smaller circle led by the forearm with the elbow bent.
    """

    def gesture(body: Body, t_s: np.ndarray, rng: np.random.Generator, duration_s: float) -> tuple[Pose, str]:
        n, reach = len(t_s), body.reach
        rhythm = _draw_rhythm(rng, (0.8, 1.2), (0.45, 1.5), warmup_amplitude=(0.5, 0.8))
        phi, envelope = _phase(t_s, rhythm), _envelope(t_s, rhythm)
        phi = phi + rng.uniform(0.0, 0.35) * np.sin(phi + rng.uniform(0, TWO_PI))  # faster on one side
        amplitude = rng.uniform(*AMPLITUDE_RANGE)
        whole = rng.random() < 0.55
        if whole:
            radius, centre_max = reach * np.clip(0.85 * amplitude, 0.55, 0.98), 0.25
        else:
            radius, centre_max = reach * np.clip(rng.uniform(0.35, 0.55) * amplitude, 0.25, 0.7), 0.5
        tilt, axis = rng.uniform(0.0, CIRCLE_TILT_MAX), rng.uniform(0.0, np.pi)
        rho, theta = centre_max * np.sqrt(rng.random()), rng.uniform(0.0, TWO_PI)
        u = radius * envelope * (np.cos(direction * phi) + rho * np.cos(theta))
        v = radius * np.cos(tilt) * envelope * (np.sin(direction * phi) + rho * np.sin(theta))
        x, y = np.cos(axis) * u - np.sin(axis) * v, np.sin(axis) * u + np.cos(axis) * v
        if whole:
            upper = np.unwrap(np.arctan2(y, x))
            scale = np.clip(np.hypot(x, y) / reach, 0.1, 1.0)
            right = (upper, upper - direction * rng.uniform(0.0, 0.25), scale, scale)
        else:
            shoulder_x, shoulder_y = _shoulder_joint(body, -1)
            upper_scale = rng.uniform(0.6, 1.0)  # the elbow somewhat towards the camera
            bend = rng.choice([-1.0, 1.0])
            upper, fore = _ik(body, -1, shoulder_x + x, shoulder_y + y, bend, upper_scale)
            right = (upper, fore, np.full(n, upper_scale), np.ones(n))
        hands = np.full((n, 2), REST_HANDS)
        hands[:, 0] = rng.uniform(0.2, 1.0)
        lean = rng.uniform(0.01, 0.05) * np.sin(phi + rng.uniform(0, TWO_PI))
        pose = _pose(n, right=right, hands=hands, lean=lean)
        style = ("whole-arm circle" if whole else "forearm circle") + (" (tilted plane)" if tilt > 0.5 else "")
        return _follow(body, pose, rng), style

    return gesture


def _arm_roll(body: Body, t_s: np.ndarray, rng: np.random.Generator, duration_s: float) -> tuple[Pose, str]:
    """The forearms roll round each other in front of the body, either way, half a turn apart."""
    n, reach, length = len(t_s), body.reach, body.torso_length
    rhythm = _draw_rhythm(rng, (0.35, 0.6), (0.2, 0.9))
    turning = rng.choice([-1.0, 1.0])
    phi, envelope = turning * _phase(t_s, rhythm), _envelope(t_s, rhythm)
    radius = rng.uniform(*AMPLITUDE_RANGE) * rng.uniform(0.1, 0.2) * reach * envelope
    tilt, axis = rng.uniform(0.0, CIRCLE_TILT_MAX), rng.uniform(-0.3, 0.3)  # rolling plane, seen slanted
    high = rng.random() < 0.15
    centre_y = length * (rng.uniform(-0.4, 0.15) if high else rng.uniform(0.15, 0.9))
    centre_x = 0.0 if rng.random() < 0.8 else rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.7) * body.shoulder_half_width
    half_gap = rng.uniform(0.0, 0.08) * reach
    u, v = radius * np.cos(tilt) * np.cos(phi), radius * np.sin(phi)
    x, y = np.cos(axis) * u - np.sin(axis) * v, np.sin(axis) * u + np.cos(axis) * v
    right = _ik(body, -1, centre_x - half_gap + x, centre_y + y, +1)
    left = _ik(body, +1, centre_x + half_gap - x, centre_y - y, +1)
    pose = _pose(n, right, left, hands=np.full((n, 2), rng.uniform(0.0, 0.4)))
    style = "arm roll " + ("forwards" if turning > 0 else "backwards") + (" high" if high else "")
    return _follow(body, pose, rng), style


def _air_drums(body: Body, t_s: np.ndarray, rng: np.random.Generator, duration_s: float) -> tuple[Pose, str]:
    """Fists strike down, alternating, together, or one hand at double time, moving between drums."""
    n, reach, length, width = len(t_s), body.reach, body.torso_length, body.shoulder_half_width
    rhythm = _draw_rhythm(rng, (0.35, 0.6), (0.2, 0.9))
    phi, envelope = _phase(t_s, rhythm), _envelope(t_s, rhythm)
    style = str(rng.choice(["alternating", "together", "double time"], p=[0.6, 0.25, 0.15]))
    base_y = length * rng.uniform(0.35, 1.0)
    lift = rng.uniform(*AMPLITUDE_RANGE) * rng.uniform(0.15, 0.35) * reach * envelope
    centre, spread = rng.uniform(-0.2, 0.2) * width, rng.uniform(0.4, 1.1) * width
    sharpness = rng.uniform(1.5, 4.0)  # quick through the strike, lingering up

    def strike(phase: np.ndarray) -> np.ndarray:
        return base_y - lift * (1.0 - (0.5 + 0.5 * np.cos(phase)) ** sharpness)

    lag = {"alternating": np.pi, "together": rng.uniform(-0.2, 0.2), "double time": np.pi / 2}[style]
    left_phase = phi + lag
    right_phase = 2 * phi if style == "double time" else phi
    drift = rng.uniform(0.0, 0.35, 2) * width  # moving between drums
    slow = TWO_PI * t_s / rng.uniform(1.0, 3.0) + rng.uniform(0, TWO_PI, (2, 1))
    right = _ik(body, -1, centre - spread + drift[0] * np.sin(slow[0]), strike(right_phase), +1)
    left = _ik(body, +1, centre + spread + drift[1] * np.sin(slow[1]), strike(left_phase), +1)
    head = np.zeros((n, 2))
    head[:, 1] = rng.uniform(0.03, 0.12) * body.head_radius * (0.5 + 0.5 * np.cos(phi))  # bobbing to the beat
    pose = _pose(n, right, left, hands=np.full((n, 2), rng.uniform(0.0, 0.25)), head=head)
    return _follow(body, pose, rng), "drums " + style


def _air_guitar(body: Body, t_s: np.ndarray, rng: np.random.Generator, duration_s: float) -> tuple[Pose, str]:
    """The right hand strums at the belly or hip, the left frets a neck held out to the left."""
    n, reach, length, width = len(t_s), body.reach, body.torso_length, body.shoulder_half_width
    rhythm = _draw_rhythm(rng, (0.2, 0.35), (0.12, 0.6))
    strum, envelope = _phase(t_s, rhythm), _envelope(t_s, rhythm)
    stroke = rng.uniform(*AMPLITUDE_RANGE) * rng.uniform(0.08, 0.2) * reach * envelope
    stroke_angle = rng.uniform(-0.5, 0.3)  # off vertical
    down = np.sin(strum + rng.uniform(0.0, 0.4) * np.sin(strum))
    strum_x, strum_y = rng.uniform(-0.5, 0.4) * width, rng.uniform(0.55, 1.05) * length
    fret_x = rng.uniform(1.0, 1.9) * width
    fret_y = max(strum_y - rng.uniform(0.3, 0.8) * length, -0.2 * length)
    slide_phase = TWO_PI * t_s / rng.uniform(0.8, 2.0) + rng.uniform(0, TWO_PI)
    slide = rng.uniform(0.0, 0.15) * reach * np.tanh(2.5 * np.sin(slide_phase)) / np.tanh(2.5)  # chord changes
    neck = np.arctan2(fret_y - strum_y, fret_x - strum_x)
    stroke = stroke * down
    right = _ik(body, -1, strum_x + stroke * np.sin(stroke_angle), strum_y + stroke * np.cos(stroke_angle), +1)
    left = _ik(body, +1, fret_x + slide * np.cos(neck), fret_y + slide * np.sin(neck), +1)
    hands = np.empty((n, 2))
    hands[:, 0] = rng.uniform(0.15, 0.45)  # holding a pick
    hands[:, 1] = 0.55 + 0.2 * np.sin(TWO_PI * t_s / rng.uniform(0.3, 0.7))  # fingering
    head = np.zeros((n, 2))
    head[:, 1] = rng.uniform(0.0, 0.12) * body.head_radius * (0.5 - 0.5 * np.cos(strum / rng.choice([2.0, 4.0])))
    lean = rng.uniform(0.0, 0.06) * np.sin(TWO_PI * t_s / rng.uniform(1.5, 3.0) + rng.uniform(0, TWO_PI))
    pose = _pose(n, right, left, hands=hands, head=head, lean=lean)
    return _follow(body, pose, rng), "air guitar"


# --- "other gestures": everyday movements that are none of the ten ----------------------------
# Each is (body, t_s, rng, duration_s, tempo) -> Pose, right-handed where one-handed (mirrored at random).


def _other_point(azimuth: tuple[float, float], elevation: tuple[float, float], opening: float, slow: bool):
    """One straight arm raised (pointing forward or sideways, or slowly to the front), held, lowered."""

    def movement(body, t_s, rng, duration_s, tempo):
        rise = (0.6, 1.2) if slow else (0.25, 0.6)
        u = _excursions(t_s, rng, duration_s, tempo, (1, 2 if not slow else 1), rise, (0.4, 1.4))
        elevation_max, azimuth_max = rng.uniform(*elevation), rng.uniform(*azimuth)
        arm = _straight_arm(-1, 0.12 + u * (elevation_max - 0.12), np.pi / 2 + u * (azimuth_max - np.pi / 2),
                            0.08 + u * rng.uniform(-0.05, 0.2))  # fmt: skip
        hands = np.full((len(t_s), 2), REST_HANDS)
        hands[:, 0] = REST_HANDS + u * (opening - REST_HANDS)
        return _pose(len(t_s), right=arm, hands=hands)

    return movement


def _other_reach_up(body, t_s, rng, duration_s, tempo):
    """Stretching: one or both arms reach up above the head, held, lowered; the torso may lean."""
    u = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.4, 0.9), (0.4, 1.2))
    both = rng.random() < 0.6
    elevation, azimuth = rng.uniform(2.5, 3.05, 2), rng.uniform(0.3, 1.4, 2)
    arms = [_straight_arm(side, 0.12 + u * (elevation[i] - 0.12), np.pi / 2 + u * (azimuth[i] - np.pi / 2))
            for i, side in enumerate((-1.0, 1.0))]
    hands = REST_HANDS + u[:, None] * (0.9 - REST_HANDS) * np.array([1.0, 1.0 if both else 0.0])
    head = np.zeros((len(t_s), 2))
    head[:, 1] = -0.15 * body.head_radius * u
    lean = rng.uniform(-0.12, 0.12) * u
    return _pose(len(t_s), arms[0], arms[1] if both else None, hands=hands, head=head, lean=lean)


def _other_arms_up_sideways(body, t_s, rng, duration_s, tempo):
    """Both arms raised sideways and lowered together, once to three times (jumping-jack arms)."""
    u = _excursions(t_s, rng, duration_s, tempo, (1, 3), (0.3, 0.6), (0.0, 0.3))
    elevation = 0.12 + u * (rng.uniform(1.4, 2.7) - 0.12)
    azimuth = np.full(len(t_s), rng.uniform(1.2, np.pi / 2))
    return _pose(len(t_s), _straight_arm(-1, elevation, azimuth), _straight_arm(1, elevation, azimuth),
                 hands=np.full((len(t_s), 2), rng.uniform(0.4, 1.0)))  # fmt: skip


def _to_head(place: str):
    """One or both hands up to the head: both hands to the face, a hand adjusting glasses, touching
    or scratching the hair, or held at the ear (a phone)."""

    def movement(body, t_s, rng, duration_s, tempo):
        n, hr = len(t_s), body.head_radius
        head_y = _head_centre_y(body)
        hold = (0.2, 0.6) if place == "glasses" else (0.5, 1.5)
        u = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.3, 0.7), hold)
        if place == "face":
            x, y, opening = -rng.uniform(0.2, 0.6) * hr, head_y + rng.uniform(-0.2, 0.5) * hr, 0.9
        elif place == "glasses":
            x, y, opening = -rng.uniform(0.0, 0.4) * hr, head_y - 0.1 * hr, 0.15
        elif place == "hair":
            x, y, opening = -rng.uniform(0.3, 0.9) * hr, head_y - rng.uniform(0.6, 1.0) * hr, 0.6
        else:  # ear
            x, y, opening = -rng.uniform(1.0, 1.3) * hr, head_y + rng.uniform(0.0, 0.3) * hr, 0.5
        scratch = 0.0
        if place == "hair" and rng.random() < 0.6:  # a small scratch, not a wave
            scratch = 0.15 * hr * u * np.sin(TWO_PI * t_s / rng.uniform(0.15, 0.3))
        bend = 1.0 if place in ("face", "glasses") else -1.0  # elbows down in front, or out to the side
        upper_scale = rng.uniform(0.75, 1.0)  # the elbow comes forward
        right = _reach_to(body, -1, u, x + scratch, y, bend, upper_scale)
        left = _reach_to(body, 1, u, -x, y, bend, upper_scale) if place == "face" else None
        hands = REST_HANDS + u[:, None] * (opening - REST_HANDS) * np.array([1.0, 1.0 if left is not None else 0.0])
        head = np.zeros((n, 2))
        head[:, 1] = rng.uniform(0.0, 0.2) * hr * u  # bending into the hands
        head[:, 0] = -rng.uniform(0.0, 0.15) * hr * u if place == "ear" else 0.0
        return _pose(n, right, left, hands=hands, head=head)

    return movement


def _to_body(place: str):
    """Hands to the body and held there: on the hips, one hand on the chest, looking at a watch."""

    def movement(body, t_s, rng, duration_s, tempo):
        n, length, width = len(t_s), body.torso_length, body.shoulder_half_width
        u = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.3, 0.7), (0.6, 1.6))
        head = np.zeros((n, 2))
        hands = np.full((n, 2), REST_HANDS)
        if place == "hips":
            x, y = rng.uniform(0.7, 1.0) * (width + 0.3 * body.torso_radius), rng.uniform(0.85, 1.0) * length
            hands += u[:, None] * (0.5 - REST_HANDS)
            return _pose(n, _reach_to(body, -1, u, -x, y, 1.0), _reach_to(body, 1, u, x, y, 1.0), hands=hands)
        if place == "chest":
            right = _reach_to(body, -1, u, rng.uniform(-0.1, 0.6) * width, rng.uniform(0.15, 0.4) * length, 1.0)
            hands[:, 0] += u * (1.0 - REST_HANDS)
            return _pose(n, right, hands=hands)
        # watch: the left forearm across the front of the body, the head bends to look at it
        left = _reach_to(body, 1, u, rng.uniform(-0.4, 0.3) * width, rng.uniform(0.15, 0.5) * length, 1.0)
        head[:, 1] = rng.uniform(0.1, 0.3) * body.head_radius * u
        head[:, 0] = 0.1 * body.head_radius * u
        return _pose(n, left=left, head=head, hands=hands)

    return movement


def _other_cross_arms(body, t_s, rng, duration_s, tempo):
    """Arms fold across the chest, stay folded, and unfold."""
    u = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.4, 0.8), (0.5, 1.5))
    y = rng.uniform(0.15, 0.3) * body.torso_length
    arms = [_reach_to(body, side, u, -side * rng.uniform(0.5, 0.8) * body.shoulder_half_width,
                      y + 0.05 * side * body.torso_length, 1.0) for side in (-1.0, 1.0)]  # fmt: skip
    return _pose(len(t_s), arms[0], arms[1], hands=np.full((len(t_s), 2), 0.5))


def _other_shrug(body, t_s, rng, duration_s, tempo):
    """A shrug: forearms turn out with open palms, the head sinks between the shoulders."""
    n = len(t_s)
    u = _excursions(t_s, rng, duration_s, tempo, (1, 2), (0.15, 0.35), (0.2, 0.7))
    out, upper_out = rng.uniform(0.7, 1.3), rng.uniform(0.05, 0.25)
    right = (REST_ANGLES[0] + upper_out * u, REST_ANGLES[1] + out * u, np.ones(n), 1.0 - 0.4 * u)
    left = (REST_ANGLES[2] - upper_out * u, REST_ANGLES[3] - out * u, np.ones(n), 1.0 - 0.4 * u)
    head = np.zeros((n, 2))
    head[:, 1] = rng.uniform(0.15, 0.35) * body.head_radius * u
    return _pose(n, right, left, hands=REST_HANDS + u[:, None] * (0.95 - REST_HANDS), head=head)


def _other_head(axis: int):
    """Nodding (axis 1) or shaking the head (axis 0), a few times, nothing else moving."""

    def movement(body, t_s, rng, duration_s, tempo):
        n = len(t_s)
        window = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.1, 0.2), (0.6, 1.6))
        phase = TWO_PI * t_s / (rng.uniform(0.35, 0.8) / tempo) + rng.uniform(0, TWO_PI)
        amplitude = rng.uniform(0.1, 0.3) * body.head_radius
        head = np.zeros((n, 2))
        head[:, axis] = window * amplitude * (np.sin(phase) if axis == 0 else 0.5 - 0.5 * np.cos(phase))
        return _pose(n, head=head)

    return movement


def _other_bow(pick_up: bool):
    """A bow (arms hanging), or bending down to pick something up (a hand reaches down and closes)."""

    def movement(body, t_s, rng, duration_s, tempo):
        n = len(t_s)
        u = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.4, 0.9), (0.2, 0.8))
        bow = u * (rng.uniform(0.6, 1.0) if pick_up else rng.uniform(0.3, 0.8))
        head = np.zeros((n, 2))
        head[:, 1] = rng.uniform(0.1, 0.3) * body.head_radius * u
        hands = np.full((n, 2), REST_HANDS)
        right = None
        if pick_up:  # the arm hangs straight down towards the floor; the hand grips at the bottom and stays closed
            right = (np.pi / 2 + 0.05 * (1 - u), np.pi / 2, np.ones(n), np.ones(n))
            gripped = np.cumsum(u > 0.9) > 0
            hands[:, 0] = np.where(gripped, 0.1, REST_HANDS + u * (0.9 - REST_HANDS))
        return _pose(n, right, hands=hands, head=head, bow=bow)

    return movement


def _other_side_lean(body, t_s, rng, duration_s, tempo):
    """The torso leans to one side (one hand slides down the leg) and back, once or twice."""
    u = _excursions(t_s, rng, duration_s, tempo, (1, 2), (0.4, 0.9), (0.2, 0.8))
    return _pose(len(t_s), lean=rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.25) * u)


def _other_turn(body, t_s, rng, duration_s, tempo):
    """The torso turns (to look behind, to talk to someone) and back; the arms swing a little with it."""
    n = len(t_s)
    u = _excursions(t_s, rng, duration_s, tempo, (1, 3), (0.3, 0.7), (0.2, 0.9))
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.9) * u
    swing = rng.uniform(0.0, 0.15) * np.sign(turn) * u
    right = (REST_ANGLES[0] + swing, REST_ANGLES[1] + swing)
    left = (REST_ANGLES[2] + swing, REST_ANGLES[3] + swing)
    head = np.zeros((n, 2))
    head[:, 0] = 0.3 * body.head_radius * np.sin(turn)
    return _pose(n, right, left, head=head, turn=turn)


def _other_beckon(body, t_s, rng, duration_s, tempo):
    """Beckoning, slowly: the forearm held up towards the camera, the hand (or one finger) curling in
    and out as the forearm flexes towards the body; the hand hardly moves across the image."""
    n = len(t_s)
    u = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.3, 0.6), (1.0, 2.0))
    phase = TWO_PI * t_s / (rng.uniform(0.6, 1.2) / tempo) + rng.uniform(0, TWO_PI)
    upper = REST_ANGLES[0] + u * rng.uniform(0.1, 0.4)
    fore = REST_ANGLES[1] + u * (-np.pi / 2 + rng.uniform(-0.3, 0.3) - REST_ANGLES[1])  # up, seen short
    fore_scale = 1.0 - u * (rng.uniform(0.4, 0.7) - 0.12 * np.sin(phase))
    one_finger = rng.random() < 0.5
    low, high = (0.05, 0.35) if one_finger else (0.15, 0.9)
    hands = np.full((n, 2), REST_HANDS)
    hands[:, 0] = REST_HANDS + u * (low + (high - low) * (0.5 + 0.5 * np.sin(phase)) - REST_HANDS)
    return _pose(n, right=(upper, fore, np.ones(n), fore_scale), hands=hands)


def _other_fidget(body, t_s, rng, duration_s, tempo):
    """Hands together in front, wandering a little, fingers fidgeting."""
    n, scale = len(t_s), body.reach

    def wobble(size: float) -> np.ndarray:
        periods = rng.uniform(0.8, 3.0, (3, 1)) / tempo
        return size * np.sin(TWO_PI * t_s[None, :] / periods + rng.uniform(0, TWO_PI, (3, 1))).sum(axis=0) / 3

    u = _excursions(t_s, rng, duration_s, tempo, (1, 1), (0.3, 0.6), (1.0, 2.0))
    y = rng.uniform(0.5, 0.95) * body.torso_length
    x, dy = wobble(0.08 * scale), wobble(0.06 * scale)
    right = _reach_to(body, -1, u, -0.8 * body.hand_radius + x, y + dy, 1.0)
    left = _reach_to(body, 1, u, 0.8 * body.hand_radius + x, y + dy, 1.0)
    hands = np.clip(0.5 + np.stack([wobble(0.6), wobble(0.6)], axis=1), 0.0, 1.0)
    return _pose(n, right, left, hands=hands)


def _other_sway(body, t_s, rng, duration_s, tempo):
    """The body sways from side to side (or bobs), arms hanging and swinging slightly behind."""
    n = len(t_s)
    phi = TWO_PI * t_s / (rng.uniform(1.0, 2.0) / tempo) + rng.uniform(0, TWO_PI)
    amplitude = rng.uniform(0.04, 0.08) * body.scale
    offset = np.stack([amplitude * np.sin(phi), 0.4 * amplitude * np.sin(2 * phi)], axis=1)
    pose = _pose(n, offset=offset, lean=rng.uniform(0.0, 0.06) * np.sin(phi))
    return pose._replace(angles=pose.angles + 0.1 * np.sin(phi - 0.5)[:, None])


OTHER_MOVEMENTS: dict[str, Callable] = {
    "point forward": _other_point((0.15, 0.5), (1.2, 1.75), 0.25, slow=False),
    "point sideways": _other_point((1.2, np.pi / 2), (1.3, 1.9), 0.25, slow=False),
    "raise an arm to the front": _other_point((0.1, 0.6), (1.5, 2.9), 0.7, slow=True),
    "reach up / stretch": _other_reach_up,
    "arms up sideways": _other_arms_up_sideways,
    "hands to the face": _to_head("face"),
    "adjust glasses": _to_head("glasses"),
    "touch the hair": _to_head("hair"),
    "hand to the ear": _to_head("ear"),
    "hands on hips": _to_body("hips"),
    "hand on the chest": _to_body("chest"),
    "look at a watch": _to_body("watch"),
    "cross arms": _other_cross_arms,
    "shrug": _other_shrug,
    "nod": _other_head(1),
    "shake the head": _other_head(0),
    "bow": _other_bow(pick_up=False),
    "pick something up": _other_bow(pick_up=True),
    "lean to the side": _other_side_lean,
    "turn the torso": _other_turn,
    "beckon": _other_beckon,
    "fidget": _other_fidget,
    "sway": _other_sway,
}


def _other(body: Body, t_s: np.ndarray, rng: np.random.Generator, duration_s: float) -> tuple[Pose, str]:
    """A motion that is none of the ten: one of ``OTHER_MOVEMENTS``, sometimes with a body sway."""
    kind = str(rng.choice(list(OTHER_MOVEMENTS)))
    tempo = _log_uniform(rng, *TEMPO_RANGE)
    pose = OTHER_MOVEMENTS[kind](body, t_s, rng, duration_s, tempo)
    if kind != "sway" and rng.random() < SWAY_PROBABILITY:
        phi = TWO_PI * t_s / rng.uniform(1.5, 3.0) + rng.uniform(0, TWO_PI)
        sway = np.stack([rng.uniform(0.01, 0.04) * body.scale * np.sin(phi), np.zeros_like(phi)], axis=1)
        pose = pose._replace(offset=pose.offset + sway, lean=pose.lean + rng.uniform(0.0, 0.04) * np.sin(phi))
        kind += " + sway"
    return _follow(body, pose, rng, head_gain=(0.0, 0.05), lean_gain=(0.0, 0.04)), kind


_RIGHT_HANDED: dict[int, GestureFunction] = {
    0: _clap,
    1: _wave,
    3: _circle(+1.0),
    4: _circle(-1.0),
    7: _arm_roll,
    8: _air_drums,
    9: _air_guitar,
    10: _other,
}


class Motion(NamedTuple):
    """One gesture instance: its pose and the style it was drawn in (e.g. "forearm circle", "shrug")."""

    pose: Pose
    style: str


def gesture_motion(label: int, t_s: np.ndarray, body: Body, rng: np.random.Generator,
                   duration_s: float | None = None) -> Motion:  # fmt: skip
    """Gesture class ``label`` at times ``t_s`` (seconds from the gesture's start) and its style.

    Tempo, amplitude, variant and timing are drawn from ``rng``; movements that happen once (most of
    "other") are placed inside ``duration_s`` (default: the last time in ``t_s``). Left-arm classes
    are mirrored right-arm ones (same draws: label k and ``MIRRORED_CLASS[k]`` with the same
    generator state are exact mirror images); mirror-symmetric classes are mirrored at random.
    """
    if not 0 <= label < len(GESTURE_CLASSES):
        raise ValueError(f"gesture label must be 0..{len(GESTURE_CLASSES) - 1}, got {label}")
    t_s = np.asarray(t_s, dtype=np.float64)
    if duration_s is None:
        duration_s = float(t_s[-1]) if len(t_s) else 0.0
    if len(t_s) == 0:
        return Motion(_pose(0), "none")
    if label in _RIGHT_HANDED:
        pose, style = _RIGHT_HANDED[label](body, t_s, rng, duration_s)
        mirrored = MIRRORED_CLASS[label] == label and rng.random() < 0.5
    else:
        pose, style = _RIGHT_HANDED[MIRRORED_CLASS[label]](body, t_s, rng, duration_s)
        mirrored = True
    return Motion(mirror_pose(pose) if mirrored else pose, style)


def gesture_pose(label: int, t_s: np.ndarray, body: Body, rng: np.random.Generator,
                 duration_s: float | None = None) -> Pose:  # fmt: skip
    """The pose of gesture class ``label`` at times ``t_s``: ``gesture_motion(...).pose``."""
    return gesture_motion(label, t_s, body, rng, duration_s).pose


# --- the ranges, for the README's simulator table ----------------------------------------------

PARAMETERS: tuple[tuple[str, str, str], ...] = (  # (parameter, range, unit)
    ("tempo", "0.5-2 x typical, log-uniform; the period is then kept in the gesture's range below", "x"),
    ("amplitude", "0.6-1.4 x typical", "x"),
    ("slow start", ("25 % of instances: tempo from 0.3-0.7 x, size from 0.2-0.6 x (circles 0.5-0.8 x), ramping "
                    "up over 0.2-0.8 s"), "s"),
    ("tempo irregularity", "two slow modulations, 0-10 % each, at 0.3-1.5 Hz", "relative"),
    ("clap period", "0.22-1.0", "s"),
    ("clap height", "0.15-0.9 (75 %) or -0.9-0.15 (face, above the head)", "torso lengths below the shoulders"),
    ("clap half gap / sharpness", "0.09-0.49; closing profile exponent 0.6-1.6; hands' share 35-65 %", "reach"),
    ("clap to one side", "30 % of claps, 0.3-0.9", "shoulder half-widths"),
    ("wave variant", "forearm 50 %, hand 25 %, whole arm above the head 25 %", "-"),
    ("wave period", "forearm 0.2-1.1, hand 0.15-0.8, whole arm 0.35-1.6", "s"),
    ("wave swing", "forearm 0.18-0.84, hand 0.07-0.39, whole arm 0.11-0.49", "rad"),
    ("wave elbow height", "upper arm 1.2 below to 0.35 above horizontal (forearm wave)", "rad"),
    ("arm circle variant", "straight arm from the shoulder 55 %, forearm-led with bent elbow 45 %", "-"),
    ("arm circle radius", "straight arm 0.55-0.98, forearm 0.25-0.7", "reach"),
    ("arm circle plane", ("tilt 0-60 (one axis x cos tilt), axis at any angle; centre within 0.25 / 0.5 radius "
                         "of the shoulder"), "deg"),
    ("arm circle period", "0.45-1.5; speed varies along the circle by up to 35 %", "s"),
    ("arm roll", ("either way; radius 0.06-0.28 reach, plane tilt 0-60 deg; 0.15-0.9 torso lengths below the "
                 "shoulders (15 %: face height); 20 % to one side"), "-"),
    ("arm roll period", "0.2-0.9", "s"),
    ("air drums", ("alternating 60 %, together 25 %, one hand double time 15 %; 0.35-1.0 torso lengths below "
                  "the shoulders; hands 0.4-1.1 shoulder half-widths apart"), "-"),
    ("air drums lift / period", "0.09-0.49 reach / 0.2-0.9 s", "reach, s"),
    ("air guitar", ("strum period 0.12-0.6 s, stroke 0.05-0.28 reach; fretting hand 1.0-1.9 shoulder "
                   "half-widths out, 0.3-0.8 torso lengths above the strumming hand"), "-"),
    ("hand opening", "clap 0.75-1, wave 0.8-1, circles 0.2-1, roll 0-0.4, drums 0-0.25, guitar pick 0.15-0.45",
     "0 fist, 1 open"),
    ("head and torso", ("head follows the hands by 0.02-0.08 px/px (drums, guitar: bob 0-0.12 head radii); "
                       "lean 0-0.08 rad per reach of hand motion"), "px, rad"),
    ("other gestures", f"{len(OTHER_MOVEMENTS)} everyday movements, {SWAY_PROBABILITY:.0%} with a body sway", "-"),
    ("framing", (f"{TYPICAL_FRAMING_PROBABILITY:.0%} DVS128-like: scale 1.0-1.2, centre x 0.43-0.57 W, shoulders "
                "0.36-0.45 H"), "sensor short side"),
    ("framing, wide", (f"scale {WIDE_SCALE[0]}-{WIDE_SCALE[1]} (log-uniform), centre x {WIDE_CENTER_X[0]}-"
                      f"{WIDE_CENTER_X[1]} W with both shoulders inside, shoulders {WIDE_SHOULDER_Y[0]}-"
                      f"{WIDE_SHOULDER_Y[1]} H"), "sensor short side"),
    ("proportions", ("shoulder half-width 0.14-0.25, upper arm 0.15-0.21, forearm 0.13-0.19, head radius "
                    "0.08-0.14, torso length 0.29-0.41, torso radius 0.10-0.19, limb radii 0.7-1.4 x"), "scale"),
    ("build", (f"slim .. broad (radii 0.75-1.25 x); {CHILD_PROBABILITY:.0%} children (head up to 1.35 x, "
              "limbs 0.88 x)"), "-"),
)
