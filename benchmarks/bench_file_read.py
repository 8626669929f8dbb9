"""Event file throughput: the project's reader vs the raw `aedat`, faery, dv-processing, expelliarmus
and h5py readers, format by format, on the same file in the same run.

    python benchmarks/bench_file_read.py [--events 10000000] [--repeats 3] [--only aedat4|formats|mapping]

Writes a synthetic DAVIS346 recording (AEDAT4, LZ4 as DV writes it) in a temp folder, reads it
back through each reader (best of ``--repeats``), and prints markdown tables: M events/s and the
ratio to the fastest raw reader. Also the write throughput of the project's writers, and the real
recording from ../shared when it is present.

``formats``: the same 1280x720 events (a moving edge and noise at 10 M events/s) as Prophesee EVT 3.0,
EVT 2.0 and DAT (written by faery), HDF5 (uncompressed, h5py), and 346x260 events as jAER AEDAT 2.0:
the project's ``open_events`` (canonical chunks, order and sensor check) against faery's decoder,
expelliarmus (``Wizard.read``, the whole file at once) and h5py, with whether each peer returned the
same events. ``mapping``: what the checkpoint's mapping (1280x720 centre-cropped and area-downsampled
to 64x64) costs per event when binning those events, against binning events already at 64x64.
expelliarmus is the optional ``bench`` extra.
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

from stream.binning import SensorMapping, WindowSpec, bin_window
from stream.events import SensorSize, concatenate_events, make_events
from stream.formats import open_events
from stream.formats.aedat2 import write_aedat2
from stream.formats.aedat4 import Aedat4Writer
from stream.formats.aedat31 import write_aedat31

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "davis346_street.aedat4"
SENSOR = SensorSize(346, 260)
HD = SensorSize(1280, 720)
CHECKPOINT_INPUT = SensorSize(64, 64)  # the built-in checkpoint's input (inference/checkpoints)


def synthetic_events(count: int) -> np.ndarray:
    """Events of a moving edge plus noise (compresses roughly like real DVS data), 1 M events/s."""
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.integers(0, 3, count))
    edge_x = (t // 2000) % SENSOR.width
    x = np.where(rng.random(count) < 0.8, (edge_x + rng.integers(-2, 3, count)) % SENSOR.width, rng.integers(0, SENSOR.width, count))
    return make_events(t, x, rng.integers(0, SENSOR.height, count), rng.random(count) < 0.5)


def hd_events(count: int) -> np.ndarray:
    """1280x720 events at 10 M events/s (10 per µs): a moving edge (80 %) and noise, each
    microsecond's events in readout order (row, then column) as a Prophesee sensor sends them."""
    rng = np.random.default_rng(1)
    t = np.arange(count, dtype=np.int64) // 10
    edge_x = (t * HD.width // 700_000) % HD.width
    x = np.where(rng.random(count) < 0.8, (edge_x + rng.integers(-2, 3, count)) % HD.width, rng.integers(0, HD.width, count))
    y = rng.integers(0, HD.height, count)
    order = np.lexsort((x, y, t))
    return make_events(t[order], x[order], y[order], rng.random(count) < 0.5)


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


# --- the other formats (#18) -------------------------------------------------------------------------


def faery_write(path: Path, events: np.ndarray, sensor: SensorSize, version: str | None) -> Path:
    """``events`` as faery's own file writer writes them (.raw: EVT ``version``; .dat: DAT 2)."""
    packet = np.empty(len(events), dtype=faery.EVENTS_DTYPE)
    packet["t"], packet["x"], packet["y"], packet["on"] = events["t"], events["x"], events["y"], events["p"] == 1
    faery.events_stream_from_array(packet, tuple(sensor)).to_file(path, **({"version": version} if version else {}))
    return path


def collect_project(path: Path) -> np.ndarray:
    with open_events(path) as reader:
        return concatenate_events(list(reader))


def faery_decoder(path: Path, kind: str) -> Callable[[], int]:
    """faery's raw decoder of ``kind`` ("evt" or "dat"): packets counted, nothing converted."""
    if kind == "dat":
        def read() -> int:
            with faery.dat.Decoder(path, None, None) as decoder:
                return sum(len(packet) for packet in decoder)
    else:
        def read() -> int:
            with faery.evt.Decoder(path, None, None) as decoder:
                return sum(len(packet["events"]) for packet in decoder if "events" in packet)
    return read


def faery_events(path: Path, kind: str) -> np.ndarray:
    decoder = faery.dat.Decoder(path, None, None) if kind == "dat" else faery.evt.Decoder(path, None, None)
    with decoder as packets:
        chunks = [packet if kind == "dat" else packet["events"] for packet in packets if kind == "dat" or "events" in packet]
    merged = np.concatenate(chunks)
    return make_events(merged["t"], merged["x"], merged["y"], (merged["payload"] if kind == "dat" else merged["on"]) != 0)


def expelliarmus_read(path: Path, encoding: str) -> np.ndarray:
    from expelliarmus import Wizard

    return Wizard(encoding=encoding, fpath=path).read()


def same(events: np.ndarray, other: np.ndarray) -> str:
    """"yes", or what differs ("count", "t: 12 events", ...)."""
    if len(events) != len(other):
        return f"no: {len(other):,} events"
    wrong = [f"{name}: {int(np.count_nonzero(events[name] != other[name].astype(np.int64))):,} events"
             for name in ("t", "x", "y", "p") if np.any(events[name] != other[name].astype(np.int64))]
    return "yes" if not wrong else "no, " + ", ".join(wrong)


def format_rows(folder: Path, count: int, repeats: int) -> None:
    """One row per format: the project against each peer on the same file."""
    events = hd_events(count)
    davis = synthetic_events(count)
    files = {
        "EVT 3.0": (faery_write(folder / "hd3.raw", events, HD, "evt3"), events, "evt3", "evt"),
        "EVT 2.0": (faery_write(folder / "hd2.raw", events, HD, "evt2"), events, "evt2", "evt"),
        "DAT": (faery_write(folder / "hd.dat", events, HD, None), events, "dat", "dat"),
        "AEDAT 2.0 (DAVIS)": (folder / "davis.aedat", davis, None, None),
    }
    write_aedat2(files["AEDAT 2.0 (DAVIS)"][0], davis, SENSOR)
    try:
        from stream.formats.hdf5 import write_hdf5

        write_hdf5(folder / "hd.hdf5", events, HD, compression=None)
        files["HDF5 (no ECF)"] = (folder / "hd.hdf5", events, None, "h5py")
    except ImportError:
        print("\n(h5py absent: no HDF5 row)")
    print(f"\n### Formats: {count:,} events, best of {repeats}, M events/s (ratio to the fastest peer)\n")
    print("| format | file MiB | project `open_events` | faery decoder | expelliarmus `read` | h5py `dataset[:]` | project / fastest peer | peers return the same events |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, (path, truth, encoding, kind) in files.items():
        ours_rate, ours_count = best_rate(lambda path=path: read_project(path), repeats)
        assert ours_count == len(truth), (name, ours_count)
        assert np.array_equal(collect_project(path), truth), name  # the project's reader is exact
        peers: dict[str, float] = {}
        agree = []
        if kind in ("evt", "dat"):
            peers["faery"] = best_rate(faery_decoder(path, kind), repeats)[0]
            agree.append("faery " + same(truth, faery_events(path, kind)))
        if encoding is not None:
            try:
                peers["expelliarmus"] = best_rate(lambda path=path, encoding=encoding: len(expelliarmus_read(path, encoding)), repeats)[0]
                agree.append("expelliarmus " + same(truth, _expelliarmus_absolute(path, encoding)))
            except ImportError:
                agree.append("expelliarmus absent")
        if kind == "h5py":
            import h5py

            def h5py_read(path: Path = path) -> int:
                with h5py.File(path, "r") as file:
                    return len(file["CD/events"][:])

            peers["h5py"] = best_rate(h5py_read, repeats)[0]
            agree.append("h5py yes (same records)")
        fastest = max(peers.values()) if peers else None
        cells = [f"{peers[peer] / 1e6:.1f}" if peer in peers else "-" for peer in ("faery", "expelliarmus", "h5py")]
        ratio = f"{ours_rate / fastest:.2f}" if fastest else "no peer"
        print(f"| {name} | {path.stat().st_size / 2**20:.1f} | {ours_rate / 1e6:.1f} | {' | '.join(cells)} | {ratio} | {'; '.join(agree) or '-'} |")


def _expelliarmus_absolute(path: Path, encoding: str) -> np.ndarray:
    """expelliarmus' events with faery's '% t0' header offset added back (expelliarmus ignores it)."""
    from stream.formats.prophesee import read_header

    events = expelliarmus_read(path, encoding)
    out = make_events(events["t"], events["x"], events["y"], events["p"])
    out["t"] += read_header(path).t0(path)
    return out


def mapping_rows(count: int, repeats: int) -> None:
    """The checkpoint's mapping at 1280x720: binning the events through it vs events already at 64x64."""
    events = hd_events(count)
    window = WindowSpec(16, 50_000, 50_000)
    window_events = events[events["t"] < window.window_us]  # 0.8 s at 10 M events/s = 8 M events
    mapping = SensorMapping.create(HD, CHECKPOINT_INPUT)
    small = window_events.copy()  # the same events on a 64x64 sensor: identity mapping, no crop
    small["x"] = (window_events["x"].astype(np.int64) * 64) // HD.width
    small["y"] = (window_events["y"].astype(np.int64) * 64) // HD.height
    identity = SensorMapping.create(CHECKPOINT_INPUT, CHECKPOINT_INPUT)
    out = np.zeros((16, 2, 64, 64), dtype=np.float32)
    rows = {}
    mapped_name, identity_name = "1280x720 -> 64x64 (centre crop to 720x720, area)", "64x64 identity (no mapping)"
    for name, batch, chosen in ((mapped_name, window_events, mapping), (identity_name, small, identity)):
        for threads in (1, None):
            seconds = min(_timed(lambda: bin_window(batch, chosen, window, 0, out=out, threads=threads)) for _ in range(repeats))
            rows[(name, threads)] = seconds
    n = len(window_events)
    print(f"\n### The checkpoint's mapping at 1280x720 ({n / 1e6:.1f} M events in one 0.8 s window = 10 M events/s), best of {repeats}\n")
    print("| binning | threads | ns/event | M events/s | CPU share of real time at 10 M events/s |")
    print("|---|---:|---:|---:|---:|")
    for (name, threads), seconds in rows.items():
        per_event = seconds / n * 1e9
        print(f"| {name} | {threads or 'all'} | {per_event:.1f} | {n / seconds / 1e6:.0f} | {per_event * 1e7 / 1e9 * 100:.0f} % |")
    for threads in (1, None):
        extra = (rows[(mapped_name, threads)] - rows[(identity_name, threads)]) / n * 1e9
        print(f"\nMapping's own cost ({threads or 'all'} threads): {extra:+.1f} ns/event ({extra * 1e7 / 1e9 * 100:+.0f} % of one core at 10 M events/s)")


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("aedat4", "formats", "mapping"), default=None)
    args = parser.parse_args()
    if args.only in (None, "formats", "mapping"):
        with tempfile.TemporaryDirectory() as folder:
            if args.only != "mapping":
                format_rows(Path(folder), args.events, args.repeats)
            if args.only != "formats":
                mapping_rows(args.events, args.repeats)
        if args.only is not None:
            return
    aedat4_tables(args)


def aedat4_tables(args: argparse.Namespace) -> None:
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
