"""Gesture simulator: speed (x real time), event statistics per class, live-source throughput.

    python benchmarks/bench_simulator.py [--seeds 3]

Peer, measured in the same run: the same renderer with the obvious NumPy pixel model (one
vectorised NumPy pass over all pixels per render step: log of every pixel, crossings counted,
events emitted with np.repeat; no refractory), against the Numba kernel that renders and runs the
pixel model in one loop and takes a log only where a threshold is crossed. Numba runs on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.classes import GESTURE_CLASSES  # noqa: E402
from stream.events import EVENT_DTYPE, GestureSegment, SensorSize  # noqa: E402
from stream.sim.camera import BACKGROUND_PAD, LOG_EPS, _render_frame, draw_scene  # noqa: E402
from stream.sim.recording import simulate_gesture, simulate_recording, timeline_shapes  # noqa: E402
from stream.sources.simulated import SimulatorSource  # noqa: E402


def numpy_peer(label: int, seed: int, sensor: SensorSize, duration_us: int) -> int:
    """The peer: same scene and renderer, pixel model as one NumPy pass per step. Returns event count."""
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, sensor)
    step_t = np.arange(0, duration_us + 1, scene.step_us, dtype=np.int64)
    shapes = timeline_shapes(scene, step_t, [GestureSegment(label, 0, duration_us)], rng, 0.0)
    shake = scene.shake(step_t)
    shapes[:, :, 0:4] += np.tile(shake, 2)[:, None, :]
    frame = np.zeros((sensor.height, sensor.width))
    _render_frame(frame, scene.background, BACKGROUND_PAD, shake[0, 0], shake[0, 1], shapes[0], scene.shape_values)
    ref = np.log(frame * scene.illumination + LOG_EPS)
    pieces = []
    for s in range(1, len(step_t)):
        _render_frame(frame, scene.background, BACKGROUND_PAD, shake[s, 0], shake[s, 1], shapes[s], scene.shape_values)
        level = np.log(frame * scene.illumination + LOG_EPS)
        diff = level - ref
        n_on = np.floor(np.maximum(diff, 0) / scene.threshold_on).astype(np.int64)
        n_off = np.floor(np.maximum(-diff, 0) / scene.threshold_off).astype(np.int64)
        count = n_on + n_off
        fired = np.flatnonzero(count)
        if len(fired):
            events = np.zeros(int(count.ravel()[fired].sum()), EVENT_DTYPE)
            pixel = np.repeat(fired, count.ravel()[fired])
            events["t"], events["x"], events["y"] = step_t[s], pixel % sensor.width, pixel // sensor.width
            events["p"] = np.repeat(n_on.ravel()[fired] > 0, count.ravel()[fired])
            pieces.append(events)
        ref += n_on * scene.threshold_on - n_off * scene.threshold_off
    return sum(len(piece) for piece in pieces)


def timed(function, *args, **kwargs):
    """(wall s, CPU s of this process, result). CPU time is the fairer figure on a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="samples per class for the statistics")
    args = parser.parse_args()
    sensor = SensorSize(128, 128)
    simulate_gesture(0, seed=0, duration_us=50_000)  # compile / load the Numba cache
    numpy_peer(0, 0, sensor, 20_000)

    print("## Simulation speed (one 2 s gesture sample, one core)\n")
    print("| sensor | simulator | wall s / 2 s sample | CPU s / 2 s sample | x real time (CPU) | ratio vs peer (CPU) |")
    print("|---|---|---|---|---|---|")
    for size in (sensor, SensorSize(346, 260)):
        runs = [timed(simulate_gesture, label, seed=1, sensor_size=size, duration_us=2_000_000) for label in (1, 3, 8)]
        ours_wall, ours_cpu = np.median([run[0] for run in runs]), np.median([run[1] for run in runs])
        peer_wall, peer_cpu, _ = timed(numpy_peer, 3, 1, size, 2_000_000)
        print(f"| {size} | Numba kernel (this) | {ours_wall:.3f} | {ours_cpu:.3f} | {2 / ours_cpu:.1f} | "
              f"{peer_cpu / ours_cpu:.1f}x faster |")
        print(f"| {size} | NumPy per-step peer | {peer_wall:.3f} | {peer_cpu:.3f} | {2 / peer_cpu:.1f} | 1.0 |")

    print(f"\n## Event statistics at 128x128 (1 s samples, {args.seeds} seeds per class)\n")
    print("| class | events/s (mean) | min | max | ON fraction |")
    print("|---|---|---|---|---|")
    for label, name in enumerate(GESTURE_CLASSES):
        samples = [simulate_gesture(label, seed=seed, duration_us=1_000_000)[0] for seed in range(args.seeds)]
        rates = np.array([len(events) for events in samples], dtype=float)
        on = np.mean([events["p"].mean() for events in samples])
        print(f"| {label}: {name} | {rates.mean():,.0f} | {rates.min():,.0f} | {rates.max():,.0f} | {on:.2f} |")
    idle_rates = []
    for seed in range(args.seeds):
        events, _ = simulate_recording([], seed=seed, idle_us=2_000_000)
        idle_rates.append(len(events) / (events["t"].max() * 1e-6))
    idle = np.mean(idle_rates)
    print(f"| idle (person still: noise, shake, breathing) | {idle:,.0f} | {min(idle_rates):,.0f} | "
          f"{max(idle_rates):,.0f} | - |")
    print(f"\nIdle rate per pixel: {idle / sensor.width / sensor.height:.3f} Hz "
          "(background activity 0.02-0.4 Hz/pixel by lighting, plus 0-4 hot pixels at 10-200 Hz).")

    print("\n## Live SimulatorSource, speed=None (as fast as it runs), 5 s of stream at 128x128\n")
    print("| rate_scale | wall s | x real time (wall) | events/s of stream | events/s delivered (wall) |")
    print("|---|---|---|---|---|")
    for scale in (1, 100):
        with SimulatorSource(seed=0, speed=None, duration_s=5.0, rate_scale=scale) as source:
            wall, _, total = timed(lambda: sum(len(chunk) for chunk in source))
        print(f"| {scale} | {wall:.2f} | {5 / wall:.1f} | {total / 5:,.0f} | {total / wall:,.0f} |")
    print("\n(The live source renders in a worker thread while the consumer thread slices and paces.)")


if __name__ == "__main__":
    main()
