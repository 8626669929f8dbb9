"""Event file throughput: the project's reader vs the raw `aedat`, faery and dv-processing readers.

    python benchmarks/bench_file_read.py [--events 10000000] [--repeats 3]

Writes a synthetic DAVIS346 recording (AEDAT4, LZ4 as DV writes it) in a temp folder, reads it
back through each reader (best of ``--repeats``), and prints markdown tables: M events/s and the
ratio to the fastest raw reader. Also the write throughput of the project's writers, and the real
recording from ../shared when it is present.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import aedat
import dv_processing as dv
import faery
import numpy as np

from stream.events import SensorSize, make_events
from stream.formats import open_events
from stream.formats.aedat4 import Aedat4Writer
from stream.formats.aedat31 import write_aedat31

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "davis346_street.aedat4"
SENSOR = SensorSize(346, 260)


def synthetic_events(count: int) -> np.ndarray:
    """Events of a moving edge plus noise (compresses roughly like real DVS data), 1 M events/s."""
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.integers(0, 3, count))
    edge_x = (t // 2000) % SENSOR.width
    x = np.where(rng.random(count) < 0.8, (edge_x + rng.integers(-2, 3, count)) % SENSOR.width, rng.integers(0, SENSOR.width, count))
    return make_events(t, x, rng.integers(0, SENSOR.height, count), rng.random(count) < 0.5)


def read_project(path: Path) -> int:
    with open_events(path) as reader:
        return sum(len(chunk) for chunk in reader)


def read_aedat_package(path: Path) -> int:
    return sum(len(packet["events"]) for packet in aedat.Decoder(path) if packet["stream_id"] == 0 and "events" in packet)


def read_faery(path: Path) -> int:
    with faery.aedat.Decoder(path) as decoder:
        return sum(len(packet) for track, packet in decoder if track.id == 0)


def read_dv(path: Path) -> int:
    recording = dv.io.MonoCameraRecording(str(path))
    count = 0
    while (batch := recording.getNextEventBatch()) is not None:
        count += len(batch.numpy())
    return count


def best_rate(function: Callable[[], int], repeats: int) -> tuple[float, int]:
    """(best events per second, events) over ``repeats`` runs."""
    best = float("inf")
    count = 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = function()
        best = min(best, time.perf_counter() - start)
    return count / best, count


def read_table(path: Path, repeats: int) -> None:
    raw = {
        "`aedat` package (raw packets)": read_aedat_package,
        "faery `aedat.Decoder` (raw packets)": read_faery,
        "dv-processing `MonoCameraRecording`": read_dv,
    }
    rates = {name: best_rate(lambda reader=reader: reader(path), repeats) for name, reader in raw.items()}
    project_rate, project_count = best_rate(lambda: read_project(path), repeats)
    fastest = max(rate for rate, _ in rates.values())
    print(f"\nRead `{path.name}` ({project_count:,} events, {path.stat().st_size / 2**20:.1f} MiB), best of {repeats}\n")
    print("| reader | M events/s | vs fastest raw |")
    print("|---|---:|---:|")
    print(f"| project `open_events` (canonical chunks, order check) | {project_rate / 1e6:.1f} | {project_rate / fastest:.2f} |")
    for name, (rate, count) in rates.items():
        assert count == project_count, (name, count, project_count)
        print(f"| {name} | {rate / 1e6:.1f} | {rate / fastest:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    events = synthetic_events(args.events)
    with tempfile.TemporaryDirectory() as folder:
        folder_path = Path(folder)
        writes = {}
        for name, compression in (("AEDAT4 LZ4", "lz4"), ("AEDAT4 uncompressed", None)):
            path = folder_path / f"bench_{compression}.aedat4"
            start = time.perf_counter()
            with Aedat4Writer(path, SENSOR, "bench", compression=compression) as writer:
                for offset in range(0, len(events), 1 << 18):  # as a live recorder would: chunk by chunk
                    writer.write(events[offset : offset + (1 << 18)])
            writes[f"`Aedat4Writer` {name}"] = (len(events) / (time.perf_counter() - start), path)
        path31 = folder_path / "bench.aedat"
        start = time.perf_counter()
        write_aedat31(path31, events, SENSOR)
        writes["`write_aedat31`"] = (len(events) / (time.perf_counter() - start), path31)

        print(f"Write {len(events):,} synthetic DAVIS346 events\n")
        print("| writer | M events/s | bytes/event |")
        print("|---|---:|---:|")
        for name, (rate, path) in writes.items():
            print(f"| {name} | {rate / 1e6:.1f} | {path.stat().st_size / len(events):.2f} |")

        read_table(writes["`Aedat4Writer` AEDAT4 LZ4"][1], args.repeats)
        read_table(writes["`Aedat4Writer` AEDAT4 uncompressed"][1], args.repeats)
        rate31, _ = best_rate(lambda: read_project(path31), args.repeats)
        print(f"\nProject reader on the same events as AEDAT 3.1 (no peer reader: tonic's is broken): {rate31 / 1e6:.1f} M events/s")
    if REAL.is_file():
        read_table(REAL, args.repeats)


if __name__ == "__main__":
    main()
