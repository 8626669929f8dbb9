"""ZeroMQ transport: real PUB/SUB sockets over ipc (in tmp_path) and tcp (127.0.0.1, random port)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import zmq

from helpers import random_events, run_module
from stream.events import EVENT_DTYPE, GestureSegment, SensorSize, make_events
from stream.transport.sockets import Publisher, Subscriber, check_endpoint
from stream.transport.wire import (
    HEADER,
    MAGIC,
    MAX_PACKET_EVENTS,
    VERSION,
    Kind,
    MessageError,
    Status,
    decode,
    encode,
    encode_events,
    encode_json,
)

SENSOR = SensorSize(128, 96)
WAIT_S = 5.0  # bound on every wait for a real signal


@pytest.fixture(params=["ipc", "tcp"])
def bind_endpoint(request, tmp_path) -> str:
    return f"ipc://{tmp_path}/events.sock" if request.param == "ipc" else "tcp://127.0.0.1:*"


def join(publish, subscriber: Subscriber):
    """Publish until the subscriber gets a message (slow-joiner), bounded; return that message.
    Copies published while the first was on its way are received and dropped here, so the test's
    next message is its own."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        publish()
        message = subscriber.recv(20)
        if message is not None:
            while subscriber.recv(200) is not None:  # the copies sit right behind it in the connection
                pass
            return message
    pytest.fail("subscriber never received a message")


def recv_next(subscriber: Subscriber):
    message = subscriber.recv(int(WAIT_S * 1000))
    assert message is not None, "timed out waiting for a message"
    return message


def test_events_round_trip_exact(bind_endpoint):
    events = random_events(SENSOR, count=10_000)
    with Publisher(bind_endpoint) as pub, Subscriber(pub.endpoint, ["events"]) as sub:
        first = join(lambda: pub.publish_events(events[:1], SENSOR), sub)
        assert first.kind == Kind.EVENTS and first.topic == "events"
        big = random_events(SENSOR, count=200_000, seed=1)  # above the zero-copy threshold, below MAX_PACKET_EVENTS
        previous = first
        for packet in (events, events[:0], big):
            assert pub.publish_events(packet, SENSOR) == 1  # one message each
            message = recv_next(sub)
            assert message.seq == previous.seq + 1  # the next one: nothing lost, nothing repeated
            previous = message
            assert message.sensor_size == SENSOR
            assert message.count == len(packet)
            assert message.events.dtype == EVENT_DTYPE
            assert message.events.tobytes() == packet.tobytes()
            assert 0 <= message.latency_us() < 10_000_000
        assert sub.stats.lost == 0 and sub.stats.rejected_total == 0


def test_truth_and_json_kinds_round_trip(tmp_path):
    segments = [GestureSegment(3, 1_000, 2_500_000), GestureSegment(10, 3_000_000, 4_000_000)]
    with Publisher(f"ipc://{tmp_path}/t.sock") as pub, \
            Subscriber(pub.endpoint, ["truth", "prediction"]) as sub:  # fmt: skip
        join(lambda: pub.publish_truth([]), sub)
        pub.publish_truth(segments)
        assert recv_next(sub).data == segments
        pub.publish_json(Kind.PREDICTION, {"label": 4, "scores": [0.1, 0.9]})
        message = recv_next(sub)
        assert message.kind == Kind.PREDICTION and message.data == {"label": 4, "scores": [0.1, 0.9]}


def test_sequence_gaps_counted_as_lost(bind_endpoint):
    with Publisher(bind_endpoint) as pub, Subscriber(pub.endpoint) as sub:
        join(lambda: pub.publish_events(random_events(SENSOR, count=10), SENSOR), sub)
        for _ in range(3):
            pub.next_seq(Kind.EVENTS)  # three messages "lost" on the way
        pub.publish_events(random_events(SENSOR, count=10), SENSOR)
        recv_next(sub)
        assert sub.stats.lost == 3
        pub.publish_events(random_events(SENSOR, count=10), SENSOR)
        recv_next(sub)
        assert sub.stats.lost == 3


def _valid_frames(seq: int = 0) -> list[bytes]:
    frames = encode_events(random_events(SENSOR, count=4), SENSOR, seq)
    return [frames[0], frames[1], frames[2].tobytes()]


def _header(**fields) -> bytes:
    values = dict(magic=MAGIC, version=VERSION, kind=1, seq=0, width=SENSOR.width, height=SENSOR.height,
                  reserved=0, send_us=0, count=4, length=64)  # fmt: skip
    values.update(fields)
    return HEADER.pack(*values.values())


def _status_frames(payload: bytes) -> list[bytes]:
    return [b"status", _header(kind=int(Kind.STATUS), count=0, length=len(payload)), payload]


MALFORMED = {
    "frame_count": [b"events", _header()],
    "short_header": [b"events", _header()[:-1], bytes(64)],
    "bad_magic": [b"events", _header(magic=b"XXXX"), bytes(64)],
    "wrong_version": [b"events", _header(version=VERSION + 1), bytes(64)],
    "unknown_kind": [b"events", _header(kind=99), bytes(64)],
    "bad_topic": [b"eventsX", _header(), bytes(64)],
    "length_mismatch": [b"events", _header(length=80), bytes(64)],
    "count_mismatch": [b"events", _header(count=5, length=64), bytes(64)],
    "bad_sensor": [b"events", _header(width=0), bytes(64)],
    "bad_events": [b"events", _header(), make_events([0, 1, 2, 3], [0, 1, 2, 500], [0, 0, 0, 0], [1, 1, 1, 1]).tobytes()],
    "negative_coordinate": [b"events", _header(), make_events([0, 1, 2, 3], [0, -1, 2, 3], [0, 0, 0, 0], [1, 1, 1, 1]).tobytes()],
    "time_going_back": [b"events", _header(), make_events([0, 5, 2, 3], [0, 1, 2, 3], [0, 0, 0, 0], [1, 1, 1, 1]).tobytes()],
    "bad_json": [b"truth", _header(kind=2, count=1, length=5), b"[{]}x"],
    "extra_frames": [*_valid_frames(), b"extra"],
    "status_without_type": _status_frames(b'{"time_us": 5}'),
    "status_of_unknown_type": _status_frames(b'{"type": "frame"}'),
    "clock_without_time": _status_frames(b'{"type": "clock", "paused": false}'),
    "clock_with_text_time": _status_frames(b'{"type": "clock", "time_us": "soon", "paused": false}'),
    "clock_paused_not_bool": _status_frames(b'{"type": "clock", "time_us": 5, "paused": 1}'),
    "garbage": [b"events" + bytes(range(200))],
}
EXPECTED_REASON = {"extra_frames": "frame_count", "garbage": "frame_count", "negative_coordinate": "bad_events",
                   "time_going_back": "bad_events", **{case: "bad_status" for case in MALFORMED if "status" in case
                                                       or "clock" in case}}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_messages_are_counted_and_subscriber_keeps_working(case, tmp_path, caplog):
    raw = zmq.Context.instance().socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/raw.sock"
    raw.bind(endpoint)
    try:
        with Subscriber(endpoint, ["events", "truth", "status"]) as sub:
            join(lambda: raw.send_multipart(_valid_frames(0)), sub)
            received = sub.stats.received
            with caplog.at_level(logging.WARNING, logger="stream.transport.sockets"):
                raw.send_multipart(MALFORMED[case])
                raw.send_multipart(_valid_frames(1))
                message = recv_next(sub)  # the malformed one is skipped, the valid one arrives
            assert message.seq == 1 and sub.stats.received == received + 1
            assert sub.stats.rejected == {EXPECTED_REASON.get(case, case): 1}
            assert EXPECTED_REASON.get(case, case) in caplog.text
    finally:
        raw.close(linger=0)


def test_rejects_are_logged_rate_limited(tmp_path, caplog):
    raw = zmq.Context.instance().socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(f"ipc://{tmp_path}/raw.sock")
    try:
        with Subscriber(f"ipc://{tmp_path}/raw.sock") as sub:
            join(lambda: raw.send_multipart(_valid_frames(0)), sub)
            with caplog.at_level(logging.WARNING, logger="stream.transport.sockets"):
                for _ in range(50):
                    raw.send_multipart(MALFORMED["bad_magic"])
                raw.send_multipart(_valid_frames(1))
                recv_next(sub)
            assert sub.stats.rejected["bad_magic"] == 50
            assert caplog.text.count("bad_magic") == 1
    finally:
        raw.close(linger=0)


def test_oversized_message_refused_by_socket(bind_endpoint):
    limit = 100 * EVENT_DTYPE.itemsize
    with Publisher(bind_endpoint) as pub, Subscriber(pub.endpoint, max_message_bytes=limit) as sub:
        join(lambda: pub.publish_events(random_events(SENSOR, count=100), SENSOR), sub)
        pub.publish_events(random_events(SENSOR, count=101), SENSOR)  # one event over: ZeroMQ drops the connection
        # libzmq closes that connection for good; the subscriber sees it and connects again.
        message = join(lambda: pub.publish_events(random_events(SENSOR, count=10), SENSOR), sub)
        assert message.count == 10
        while (late := sub.recv(50)) is not None:
            assert late.count == 10  # the 101-event packet never arrives
        assert sub.stats.disconnects == 1 and sub.stats.reconnected == 1  # no reconnect by ZeroMQ: connected again
        assert sub.stats.rejected_total == 0  # refused by the socket, never decoded


def test_outside_poller_recovers_from_an_oversized_message(tmp_path):
    """The pattern of a stage that waits in its own poller: the sockets stay the same, and
    poll_timeout_ms + maintain() connect again after ZeroMQ closed the connection for good."""
    limit = 100 * EVENT_DTYPE.itemsize
    with Publisher(f"ipc://{tmp_path}/o.sock") as pub, \
            Subscriber(pub.endpoint, max_message_bytes=limit) as sub:  # fmt: skip
        sockets = sub.poll_sockets
        poller = zmq.Poller()
        for socket in sockets:
            poller.register(socket, zmq.POLLIN)

        def receive(count: int) -> None:
            """Publish ``count``-event packets until one arrives (slow joiner); packets of 100 events
            published by the first, repeated, call may still be on their way and are passed over."""
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                pub.publish_events(random_events(SENSOR, count=count), SENSOR)
                if poller.poll(sub.poll_timeout_ms(20)):
                    if (message := sub.recv(0)) is not None:
                        assert message.count in (count, 100)  # the 101-event packet never arrives
                        if message.count == count:
                            return
                else:
                    sub.maintain()
            pytest.fail(f"no {count}-event packet received")

        receive(100)
        pub.publish_events(random_events(SENSOR, count=101), SENSOR)  # over the limit: ZeroMQ closes the connection
        receive(7)
        assert sub.poll_sockets == sockets and sub.stats.reconnected == 1


def test_publisher_splits_packets_above_max_packet_events(tmp_path):
    events = random_events(SENSOR, count=1000)
    with Publisher(f"ipc://{tmp_path}/s.sock", max_packet_events=300) as pub, \
            Subscriber(pub.endpoint, max_message_bytes=300 * EVENT_DTYPE.itemsize) as sub:  # fmt: skip
        join(lambda: pub.publish_events(events[:1], SENSOR), sub)
        assert pub.publish_events(events, SENSOR) == 4  # the number of messages sent
        assert pub.publish_events(events[:0], SENSOR) == 1  # an empty packet is one message too
        parts = [recv_next(sub) for _ in range(5)]
        assert [m.count for m in parts] == [300, 300, 300, 100, 0]
        assert [m.seq for m in parts] == list(range(parts[0].seq, parts[0].seq + 5))
        assert np.array_equal(np.concatenate([m.events for m in parts]), events)
        assert sub.stats.disconnects == 0


def test_status_messages_decode_to_a_status_with_its_type():
    clock = decode(encode_json(Kind.STATUS, 0, {"type": "clock", "time_us": 1_500}))
    assert isinstance(clock.data, Status) and clock.data.type == "clock"
    assert (clock.data.time_us, clock.data.paused) == (1_500, False)  # paused defaults to False
    end = decode(encode_json(Kind.STATUS, 1, {"type": "end", "events_sent": 7}))
    assert end.data == Status("end", {"type": "end", "events_sent": 7})


def test_publish_status_refuses_a_status_without_a_known_type(tmp_path):
    with Publisher(f"ipc://{tmp_path}/s.sock") as pub:
        with pytest.raises(ValueError, match="type"):
            pub.publish_status({"type": "frame"})
        with pytest.raises(ValueError, match="type"):
            pub.publish_status({"events_sent": 3})


def test_publisher_splits_packets_above_the_default_limit_into_messages_a_default_subscriber_takes(tmp_path):
    events = random_events(SENSOR, count=MAX_PACKET_EVENTS + 1_000, seed=2)
    with Publisher(f"ipc://{tmp_path}/d.sock") as pub, Subscriber(pub.endpoint) as sub:
        join(lambda: pub.publish_events(events[:1], SENSOR), sub)
        assert pub.publish_events(events, SENSOR) == 2
        parts = [recv_next(sub) for _ in range(2)]
        assert [m.count for m in parts] == [MAX_PACKET_EVENTS, 1_000]
        assert np.array_equal(np.concatenate([m.events for m in parts]), events)
        assert sub.stats.disconnects == 0 and sub.stats.rejected_total == 0


def test_decode_rejects_payload_over_limit():
    frames = encode_events(random_events(SENSOR, count=10), SENSOR, 0)
    with pytest.raises(MessageError, match="oversized") as info:
        decode([frames[0], frames[1], frames[2].tobytes()], max_payload_bytes=159)
    assert info.value.reason == "oversized"


def test_encode_decode_pure_round_trip():
    frames = encode(Kind.PREDICTION, 7, b'{"class_index": 3}', count=1, sensor_size=SensorSize(2, 2), send_us=42)
    message = decode(frames)
    assert (message.kind, message.seq, message.send_us, message.count) == (Kind.PREDICTION, 7, 42, 1)
    assert message.sensor_size == SensorSize(2, 2) and message.data == {"class_index": 3}
    with pytest.raises(ValueError):
        encode_json(Kind.PREDICTION, 0, float("nan"))  # not valid JSON


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://*:5556", "tcp://0.0.0.0:5556", "tcp://10.1.2.3:5556", "tcp://eth0:5556", "tcp://example.com:80"],
)
def test_non_loopback_refused_unless_allowed(endpoint):
    with pytest.raises(ValueError, match="allow_remote"):
        Publisher(endpoint)
    with pytest.raises(ValueError, match="allow_remote"):
        Subscriber(endpoint)
    assert check_endpoint(endpoint, allow_remote=True) == endpoint


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5556", "tcp://localhost:*", "tcp://[::1]:5556", "ipc:///tmp/x"])
def test_loopback_and_ipc_accepted(endpoint):
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5556", "udp://127.0.0.1:5", "tcp://127.0.0.1", "tcp://:5556"])
def test_bad_endpoints_rejected(endpoint):
    with pytest.raises(ValueError):
        check_endpoint(endpoint)


def test_subscriber_argument_checks():
    with pytest.raises(ValueError, match="topics"):
        Subscriber("tcp://127.0.0.1:5999", ["nope"])
    with pytest.raises(ValueError, match="rcvhwm"):
        Subscriber("tcp://127.0.0.1:5999", rcvhwm=0)


def test_recv_times_out_without_publisher(tmp_path):
    with Subscriber(f"ipc://{tmp_path}/nobody.sock") as sub:
        start = time.monotonic()
        assert sub.recv(50) is None
        assert time.monotonic() - start < 2.0


# --- publishers that die, restart or are refused --------------------------------------------------

RAW_PUBLISHER = """
import struct, sys, zmq
socket = zmq.Context().socket(zmq.PUB)
socket.linger = 0
socket.sndhwm = 100_000
socket.bind(sys.argv[1])
print("ready", flush=True)
payload = bytes(16 * 5000)
seq = 0
while True:  # 3-frame messages as fast as possible until killed
    header = struct.pack("<4sHHQHHIqII", b"SFLV", 1, 1, seq, 128, 128, 0, 0, 5000, len(payload))
    socket.send_multipart([b"events", header, payload])
    seq += 1
"""

SUBSCRIBER = """
import json, sys, threading
from stream.transport.sockets import Subscriber
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()  # a line on stdin: stop
with Subscriber(sys.argv[1], rcvhwm=1000) as sub:
    print("ready", flush=True)
    while not done.is_set():
        sub.recv(10)
    print(json.dumps({"received": sub.stats.received, "disconnects": sub.stats.disconnects,
                      "reconnected": sub.stats.reconnected}), flush=True)
"""


def test_subscriber_survives_publishers_killed_mid_stream(tmp_path):
    """Regression: the subscriber called socket.disconnect() when a publisher died, and libzmq
    aborted the process ("Assertion failed: !_more (src/fq.cpp:80)") within 1-2 kills."""
    import subprocess
    import sys

    endpoint = f"ipc://{tmp_path}/killed.sock"
    rounds = 6
    subscriber = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, endpoint], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert subscriber.stdout.readline().strip() == "ready"
        for _ in range(rounds):
            publisher = subprocess.Popen([sys.executable, "-c", RAW_PUBLISHER, endpoint], stdout=subprocess.PIPE, text=True)
            assert publisher.stdout.readline().strip() == "ready"
            time.sleep(0.3)  # mid-stream: the publisher never stops sending by itself
            publisher.kill()
            publisher.wait()
            assert subscriber.poll() is None, f"subscriber died with {subscriber.returncode}"
        out, _ = subscriber.communicate("stop\n", timeout=30)
    finally:
        subscriber.kill()
    assert subscriber.returncode == 0
    import json

    stats = json.loads(out)
    assert stats["received"] > rounds and stats["disconnects"] >= rounds - 1
    assert stats["reconnected"] == 0  # ZeroMQ reconnected by itself every time


def test_publisher_restart_resumes_without_reconnecting_by_hand(tmp_path):
    endpoint = f"ipc://{tmp_path}/restart.sock"
    with Subscriber(endpoint) as sub:
        for round_ in range(2):
            with Publisher(endpoint) as pub:
                message = join(lambda: pub.publish_events(random_events(SENSOR, count=5, seed=round_), SENSOR), sub)
                assert message.count == 5
        assert sub.stats.disconnects == 1 and sub.stats.reconnected == 0  # ZeroMQ reconnected by itself


# --- CurveZMQ -----------------------------------------------------------------------------------


@pytest.fixture
def curve_keys(tmp_path):
    """A server and a client key directory that trust each other, and a stranger the server does not know."""
    import shutil

    from stream.transport.keys import CurveConfig, generate_keys

    for name in ("server", "client", "stranger"):
        generate_keys(tmp_path / name, name)
    for directory in ("client", "stranger"):
        shutil.copy(tmp_path / "server" / "server.key", tmp_path / directory / "server.key")
    shutil.copy(tmp_path / "client" / "client.key", tmp_path / "server" / "client.key")
    return {
        "server": CurveConfig.from_directory(tmp_path / "server"),
        "client": CurveConfig.from_directory(tmp_path / "client", "client", server="server"),
        "stranger": CurveConfig.from_directory(tmp_path / "stranger", "stranger", server="server"),
    }


def test_curve_only_authorised_clients_receive(curve_keys):
    events = random_events(SENSOR, count=10)
    with Publisher("tcp://127.0.0.1:*", curve=curve_keys["server"]) as pub, \
            Subscriber(pub.endpoint, curve=curve_keys["client"]) as client, \
            Subscriber(pub.endpoint, curve=curve_keys["stranger"]) as stranger, \
            Subscriber(pub.endpoint) as plaintext:  # fmt: skip
        message = join(lambda: pub.publish_events(events, SENSOR), client)
        assert message.events.tobytes() == events.tobytes()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # keep publishing: the others have every chance to connect
            pub.publish_events(events, SENSOR)
            assert stranger.recv(10) is None and plaintext.recv(10) is None
            assert recv_next(client).count == 10
        assert stranger.stats.received == 0 and plaintext.stats.received == 0
        assert stranger.stats.handshake_failures >= 1  # the publisher's ZAP handler said no


def test_curve_message_size_limit_counts_the_payload_not_the_encryption(curve_keys):
    limit = 10 * EVENT_DTYPE.itemsize
    with Publisher("tcp://127.0.0.1:*", curve=curve_keys["server"]) as pub, \
            Subscriber(pub.endpoint, curve=curve_keys["client"], max_message_bytes=limit) as sub:  # fmt: skip
        assert join(lambda: pub.publish_events(random_events(SENSOR, count=10), SENSOR), sub).count == 10  # exactly the limit
        pub.publish_events(random_events(SENSOR, count=11), SENSOR)  # one event over: refused by the socket
        assert join(lambda: pub.publish_events(random_events(SENSOR, count=3), SENSOR), sub).count == 3
        while (late := sub.recv(50)) is not None:
            assert late.count in (3, 10)
        assert sub.stats.reconnected == 1


def test_curve_publishers_can_close_and_reopen_back_to_back(curve_keys):
    """ZeroMQ unbinds the ZAP endpoint of a stopped handler in the background; a CurveZMQ publisher
    opened right after the last one closed must wait for it, not fail (CI saw 'Address already in use')."""
    for _ in range(20):
        with Publisher("tcp://127.0.0.1:*", curve=curve_keys["server"]) as pub:
            assert pub.curve is not None


def test_curve_is_ignored_on_ipc(tmp_path, curve_keys):
    with Publisher(f"ipc://{tmp_path}/c.sock", curve=curve_keys["server"]) as pub, \
            Subscriber(pub.endpoint) as sub:  # fmt: skip
        assert pub.curve is None
        assert join(lambda: pub.publish_events(random_events(SENSOR, count=2), SENSOR), sub).count == 2


def test_curve_subscriber_needs_the_server_key(curve_keys):
    from dataclasses import replace

    with pytest.raises(ValueError, match="needs the publisher's public key"):
        Subscriber("tcp://127.0.0.1:5999", curve=replace(curve_keys["client"], server_key=None))


# --- keys: python -m stream keys, CurveConfig, stage arguments -----------------------------------


def test_keys_generate_and_list_cli(tmp_path):
    import json
    import stat

    keys = tmp_path / "keys"
    result = run_module("stream", "keys", "generate", str(keys), "--name", "camera")
    assert result.returncode == 0, result.stderr
    public, secret = keys / "camera.key", keys / "camera.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert "secret-key" not in public.read_text() and "secret-key" in secret.read_text()
    assert run_module("stream", "keys", "generate", str(keys)).returncode == 0  # default name: spikeformer
    listing = run_module("stream", "keys", "list", str(keys), "--json")
    rows = json.loads(listing.stdout)
    assert [(row["name"], row["secret"]) for row in rows] == [
        ("camera", False), ("camera", True), ("spikeformer", False), ("spikeformer", True)]  # fmt: skip
    assert rows[0]["public_key"] == rows[1]["public_key"] and len(rows[0]["public_key"]) == 40
    assert rows[0]["file"] == str(public) and not any(row["problem"] for row in rows)
    text = run_module("stream", "keys", "list", str(keys)).stdout
    assert rows[0]["public_key"] in text and str(secret) in text
    for bad in (["keys", "generate", str(keys), "--name", "camera"],  # exists: never overwritten
                ["keys", "generate", str(keys), "--name", "../escape"],
                ["keys", "list", str(tmp_path / "missing")],
                ["keys"]):  # fmt: skip
        result = run_module("stream", *bad)
        assert result.returncode == 2, bad
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "escape.key").exists()


def test_curve_config_from_directory_checks(tmp_path):
    import argparse
    import os

    from stream.transport.keys import CurveConfig, CurveKeyError, add_curve_arguments, curve_from_args, generate_keys

    with pytest.raises(CurveKeyError, match="no such key directory"):
        CurveConfig.from_directory(tmp_path / "none")
    generate_keys(tmp_path, "a")
    config = CurveConfig.from_directory(tmp_path)
    assert config.name == "a" and config.server_key == config.public_key and config.authorized == {config.public_key}
    assert config.secret_key.decode() not in repr(config)
    generate_keys(tmp_path, "b")
    with pytest.raises(CurveKeyError, match="holds 2 secret keys"):
        CurveConfig.from_directory(tmp_path)
    config = CurveConfig.from_directory(tmp_path, "a", server="b")
    assert config.server_key != config.public_key and len(config.authorized) == 2
    with pytest.raises(CurveKeyError, match="no such key file"):
        CurveConfig.from_directory(tmp_path, "a", server="c")
    os.chmod(tmp_path / "a.key_secret", 0o644)
    with pytest.raises(CurveKeyError, match="readable by others"):
        CurveConfig.from_directory(tmp_path, "a")
    (tmp_path / "broken.key").write_text("curve\n    public-key = \"short\"\n")
    with pytest.raises(CurveKeyError, match="not 40 Z85 characters"):
        CurveConfig.from_directory(tmp_path, "b")

    parser = argparse.ArgumentParser()
    add_curve_arguments(parser)
    assert curve_from_args(parser.parse_args([])) is None
    (tmp_path / "broken.key").unlink()
    config = curve_from_args(parser.parse_args(["--curve-keys", str(tmp_path), "--curve-name", "b"]))
    assert config.name == "b"
    with pytest.raises(CurveKeyError, match="need --curve-keys"):
        curve_from_args(parser.parse_args(["--curve-name", "b"]))


def test_event_padding_bytes_are_zeroed_before_sending() -> None:
    """Heap bytes left in the dtype's padding (13-15) never go on the wire, read-only input included."""
    events = np.zeros(100, EVENT_DTYPE)
    events["t"] = np.arange(100)
    raw = events.view(np.uint8).reshape(-1, EVENT_DTYPE.itemsize)
    raw[:, 13:] = 0xAB  # what np.empty / copy() of a padded dtype may leave there
    frames = encode_events(events, SensorSize(128, 128), 0)
    payload = np.frombuffer(bytes(frames[-1]), np.uint8).reshape(-1, EVENT_DTYPE.itemsize)
    assert not payload[:, 13:].any()
    assert np.array_equal(np.frombuffer(bytes(frames[-1]), EVENT_DTYPE)["t"], np.arange(100))
    raw[:, 13:] = 0xCD
    read_only = np.frombuffer(events.tobytes(), EVENT_DTYPE)
    frames = encode_events(read_only, SensorSize(128, 128), 1)
    assert not np.frombuffer(bytes(frames[-1]), np.uint8).reshape(-1, 16)[:, 13:].any()
    assert read_only.view(np.uint8).reshape(-1, 16)[:, 13:].all()  # the caller's read-only array untouched
