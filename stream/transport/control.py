"""A source stage's control socket: ``ControlServer`` (in the stage) and ``ControlClient`` (GUI).

``ControlServer`` is a ROUTER socket polled between packets (it never blocks the stage); it takes
JSON commands of at most ``CONTROL_MAX_BYTES``, never pickled, from REQ or DEALER clients
(``ControlClient``) and answers each with one JSON reply:

    {"cmd": "status"}                    {"cmd": "pause"}            {"cmd": "resume"}
    {"cmd": "seek", "position_s": 12.5}  {"cmd": "speed", "speed": 2.0}  (or "max")
    {"cmd": "loop", "loop": true}
    {"cmd": "perform", "label": 1, "start_us": T0, "end_us": T1}   (a directed simulator: do gesture 1 then)
    reply: {"ok": true, "cmd": ..., "status": {"source", "controls", "position_s",
            "duration_s", "paused", "speed", "loop"}}  or  {"ok": false, "error": "one line"}

An optional ``"id"`` (int or short string) is echoed. Pause, seek, speed and loop work on file
replay, perform on a directed simulator (guided recording from the GUI); other sources answer them
with an error. Loopback only unless ``allow_remote``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import zmq

from stream.transport.keys import CurveConfig
from stream.transport.sockets import (
    CURVE_OVERHEAD_BYTES,
    bind_server_socket,
    check_endpoint,
    close_server_socket,
    open_socket,
)

CONTROL_MAX_BYTES = 4096  # larger control messages are refused by the socket (ZMQ_MAXMSGSIZE)
CONTROL_MAX_PER_POLL = 32  # commands handled per poll at most, so a flood cannot starve the stream
CONTROL_COMMANDS = ("status", "pause", "resume", "seek", "speed", "loop", "perform")


METHODS = {"pause": "pause", "resume": "resume", "seek": "seek", "speed": "set_speed", "loop": "set_loop",
           "perform": "perform"}  # command -> the source's method


class ControlError(ValueError):
    """A control command that cannot be carried out; the message is the one-line reply."""


def source_status(source: Any) -> dict[str, Any]:
    """What a status reply says about ``source`` (JSON-ready)."""
    controls = ["status"]
    controls += ["pause", "resume"] if hasattr(source, "pause") and hasattr(source, "resume") else []
    controls += [name for name in ("seek", "speed", "loop") if hasattr(source, METHODS[name])]
    controls += ["perform"] if getattr(source, "directed", False) else []
    speed = getattr(source, "speed", None if "speed" in controls else 1.0)
    status = {
        "source": str(getattr(source, "name", "?")),
        "controls": controls,
        "position_s": None,
        "duration_s": None,
        "paused": bool(getattr(source, "paused", False)),
        "speed": "max" if speed is None else speed,
        "loop": None,
    }
    if hasattr(source, "status"):
        status.update(source.status())
    return status


def parse_command(request: bytes) -> dict[str, Any]:
    """Decode and check one JSON command; raises ControlError naming what is wrong."""
    if len(request) > CONTROL_MAX_BYTES:
        raise ControlError(f"command is {len(request)} bytes; at most {CONTROL_MAX_BYTES}")
    try:
        command = json.loads(bytes(request).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ControlError(f"command is not JSON: {str(error).splitlines()[0][:120]}") from None
    if not isinstance(command, dict):
        raise ControlError('command must be a JSON object such as {"cmd": "status"}')
    name = command.get("cmd")
    if name not in CONTROL_COMMANDS:
        raise ControlError(f"unknown command {str(name)[:40]!r}; expected one of {', '.join(CONTROL_COMMANDS)}")
    if name == "seek":
        position = command.get("position_s")
        if isinstance(position, bool) or not isinstance(position, (int, float)) or not math.isfinite(position):
            raise ControlError('seek needs "position_s": seconds from the start of the file')
    elif name == "speed":
        speed = command.get("speed")
        if speed != "max" and (isinstance(speed, bool) or not isinstance(speed, (int, float))):
            raise ControlError('speed needs "speed": a factor (0.1..100) or "max"')
    elif name == "loop" and not isinstance(command.get("loop"), bool):
        raise ControlError('loop needs "loop": true or false')
    elif name == "perform" and not all(isinstance(command.get(key), int) and not isinstance(command.get(key), bool)
                                       for key in ("label", "start_us", "end_us")):  # fmt: skip
        raise ControlError('perform needs integer "label", "start_us" and "end_us" (stream µs)')
    return command


def execute_command(source: Any, request: bytes, on_speed: Callable[[float | None], None] | None = None) -> dict[str, Any]:
    """Carry out one JSON command on ``source``; returns the reply (never raises for bad input)."""
    request_id = None
    try:
        command = parse_command(request)
        request_id = command.get("id")
        name = command["cmd"]
        method = METHODS.get(name)
        directed = getattr(source, "directed", False)
        if method is not None and not hasattr(source, method) or name == "perform" and not directed:
            who = "a directed simulator" if name == "perform" else "file replay"
            raise ControlError(f"{getattr(source, 'name', 'this source')} cannot {name} (only {who} can)")
        if name in ("pause", "resume"):
            getattr(source, method)()
        elif name == "seek":
            source.seek(float(command["position_s"]))
        elif name == "speed":
            speed = None if command["speed"] == "max" else float(command["speed"])
            source.set_speed(speed)
            if on_speed is not None:
                on_speed(speed)
        elif name == "loop":
            source.set_loop(command["loop"])
        elif name == "perform":
            source.perform(command["label"], command["start_us"], command["end_us"])
        reply: dict[str, Any] = {"ok": True, "cmd": name, "status": source_status(source)}
    except ValueError as error:  # ControlError, or a source refusing a value (speed out of range, seek past the end)
        reply = {"ok": False, "error": str(error).splitlines()[0] if str(error) else type(error).__name__}
    if isinstance(request_id, (int, str)) and not isinstance(request_id, bool) and len(str(request_id)) <= 64:
        reply["id"] = request_id
    return reply


class ControlServer:
    """The source stage's control socket (ROUTER): ``poll(source)`` answers every pending command
    without blocking. See the module docstring for the commands.

    Args:
        endpoint: where to bind (``ipc://...`` or a loopback ``tcp://``).
        allow_remote: allow a non-loopback TCP address.
        on_speed: called with the new speed (None: "max") after a speed command.
        context: a ``zmq.Context`` (default: the process-wide instance).
        curve: CurveZMQ keys; on a tcp endpoint only ``curve.authorized`` clients get in.
    """

    def __init__(self, endpoint: str, *, allow_remote: bool = False,
                 on_speed: Callable[[float | None], None] | None = None, context: zmq.Context | None = None,
                 curve: CurveConfig | None = None) -> None:  # fmt: skip
        self.on_speed = on_speed
        self.commands = 0
        self.errors = 0
        self._context = context or zmq.Context.instance()
        wire_limit = CONTROL_MAX_BYTES + (CURVE_OVERHEAD_BYTES if curve is not None else 0)
        options = {zmq.MAXMSGSIZE: wire_limit, zmq.RCVHWM: 64, zmq.SNDHWM: 64}
        self.socket, self.endpoint, self.curve = bind_server_socket(
            self._context, zmq.ROUTER, endpoint, allow_remote=allow_remote, options=options, curve=curve
        )

    def poll(self, source: Any) -> int:
        """Answer the commands waiting (at most ``CONTROL_MAX_PER_POLL``); returns how many."""
        handled = 0
        while handled < CONTROL_MAX_PER_POLL:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            envelope, body = frames[:1], frames[1:]
            if body and body[0] == b"":  # a REQ client's (or ControlClient's) empty delimiter
                envelope, body = envelope + [b""], body[1:]
            if len(body) == 1:
                reply = execute_command(source, body[0], self.on_speed)
            else:
                reply = {"ok": False, "error": f"expected one JSON frame, got {len(body)}"}
            self.commands += 1
            self.errors += not reply["ok"]
            try:
                self.socket.send_multipart([*envelope, json.dumps(reply, allow_nan=False).encode()], zmq.NOBLOCK)
            except zmq.ZMQError:  # the client is gone or not reading: the reply is dropped
                pass
        return handled

    def close(self) -> None:
        close_server_socket(self.socket, self._context, self.curve)

    def __enter__(self) -> "ControlServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ControlClient:
    """Talks to a source stage's ``ControlServer`` (DEALER socket; never blocks unless asked).

    ``send(command)`` queues a command (a dict, see the module docstring) and returns its id, or
    None when the stage is not connected; ``replies()`` returns the replies that arrived;
    ``request(command, timeout_s)`` does both and waits (raises TimeoutError).

    Args:
        endpoint: the stage's ``--control`` endpoint.
        allow_remote: allow a non-loopback TCP address.
        context: a ``zmq.Context`` (default: the process-wide instance).
        curve: CurveZMQ keys; on a tcp endpoint the client authenticates with them to the stage
            whose public key is ``curve.server_key``.
    """

    def __init__(self, endpoint: str, *, allow_remote: bool = False, context: zmq.Context | None = None,
                 curve: CurveConfig | None = None) -> None:  # fmt: skip
        check_endpoint(endpoint, allow_remote=allow_remote)
        self.endpoint = endpoint
        self.allow_remote = allow_remote
        self.curve = curve if curve is not None and endpoint.startswith("tcp://") else None
        self._context = context or zmq.Context.instance()
        self._next_id = 1
        self.socket = self._open()

    def _open(self) -> zmq.Socket:
        options = {
            zmq.IMMEDIATE: 1,  # queue nothing for a stage that is not there
            zmq.SNDHWM: 16,
            zmq.MAXMSGSIZE: (1 << 16) + (CURVE_OVERHEAD_BYTES if self.curve is not None else 0),
        }
        socket, _ = open_socket(self._context, zmq.DEALER, self.endpoint, bind=False, allow_remote=self.allow_remote,
                                 options=options, curve=self.curve)  # fmt: skip
        return socket

    def reconnect(self) -> None:
        """Open the socket again: forgets queued commands and late replies, and recovers a
        connection the stage dropped (libzmq drops a peer for good after a protocol error)."""
        self.socket.close(linger=0)
        self.socket = self._open()

    def send(self, command: dict[str, Any]) -> int | None:
        """Send ``command`` (an ``"id"`` is added); its id, or None if the stage is not connected."""
        request_id = self._next_id
        self._next_id += 1
        payload = json.dumps({**command, "id": request_id}, allow_nan=False).encode()
        try:
            self.socket.send_multipart([b"", payload], zmq.NOBLOCK)
        except zmq.Again:
            return None
        return request_id

    def replies(self) -> list[dict[str, Any]]:
        """The replies received so far (malformed ones are skipped)."""
        replies = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return replies
            try:
                reply = json.loads(frames[-1].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            if isinstance(reply, dict):
                replies.append(reply)

    def request(self, command: dict[str, Any], timeout_s: float = 2.0, attempt_s: float = 0.5) -> dict[str, Any]:
        """Send ``command`` and wait for its reply, sending it again on a fresh socket every
        ``attempt_s`` (every command is idempotent); TimeoutError if none comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            attempt_end = min(deadline, time.monotonic() + attempt_s)
            request_id = self.send(command)
            while request_id is None and time.monotonic() < attempt_end:  # still connecting
                self.socket.poll(10, zmq.POLLOUT)
                request_id = self.send(command)
            while request_id is not None:
                remaining_ms = round((attempt_end - time.monotonic()) * 1000)
                if remaining_ms <= 0 or not self.socket.poll(remaining_ms, zmq.POLLIN):
                    break
                for reply in self.replies():
                    if reply.get("id") == request_id:
                        return reply
            self.reconnect()
        raise TimeoutError(f"no reply from the source stage's control endpoint {self.endpoint} within {timeout_s:g} s")

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
