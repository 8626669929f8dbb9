"""The event tools of the command line: ``info``, ``convert``, ``frames``, ``simulate``, ``keys``.

Each ``*_main(argv)`` takes the arguments after the command name and returns the exit code; they
run as ``spikeformer-live COMMAND`` or ``python -m stream COMMAND`` (``stream.__main__``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from stream.binning import MAPPING_METHODS, SensorMapping, WindowSpec, bin_window
from stream.events import EventFormatError, SensorSize
from stream.formats import FORMATS, OUTPUT_FORMATS, add_format_options, convert, file_info, open_events
from stream.sim.scene import BUILT_IN_LOOKS, DEFAULT_SENSOR, LIGHTINGS, LOOKS
from stream.sim.recording import DEFAULT_GESTURE_US, DEFAULT_IDLE_US, NUM_CLASSES
from stream.sources.base import parse_speed
from stream.stage import ArgumentParser, comma_names, speed_argument, value_or_range


def info_main(argv: Sequence[str] | None = None) -> int:
    """``info PATH [--json] [--allow-truncated]``: what a recording holds."""
    parser = ArgumentParser(prog="spikeformer-live info", description="What an event file holds: format, camera, sensor, events, time range.")
    parser.add_argument("path")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--allow-truncated", action="store_true", help="use every complete packet of a damaged file")
    add_format_options(parser)
    args = parser.parse_args(argv)
    info = file_info(args.path, allow_truncated=args.allow_truncated, format=args.file_format, sensor_size=args.file_sensor)
    print(json.dumps(info) if args.json else _format_info(info))
    return 0


def convert_main(argv: Sequence[str] | None = None) -> int:
    """``convert IN OUT [--allow-truncated] [--format NAME] [--sensor WxH]``: the output format
    comes from OUT's extension; a progress bar on a terminal."""
    parser = ArgumentParser(prog="spikeformer-live convert", description=(
        f"Convert an event file (any of {', '.join(FORMATS)}) to {', '.join(sorted(OUTPUT_FORMATS))} "
        "(.raw: Prophesee EVT 3.0)."))  # fmt: skip
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--allow-truncated", action="store_true", help="use every complete packet of a damaged file")
    add_format_options(parser)
    args = parser.parse_args(argv)
    with _ConvertProgress(Path(args.source)) as progress:
        result = convert(args.source, args.target, allow_truncated=args.allow_truncated, format=args.file_format,
                         sensor_size=args.file_sensor, on_chunk=progress.update)  # fmt: skip
    print(f"wrote {result['events']} events to {args.target} ({result['format']})")
    if result["damage"]:
        print(f"warning: input damaged, stopped early: {result['damage']}", file=sys.stderr)
    return 0


def _format_info(info: dict) -> str:
    lines = [
        f"path:       {info['path']}",
        f"format:     {info['format']}",
        f"camera:     {info['camera'] or '(not named)'}",
        f"sensor:     {info['width']}x{info['height']} pixels (from {info['sensor_from']})",
        f"events:     {info['events']}",
    ]
    if info["events"]:
        lines += [
            f"time:       {info['t_start_us']} .. {info['t_end_us']} µs",
            f"duration:   {info['duration_s']:.6f} s",
            f"event rate: {info['event_rate'] / 1e6:.3f} M events/s",
        ]
    if info["skipped"]:
        lines.append("skipped:    " + ", ".join(f"{count} {name}" for name, count in info["skipped"].items()))
    if info["clamped"]:
        lines.append(f"clamped:    {info['clamped']} events stamped before the event before them (given its time)")
    if info["damage"]:
        lines.append(f"damage:     {info['damage']}")
    return "\n".join(lines)


class _ConvertProgress:
    """A tqdm bar over the input's bytes (events where the reader cannot tell its position), on a
    terminal only (``disable=None``). A context manager; ``update`` is ``convert``'s ``on_chunk``."""

    def __init__(self, source: Path) -> None:
        self.size = source.stat().st_size if source.is_file() else None
        self.bar = None
        self.events = 0

    def update(self, reader, chunk: np.ndarray) -> None:  # noqa: ANN001 - an EventFileReader
        from tqdm import tqdm

        self.events += len(chunk)
        position = reader.position_bytes
        if self.bar is None:
            by_bytes = position is not None and self.size is not None
            self.bar = tqdm(total=self.size if by_bytes else None, unit="B" if by_bytes else " events", unit_scale=True,
                            desc="converting", leave=False, disable=None)  # fmt: skip
        if self.bar.total is not None:
            self.bar.update(position - self.bar.n)
        else:
            self.bar.update(len(chunk))
        self.bar.set_postfix_str(f"{self.events} events", refresh=False)

    def __enter__(self) -> "_ConvertProgress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


def frames_main(argv: Sequence[str] | None = None) -> int:
    """``python -m stream frames IN --bins T --bin-us B [--start-us S] [--size WxH] [--flip-x]
    [--flip-y] [--method area|nearest] --out frames.npy``: write one window as ``[T, 2, H, W]``
    float32. ``--start-us`` defaults to the first event's timestamp; ``--size`` to the sensor's."""
    parser = ArgumentParser(prog="spikeformer-live frames", description="Bin one window of a recording into frames.")
    parser.add_argument("input", help="event file (any format stream.formats reads)")
    parser.add_argument("--bins", type=int, required=True, help="number of time bins T")
    parser.add_argument("--bin-us", type=int, required=True, help="bin duration in microseconds")
    parser.add_argument("--start-us", type=int, default=None, help="window start in µs (default: first event)")
    parser.add_argument("--size", type=SensorSize.parse, default=None, help="model input WxH (default: sensor size)")
    parser.add_argument("--method", choices=MAPPING_METHODS, default="area")
    parser.add_argument("--flip-x", action="store_true")
    parser.add_argument("--flip-y", action="store_true")
    parser.add_argument("--out", required=True, help="output .npy path")
    add_format_options(parser)
    args = parser.parse_args(argv)
    spec = WindowSpec(args.bins, args.bin_us, args.bin_us)

    with open_events(args.input, format=args.file_format, sensor_size=args.file_sensor) as reader:
        mapping = SensorMapping.create(
            reader.sensor_size, args.size or reader.sensor_size,
            flip_x=args.flip_x, flip_y=args.flip_y, method=args.method,
        )  # fmt: skip
        frames = np.zeros((spec.bins, 2, mapping.input_size.height, mapping.input_size.width), dtype=np.float32)
        start_us = args.start_us
        scratch = np.empty_like(frames)
        first_us = last_us = None  # first event of the recording, last event read
        for chunk in reader:
            if len(chunk) == 0:
                continue
            first_us = int(chunk["t"][0]) if first_us is None else first_us
            last_us = int(chunk["t"][-1])
            if start_us is None:
                start_us = int(chunk["t"][0])
            if int(chunk["t"][0]) >= start_us + spec.window_us:
                break  # time-ordered: nothing later can fall in the window
            frames += bin_window(chunk, mapping, spec, start_us, out=scratch)
    if first_us is None:  # (then start_us may be None too)
        raise EventFormatError(f"{args.input}: holds no events")
    np.save(args.out, frames, allow_pickle=False)
    print(f"{args.out}: frames {tuple(frames.shape)} float32, {int(frames.sum())} events, "
          f"window [{start_us}, {start_us + spec.window_us}) µs")  # fmt: skip
    if start_us + spec.window_us <= first_us:
        print(f"note: the window ends before the recording's first event ({first_us} µs); --start-us is the "
              "recording's own timestamp, not an offset", file=sys.stderr)  # fmt: skip
    elif start_us > last_us:  # then every chunk was read: last_us is the recording's last event
        print(f"note: the window starts after the recording's last event ({last_us} µs)", file=sys.stderr)
    return 0


def simulate_main(argv: Sequence[str] | None = None) -> int:
    """``simulate --out DIR --samples N --seed S [--sensor WxH]`` (or ``--montage PNG``)."""
    parser = ArgumentParser(
        prog="spikeformer-live simulate",
        description="Write a synthetic DVS128-Gesture-style data set, or a PNG montage of the classes.",
    )
    parser.add_argument("--out", type=Path, help="output folder for the data set")
    parser.add_argument("--samples", type=int, default=NUM_CLASSES * 10, help="number of gesture samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sensor", type=SensorSize.parse, default=DEFAULT_SENSOR, help="WIDTHxHEIGHT pixels")
    parser.add_argument("--gesture-ms", type=int, default=DEFAULT_GESTURE_US // 1000)
    parser.add_argument("--idle-ms", type=int, default=DEFAULT_IDLE_US // 1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes (default: one per CPU; the data set is the same for any)")  # fmt: skip
    parser.add_argument("--looks", type=comma_names(LOOKS), default=BUILT_IN_LOOKS,
                        help=f"renderers, comma separated: {', '.join(LOOKS)} (default {','.join(BUILT_IN_LOOKS)})")
    parser.add_argument("--lightings", type=comma_names(tuple(LIGHTINGS)), default=tuple(LIGHTINGS),
                        help=f"lighting families, comma separated: {', '.join(LIGHTINGS)}")  # fmt: skip
    fixed = parser.add_argument_group("fix a scene parameter (VALUE: robustness measurements) or widen its range "
                                      "(LOW:HIGH: training sets)")
    fixed.add_argument("--zoom", type=value_or_range(positive=True, log=True), default=None,
                       help="the person's size as seen (1 = as drawn)")
    fixed.add_argument("--threshold", type=value_or_range(positive=True, log=True), default=None,
                       help="base contrast threshold (log)")
    fixed.add_argument("--noise-hz", type=value_or_range(positive=False, log=True), default=None,
                       help="background activity per pixel, events/s")
    fixed.add_argument("--flicker-depth", type=value_or_range(positive=False), default=None,
                       help="mains flicker depth (0: steady light; a range applies to the lights that flicker)")
    parser.add_argument("--montage", type=Path, help="write a PNG with one picture per class instead")
    parser.add_argument("--parameters", action="store_true", help="print every random parameter and its range")
    args = parser.parse_args(argv)
    if args.parameters:
        from stream.sim.scene import parameter_table

        print(parameter_table())
        return 0
    if args.montage is not None:
        from stream.sim.dataset import render_montage

        render_montage(args.montage, seed=args.seed, sensor_size=args.sensor)
        print(f"wrote {args.montage}")
        return 0
    if args.out is None:
        raise ValueError("give --out DIR (the data set folder) or --montage PNG")
    started = time.perf_counter()
    from stream.sim.dataset import write_dataset

    options = {name: getattr(args, name) for name in ("zoom", "threshold", "noise_hz", "flicker_depth")
               if getattr(args, name) is not None}  # fmt: skip
    with _FolderProgress(args.out, args.samples):
        paths = write_dataset(args.out, samples=args.samples, seed=args.seed, sensor_size=args.sensor,
                              gesture_us=args.gesture_ms * 1000, idle_us=args.idle_ms * 1000, workers=args.workers,
                              looks=args.looks, lightings=args.lightings, scene_options=options)  # fmt: skip
    test_count = len((args.out / "trials_to_test.txt").read_text().split())
    print(f"wrote {len(paths)} recordings ({args.samples} gestures, {test_count} test recordings) "
          f"to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


class _FolderProgress:
    """A tqdm bar of the gestures ``write_dataset`` has written: a thread counts the rows of the
    ``*_labels.csv`` files (each written after its recording) that appear in the folder, twice a
    second. On a terminal only (``disable=None``). A context manager."""

    POLL_S = 0.5

    def __init__(self, folder: Path, samples: int) -> None:
        import threading

        from tqdm import tqdm

        self.folder, self.samples = folder, samples
        self.before = {path: path.stat().st_mtime for path in folder.glob("*_labels.csv")} if folder.is_dir() else {}
        self.bar = tqdm(total=samples, unit=" gestures", desc="simulating", leave=False, disable=None)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="simulate-progress", daemon=True)

    def _count(self) -> int:
        total = 0
        for path in self.folder.glob("*_labels.csv"):
            try:
                if self.before.get(path) != path.stat().st_mtime:
                    total += max(0, len(path.read_text().splitlines()) - 1)  # a header line, then a row per gesture
            except OSError:  # being written
                continue
        return min(total, self.samples)

    def _watch(self) -> None:
        while not self.done.wait(self.POLL_S):
            self.bar.update(self._count() - self.bar.n)

    def __enter__(self) -> "_FolderProgress":
        if not self.bar.disable:
            self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        self.bar.close()


def record_main(argv: Sequence[str] | None = None) -> int:
    """``record --out DIR [--source SPEC] [--classes A,B,...] [--takes N] [--take-s S] [--pause-s S]``."""
    from stream.classes import GESTURE_CLASSES
    from stream.sources import open_source
    from stream.takes import TakeFolder, TakePlan, TakeRecorder, record_takes

    parser = ArgumentParser(prog="spikeformer-live record", description="Guided recording of labelled takes: "
                            "'perform <class> in 3, 2, 1', then the take is written (AEDAT4 + labels.csv).")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="the session folder (continued if it exists)")
    parser.add_argument("--source", default="sim", help="camera[:SERIAL] | dv:HOST:PORT | sim (directed simulator)")
    parser.add_argument("--classes", default=",".join(GESTURE_CLASSES), help="comma-separated class names "
                        "(default: the 11 DVS128 Gesture classes)")  # fmt: skip
    parser.add_argument("--takes", type=int, default=2, help="takes per class")
    parser.add_argument("--take-s", type=float, default=3.0, help="length of a take, seconds")
    parser.add_argument("--pause-s", type=float, default=2.0, help="pause between takes, seconds")
    parser.add_argument("--countdown", type=int, default=3, help="seconds of countdown before each take")
    parser.add_argument("--test-every", type=int, default=2, help="every n-th take of a class is a test take (0: none)")
    simulator = parser.add_argument_group("simulator (--source sim)")
    simulator.add_argument("--sim-gestures", default="", help="what the simulated person does for your own class "
                           "names: NAME=INDEX (a DVS128 Gesture class) or NAME=none (stands still), comma separated")
    simulator.add_argument("--seed", type=int, default=0)
    simulator.add_argument("--look", choices=LOOKS, default=None, help="the simulated person's renderer")
    simulator.add_argument("--lighting", choices=tuple(LIGHTINGS), default=None)
    simulator.add_argument("--speed", type=speed_argument, default="1", help="simulator pace (max: no waiting)")
    args = parser.parse_args(argv)
    plan = TakePlan(tuple(name.strip() for name in args.classes.split(",")), args.takes, args.take_s, args.pause_s,
                    args.countdown, args.test_every)  # fmt: skip
    folder = TakeFolder(args.out)
    if args.source.partition(":")[0] == "sim":
        gestures = _sim_gestures(plan.classes, args.sim_gestures)
        source = open_source("sim:directed", seed=args.seed, look=args.look, lighting=args.lighting,
                             speed=parse_speed(args.speed))  # fmt: skip

        def on_cue(name: str, start_us: int, end_us: int) -> None:
            if gestures[name] is not None:
                source.perform(gestures[name], start_us, end_us)
    else:
        source, on_cue = open_source(args.source), None
    with source:
        recorder = TakeRecorder(plan, folder, SensorSize(*source.sensor_size), on_prompt=lambda text: print(text, flush=True),
                                on_cue=on_cue)  # fmt: skip
        try:
            takes = record_takes(source, recorder)
        finally:
            recorder.close()
    print(f"{len(takes)} takes written to {folder.folder} ({folder.labels_path.name}: {len(folder.rows)} takes in all); "
          f"fine-tune with: spikeformer-live finetune --data folder:{folder.labels_path} --out RUN")  # fmt: skip
    return 0


def _sim_gestures(classes: Sequence[str], text: str) -> dict[str, int | None]:
    """Class name -> the DVS128 Gesture class the simulated person performs (None: stands still)."""
    from stream.classes import GESTURE_CLASSES

    known = {name: index for index, name in enumerate(GESTURE_CLASSES)}
    given: dict[str, int | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if value == "none":
            given[name] = None
        elif value.isdigit() and int(value) < len(GESTURE_CLASSES):
            given[name] = int(value)
        else:
            raise ValueError(f"--sim-gestures: expected NAME=INDEX (0..{len(GESTURE_CLASSES) - 1}) or NAME=none, got {item!r}")
    mapping = {}
    for name in classes:
        if name not in given and name not in known:
            raise ValueError(f"the simulator does not know the gesture {name!r}: map it with --sim-gestures {name}=INDEX")
        mapping[name] = given.get(name, known.get(name))
    return mapping


def keys_main(argv: Sequence[str] | None = None) -> int:
    """``keys generate DIR [--name NAME]`` or ``keys list DIR [--json]``."""
    parser = ArgumentParser(prog="spikeformer-live keys", description="CurveZMQ key pairs for remote stages.")
    commands = parser.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    generate = commands.add_parser("generate", help="write a new key pair")
    generate.add_argument("directory")
    generate.add_argument("--name", default="spikeformer", help="file name stem (default: spikeformer)")
    listing = commands.add_parser("list", help="show the keys of a directory")
    listing.add_argument("directory")
    listing.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args(argv)
    from stream.transport.keys import generate_keys, list_keys, public_key  # pyzmq: only this command needs it

    if args.action == "generate":
        public_path, secret_path = generate_keys(args.directory, args.name)
        print(f"public key {public_key(public_path)}")
        print(f"wrote {public_path} (give it to the peers that must trust this key)")
        print(f"wrote {secret_path} (mode 600; keep it on this machine)")
        return 0
    rows = list_keys(args.directory)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no keys in {args.directory}", file=sys.stderr)
        return 0
    for row in rows:
        kind = "secret" if row["secret"] else "public"
        print(f"{row['name']:<20} {kind:<6} {row['public_key'] or '-':<40} {row['file']}"
              + (f"  ({row['problem']})" if row["problem"] else ""))  # fmt: skip
    return 0
