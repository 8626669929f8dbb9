"""``python -m stream COMMAND ...``: the event tools.

Commands:
    info PATH [--json]                  what a recording holds (format, sensor, events, time range)
    convert IN OUT                      convert between event file formats
    simulate --out DIR --samples N      write a synthetic DVS128-Gesture-style data set
    frames IN --bins T --bin-us B ...   write the [T, 2, H, W] frames of one window as .npy
    keys generate DIR [--name NAME]     write a CurveZMQ key pair (DIR/NAME.key, DIR/NAME.key_secret)
    keys list DIR [--json]              show the CurveZMQ keys of a directory

Each command lives in the module named below and exposes ``main(argv) -> int``.
Expected failures (bad files, bad arguments) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "info": "stream.files",
    "convert": "stream.files",
    "simulate": "stream.simulator",
    "frames": "stream.binning",
    "keys": "stream.keys",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command])
    try:
        return int(module.main([command, *rest]) or 0)
    except (ValueError, OSError) as error:  # EventFormatError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
