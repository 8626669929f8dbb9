"""``python -m stream COMMAND ...``: the event tools (also ``spikeformer-live COMMAND``)."""

from __future__ import annotations

import sys

from stream.stage import Command, dispatch

COMMANDS = {
    "info": Command("stream.commands:info_main", "what an event file holds (format, sensor, events, time range)"),
    "convert": Command("stream.commands:convert_main", "convert between event file formats"),
    "frames": Command("stream.commands:frames_main", "write the [T, 2, H, W] frames of one window as .npy"),
    "simulate": Command("stream.commands:simulate_main", "write a synthetic DVS128-Gesture-style data set"),
    "record": Command("stream.commands:record_main", "guided recording of labelled takes for fine-tuning"),
    "keys": Command("stream.commands:keys_main", "generate or list CurveZMQ keys for remote stages"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(COMMANDS, argv, "python -m stream")


if __name__ == "__main__":
    sys.exit(main())
