"""Soak: the whole pipeline for minutes at a high event rate; memory growth, latency stability and
every lost or dropped event explained.

    python benchmarks/bench_soak.py --minutes 10 --rate 5e6 [--json soak.json]
                                    [--checkpoint CK] [--backend onnxruntime] [--window-s 60]

Runs the real stages (``python -m stream.source_stage`` with the simulator at real-time speed, its events
replicated ``--rate-scale`` times to reach ``--rate``, ending by itself after ``--minutes`` of event
time; ``python -m inference.worker_stage``) joined by ipc sockets, and the headless recorder
(``inference.headless.HeadlessRecorder``) in this process. The soak clock starts at the first
prediction. Every ``--sample-s`` seconds it samples the resident memory (``VmRSS``) of each stage
and the counters. At the end (the source's end message, forwarded by the worker with its final
counters) it reports:

* memory: RSS of each stage at ``--window-s`` (minute 1) and at the end (each the median of 3
  samples), growth % (target < 5 %);
* latency: compute and end-to-end p50/p99 of the first ``--window-s`` seconds against the last
  (stable: last p99 <= 1.5 x first p99 + 2 ms);
* accounting: events sent by the source = received by the worker + lost (ZeroMQ high-water mark
  overflow at the worker's events socket, seen as packet sequence gaps); received = binned +
  unused (only in skipped windows) + unmapped (outside the model's crop) + dropped (outside the
  sensor, bad polarity, time going back); predictions published = received here + lost here.
  Each nonzero count comes with its explanation; a count that does not add up is "unexplained"
  (target 0);
* windows inferred and skipped (the worker jumps to the newest window when it falls behind).

Prints a markdown summary and writes everything (with the samples) to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.headless import HeadlessRecorder, latency_summary  # noqa: E402
from launch import DEFAULT_CHECKPOINT, Stage, Supervisor  # noqa: E402
from stream.stage import positive_number  # noqa: E402
from stream.transport.sockets import Subscriber  # noqa: E402
from stream.sim.recording import TYPICAL_RATE_EVENTS_S  # noqa: E402
from stream.transport.wire import Kind, now_us  # noqa: E402

STARTUP_TIMEOUT_S = 300.0
END_GRACE_S = 60.0  # after the planned duration, how long to wait for the end message
MEMORY_TARGET_PCT = 5.0
MEMORY_SPAN_SAMPLES = 5  # the baseline and the end RSS are medians of this many samples (a stage's RSS
# swings between two levels as its socket queues fill and drain: 3 samples let one swing read as 5 % growth)
P99_STABLE_FACTOR, P99_STABLE_SLACK_MS = 1.5, 2.0


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux /proc), bytes; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None  # a zombie has no VmRSS


def soak_stages(args: argparse.Namespace, directory: str) -> tuple[list[Stage], str]:
    """The source and worker stages, and the predictions endpoint."""
    events_endpoint, predictions_endpoint = f"ipc://{directory}/events", f"ipc://{directory}/predictions"
    source = Stage("source", "stream.source_stage", [
        "--source", "sim", "--pub", events_endpoint, "--speed", "1", "--rate-scale", str(args.rate_scale),
        "--sim-duration", f"{args.minutes * 60:g}", "--wait-subscribers", "1", "--quiet", "--seed", str(args.seed),
    ])  # fmt: skip
    worker = Stage("worker", "inference.worker_stage", [
        "--sub", events_endpoint, "--pub", predictions_endpoint, "--checkpoint", str(args.checkpoint),
        "--backend", args.backend, "--wait-subscribers", "1",
    ])  # fmt: skip
    return [worker, source], predictions_endpoint


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline and collect predictions, samples and the final counters."""
    recorder = HeadlessRecorder()
    prediction_s: list[float] = []  # receive time of each prediction, seconds since the first
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as directory:
        stages, endpoint = soak_stages(args, directory)
        supervisor = Supervisor(stages)  # no restart policy: a failure during a soak is a failure
        with Subscriber(endpoint, (Kind.PREDICTION.topic.decode(), Kind.STATUS.topic.decode(), "truth"), rcvhwm=10_000) as subscriber:
            supervisor.start()
            try:
                begun, started, next_sample = time.monotonic(), None, 0.0
                pids = supervisor.pids()
                while not recorder.ended:
                    message = subscriber.recv(100)
                    now = time.monotonic()
                    if message is not None:
                        inferred = len(recorder.compute_ms)
                        recorder.add(message, now_us())
                        if len(recorder.compute_ms) > inferred:
                            started = now if started is None else started
                            prediction_s.append(now - started)
                    if started is not None and now - started >= next_sample:
                        samples.append(_sample(now - started, pids, recorder))
                        next_sample += args.sample_s
                        _progress(samples[-1], args)
                    failures += [f"stage {e.name} exited with code {e.returncode}" for e in supervisor.poll() if e.returncode]
                    if failures:
                        break
                    if started is None and now - begun > STARTUP_TIMEOUT_S:
                        failures.append(f"no prediction within {STARTUP_TIMEOUT_S:g} s")
                        break
                    if started is not None and now - started > args.minutes * 60 + END_GRACE_S:
                        failures.append("no end message after the planned duration")
                        break
            finally:
                supervisor.stop()
            consumer_lost = subscriber.stats.lost
    return {"recorder": recorder, "prediction_s": np.array(prediction_s), "samples": samples, "failures": failures,
            "consumer_lost": consumer_lost}  # fmt: skip


def _sample(at_s: float, pids: dict[str, int], recorder: HeadlessRecorder) -> dict[str, Any]:
    rss = {name: rss_bytes(pid) for name, pid in pids.items()}
    rss["recorder"] = rss_bytes(os.getpid())
    return {
        "t_s": round(at_s, 2),
        "rss": rss,
        "events_sent": recorder.source.get("events_sent"),
        "events_in": recorder.counters.get("events_in"),
        "windows": recorder.counters.get("windows"),
        "windows_skipped": recorder.counters.get("windows_skipped"),
        "events_lost": recorder.counters.get("events_lost"),
    }


def _progress(sample: dict[str, Any], args: argparse.Namespace) -> None:
    if args.quiet:
        return
    rss = ", ".join(f"{name} {value / 1e6:.0f} MB" for name, value in sample["rss"].items() if value)
    print(f"t={sample['t_s']:.0f} s: {sample['events_in']} events in, {sample['windows']} windows "
          f"({sample['windows_skipped']} skipped), {sample['events_lost']} lost; RSS {rss}", file=sys.stderr, flush=True)  # fmt: skip


# --- the summary (pure functions) -------------------------------------------------------------------


def memory_growth(
    samples: list[dict[str, Any]], baseline_s: float, end_s: float, span_s: float
) -> dict[str, dict[str, float | None]]:
    """Per stage: RSS (MB) at ``baseline_s`` (median of the samples in ``[baseline_s, baseline_s +
    span_s)``), at the end (median of the samples in ``(end_s - span_s, end_s]``), the maximum,
    and growth % from the baseline to the end. Medians of a few samples, because packets queued in
    the sockets (up to the high-water marks) make single samples jump; samples after ``end_s``
    (the source ending, its queues draining) are left out."""
    steady = [s for s in samples if s["t_s"] <= end_s]
    if not steady:
        return {}
    base = [s for s in steady if baseline_s <= s["t_s"] < baseline_s + span_s] or steady[-1:]
    last = [s for s in steady if s["t_s"] > end_s - span_s] or steady[-1:]
    result = {}
    for name in steady[-1]["rss"]:
        values = [s["rss"][name] for s in steady if s["rss"].get(name)]
        first = [s["rss"][name] for s in base if s["rss"].get(name)]
        end = [s["rss"][name] for s in last if s["rss"].get(name)]
        first_mb = float(np.median(first)) / 1e6 if first else None
        end_mb = float(np.median(end)) / 1e6 if end else None
        result[name] = {
            "baseline_mb": None if first_mb is None else round(first_mb, 1),
            "end_mb": None if end_mb is None else round(end_mb, 1),
            "max_mb": round(max(values) / 1e6, 1) if values else None,
            "growth_pct": None if not first_mb or end_mb is None else round((end_mb - first_mb) / first_mb * 100, 2),
            "baseline_t_s": [base[0]["t_s"], base[-1]["t_s"]],
            "end_t_s": [last[0]["t_s"], last[-1]["t_s"]],
        }
    return result


def latency_windows(prediction_s: np.ndarray, compute_ms: list[float], e2e_ms: list[float], window_s: float) -> dict:
    """Compute and end-to-end latency summaries of the first and the last ``window_s`` seconds."""
    t = np.asarray(prediction_s, dtype=np.float64)
    compute, e2e = np.asarray(compute_ms, dtype=np.float64), np.asarray(e2e_ms, dtype=np.float64)
    if t.size == 0:
        return {}
    first = t < window_s
    last = t >= t[-1] - window_s
    result = {
        "first": {"compute": latency_summary(compute[first]), "e2e": latency_summary(e2e[first])},
        "last": {"compute": latency_summary(compute[last]), "e2e": latency_summary(e2e[last])},
    }
    stable = {}
    for kind in ("compute", "e2e"):
        before, after = result["first"][kind]["p99"], result["last"][kind]["p99"]
        stable[kind] = None if before is None or after is None else after <= P99_STABLE_FACTOR * before + P99_STABLE_SLACK_MS
    result["p99_stable"] = stable
    return result


def accounting(
    counters: dict[str, Any], source: dict[str, Any], predictions_received: int, consumer_lost: int, ended: bool = True
) -> dict:
    """Every event and prediction accounted for, with the explanation of each nonzero loss; the
    counts that do not add up go to ``unexplained``. Sent = received + lost holds exactly only at the
    end (``ended``: the counters of the worker's end message); before, the source's count is older."""
    c = {name: int(counters.get(name, 0) or 0) for name in (
        "events_in", "events_binned", "events_filtered", "events_unused", "events_unmapped", "dropped_out_of_sensor",
        "dropped_bad_polarity", "dropped_backwards", "events_lost", "packets_lost", "messages_rejected",
        "windows", "windows_skipped", "windows_in_gaps",
    )}  # fmt: skip
    sent = int(source.get("events_sent", 0) or 0)
    explained: list[str] = []
    unexplained: list[str] = []
    if ended and sent - c["events_in"] != c["events_lost"]:
        unexplained.append(f"source sent {sent}, worker received {c['events_in']}, but the worker counts {c['events_lost']} lost")
    if c["events_lost"] > 0 and c["packets_lost"] > 0:
        explained.append(f"{c['events_lost']} events lost in {c['packets_lost']} packets: ZeroMQ high-water mark "
                         "overflow at the worker's events socket (the worker fell behind the source)")  # fmt: skip
    elif c["events_lost"] > 0 or c["packets_lost"] > 0:
        unexplained.append(f"{c['events_lost']} events lost but {c['packets_lost']} packet sequence gaps")
    accounted = (c["events_binned"] + c["events_filtered"] + c["events_unused"] + c["events_unmapped"]
                 + c["dropped_out_of_sensor"] + c["dropped_bad_polarity"] + c["dropped_backwards"])  # fmt: skip
    if accounted != c["events_in"]:
        unexplained.append(f"worker received {c['events_in']} events but accounts for {accounted}")
    if c["events_filtered"]:
        explained.append(f"{c['events_filtered']} events removed by the checkpoint's noise filter (input.filters)")
    if c["events_unused"]:
        explained.append(f"{c['events_unused']} events only in skipped windows (never needed by an inferred one)")
    if c["events_unmapped"]:
        explained.append(f"{c['events_unmapped']} events outside the model's crop of the sensor")
    invalid = c["dropped_out_of_sensor"] + c["dropped_bad_polarity"]
    if invalid:
        explained.append(f"{invalid} events dropped as invalid (outside the sensor {c['dropped_out_of_sensor']}, "
                         f"bad polarity {c['dropped_bad_polarity']})")  # fmt: skip
    late = int(source.get("late_events", 0) or 0)
    if late:
        explained.append(f"{late} events arrived at the source after a clock message announcing a later time; "
                         "sent stamped at that time (counted by the source as late_events, none dropped)")
    if c["dropped_backwards"] and c["dropped_backwards"] <= late:
        explained.append(f"{c['dropped_backwards']} events dropped as time going back: the source sent them after a "
                         f"clock message announcing a later time (it counts {late} such late events: the simulator "
                         "rendered them behind the wall clock, under CPU load)")  # fmt: skip
    elif c["dropped_backwards"]:
        unexplained.append(f"{c['dropped_backwards']} events dropped as time going back, the source counts only {late} late")
    if c["messages_rejected"]:
        unexplained.append(f"{c['messages_rejected']} malformed messages rejected by the worker")
    # The worker's end message is not a prediction, so every window it inferred was published before it.
    missing = c["windows"] - predictions_received
    if ended and missing != consumer_lost and missing > 0:
        unexplained.append(f"worker inferred {c['windows']} windows, {predictions_received} predictions arrived, "
                           f"{consumer_lost} seen lost")  # fmt: skip
    elif consumer_lost:
        explained.append(f"{consumer_lost} worker messages lost at the recorder (its high-water mark)")
    if c["windows_skipped"]:
        explained.append(f"{c['windows_skipped']} windows skipped: inference fell behind the stride, the worker "
                         "jumped to the newest window (latency stays bounded)")  # fmt: skip
    return {
        "exact": ended,
        "events_sent": sent,
        **c,
        "predictions_received": predictions_received,
        "consumer_messages_lost": consumer_lost,
        "explained": explained,
        "unexplained": unexplained,
    }


def summarise(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    recorder: HeadlessRecorder = run["recorder"]
    samples = run["samples"]
    counters, source = recorder.counters, recorder.source
    duration_s = float(run["prediction_s"][-1]) if len(run["prediction_s"]) else 0.0
    memory = memory_growth(samples, args.window_s, end_s=args.minutes * 60 - 1, span_s=MEMORY_SPAN_SAMPLES * args.sample_s)
    latency = latency_windows(run["prediction_s"], recorder.compute_ms, recorder.e2e_ms, args.window_s)
    account = accounting(counters, source, len(recorder.compute_ms), run["consumer_lost"], ended=recorder.ended)
    windows_total = account["windows"] + account["windows_skipped"]
    sent = account["events_sent"]
    targets = {
        "memory_growth_under_5pct": bool(memory) and all(
            m["growth_pct"] is not None and m["growth_pct"] < MEMORY_TARGET_PCT for m in memory.values()
        ),
        "latency_p99_stable": bool(latency) and all(latency["p99_stable"].values()),
        "zero_unexplained": not account["unexplained"],
        "no_failures": not run["failures"],
        "ended": recorder.ended,
    }
    return {
        "config": {
            "minutes": args.minutes, "rate_target": args.rate, "rate_scale": args.rate_scale, "backend": args.backend,
            "checkpoint": str(args.checkpoint), "window_s": args.window_s, "sample_s": args.sample_s, "seed": args.seed,
        },  # fmt: skip
        "duration_s": round(duration_s, 1),
        "events_per_s": round(sent / (args.minutes * 60), 1) if sent else None,  # the source ends after this much event time
        "memory": memory,
        "latency_ms": latency,
        "accounting": account,
        "windows": {
            "inferred": account["windows"],
            "skipped": account["windows_skipped"],
            "skipped_pct": round(100 * account["windows_skipped"] / windows_total, 2) if windows_total else None,
            "in_gaps": account["windows_in_gaps"],
        },
        "backend": recorder.backend,
        "worker_counters": counters,
        "source": source,
        "failures": run["failures"],
        "targets": targets,
        "ok": all(targets.values()),
        "samples": samples,
    }


def format_markdown(result: dict[str, Any]) -> str:
    """The summary as markdown tables."""
    config, account = result["config"], result["accounting"]
    rate = result["events_per_s"]
    lines = [
        f"Soak: {config['minutes']:g} min at target {config['rate_target'] / 1e6:g} M events/s "
        f"(achieved {'n/a' if rate is None else f'{rate / 1e6:.2f}'} M events/s, simulator x{config['rate_scale']}), "
        f"{result['backend']}, {Path(config['checkpoint']).name}",
        "",
        f"| stage | RSS at {config['window_s']:g} s (MB) | RSS at end (MB) | max (MB) | growth |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["memory"].items():
        growth = "n/a" if m["growth_pct"] is None else f"{m['growth_pct']:+.2f} %"
        lines.append(f"| {name} | {m['baseline_mb']} | {m['end_mb']} | {m['max_mb']} | {growth} |")
    latency = result["latency_ms"]
    if latency:
        lines += ["", f"| latency (ms) | first {config['window_s']:g} s p50 / p99 | last {config['window_s']:g} s p50 / p99 | p99 stable |",
                  "|---|---|---|---|"]  # fmt: skip
        for kind in ("compute", "e2e"):
            first, last = latency["first"][kind], latency["last"][kind]
            lines.append(f"| {kind} | {first['p50']} / {first['p99']} | {last['p50']} / {last['p99']} "
                         f"| {'yes' if latency['p99_stable'][kind] else 'no'} |")  # fmt: skip
    windows = result["windows"]
    lines += [
        "",
        f"events sent {account['events_sent']}, received {account['events_in']}, lost {account['events_lost']} "
        f"({account['packets_lost']} packets); windows inferred {windows['inferred']}, skipped {windows['skipped']} "
        f"({windows['skipped_pct']} %); predictions received {account['predictions_received']}",
    ]
    lines += [f"- explained: {text}" for text in account["explained"]]
    lines += [f"- UNEXPLAINED: {text}" for text in account["unexplained"]] or ["- unexplained: none"]
    lines += [f"- FAILURE: {text}" for text in result["failures"]]
    targets = ", ".join(f"{name} {'yes' if value else 'NO'}" for name, value in result["targets"].items())
    lines += ["", f"targets: {targets}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=positive_number, default=10.0, help="soak length (event time of the source)")
    parser.add_argument("--rate", type=positive_number, default=5e6, help="target events/s")
    parser.add_argument("--window-s", type=positive_number, default=60.0, help="first/last window for latency; memory baseline time")
    parser.add_argument("--sample-s", type=positive_number, default=5.0, help="seconds between memory samples")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"error: checkpoint {args.checkpoint} not found (pass --checkpoint)", file=sys.stderr)
        return 2
    if args.window_s * 2 > args.minutes * 60:
        print(f"error: --window-s {args.window_s:g} needs a soak of at least twice as long", file=sys.stderr)
        return 2
    args.rate_scale = max(1, round(args.rate / TYPICAL_RATE_EVENTS_S))
    result = summarise(run_soak(args), args)
    print(format_markdown(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        print(f"\nwritten to {args.json}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
