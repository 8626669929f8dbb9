"""Binning speed: ``python benchmarks/bench_binning.py [--events N] [--repeats R] [--clock wall|cpu] [--only TABLE]``.

Prints markdown tables (best of several runs, this machine, same events and same output for every
method): throughput of ``bin_window`` (fresh array, reused ``out=``, one and all threads) and of
``StreamingBinner.push`` vs tonic's ``ToFrame`` and a NumPy ``np.add.at`` binner, on uniform random
events and on the simulator's person; the cost of emitting one window; Numba cold start with and
without the on-disk cache; a 50 M events/s burst in one chunk.

Window: T=16 bins of 50 ms (0.8 s, the built-in checkpoint's window). Events per window (default
4 M, ``--events``): 5 M events/s on average, e.g. a busy 640x480 scene, or 50 M events/s bursts
during a tenth of the window. On a machine shared with other jobs, ``--clock cpu`` gives steadier
single-thread ratios (time slices lost to other processes do not count; caches still suffer).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.binning import (  # noqa: E402
    BackgroundActivityFilter,
    FlickerFilter,
    HotPixelFilter,
    SensorMapping,
    StreamingBinner,
    WindowSpec,
    bin_window,
    default_threads,
    warmup,
)
from stream.events import SensorSize, empty_events, make_events, to_tonic  # noqa: E402

WINDOW = WindowSpec(16, 50_000, 50_000)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def best_of(function, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds."""
    return race({"": function}, repeats)[""]


def race(functions: dict, repeats: int, clock: str = "wall") -> dict:
    """Fastest time of each function over ``repeats`` rounds, in seconds. In every round each
    function runs once, in turn, so a change of load on a shared machine hits all of them alike.
    ``clock``: ``"wall"`` or ``"cpu"`` (CPU time of this process: time slices lost to other
    processes on a busy machine do not count; meaningless for a speed-up from threads)."""
    now = CLOCKS[clock]
    times: dict = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = now()
            function()
            times[name].append(now() - started)
    return {name: min(values) for name, values in times.items()}


def random_events(count: int, sensor: tuple[int, int], duration_us: int, seed: int = 0) -> np.ndarray:
    """Time-sorted events, uniform over the sensor and ``[0, duration_us)`` (worst case for caches)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_us, count))
    return make_events(t, rng.integers(0, sensor[0], count), rng.integers(0, sensor[1], count), rng.integers(0, 2, count))


def simulator_events(count: int, sensor: tuple[int, int], duration_us: int, seed: int = 0) -> np.ndarray:
    """The simulator's person (right arm clockwise) over ``[0, duration_us)``, made about ``count``
    events by adding k - 1 copies of each event, each shifted by at most 2 pixels and 0.5 ms, then
    sorted by time: the same spatially clustered scene, k times busier."""
    from stream.sim.recording import simulate_gesture

    events, _ = simulate_gesture(3, seed=seed, sensor_size=SensorSize(*sensor), duration_us=duration_us)
    events = events[events["t"] < duration_us]
    copies = max(1, round(count / len(events)))
    rng = np.random.default_rng(seed)
    events = np.repeat(events, copies)
    shifted = np.tile(np.arange(copies) > 0, len(events) // copies)  # the first copy stays as simulated
    n = int(shifted.sum())
    events["x"][shifted] = np.clip(events["x"][shifted] + rng.integers(-2, 3, n), 0, sensor[0] - 1)
    events["y"][shifted] = np.clip(events["y"][shifted] + rng.integers(-2, 3, n), 0, sensor[1] - 1)
    events["t"][shifted] = np.clip(events["t"][shifted] + rng.integers(-500, 501, n), 0, duration_us - 1)
    return events[np.argsort(events["t"], kind="stable")]


def numpy_add_at(events: np.ndarray, sensor: tuple[int, int], spec: WindowSpec, start_us: int) -> np.ndarray:
    """The plain NumPy peer: same window definition, identity mapping."""
    frames = np.zeros((spec.bins, 2, sensor[1], sensor[0]), dtype=np.float32)
    k = (events["t"] - start_us) // spec.bin_us
    inside = (k >= 0) & (k < spec.bins)
    np.add.at(frames, (k[inside], events["p"][inside], events["y"][inside], events["x"][inside]), 1.0)
    return frames


def throughput_table(count: int, repeats: int, clock: str) -> None:
    import tonic

    threads = default_threads()
    print(f"\n### Throughput, about {count / 1e6:g} M events in one window (T=16 x 50 ms), M events/s (higher is better), "
          f"{clock} clock\n")  # fmt: skip
    print(f"bin_window: fresh = a new array each call (as tonic and np.add.at); out= = the caller's array, "
          f"zeroed and reused; {threads} threads = out= and `threads={threads}` (this machine's CPUs). Streaming: "
          "push 64k-event chunks and emit the 16 windows that end in the 0.8 s (each a new [16, 2, H, W] array). "
          "Methods take turns in each round; best of the rounds.\n")  # fmt: skip
    print(f"| events | sensor -> input | bin_window fresh | out= | out=, {threads} threads | streaming push (64k chunks) "
          "| tonic ToFrame | np.add.at | fresh / tonic | out= / tonic | threads / tonic | fresh / np.add.at |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for sensor, model in (((128, 128), (128, 128)), ((640, 480), (640, 480)), ((640, 480), (128, 128))):
        for kind, make in (("uniform", random_events), ("simulator", simulator_events)):
            events = make(count, sensor, WINDOW.window_us)
            events["t"][0] = 0  # tonic's bins start at the first event
            n = len(events)
            mapping = SensorMapping.create(sensor, model)
            out = np.zeros((WINDOW.bins, 2, model[1], model[0]), np.float32)
            chunks = np.array_split(events, max(1, n // 65_536))

            def stream() -> None:
                binner = StreamingBinner(mapping, WINDOW)
                for chunk in chunks:
                    binner.push(chunk)
                binner.push(empty_events(), now_us=WINDOW.window_us)

            methods = {
                "fresh": lambda: bin_window(events, mapping, WINDOW, 0, threads=1),
                "out": lambda: bin_window(events, mapping, WINDOW, 0, out=out, threads=1),
                "threads": lambda: bin_window(events, mapping, WINDOW, 0, out=out, threads=threads),
                "streaming": stream,
            }
            if sensor == model:
                tonic_events = to_tonic(events)
                to_frame = tonic.transforms.ToFrame(sensor_size=(*sensor, 2), time_window=WINDOW.bin_us, include_incomplete=True)
                ours = bin_window(events, mapping, WINDOW, 0)
                if not np.array_equal(to_frame(tonic_events), ours):
                    raise SystemExit(f"tonic disagrees with bin_window on {kind} events at {sensor}")
                if not np.array_equal(numpy_add_at(events, sensor, WINDOW, 0), ours):
                    raise SystemExit(f"np.add.at disagrees with bin_window on {kind} events at {sensor}")
                methods["tonic"] = lambda: to_frame(tonic_events)
                methods["numpy"] = lambda: numpy_add_at(events, sensor, WINDOW, 0)
            if clock == "cpu":  # CPU time says nothing of a speed-up from threads
                del methods["threads"]
            seconds = race(methods, repeats, clock)
            row = [f"{n / 1e6:.2f} M {kind}", f"{sensor[0]}x{sensor[1]} -> {model[0]}x{model[1]}"]
            row += [f"{n / seconds[name] / 1e6:.0f}" if name in seconds else "n/a" for name in ("fresh", "out", "threads", "streaming")]
            if sensor == model:
                row += [f"{n / seconds[name] / 1e6:.1f}" for name in ("tonic", "numpy")]
                row += [f"{seconds['tonic'] / seconds[name]:.1f}x" if name in seconds else "n/a" for name in ("fresh", "out", "threads")]
                row += [f"{seconds['numpy'] / seconds['fresh']:.1f}x"]
            else:
                row += ["n/a (no resize)", "n/a", "", "", "", ""]
            print("| " + " | ".join(row) + " |", flush=True)


def emission_table(repeats: int) -> None:
    print("\n### Emitting one window, T=16, 128x128 (1 M events/s stream, stride = 1 bin = 10 ms)\n")
    spec = WindowSpec(16, 10_000, 10_000)
    mapping = SensorMapping.create((128, 128), (128, 128))
    events = random_events(400_000, (128, 128), 400_000)
    binner = StreamingBinner(mapping, spec)
    binner.push(events[events["t"] < 200_000], now_us=200_000)
    strides = [events[(events["t"] >= s) & (events["t"] < s + spec.stride_us)] for s in range(200_000, 400_000, spec.stride_us)]
    per_push = []
    for index, chunk in enumerate(strides):  # each push: 10 k events + one window emitted
        started = time.perf_counter()
        (window,) = binner.push(chunk, now_us=200_000 + (index + 1) * spec.stride_us)
        per_push.append(time.perf_counter() - started)
    empty_push = []
    now = 400_000
    for _ in range(repeats * 20):  # each push: no events, one window emitted (pure emission cost)
        now += spec.stride_us
        started = time.perf_counter()
        binner.push(empty_events(), now_us=now)
        empty_push.append(time.perf_counter() - started)
    window_events = events[(events["t"] >= 240_000) & (events["t"] < 400_000)]
    rebin = best_of(lambda: bin_window(window_events, mapping, spec, 240_000), repeats)
    print("| operation | median ms | ratio vs re-binning the window |")
    print("|---|---|---|")
    for name, seconds in (
        ("push(10 k events) + emit one window", float(np.median(per_push))),
        ("push(empty, now_us) = emit one window only", float(np.median(empty_push))),
        (f"peer: bin_window of the whole window ({len(window_events) // 1000} k events)", rebin),
    ):
        print(f"| {name} | {seconds * 1e3:.3f} | {rebin / seconds:.1f}x faster |")


def cold_start_table() -> None:
    print("\n### Cold start (fresh Python process: import stream.binning + warmup())\n")
    code = (
        "import time; t0 = time.perf_counter(); import numba; t1 = time.perf_counter();"
        "import stream.binning as b; b.warmup(); t2 = time.perf_counter();"
        "print(t1 - t0, t2 - t1)"
    )
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(root)}
        runs = []
        for _ in range(2):  # first: empty cache (compiles), second: loads the cache just written
            result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=root)
            runs.append([float(v) for v in result.stdout.split()])
    print("| case | import numba s | import stream.binning + warmup() s | ratio |")
    print("|---|---|---|---|")
    print(f"| no Numba cache (compile) | {runs[0][0]:.2f} | {runs[0][1]:.2f} | 1.0x |")
    print(f"| Numba cache present | {runs[1][0]:.2f} | {runs[1][1]:.2f} | {runs[0][1] / runs[1][1]:.1f}x faster |")


def burst_table(repeats: int) -> None:
    count = 5_000_000
    threads = default_threads()
    print(f"\n### Burst: one chunk of {count / 1e6:g} M events spanning 100 ms (50 M events/s), 640x480 -> 128x128, "
          "T=16 x 10 ms, stride 10 ms\n")  # fmt: skip
    spec = WindowSpec(16, 10_000, 10_000)
    mapping = SensorMapping.create((640, 480), (128, 128))
    events = random_events(count, (640, 480), 100_000, seed=1)
    warm = events[events["t"] < 1]

    def push(emit: str, threads: int) -> int:
        binner = StreamingBinner(mapping, spec, threads=threads)
        binner.push(warm)
        return len(binner.push(events[len(warm) :], now_us=100_000, emit=emit))

    print("| mode | threads | windows returned | s | M events/s | x real time (50 M events/s) |")
    print("|---|---|---|---|---|---|")
    for emit in ("all", "latest"):
        for used in sorted({1, threads}):
            windows = push(emit, used)
            seconds = best_of(lambda: push(emit, used), repeats)
            print(f"| emit={emit} | {used} | {windows} | {seconds:.3f} | {count / seconds / 1e6:.0f} | {0.1 / seconds:.1f}x |")
    for used in sorted({1, threads}):
        seconds = best_of(lambda: bin_window(events, mapping, WindowSpec(10, 10_000, 10_000), 0, threads=used), repeats)
        print(f"| bin_window (10 bins, offline) | {used} | 1 | {seconds:.3f} | {count / seconds / 1e6:.0f} | {0.1 / seconds:.1f}x |")


def real_recording_table(repeats: int) -> None:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "davis346_street.aedat4"
    if not path.is_file():
        print(f"\n(real recording {path} absent: skipped)")
        return
    from stream.formats import read_events

    events, sensor = read_events(path)
    duration = int(events["t"][-1] - events["t"][0])
    bin_us = max(1, duration // 16)
    spec = WindowSpec(16, bin_us, bin_us)
    mapping = SensorMapping.create(sensor, (128, 128))
    start = int(events["t"][0])
    ours = best_of(lambda: bin_window(events, mapping, spec, start), repeats)
    identity = SensorMapping.create(sensor, sensor)
    ours_identity = best_of(lambda: bin_window(events, identity, spec, start), repeats)
    numpy_s = best_of(lambda: numpy_add_at(events, sensor, spec, start), max(1, repeats // 2))
    count = len(events)
    print(f"\n### Real DAVIS346 recording ({count / 1e6:.2f} M events, {duration / 1e6:.1f} s), M events/s\n")
    print("| bin_window 346x260 -> 128x128 | bin_window 346x260 identity | np.add.at identity | ratio (identity) |")
    print("|---|---|---|---|")
    print(f"| {count / ours / 1e6:.1f} | {count / ours_identity / 1e6:.1f} | {count / numpy_s / 1e6:.1f} | {numpy_s / ours_identity:.0f}x |")


def filters_table(repeats: int) -> None:
    count = 1_000_000
    events = random_events(count, (346, 260), 100_000, seed=2)
    print(f"\n### Noise filters, {count / 1e6:g} M events, 346x260, M events/s (peer: bin_window on the same events)\n")
    peer = best_of(lambda: bin_window(events, SensorMapping.create((346, 260), (128, 128)), WindowSpec(10, 10_000, 10_000), 0), repeats)
    print("| stage | M events/s | time vs bin_window |")
    print("|---|---|---|")
    for name, make in (
        ("BackgroundActivityFilter(dt=1 ms)", lambda: BackgroundActivityFilter((346, 260), 1_000)),
        ("HotPixelFilter(period=10 ms)", lambda: HotPixelFilter((346, 260), period_us=10_000, max_events=100)),
        ("FlickerFilter(80-150 Hz)", lambda: FlickerFilter((346, 260), 80.0, 150.0)),
    ):
        seconds = best_of(lambda: make()(events), repeats)
        print(f"| {name} | {count / seconds / 1e6:.1f} | {seconds / peer:.1f}x |")
    print(f"| bin_window (peer) | {count / peer / 1e6:.1f} | 1.0x |")
    # the adaptive window re-estimates the noise every NOISE_BLOCK_US: the same count spread over 4 s (8 estimates)
    spread = random_events(count, (346, 260), 4_000_000, seed=3)
    fixed = best_of(lambda: BackgroundActivityFilter((346, 260), 1_000)(spread), repeats)
    adaptive = best_of(lambda: BackgroundActivityFilter((346, 260), 1_000, {"knee_hz": 1.0, "power": 1.6})(spread),
                       repeats)  # fmt: skip
    print(f"\nOver 4 s of events: BackgroundActivityFilter(dt=1 ms) {count / fixed / 1e6:.1f} M events/s, adaptive "
          f"(noise floor every 0.5 s) {count / adaptive / 1e6:.1f} M events/s ({adaptive / fixed:.2f}x the time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4_000_000, help="events per 0.8 s throughput window")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="throughput table: wall time, or CPU time (steadier on a busy machine; no thread speed-up)")  # fmt: skip
    parser.add_argument("--only", choices=["cold", "throughput", "emit", "burst", "real", "filters"], default=None,
                        help="run one table only")  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    warmup()
    print(f"# bench_binning ({os.cpu_count()} CPUs, default_threads() = {default_threads()}; "
          f"warmup() in this process: {time.perf_counter() - started:.2f} s)")  # fmt: skip
    tables = {
        "cold": cold_start_table,
        "throughput": lambda: throughput_table(args.events, args.repeats, args.clock),
        "emit": lambda: emission_table(args.repeats),
        "burst": lambda: burst_table(max(1, args.repeats // 2)),
        "real": lambda: real_recording_table(args.repeats),
        "filters": lambda: filters_table(args.repeats),
    }
    for name, table in tables.items():
        if args.only in (None, name):
            table()


if __name__ == "__main__":
    main()
