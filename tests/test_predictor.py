"""The Python API (``inference.Predictor``): the README's example run as written, one window against
the model run by hand, and a live source. (Its results against the live worker stage, window by
window: ``test_headless.py``.)"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, TEST_BACKEND, random_events

from stream.classes import GESTURE_CLASSES
from stream.events import SensorSize


def readme_example() -> str:
    """The first Python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


def test_the_readme_example_classifies_a_file(stage_env, tmp_path):
    from stream.formats.aedat4 import write_aedat4

    code = readme_example()
    assert len(code.strip().splitlines()) == 3
    sensor = SensorSize(128, 128)
    events = random_events(sensor, 0, 1_000_000, rate_hz=50_000)
    write_aedat4(tmp_path / "recording.aedat4", events, sensor)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=stage_env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stride = 50_000  # the built-in model's
    windows = int(events["t"][-1]) // stride + 1 - int(events["t"][0]) // stride
    count, first = result.stdout.strip().split(" windows; the first: ")
    assert int(count) == windows and first in GESTURE_CLASSES


@pytest.fixture
def predictor(tiny_checkpoint, stage_env, monkeypatch):
    from inference import Predictor

    monkeypatch.setenv("XDG_CACHE_HOME", stage_env["XDG_CACHE_HOME"])
    return Predictor.from_checkpoint(tiny_checkpoint, backend=TEST_BACKEND)


def test_predict_window_is_the_model_on_the_binned_window(predictor):
    """One window: the events binned as the checkpoint says (mapping, normalisation), the model, softmax."""
    from inference.smoothing import softmax
    from stream.binning import SensorMapping, WindowSpec, bin_window

    sensor = SensorSize(64, 64)  # square: the area mapping crops nothing, every event counts
    events = random_events(sensor, 1_000_000, 1_099_000, count=3000)
    result = predictor.predict_window(events, sensor)
    model_input = predictor.metadata["input"]
    window = WindowSpec.from_dict(model_input["window"])
    assert (result.start_us, result.end_us, result.events) == (1_000_000, 1_100_000, len(events))
    frames = bin_window(events, SensorMapping.from_dict(model_input["sensor_mapping"], sensor), window, 1_000_000,
                        normalisation=model_input["normalisation"])  # fmt: skip
    expected = softmax(np.asarray(predictor.backend.predict(frames[None])).reshape(-1))
    assert np.allclose(result.probabilities, expected, atol=1e-5)
    assert result.class_index == int(expected.argmax()) and result.class_name == GESTURE_CLASSES[result.class_index]
    with pytest.raises(ValueError, match="empty"):
        predictor.predict_window(events[:0], sensor)


def test_stream_follows_a_live_source_with_the_files_windows(predictor, tmp_path):
    """``stream`` over a source (a file replayed as fast as it goes): the newest window each time,
    each one the same prediction as ``predict_file``'s window ending there."""
    from stream.formats.aedat4 import write_aedat4
    from stream.sources import open_source

    sensor = SensorSize(128, 128)
    path = tmp_path / "live.aedat4"
    write_aedat4(path, random_events(sensor, 0, 2_000_000, rate_hz=100_000), sensor)
    everything = {row.end_us: row for row in predictor.predict_file(path)}
    streamed = list(predictor.stream(open_source(f"file:{path}", speed=None)))
    ends = [row.end_us for row in streamed]
    assert streamed and ends == sorted(set(ends)) and len(streamed) <= len(everything)
    for row in streamed:
        assert row.class_index == everything[row.end_us].class_index
        assert np.allclose(row.probabilities, everything[row.end_us].probabilities, atol=1e-6)
