"""What every stage process shares: the stop request, exit codes, one argument parser and the
entry point that turns expected failures into one ``error:`` line.

Exit codes: 0 a normal end (also after SIGINT/SIGTERM), ``EXIT_ERROR`` (2) an expected failure
with its one ``error:`` line that a restart would not change (a missing or damaged file, a bad
argument, checkpoint or key, no camera or server at start), ``EXIT_SOURCE_LOST`` (3) a camera or
network source that was lost and gave up reconnecting (the launcher restarts it).

Command-line convention: every ``main(argv)`` of the project takes the arguments without the
program name (as ``ArgumentParser.parse_args`` does; None: ``sys.argv[1:]``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from typing import Callable, NamedTuple, Sequence

from stream.sources.base import SourceLost, parse_speed

EXIT_ERROR = 2  # exit code of an expected failure (one error line) that a restart would not change
EXIT_SOURCE_LOST = 3  # exit code after SourceLost: the device or server may come back, so restart
END_WAIT_S = 30.0  # how long an end message waits for room, then how long subscribers get to read it and leave
END_LINGER_MS = 1000  # then queued messages get this long to leave


class StopRequest:
    """SIGINT/SIGTERM handling of a stage (launch.py stops stages with SIGTERM).

    The first signal sets ``event`` (every loop of a stage polls it at least every ~100 ms) and
    runs ``callbacks`` (e.g. ``source.stop``); nothing is raised at a random point of the code, so
    sockets and devices close in order. A second signal raises KeyboardInterrupt (forced stop).

    The Python-level handler runs in the main thread between two bytecodes, possibly while that
    thread holds a lock (an ``Event.clear()`` of the source's pacing loop), so it takes no lock: it
    writes one byte to a pipe and a watcher thread sets ``event`` and runs the callbacks. (A handler
    that set the source's event itself could hang a stage on SIGTERM: it did once in CI.)
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.callbacks: list[Callable[[], None]] = []
        self._signals = 0
        self._wake_read, self._wake_write = os.pipe()

    def install(self) -> "StopRequest":
        threading.Thread(target=self._watch, name="stop-request", daemon=True).start()
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt
        os.write(self._wake_write, b"\0")  # a system call: no Python lock

    def _watch(self) -> None:
        os.read(self._wake_read, 1)
        self.event.set()
        for callback in self.callbacks:
            callback()


class Unavailable(RuntimeError):
    """Something this machine lacks for what was asked (a library, a GPU); the message says what.
    An expected failure: one ``error:`` line, ``EXIT_ERROR``."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as a ``ValueError`` (``run_main`` prints it as one
    ``error:`` line, exit code 2) instead of printing the usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"{self.prog}: {message} (see --help)")


def speed_argument(text: str) -> str:
    """argparse type of ``--speed``: a factor 0.1..100 or ``max``, kept as text (stages pass it on)."""
    try:
        parse_speed(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def value_or_range(*, positive: bool, log: bool = False) -> Callable[[str], float | tuple[float, float]]:
    """argparse type: ``VALUE`` or ``LOW:HIGH`` with LOW <= HIGH, finite numbers > 0 (``positive``)
    or >= 0; a range drawn log-uniform (``log``) needs LOW > 0 even where a value may be 0."""

    def parse(text: str) -> float | tuple[float, float]:
        try:
            values = tuple(float(part) for part in text.split(":"))
        except ValueError:
            values = ()
        bound_ok = all((value > 0 if positive else value >= 0) and value < float("inf") for value in values)
        if len(values) not in (1, 2) or not bound_ok or values != tuple(sorted(values)):
            kind = "> 0" if positive else ">= 0"
            raise argparse.ArgumentTypeError(f"expected VALUE or LOW:HIGH (LOW <= HIGH), numbers {kind}, got {text!r}")
        if log and len(values) == 2 and values[0] <= 0:
            raise argparse.ArgumentTypeError(f"a range is drawn log-uniform, so LOW must be > 0, got {text!r}")
        return values[0] if len(values) == 1 else values

    return parse


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def comma_names(allowed: tuple[str, ...]):
    """argparse type: a comma-separated subset of ``allowed``."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(allowed)}, got {text!r}")
        return names

    return parse


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main(argv)`` and return its exit code. Expected failures (ValueError,
    OSError, ``Unavailable``) become one ``error:`` line and ``EXIT_ERROR``; a lost source
    (``SourceLost``) ``EXIT_SOURCE_LOST``; Ctrl-C 130; ``--help`` 0."""
    try:
        return int(main(argv) or 0)
    except (ValueError, OSError, Unavailable) as error:  # SourceLost is an OSError
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SOURCE_LOST if isinstance(error, SourceLost) else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except SystemExit as exit_:  # argparse's --help
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)


class Command(NamedTuple):
    """A subcommand: ``target`` is ``"module:function"`` (imported only when run), ``help`` one line."""

    target: str
    help: str

    def main(self) -> Callable[[Sequence[str] | None], int]:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


def dispatch(commands: dict[str, Command], argv: Sequence[str] | None, prog: str, version: str | None = None) -> int:
    """``prog COMMAND ARGS...``: run ``commands[COMMAND]`` on ``ARGS`` (``run_main``). Without a
    command, or with ``-h``, the list of commands; an unknown one says so, lists them, exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    listing = f"usage: {prog} COMMAND [--help] ...\n\ncommands:\n" + "\n".join(
        f"  {name:<10} {command.help}" for name, command in commands.items())  # fmt: skip
    if version is not None and argv[:1] == ["--version"]:
        print(f"{prog} {version}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(listing)
        return 0 if argv else EXIT_ERROR
    if argv[0] not in commands:
        print(f"error: unknown command {argv[0]!r}; valid commands: {', '.join(commands)}", file=sys.stderr)
        return EXIT_ERROR
    return run_main(commands[argv[0]].main(), argv[1:])


def exit_stage(main: Callable[[Sequence[str] | None], int]) -> None:
    """Run a stage's ``main`` as a process entry point (``run_main``) and exit with its code.

    Every socket, file and device is closed by the time ``main`` returns, so the interpreter's
    teardown of torch and friends (1-2 s on a busy 2-core machine) is skipped and a stage stops
    within milliseconds of SIGTERM.
    """
    code = run_main(main, None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
