"""End-to-end pipeline latency against input event rate, and the highest rate sustained without loss.

    python benchmarks/bench_pipeline.py [--checkpoint CK] [--backend onnxruntime] [--rates 1,5,10,20,50]
                                        [--seconds 4]

For each target rate (M events/s) it runs the real stages (``python -m stream.source_stage`` with the
simulator at real-time speed, its events replicated ``--rate-scale`` times to reach the rate, and
``python -m inference.worker_stage``) joined by ipc sockets, records the worker's output in this process
(``inference.headless.record``) for ``--seconds`` after the first message, and prints one markdown
row (the README's format):

* target and achieved rate (events received by the worker per second; ratio to the target: the
  simulator's own rate varies 40-100k events/s by gesture, so the replication factor only
  approximates the target);
* compute latency p50/p99 (window closed at the worker -> prediction published) and end-to-end
  p50/p99 (source sent the message completing the window -> prediction received here; same-machine
  monotonic clock), ms;
* windows inferred / skipped, events lost (ZeroMQ high-water mark overflow) / dropped (lost +
  invalid);
* CPU of each stage over the measured seconds (% of one core, from ``/proc/PID/stat``; n/a
  elsewhere) and where the worker's busy time went (``busy_s`` of its stats: binning / inference,
  % of its busy time): this is how to tell which stage limits a rate;
* "sustained": no event lost or dropped, no stage failure, and achieved >= 90 % of the target.

Timings on a machine shared with other jobs swing 2-3x between runs: re-run on a quiet machine
for the figures that go into the README.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.headless import record  # noqa: E402
from launch import DEFAULT_CHECKPOINT, Stage, Supervisor  # noqa: E402
from stream.sim.recording import TYPICAL_RATE_EVENTS_S  # noqa: E402

SUSTAINED_FRACTION = 0.9


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its threads (None where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of the supervisor's stages between ``start()`` and ``stop()``."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.start_cpu: dict[str, float | None] = {}
        self.used: dict[str, float | None] = {}

    def start(self) -> None:
        self.start_cpu = {name: cpu_seconds(pid) for name, pid in self.supervisor.pids().items()}

    def stop(self) -> None:
        for name, pid in self.supervisor.pids().items():
            now, then = cpu_seconds(pid), self.start_cpu.get(name)
            self.used[name] = None if now is None or then is None else now - then


def run_rate(target: float, args: argparse.Namespace, directory: str) -> dict:
    """Run source + worker at ``target`` events/s; the headless report plus ``cpu_percent``."""
    events_endpoint, predictions_endpoint = f"ipc://{directory}/ev-{target:g}", f"ipc://{directory}/pr-{target:g}"
    scale = max(1, round(target / TYPICAL_RATE_EVENTS_S))
    source = Stage("source", "stream.source_stage", [
        "--source", "sim", "--pub", events_endpoint, "--speed", "1", "--rate-scale", str(scale),
        "--wait-subscribers", "1", "--quiet", "--seed", "1",
    ])  # fmt: skip
    worker = Stage("worker", "inference.worker_stage", [
        "--sub", events_endpoint, "--pub", predictions_endpoint, "--checkpoint", str(args.checkpoint),
        "--backend", args.backend, "--wait-subscribers", "1",
    ])  # fmt: skip
    supervisor = Supervisor([worker, source])
    meter = CpuMeter(supervisor)
    try:
        recorder, wall_s, failures = record(
            predictions_endpoint, supervisor=supervisor, duration_s=args.seconds, quiet=True,
            on_ready=supervisor.start, on_first_message=meter.start,
        )  # fmt: skip
        meter.stop()
    finally:
        supervisor.stop()
    report = recorder.report(str(args.checkpoint), wall_s)
    report["target_rate"] = target
    report["failures"] = failures
    active_s = report["event_rate"] and report["events_in"] / report["event_rate"]
    report["cpu_percent"] = {
        name: None if used is None or not active_s else round(100 * used / active_s) for name, used in meter.used.items()
    }
    return report


def format_row(report: dict) -> tuple[str, bool, float]:
    """The markdown row of one rate, whether it was sustained, and the achieved rate (events/s)."""
    target = report["target_rate"]
    achieved = report["event_rate"] or 0.0
    compute, e2e = report["latency_ms"], report["e2e_latency_ms"]
    lost, dropped = report["events_lost"], report["events_dropped"]
    sustained = not report["failures"] and dropped == 0 and lost == 0 and achieved >= SUSTAINED_FRACTION * target
    cpu = report["cpu_percent"]
    busy = (report.get("worker_busy_s") or {})
    busy_total = sum(busy.values())
    split = (f" ({100 * busy.get('bin', 0) / busy_total:.0f} / {100 * busy.get('infer', 0) / busy_total:.0f})"
             if busy_total else "")  # fmt: skip
    failures = f" ({'; '.join(report['failures'])})" if report["failures"] else ""
    row = (
        f"| {target / 1e6:g} | {achieved / 1e6:.2f} ({achieved / target:.2f}) "
        f"| {compute['p50']} / {compute['p99']} | {e2e['p50']} / {e2e['p99']} "
        f"| {report['windows']} / {report['windows_skipped']} | {lost} / {dropped} "
        f"| {cpu.get('source', 'n/a')} | {cpu.get('worker', 'n/a')}{split} "
        f"| {'yes' if sustained else 'no'}{failures} |"
    )
    return row, sustained, achieved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--rates", default="1,5,10,20,50", help="target rates, M events/s")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per rate")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        print(f"error: checkpoint {args.checkpoint} not found (pass --checkpoint)", file=sys.stderr)
        return 2
    try:
        rates = [float(text) * 1e6 for text in args.rates.split(",")]
    except ValueError:
        print(f"error: --rates must be comma-separated numbers (M events/s), got {args.rates!r}", file=sys.stderr)
        return 2
    if not rates or min(rates) <= 0 or not args.seconds > 0:
        print("error: rates and --seconds must be positive", file=sys.stderr)
        return 2
    print(f"checkpoint {args.checkpoint.name}, backend {args.backend}, {args.seconds:g} s per rate, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| target M ev/s | achieved M ev/s (ratio) | compute p50 / p99 ms | e2e p50 / p99 ms | windows / skipped "
          "| lost / dropped events | source CPU % | worker CPU % (bin / infer % of busy) | sustained |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    best = None
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as directory:
        for target in rates:
            report = run_rate(target, args, directory)
            row, sustained, achieved = format_row(report)
            if sustained:
                best = max(best or 0.0, achieved)
            print(row, flush=True)
    print(f"\nhighest rate sustained without lost or dropped events: "
          f"{'none of those tried' if best is None else f'{best / 1e6:.2f} M events/s'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
