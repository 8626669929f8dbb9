"""ZeroMQ event transport: throughput and latency over ipc and tcp (loopback).

    python benchmarks/bench_transport.py [--quick]

The publisher runs in this process, the subscriber in a child process (spawned), so both sides
have their own interpreter as in the real pipeline. Modes, same event payload in all of them:

* ``zero-copy``: ``Publisher(zero_copy_min_bytes=0)`` -> ``Subscriber`` (recv
  ``copy=False`` + ``np.frombuffer``), full wire format and checks.
* ``copy``: the same wire format and checks, copying on both sides (``send_multipart(copy=True)``,
  ``recv_multipart(copy=True)``, then ``decode``).
* ``raw``: the peer: one ``socket.send(array)`` frame, ``socket.recv()`` + ``np.frombuffer``; no
  header, no checks (its first event's ``t`` carries the send time for latency).

Throughput: ``count`` packets sent back to back (high-water marks large enough that nothing is
dropped), M events/s = events / (last receive - first send), both on CLOCK_MONOTONIC. Latency: one
packet at a time (the next is sent when the subscriber has acknowledged the previous one),
one-way latency = receive time - send time stamped by the publisher, p50 / p99 in µs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.events import SensorSize, make_events  # noqa: E402
from stream.transport.sockets import Publisher, Subscriber  # noqa: E402
from stream.transport.wire import decode, now_us

SENSOR = SensorSize(346, 260)
MODES = ("zero-copy", "copy", "raw")
SIZES = (1_000, 10_000, 100_000)
BIG_HWM = 100_000


def packet(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(np.sort(rng.integers(0, 10_000_000, count)), rng.integers(0, SENSOR.width, count),
                       rng.integers(0, SENSOR.height, count), rng.integers(0, 2, count))  # fmt: skip


# --- subscriber side (child process) -----------------------------------------------------------


def receiver(mode: str, endpoint: str, control_endpoint: str) -> None:
    context = zmq.Context()
    control = context.socket(zmq.PAIR)
    control.connect(control_endpoint)
    if mode == "raw" or mode == "copy":
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, BIG_HWM)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber = None
    else:
        subscriber = Subscriber(endpoint, ["events"], rcvhwm=BIG_HWM, context=context)
        sub = subscriber.socket

    def receive() -> tuple[int, int]:
        """One packet: (event count, send time µs)."""
        if mode == "raw":
            events = np.frombuffer(sub.recv(), dtype=make_events([], [], [], []).dtype)
            return len(events), int(events["t"][0]) if len(events) else 0
        if mode == "copy":
            message = decode(sub.recv_multipart(copy=True))
        else:
            message = subscriber.recv(None)
        return message.count, message.send_us

    # join: the publisher sends small packets until we say we got one
    receive()
    control.send_json({"joined": True})
    while True:
        command = control.recv_json()
        if command["phase"] == "quit":
            break
        while sub.poll(0):  # drain what the join left behind
            receive()
        control.send_json({"ready": True})
        count, size = command["count"], command["size"]
        if command["phase"] == "throughput":
            received = 0
            for _ in range(count):
                received += receive()[0]
            control.send_json({"last_us": now_us(), "events": received})
        else:
            latencies = []
            for _ in range(count):
                events, sent_us = receive()
                latencies.append(now_us() - sent_us)
                control.send_json({"ack": events == size})
            control.send_json({"latencies": latencies})
    if subscriber is not None:
        subscriber.close()
    sub.close(linger=0)
    control.close(linger=0)
    context.term()


# --- publisher side (this process) ---------------------------------------------------------------


class Sender:
    def __init__(self, mode: str, endpoint: str, context: zmq.Context) -> None:
        self.mode = mode
        if mode == "raw":
            self.socket = context.socket(zmq.PUB)
            self.socket.setsockopt(zmq.SNDHWM, BIG_HWM)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.bind(endpoint)
            self.endpoint = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        else:
            threshold = 0 if mode == "zero-copy" else 1 << 62
            self.publisher = Publisher(endpoint, sndhwm=BIG_HWM, zero_copy_min_bytes=threshold, context=context)
            self.endpoint = self.publisher.endpoint

    def send(self, events: np.ndarray) -> None:
        if self.mode == "raw":
            events["t"][0] = now_us()  # the raw peer has no header: the send time rides in the payload
            self.socket.send(events, copy=True)
        else:
            self.publisher.publish_events(events, SENSOR)

    def close(self) -> None:
        if self.mode == "raw":
            self.socket.close(linger=0)
        else:
            self.publisher.close()


def run_mode(mode: str, transport: str, sizes: tuple[int, ...], quick: bool, tmp: str) -> list[dict]:
    context = zmq.Context()
    control = context.socket(zmq.PAIR)
    control.setsockopt(zmq.LINGER, 0)
    control_endpoint = f"ipc://{tmp}/control-{mode}-{transport}"
    control.bind(control_endpoint)
    data_endpoint = f"ipc://{tmp}/data-{mode}" if transport == "ipc" else "tcp://127.0.0.1:*"
    sender = Sender(mode, data_endpoint, context)
    child = multiprocessing.get_context("spawn").Process(target=receiver, args=(mode, sender.endpoint, control_endpoint))
    child.start()
    rows = []
    try:
        join_packet = packet(1)
        deadline = time.monotonic() + 30
        while not control.poll(1):
            if time.monotonic() > deadline or not child.is_alive():
                raise RuntimeError(f"{mode}/{transport}: subscriber never joined")
            sender.send(join_packet.copy())
        control.recv_json()
        for size in sizes:
            events = packet(size)
            total_events = (2_000_000 if quick else 10_000_000) if size >= 10_000 else (500_000 if quick else 3_000_000)
            count = max(20, total_events // size)
            control.send_json({"phase": "throughput", "count": count, "size": size})
            control.recv_json()
            packets = [events.copy() for _ in range(min(count, 8))]
            start_us = now_us()
            for index in range(count):
                sender.send(packets[index % len(packets)])
            result = control.recv_json()
            elapsed_s = (result["last_us"] - start_us) / 1e6
            throughput = result["events"] / elapsed_s / 1e6
            latency_count = 60 if quick else 300
            control.send_json({"phase": "latency", "count": latency_count, "size": size})
            control.recv_json()
            for _ in range(latency_count):
                sender.send(events.copy())
                if not control.poll(10_000) or not control.recv_json()["ack"]:
                    raise RuntimeError(f"{mode}/{transport}/{size}: packet lost in the latency run")
            latencies = np.array(control.recv_json()["latencies"])
            rows.append(dict(transport=transport, size=size, mode=mode, throughput=throughput,
                             p50=float(np.percentile(latencies, 50)), p99=float(np.percentile(latencies, 99))))  # fmt: skip
        control.send_json({"phase": "quit"})
        child.join(10)
    finally:
        if child.is_alive():
            child.terminate()
        sender.close()
        control.close(linger=0)
        context.term()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer packets (a smoke run)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        for transport in ("ipc", "tcp"):
            for mode in MODES:
                rows += run_mode(mode, transport, SIZES, args.quick, tmp)
    raw = {(r["transport"], r["size"]): r for r in rows if r["mode"] == "raw"}
    print(f"ZeroMQ event transport, loopback, {os.cpu_count()} CPUs, pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}")
    print()
    print("| transport | events/packet | mode | M events/s | vs raw | p50 µs | p99 µs | p50 vs raw |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        peer = raw[(r["transport"], r["size"])]
        print(f"| {r['transport']} | {r['size']:,} | {r['mode']} | {r['throughput']:.1f} | "
              f"{r['throughput'] / peer['throughput']:.2f}x | {r['p50']:.0f} | {r['p99']:.0f} | "
              f"{r['p50'] / peer['p50']:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
