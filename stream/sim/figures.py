"""The three renderers of the person, designed independently, and the frames they draw.

``capsules`` (look A): the person as 9 flat-coloured capsules (torso, neck, head, upper arms,
forearms, round hands) with an analytic anti-aliased edge, on the background.

``shaded`` (look B): the person as ~24 tapered parts with shading across each limb (a cylinder
lit from one side), clothes with a printed pattern (stripes, checks) and folds on the sleeves that
shift as the elbow bends, short or long sleeves, hair (a cap, or long hair behind the head), a
palm and five fingers per hand that spread as the hand opens (``Pose.hands``), and a face
(eyes, mouth). It is rasterised with 2 x 2 supersampling instead of an analytic edge.

``polygons`` (look C): the person as flat convex polygons with straight edges and corners: a
trapezoid torso with square shoulders and hips of their own width (or a flared coat), block limbs
with polygonal joints, an angular head under a hair cap, mitten hands with a thumb. Every polygon
is lit by one light gradient across the whole body (a direction and a strength per person), the
frame is rasterised by edge distances with 4 x 4 supersampling at the edges, and then defocused
(a blur of up to about 1 px, the whole image, background included).

All three take the person's capsules from ``stream.sim.body.capsules`` (joint positions: one place),
pass every point through the scene's camera framing (``Framing.apply``: roll, foreshortening,
keystone, drift and shake), add the scene's distractors, and draw on the background shifted by the
same drift and shake. ``render(scene, pose, step_t)`` returns linear intensity frames
``[n, H, W]`` (the light and its flicker are the pixel model's: ``Scene.light``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from stream.sim.body import SHAPE_NAMES, SKIN_SHAPES, Pose, capsules

# Part parameters of the shaded look (one row per part and step).
AX, AY, BX, BY, RA, RB, VALUE, SHADE, TEX_AMP, TEX_FREQ, TEX_ANGLE, TEX_PHASE = range(12)
PART_FIELDS = 12
FINGERS = 5
OFF_SCREEN = -1e6  # where invisible parts are drawn


# --- appearance --------------------------------------------------------------------------------


def draw_appearance(rng: np.random.Generator, look: str, background_mean: float) -> dict:
    """Colours (linear intensity relative to the background's mean), clothes and hair of a look."""
    dark_shirt = rng.random() < 0.5
    shirt = background_mean * (rng.uniform(0.1, 0.35) if dark_shirt else rng.uniform(1.8, 3.2))
    dark_skin = rng.random() < (0.2 if dark_shirt else 0.8)  # mostly contrasting with the shirt
    skin = background_mean * (rng.uniform(0.25, 0.55) if dark_skin else rng.uniform(1.5, 2.6))
    if look == "capsules":
        sleeve = shirt * (rng.uniform(1.2, 1.5) if dark_shirt else rng.uniform(0.65, 0.8))  # arms vs torso
        values = [skin if name in SKIN_SHAPES else sleeve if "arm" in name else shirt for name in SHAPE_NAMES]
        return {"values": np.array(values)}
    if look == "polygons":
        jacket = rng.random() < 0.4  # sleeves of another colour than the torso
        return {
            "skin": skin,
            "torso": shirt,
            "sleeve": background_mean * rng.uniform(0.1, 3.0) if jacket else shirt,
            "long_sleeves": bool(rng.random() < 0.6),
            "hair": background_mean * rng.uniform(0.05, 1.8) if rng.random() < 0.85 else None,
            "head_width": rng.uniform(0.75, 0.95),  # x head radius, across
            "hip_width": rng.uniform(0.65, 1.05),  # x shoulder half-width
            "coat": rng.uniform(0.2, 0.45) * (rng.random() < 0.3),  # torso lengths below the hips, flared
            "light_angle": rng.uniform(0, 2 * np.pi),
            "light_strength": rng.uniform(0.0, 0.6),  # relative change of every value across one body scale
            "blur": rng.uniform(0.0, 0.25),  # weight of each neighbour in a 3-tap blur
            "blur_passes": int(rng.integers(1, 3)),
        }
    if look != "shaded":
        raise ValueError(f"unknown look {look!r}")
    return {
        "skin": skin,
        "shirt": shirt,
        "hair": background_mean * rng.uniform(0.05, 1.8),
        "long_hair": bool(rng.random() < 0.35),
        "long_sleeves": bool(rng.random() < 0.6),
        "shade": rng.uniform(0.15, 0.6),  # darkening towards a limb's edge
        "pattern_amp": rng.uniform(0.0, 0.45) * (rng.random() < 0.6),  # a printed shirt, or plain
        "pattern_freq": rng.uniform(0.08, 0.35),  # cycles per body pixel (at scale 128)
        "pattern_angle": rng.uniform(0, np.pi),
        "fold_amp": rng.uniform(0.05, 0.3),
        "body_width": rng.uniform(0.85, 1.25),  # torso and limb thickness relative to the skeleton's
    }


# --- drawing kernels ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _draw_background(frame, background, pad, shift_x, shift_y):  # pragma: no cover - compiled
    """The background moved by the view's shift (sub-pixel, bilinear)."""
    height, width = frame.shape
    offset_x, offset_y = int(math.floor(pad - shift_x)), int(math.floor(pad - shift_y))
    wx, wy = (pad - shift_x) - offset_x, (pad - shift_y) - offset_y
    w00, w01, w10, w11 = (1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx
    for y in range(height):
        top = background[y + offset_y]
        bottom = background[y + offset_y + 1]
        for x in range(width):
            i = x + offset_x
            frame[y, x] = w00 * top[i] + w01 * top[i + 1] + w10 * bottom[i] + w11 * bottom[i + 1]


@njit(cache=True, nogil=True)
def _draw_capsules(frame, shapes, values):  # pragma: no cover - compiled
    """Flat capsules (ax, ay, bx, by, radius) with an analytic anti-aliased edge, in order."""
    height, width = frame.shape
    for k in range(shapes.shape[0]):
        ax, ay, bx, by, radius = shapes[k, 0], shapes[k, 1], shapes[k, 2], shapes[k, 3], shapes[k, 4]
        value = values[k]
        x0 = max(0, int(math.floor(min(ax, bx) - radius - 1)))
        x1 = min(width, int(math.ceil(max(ax, bx) + radius + 2)))
        y0 = max(0, int(math.floor(min(ay, by) - radius - 1)))
        y1 = min(height, int(math.ceil(max(ay, by) + radius + 2)))
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        inverse_length2 = 1.0 / length2 if length2 > 0 else 0.0
        outside2 = (radius + 0.5) ** 2
        inside2 = max(0.0, radius - 0.5) ** 2
        for y in range(y0, y1):
            py = y - ay
            for x in range(x0, x1):
                px = x - ax
                h = min(1.0, max(0.0, (px * dx + py * dy) * inverse_length2))
                ex, ey = px - h * dx, py - h * dy
                distance2 = ex * ex + ey * ey
                if distance2 >= outside2:
                    continue
                if distance2 <= inside2:
                    frame[y, x] = value
                else:
                    frame[y, x] += (value - frame[y, x]) * (radius + 0.5 - math.sqrt(distance2))


@njit(cache=True, nogil=True)
def _draw_parts(frame, parts):  # pragma: no cover - compiled
    """Tapered, shaded, patterned parts, in order, with 2 x 2 supersampled coverage."""
    height, width = frame.shape
    for k in range(parts.shape[0]):
        ax, ay, bx, by = parts[k, 0], parts[k, 1], parts[k, 2], parts[k, 3]
        ra, rb, value, shade = parts[k, 4], parts[k, 5], parts[k, 6], parts[k, 7]
        tex_amp, tex_freq, tex_angle, tex_phase = parts[k, 8], parts[k, 9], parts[k, 10], parts[k, 11]
        reach = max(ra, rb)
        x0 = max(0, int(math.floor(min(ax, bx) - reach - 1)))
        x1 = min(width, int(math.ceil(max(ax, bx) + reach + 2)))
        y0 = max(0, int(math.floor(min(ay, by) - reach - 1)))
        y1 = min(height, int(math.ceil(max(ay, by) + reach + 2)))
        dx, dy = bx - ax, by - ay
        length = math.sqrt(dx * dx + dy * dy)
        ux, uy = (dx / length, dy / length) if length > 0 else (0.0, 1.0)
        cos_t, sin_t = math.cos(tex_angle), math.sin(tex_angle)
        for y in range(y0, y1):
            for x in range(x0, x1):
                px, py = x - ax, y - ay
                along = px * ux + py * uy
                across = px * uy - py * ux
                h = min(1.0, max(0.0, along / length)) if length > 0 else 0.0
                radius = max(1e-3, ra + (rb - ra) * h)
                ex, ey = px - h * dx, py - h * dy
                distance = math.sqrt(ex * ex + ey * ey)
                if distance >= radius + 0.75:
                    continue
                covered = 4
                if distance > radius - 0.75:  # near the edge: 2 x 2 samples
                    covered = 0
                    for sy in (-0.25, 0.25):
                        for sx in (-0.25, 0.25):
                            qx, qy = px + sx, py + sy
                            g = min(1.0, max(0.0, (qx * ux + qy * uy) / length)) if length > 0 else 0.0
                            fx, fy = qx - g * dx, qy - g * dy
                            if fx * fx + fy * fy <= (ra + (rb - ra) * g) ** 2:
                                covered += 1
                    if covered == 0:
                        continue
                side = max(-1.0, min(1.0, across / radius))
                colour = value * (1.0 - shade * (0.6 * side * side - 0.4 * side))  # a cylinder lit from one side
                if tex_amp != 0.0:
                    colour *= 1.0 + tex_amp * math.sin(2 * math.pi * tex_freq * (along * cos_t + across * sin_t) + tex_phase)
                frame[y, x] += (colour - frame[y, x]) * (covered * 0.25)


@njit(cache=True, nogil=True)
def _draw_polygons(frame, vertices, counts, values, gradient):  # pragma: no cover - compiled
    """Convex polygons (``vertices [P, V, 2]``, the first ``counts[p]`` used), in order, each of
    ``values[p]`` times (1 + gradient . (pixel - its centre)), covered by edge distances: exact
    inside and outside, 4 x 4 samples where an edge passes through the pixel."""
    height, width = frame.shape
    gx, gy = gradient[0], gradient[1]
    nx, ny, offset = np.empty(vertices.shape[1]), np.empty(vertices.shape[1]), np.empty(vertices.shape[1])
    for k in range(vertices.shape[0]):
        m = counts[k]
        xs, ys = vertices[k, :m, 0], vertices[k, :m, 1]
        area = 0.0
        for i in range(m):
            j = (i + 1) % m
            area += xs[i] * ys[j] - xs[j] * ys[i]
        if abs(area) < 1e-9:
            continue
        orientation = 1.0 if area > 0 else -1.0
        for i in range(m):  # inward unit normals: the distance inside an edge is n . p - offset
            j = (i + 1) % m
            ex, ey = xs[j] - xs[i], ys[j] - ys[i]
            length = math.sqrt(ex * ex + ey * ey)
            if length > 1e-9:
                nx[i], ny[i] = -orientation * ey / length, orientation * ex / length
                offset[i] = nx[i] * xs[i] + ny[i] * ys[i]
            else:
                nx[i], ny[i], offset[i] = 0.0, 0.0, -1e9  # a repeated vertex bounds nothing
        cx, cy = xs.mean(), ys.mean()
        x0 = max(0, int(math.floor(xs.min() - 1)))
        x1 = min(width, int(math.ceil(xs.max() + 2)))
        y0 = max(0, int(math.floor(ys.min() - 1)))
        y1 = min(height, int(math.ceil(ys.max() + 2)))
        for y in range(y0, y1):
            for x in range(x0, x1):
                nearest = 1e9
                for i in range(m):
                    nearest = min(nearest, nx[i] * x + ny[i] * y - offset[i])
                if nearest <= -0.71:
                    continue
                covered = 16
                if nearest < 0.71:
                    covered = 0
                    for sy in (-0.375, -0.125, 0.125, 0.375):
                        for sx in (-0.375, -0.125, 0.125, 0.375):
                            inside = True
                            for i in range(m):
                                if nx[i] * (x + sx) + ny[i] * (y + sy) - offset[i] < 0:
                                    inside = False
                                    break
                            if inside:
                                covered += 1
                    if covered == 0:
                        continue
                colour = values[k] * max(0.05, 1.0 + gx * (x - cx) + gy * (y - cy))
                frame[y, x] += (colour - frame[y, x]) * (covered / 16.0)


@njit(cache=True, nogil=True)
def _blur(frame, weight, passes):  # pragma: no cover - compiled
    """Defocus in place: ``passes`` of the separable 3-tap kernel (weight, 1 - 2 weight, weight),
    edges repeated."""
    height, width = frame.shape
    row = np.empty(width)
    column = np.empty(height)
    for _ in range(passes):
        for y in range(height):
            row[:] = frame[y]
            for x in range(width):
                left, right = row[max(0, x - 1)], row[min(width - 1, x + 1)]
                frame[y, x] = (1 - 2 * weight) * row[x] + weight * (left + right)
        for x in range(width):
            column[:] = frame[:, x]
            for y in range(height):
                up, down = column[max(0, y - 1)], column[min(height - 1, y + 1)]
                frame[y, x] = (1 - 2 * weight) * column[y] + weight * (up + down)


# --- the looks ---------------------------------------------------------------------------------


def _transform(scene, shapes: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Capsule-like rows (ax, ay, bx, by, radii...) through the scene's framing; radii scaled."""
    out = shapes.copy()
    framing = scene.framing
    out[..., 0], out[..., 1] = framing.apply(shapes[..., 0], shapes[..., 1], shift)
    out[..., 2], out[..., 3] = framing.apply(shapes[..., 2], shapes[..., 3], shift)
    return out


def _distractor_rows(scene, step_t: np.ndarray, shift: np.ndarray, in_front: bool) -> tuple[np.ndarray, np.ndarray]:
    """Capsules ``[n, k, 5]`` and values ``[k]`` of the distractors behind or in front of the person
    (in the view's coordinates: they move with the drift and shake, not with the person's framing)."""
    rows, values = [], []
    for distractor in scene.distractors:
        if distractor.in_front != in_front:
            continue
        shapes, visible = distractor.capsules(step_t)
        shapes = shapes.copy()
        shapes[..., 0:4] += np.tile(shift, 2)[:, None, :]
        shapes[..., 0:4] = np.where(visible[..., None] > 0, shapes[..., 0:4], OFF_SCREEN)
        rows.append(shapes)
        values += [distractor.value] * shapes.shape[1]
    if not rows:
        return np.zeros((len(step_t), 0, 5)), np.zeros(0)
    return np.concatenate(rows, axis=1), np.array(values)


def _capsule_frames(scene, pose: Pose, step_t: np.ndarray, shift: np.ndarray) -> np.ndarray:
    person = capsules(scene.body, pose)
    person = _transform(scene, person, shift)
    person[..., 4] *= scene.framing.scale
    behind, behind_values = _distractor_rows(scene, step_t, shift, False)
    front, front_values = _distractor_rows(scene, step_t, shift, True)
    shapes = np.concatenate([behind, person, front], axis=1)
    values = np.concatenate([behind_values, scene.appearance["values"], front_values])
    width, height = scene.sensor_size
    frames = np.empty((len(step_t), height, width))
    for s in range(len(step_t)):
        _draw_background(frames[s], scene.background, scene.pad, shift[s, 0], shift[s, 1])
        _draw_capsules(frames[s], shapes[s], values)
    return frames


def _part(ax, ay, bx, by, ra, rb, value, shade=0.0, tex_amp=0.0, tex_freq=0.0, tex_angle=0.0, tex_phase=0.0):
    """One part per step ``[n, PART_FIELDS]`` (scalars broadcast)."""
    n = len(ax)
    columns = [ax, ay, bx, by, ra, rb, value, shade, tex_amp, tex_freq, tex_angle, tex_phase]
    return np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), (n,)) for c in columns], axis=1)


def shaded_parts(scene, pose: Pose) -> np.ndarray:
    """The shaded look's parts ``[n, P, PART_FIELDS]`` in the person's own pixels (before framing)."""
    look, body = scene.appearance, scene.body
    caps = capsules(body, pose)  # [n, 9, 5]: torso, neck, head, R upper, R fore, R hand, L upper, L fore, L hand
    width = look["body_width"]
    shade, skin, shirt, hair = look["shade"], look["skin"], look["shirt"], look["hair"]
    pattern = (look["pattern_amp"], look["pattern_freq"] * 128 / body.scale, look["pattern_angle"])
    torso, neck, head = caps[:, 0], caps[:, 1], caps[:, 2]
    parts = []
    head_r = head[:, 4]
    if look["long_hair"]:  # behind the head and shoulders
        parts.append(_part(head[:, 0], head[:, 1], head[:, 0], head[:, 1] + 1.6 * head_r, 1.1 * head_r, 0.9 * head_r,
                           hair, 0.2, 0.3, 0.6 * 128 / body.scale, 0.0))  # fmt: skip
    parts.append(_part(torso[:, 2], torso[:, 3], torso[:, 0], torso[:, 1], 0.85 * width * torso[:, 4],
                       1.05 * width * torso[:, 4], shirt, shade, *pattern[:2], pattern[2]))  # fmt: skip
    parts.append(_part(neck[:, 0], neck[:, 1], neck[:, 2], neck[:, 3], neck[:, 4], 0.9 * neck[:, 4], skin, shade))
    parts.append(_part(head[:, 0], head[:, 1] + 0.25 * head_r, head[:, 2], head[:, 3] - 0.25 * head_r, 0.85 * head_r,
                       0.9 * head_r, skin, shade))  # fmt: skip
    parts.append(_part(head[:, 0], head[:, 1] - 0.55 * head_r, head[:, 2], head[:, 3] - 0.6 * head_r, 0.75 * head_r,
                       0.8 * head_r, hair, 0.1, 0.35, 0.8 * 128 / body.scale, np.pi / 2))  # fmt: skip
    eye_dx, eye_y = 0.35 * head_r, head[:, 1] - 0.1 * head_r
    for side in (-1.0, 1.0):  # eyes, then the mouth
        parts.append(_part(head[:, 0] + side * eye_dx, eye_y, head[:, 0] + side * eye_dx, eye_y, 0.12 * head_r,
                           0.12 * head_r, 0.3 * skin))  # fmt: skip
    parts.append(_part(head[:, 0] - 0.25 * head_r, head[:, 1] + 0.45 * head_r, head[:, 0] + 0.25 * head_r,
                       head[:, 1] + 0.45 * head_r, 0.08 * head_r, 0.08 * head_r, 0.5 * skin))  # fmt: skip
    hands = pose.filled().hands
    for arm in (0, 1):
        upper, fore, hand = caps[:, 3 + 3 * arm], caps[:, 4 + 3 * arm], caps[:, 5 + 3 * arm]
        elbow_angle = np.arctan2(fore[:, 3] - fore[:, 1], fore[:, 2] - fore[:, 0]) - np.arctan2(
            upper[:, 3] - upper[:, 1], upper[:, 2] - upper[:, 0])  # fmt: skip
        folds = (look["fold_amp"], 0.5 * 128 / body.scale, np.pi / 2 - 0.3, 3.0 * elbow_angle)  # across the sleeve
        parts.append(_part(upper[:, 0], upper[:, 1], upper[:, 2], upper[:, 3], 1.1 * width * upper[:, 4],
                           0.95 * width * upper[:, 4], shirt, shade, *folds))  # fmt: skip
        sleeve = shirt if look["long_sleeves"] else skin
        parts.append(_part(fore[:, 0], fore[:, 1], fore[:, 2], fore[:, 3], width * fore[:, 4],
                           0.8 * width * fore[:, 4], sleeve, shade, *(folds if look["long_sleeves"] else ())))  # fmt: skip
        direction = np.arctan2(fore[:, 3] - fore[:, 1], fore[:, 2] - fore[:, 0])
        palm_r = 0.75 * hand[:, 4]
        parts.append(_part(fore[:, 2], fore[:, 3], hand[:, 0], hand[:, 1], 0.7 * palm_r, palm_r, skin, shade))
        opening = np.clip(hands[:, arm], 0.0, 1.0)
        for finger in range(FINGERS):
            spread = (finger - 1.5) * (0.15 + 0.3 * opening) * (1 if arm == 0 else -1)
            if finger == FINGERS - 1:  # the thumb, to the side
                spread = (1.0 if arm == 0 else -1.0) * (0.9 + 0.4 * opening)
            length = hand[:, 4] * (0.7 + 0.7 * opening) * (0.75 if finger in (0, FINGERS - 1) else 1.0)
            angle = direction + spread
            base_x, base_y = hand[:, 0] + 0.5 * palm_r * np.cos(angle), hand[:, 1] + 0.5 * palm_r * np.sin(angle)
            parts.append(_part(base_x, base_y, base_x + length * np.cos(angle), base_y + length * np.sin(angle),
                               0.22 * hand[:, 4], 0.18 * hand[:, 4], skin, 0.5 * shade))  # fmt: skip
    return np.stack(parts, axis=1)


def _shaded_frames(scene, pose: Pose, step_t: np.ndarray, shift: np.ndarray) -> np.ndarray:
    parts = _transform(scene, shaded_parts(scene, pose), shift)
    scale = scene.framing.scale
    parts[..., RA] *= scale
    parts[..., RB] *= scale
    parts[..., TEX_FREQ] /= scale

    def flat(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = np.zeros(rows.shape[:2] + (PART_FIELDS,))
        out[..., :4], out[..., RA], out[..., RB] = rows[..., :4], rows[..., 4], rows[..., 4]
        out[..., VALUE] = values
        return out

    behind = flat(*_distractor_rows(scene, step_t, shift, False))
    front = flat(*_distractor_rows(scene, step_t, shift, True))
    parts = np.ascontiguousarray(np.concatenate([behind, parts, front], axis=1))
    width, height = scene.sensor_size
    frames = np.empty((len(step_t), height, width))
    for s in range(len(step_t)):
        _draw_background(frames[s], scene.background, scene.pad, shift[s, 0], shift[s, 1])
        _draw_parts(frames[s], parts[s])
    return frames


POLYGON_VERTICES = 8  # the most vertices of one polygon of the polygons look


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows ``[..., 2]`` scaled to length 1 (zero rows point down)."""
    length = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(length > 1e-9, v / np.maximum(length, 1e-9), np.array([0.0, 1.0]))


def _across(u: np.ndarray) -> np.ndarray:
    return np.stack([-u[..., 1], u[..., 0]], axis=-1)


def _block(a: np.ndarray, b: np.ndarray, half_a, half_b) -> np.ndarray:
    """A straight limb ``[n, 4, 2]`` from ``a`` to ``b`` (``[n, 2]``), half as wide as ``half_a`` / ``half_b``."""
    normal = _across(_unit(b - a))
    half_a, half_b = np.asarray(half_a)[..., None], np.asarray(half_b)[..., None]
    return np.stack([a + half_a * normal, b + half_b * normal, b - half_b * normal, a - half_a * normal], axis=1)


def _ellipse(centre: np.ndarray, up: np.ndarray, across_radius, up_radius, sides: int, first: float = 0.0,
             last: float = 2 * np.pi) -> np.ndarray:  # fmt: skip
    """``sides`` points ``[n, sides, 2]`` on an ellipse round ``centre`` whose second axis is ``up``, from
    angle ``first`` to ``last`` (a whole polygon, or a cap when the arc is half of it)."""
    closed = np.isclose(last - first, 2 * np.pi)
    angles = np.linspace(first, last, sides, endpoint=not closed)
    side = _across(up)
    across_radius = np.broadcast_to(np.asarray(across_radius, dtype=np.float64), (len(centre),))[:, None, None]
    up_radius = np.broadcast_to(np.asarray(up_radius, dtype=np.float64), (len(centre),))[:, None, None]
    return (centre[:, None] + across_radius * np.cos(angles)[None, :, None] * side[:, None]
            + up_radius * np.sin(angles)[None, :, None] * up[:, None])  # fmt: skip


def polygon_parts(scene, pose: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The polygons look's person: vertices ``[n, P, POLYGON_VERTICES, 2]`` in the person's own pixels
    (before framing), the vertex count ``[P]`` and the value ``[P]`` of each polygon, back to front."""
    look, body = scene.appearance, scene.body
    caps = capsules(body, pose)  # [n, 9, 5]: torso, neck, head, R upper, R fore, R hand, L upper, L fore, L hand
    torso, head = caps[:, 0], caps[:, 2]
    up = _unit(head[:, 2:4] - head[:, 0:2])
    polygons: list[tuple[np.ndarray, float]] = []
    right_shoulder, left_shoulder = caps[:, 3, 0:2], caps[:, 6, 0:2]
    middle = 0.5 * (right_shoulder + left_shoulder)
    outward = _unit(right_shoulder - middle)
    half_shoulders = np.linalg.norm(right_shoulder - middle, axis=1)[:, None]
    top = [shoulder + sign * 0.5 * body.upper_arm_radius * outward + 0.7 * body.upper_arm_radius * up
           for sign, shoulder in ((1.0, right_shoulder), (-1.0, left_shoulder))]  # fmt: skip
    hips = torso[:, 2:4] - look["coat"] * body.torso_length * up
    hip_half = np.maximum(look["hip_width"] * (1.0 + look["coat"]) * half_shoulders, 0.6 * body.torso_radius)
    polygons.append((np.stack([top[0], top[1], hips - hip_half * outward, hips + hip_half * outward], axis=1),
                     look["torso"]))  # fmt: skip
    polygons.append((_block(middle, head[:, 0:2], 0.45 * body.head_radius, 0.4 * body.head_radius), look["skin"]))
    head_centre = head[:, 0:2] + 0.1 * body.head_radius * up
    head_across, head_up = look["head_width"] * body.head_radius, 1.1 * body.head_radius
    polygons.append((_ellipse(head_centre, up, head_across, head_up, 8), look["skin"]))
    if look["hair"] is not None:  # a cap over the top of the head, wider than the skull
        polygons.append((_ellipse(head_centre + 0.05 * body.head_radius * up, up, 1.08 * head_across, 1.12 * head_up, 7,
                                  -0.15, np.pi + 0.15), look["hair"]))  # fmt: skip
    hands = pose.filled().hands
    for arm in (0, 1):
        upper, fore, hand = caps[:, 3 + 3 * arm], caps[:, 4 + 3 * arm], caps[:, 5 + 3 * arm]
        fore_value = look["sleeve"] if look["long_sleeves"] else look["skin"]
        shoulder, elbow, wrist = upper[:, 0:2], upper[:, 2:4], fore[:, 2:4]
        polygons.append((_ellipse(shoulder, up, 1.05 * upper[:, 4], 1.05 * upper[:, 4], 6), look["sleeve"]))
        polygons.append((_block(shoulder, elbow, upper[:, 4], 0.9 * upper[:, 4]), look["sleeve"]))
        polygons.append((_ellipse(elbow, up, 0.9 * upper[:, 4], 0.9 * upper[:, 4], 6), fore_value))
        polygons.append((_block(elbow, wrist, fore[:, 4], 0.8 * fore[:, 4]), fore_value))
        along = _unit(hand[:, 2:4] - wrist)
        side = _across(along)
        radius = hand[:, 4:5]
        tip = hand[:, 2:4] + 0.4 * radius * along
        middle_of_hand = 0.5 * (wrist + tip)
        mitten = [wrist + 0.7 * radius * side, middle_of_hand + radius * side, tip + 0.6 * radius * side,
                  tip + 0.4 * radius * along, tip - 0.6 * radius * side, middle_of_hand - radius * side,
                  wrist - 0.7 * radius * side]  # fmt: skip
        polygons.append((np.stack(mitten, axis=1), look["skin"]))
        opening = np.clip(hands[:, arm], 0.0, 1.0)[:, None]
        angle = (0.6 + 0.6 * opening) * (1.0 if arm == 0 else -1.0)
        thumb = np.cos(angle) * along + np.sin(angle) * side
        base = hand[:, 0:2]
        polygons.append((_block(base, base + 1.3 * radius * thumb, 0.3 * radius[:, 0], 0.25 * radius[:, 0]),
                         look["skin"]))  # fmt: skip
    n = len(caps)
    vertices = np.zeros((n, len(polygons), POLYGON_VERTICES, 2))
    counts = np.array([points.shape[1] for points, _ in polygons], dtype=np.int64)
    for index, (points, _) in enumerate(polygons):
        vertices[:, index, : points.shape[1]] = points
    return vertices, counts, np.array([value for _, value in polygons], dtype=np.float64)


def _polygon_frames(scene, pose: Pose, step_t: np.ndarray, shift: np.ndarray) -> np.ndarray:
    vertices, counts, values = polygon_parts(scene, pose)
    vertices[..., 0], vertices[..., 1] = scene.framing.apply(vertices[..., 0], vertices[..., 1], shift)
    look = scene.appearance
    strength = look["light_strength"] / (scene.body.scale * scene.framing.scale)  # per pixel
    gradient = strength * np.array([math.cos(look["light_angle"]), math.sin(look["light_angle"])])
    behind, behind_values = _distractor_rows(scene, step_t, shift, False)
    front, front_values = _distractor_rows(scene, step_t, shift, True)
    area = (scene.framing.scale * min(scene.sensor_size) / 128) ** 2  # the blur's variance grows with the size
    passes = look["blur_passes"] * math.ceil(area)  # each pass adds a variance of 2 x weight (px^2)
    weight = look["blur"] * area / math.ceil(area)
    width, height = scene.sensor_size
    frames = np.empty((len(step_t), height, width))
    for s in range(len(step_t)):
        _draw_background(frames[s], scene.background, scene.pad, shift[s, 0], shift[s, 1])
        _draw_capsules(frames[s], behind[s], behind_values)
        _draw_polygons(frames[s], vertices[s], counts, values, gradient)
        _draw_capsules(frames[s], front[s], front_values)
        if weight > 0:
            _blur(frames[s], weight, passes)
    return frames


def render(scene, pose: Pose, step_t: np.ndarray) -> np.ndarray:
    """Linear intensity frames ``[n, H, W]`` of the person in ``pose`` at ``step_t`` (µs), drawn by
    the scene's look, framed, with its distractors, on its background (light not applied)."""
    step_t = np.asarray(step_t, dtype=np.int64)
    shift = scene.framing.view_shift(step_t)
    if scene.look == "capsules":
        return _capsule_frames(scene, pose, step_t, shift)
    if scene.look == "polygons":
        return _polygon_frames(scene, pose, step_t, shift)
    return _shaded_frames(scene, pose, step_t, shift)
