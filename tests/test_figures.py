"""The renderers of the person (``stream.sim.figures``): the polygon rasteriser's coverage, the
defocus, and that every look draws the same person in the same place."""

from __future__ import annotations

import numpy as np
import pytest

from stream.sim.body import capsules, gesture_pose
from stream.sim.figures import _blur, _draw_polygons, render
from stream.sim.scene import BUILT_IN_LOOKS, LOOKS, draw_scene


def draw(vertices: list[tuple[float, float]], value: float = 1.0, gradient=(0.0, 0.0), size: int = 32) -> np.ndarray:
    frame = np.zeros((size, size))
    points = np.zeros((1, 8, 2))
    points[0, : len(vertices)] = vertices
    _draw_polygons(frame, points, np.array([len(vertices)]), np.array([value]), np.array(gradient, dtype=float))
    return frame


@pytest.mark.parametrize("clockwise", [False, True])
def test_a_polygon_covers_its_area_whichever_way_its_vertices_turn(clockwise: bool) -> None:
    square = [(5.3, 6.1), (17.3, 6.1), (17.3, 14.6), (5.3, 14.6)]  # 12 x 8.5 px, edges between pixel centres
    triangle = [(4.0, 20.0), (24.0, 20.0), (4.0, 30.0)]  # 100 px^2
    for vertices, area in ((square, 12 * 8.5), (triangle, 100.0)):
        frame = draw(vertices[::-1] if clockwise else vertices)
        assert frame.sum() == pytest.approx(area, rel=0.02)
        assert frame.max() == 1.0 and frame.min() == 0.0
    assert draw(square)[10, 10] == 1.0 and draw(square)[10, 20] == 0.0  # inside, outside


def test_a_polygon_is_lit_by_its_gradient_and_a_degenerate_one_draws_nothing() -> None:
    frame = draw([(2.0, 2.0), (30.0, 2.0), (30.0, 30.0), (2.0, 30.0)], value=2.0, gradient=(0.02, 0.0))
    assert frame[16, 26] > frame[16, 16] > frame[16, 6]  # brighter towards the light's side
    assert frame[16, 16] == pytest.approx(2.0, rel=0.02)  # its value at the polygon's centre
    assert draw([(5.0, 5.0), (20.0, 5.0), (5.0, 5.0)]).sum() == 0.0  # no area


def test_defocus_keeps_the_mean_and_spreads_an_edge() -> None:
    frame = np.zeros((16, 16))
    frame[:, 8:] = 1.0
    blurred = frame.copy()
    _blur(blurred, 0.25, 2)
    assert blurred.mean() == pytest.approx(frame.mean())
    assert 0.0 < blurred[5, 7] < 0.5 < blurred[5, 8] < 1.0  # the edge now spans pixels
    assert blurred[5, 0] == 0.0 and blurred[5, 15] == 1.0


def test_every_look_draws_the_person_where_the_skeleton_is() -> None:
    rng = np.random.default_rng(3)
    t_us = np.array([400_000])
    for look in LOOKS:
        scene = draw_scene(np.random.default_rng(11), look=look, lighting="lab")
        pose = gesture_pose(1, t_us * 1e-6, scene.body, rng)
        person = np.abs(render(scene, pose, t_us)[0] - scene.background[scene.pad:-scene.pad, scene.pad:-scene.pad])
        head = capsules(scene.body, pose)[0, 2]
        x, y = scene.framing.apply(head[0:1], head[1:2], np.zeros((1, 2)))
        assert person[int(y[0]), int(x[0])] > 0.05 * scene.background.mean(), look  # the head is drawn there


def test_the_live_simulator_draws_only_the_built_in_models_looks() -> None:
    drawn = {draw_scene(np.random.default_rng(seed)).look for seed in range(40)}
    assert drawn == set(BUILT_IN_LOOKS) and "polygons" in LOOKS
    with pytest.raises(ValueError, match="look must be one of"):
        draw_scene(np.random.default_rng(0), look="voxels")
