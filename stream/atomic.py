"""One atomic file write for every file the project makes (checkpoints, ONNX exports, TensorRT
engines, window caches, labels): readers see the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: str | os.PathLike, write: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it over ``path``.

    ``write`` is the bytes, or a function that writes into the open binary file. The folder is
    created if needed; on any failure the temporary file is removed and ``path`` is untouched.
    Concurrent writers are safe: each has its own temporary file, the last rename wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            if isinstance(write, (bytes, bytearray, memoryview)):
                file.write(write)
            else:
                write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
