"""What a new user trying the tools is told (#14, "also found"): ``auto`` without a camera, the
simulator's data cache (its size, its path, how to clear it), how to resume an interrupted
training, and which axis of the confusion matrix is which."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, line_reader, rest_of, run_module, stop_process, wait_for_line


def test_auto_without_a_camera_says_it_uses_the_simulator(caplog):
    from stream.sources import open_source
    from stream.sources.live import list_cameras

    if list_cameras():
        pytest.skip("a camera is connected here")
    with caplog.at_level(logging.WARNING, logger="stream.sources"):
        source = open_source("auto")
    assert type(source).__name__ == "SimulatorSource"
    assert [record.getMessage() for record in caplog.records] == [
        "source auto: no camera found; using the simulator (--source camera to require one)"]  # fmt: skip


def test_a_simulated_data_set_says_where_it_went_and_how_much_and_the_cache_clears(tmp_path, capfd):
    from training.data import directory_size, simulated_dataset

    directory = simulated_dataset(2, tmp_path)
    err = capfd.readouterr().err
    size_mb = directory_size(directory) / 1e6
    assert f"sim:2: simulating 2 gestures into {directory}" in err
    assert f"sim:2: {size_mb:.1f} MB written to {directory}" in err and "spikeformer-live cache --clear" in err
    assert simulated_dataset(2, tmp_path) == directory and capfd.readouterr().err == ""  # cached: silent
    listed = run_module("training", "cache", "--cache", tmp_path)
    assert listed.returncode == 0 and f"{tmp_path / 'sim'}: {size_mb:.1f} MB in 1 entries" in listed.stdout
    cleared = run_module("training", "cache", "--cache", tmp_path, "--clear")
    assert cleared.returncode == 0 and cleared.stdout.strip() == f"removed {size_mb:.1f} MB from {tmp_path}"
    assert not (tmp_path / "sim").exists()


def test_resume_hint_names_the_run_directory_once_an_epoch_is_saved(tmp_path):
    from training.train import resume_hint

    argv = ["--config", "small", "--data", "sim:100", "--out", str(tmp_path / "run"), "--resume", "old"]
    assert resume_hint(argv) == f"train: interrupted before the first epoch finished; nothing to resume in {tmp_path / 'run'}"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_state.json").write_text("{}")
    hint = resume_hint(argv)
    assert hint.endswith(f"spikeformer-live train --config small --data sim:100 --out {tmp_path / 'run'} "
                         f"--resume {tmp_path / 'run'}")  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_during_train_ends_it_with_the_hint(tmp_path, stage_env):
    """A real ``train`` process and a real SIGINT: exit code 130, the hint, no traceback."""
    from stream.sim.dataset import write_dataset

    write_dataset(tmp_path / "data", samples=12, seed=0, gesture_us=1_000_000)  # two users: a test split
    command = [sys.executable, "-m", "training", "train", "--config", "small", "--data", f"sim:{tmp_path / 'data'}",
               "--out", str(tmp_path / "run"), "--epochs", "100", "--cache", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    # As from a terminal: a test run started in the background (`cmd &`) ignores SIGINT, and a child
    # inherits that, so Python would install no KeyboardInterrupt handler.
    trainer = subprocess.Popen(command, cwd=REPO, env=stage_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        lines = line_reader(trainer.stdout)
        seen = [wait_for_line(lines, "train segments", timeout_s=120)]  # the data is loaded: training runs
        trainer.send_signal(signal.SIGINT)
        assert trainer.wait(timeout=60) == 130
        output = "".join(seen + rest_of(lines))
    finally:
        stop_process(trainer)
    assert "train: interrupted" in output and str(tmp_path / "run") in output and "Traceback" not in output


def test_the_confusion_picture_names_its_axes(tmp_path):
    """"predicted" is written above the columns and "true", turned, left of the rows (dark pixels
    where the titles go; the rest of those margins is blank)."""
    from PIL import Image

    from stream.classes import GESTURE_CLASSES
    from training.evaluate import confusion_image

    confusion = np.eye(len(GESTURE_CLASSES), dtype=np.int64) * 5
    picture = np.asarray(Image.open(confusion_image(confusion, GESTURE_CLASSES, tmp_path / "c.png")).convert("L"))
    margin, cell, count = 44, 36, len(GESTURE_CLASSES)
    grid_middle = margin + cell * count // 2
    top_title = picture[2:16, margin : margin + cell * count]
    left_title = picture[margin : margin + cell * count, 2:16]
    assert (top_title < 128).any() and (left_title < 128).any()
    dark_columns = np.flatnonzero((top_title < 128).any(axis=0)) + margin
    dark_rows = np.flatnonzero((left_title < 128).any(axis=1)) + margin
    assert abs(dark_columns.mean() - grid_middle) < cell and abs(dark_rows.mean() - grid_middle) < cell  # centred
    assert np.ptp(dark_rows) > 12  # "true" runs down the side: taller than a line of text
