"""The reference classifier (SynSense's CNN trained on real DVS128 Gesture): loading, input counts,
and the orientation check on simulated hand waves. Needs only tests/data, never ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stream.events import SensorSize, make_events
from stream.sim.dataset import write_dataset
from stream.sim.recording import simulate_gesture
from training import reference

SHARED_PT = Path(__file__).resolve().parents[1].parent / "shared/data/reference/sinabs_dvs_gesture_params.pt"
SENSOR = SensorSize(128, 128)


@pytest.fixture(scope="module")
def model() -> torch.nn.Sequential:
    return reference.load_reference(reference.DEFAULT_WEIGHTS)


def test_network_loads_and_outputs_eleven_logits(model):
    logits = reference.classify(model, np.random.default_rng(0).poisson(0.5, (3, 2, 128, 128)).astype(np.float32))
    assert logits.shape == (3, 11)
    assert bool(torch.isfinite(logits).all())


def test_pt_and_safetensors_hold_the_same_weights():
    if not SHARED_PT.is_file():
        pytest.skip("../shared/data/reference/sinabs_dvs_gesture_params.pt is not present")
    from_pt = reference.load_reference(SHARED_PT).state_dict()
    from_safetensors = reference.load_reference(reference.DEFAULT_WEIGHTS).state_dict()
    assert from_pt.keys() == from_safetensors.keys()
    assert all(torch.equal(from_pt[key], from_safetensors[key]) for key in from_pt)


@pytest.mark.parametrize("name, content", [("missing.safetensors", None), ("weights.npz", b"x"),
                                           ("junk.safetensors", b"junk"), ("junk.pt", b"junkjunk")])  # fmt: skip
def test_bad_weight_files_raise_one_line_value_error(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="reference weights") as error:
        reference.load_reference(path)
    assert "\n" not in str(error.value)


def test_a_foreign_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"0.weight": torch.zeros(16, 2, 3, 3)}, path)
    with pytest.raises(ValueError, match="not the reference network's state dict"):
        reference.load_reference(path)


def test_inputs_count_events_per_pixel_and_polarity_in_each_layout():
    # (x, y, p) at t = 0, 10, 20, 30 µs; the last event lies after the 30 µs window.
    events = make_events([0, 10, 20, 30], [0, 0, 127, 5], [0, 0, 1, 5], [1, 1, 0, 1])
    top_left = reference.reference_inputs(events, SENSOR, [0], 30, "top-left")
    assert top_left.shape == (1, 2, 128, 128) and top_left.sum() == 3
    assert top_left[0, 1, 0, 0] == 2 and top_left[0, 0, 1, 127] == 1
    moved = {"bottom-left": top_left[..., ::-1, :], "mirrored-x": top_left[..., ::-1],
             "swapped-polarity": top_left[:, ::-1]}  # fmt: skip
    for variant, expected in moved.items():
        np.testing.assert_array_equal(reference.reference_inputs(events, SENSOR, [0], 30, variant), expected)


def test_top_left_hand_waves_score_far_above_flipped_and_mirrored(model):
    """Simulated right- and left-hand waves (canonical top-left events), one 300 ms window each.
    Measured over 5 blocks of 8 seeds (0..39, the simulator with bounded camera drift): top-left
    5-11 of 16 right, y flipped 0-2, x mirrored 0-1."""
    correct = dict.fromkeys(("top-left", "bottom-left", "mirrored-x"), 0)
    for seed in range(8):
        for label in (1, 2):  # right hand wave, left hand wave
            events, label = simulate_gesture(label, seed=seed, sensor_size=SENSOR, duration_us=400_000)
            for variant in correct:
                counts = reference.reference_inputs(events, SENSOR, [100_000], 300_000, variant)
                correct[variant] += int(reference.classify(model, counts).argmax(dim=1)[0]) == label
    assert correct["top-left"] >= 5, correct
    assert correct["bottom-left"] <= 3 and correct["mirrored-x"] <= 3, correct


def test_cli_scores_every_window_of_a_data_set(tmp_path, capsys):
    write_dataset(tmp_path / "data", samples=2, seed=0, gesture_us=700_000, idle_us=200_000)
    out = tmp_path / "reference.json"
    argv = ["--data", f"sim:{tmp_path / 'data'}", "--split", "all", "--windows", "2", "--json", str(out)]
    assert reference.main(argv) == 0
    document = json.loads(out.read_text())
    assert list(document["variants"]) == list(reference.VARIANTS)
    assert all(result["samples"] == 2 * 2 for result in document["variants"].values())  # 2 segments x 2 windows
    printed = capsys.readouterr().out
    assert "as read (top-left)" in printed and "right hand wave" in printed


def test_cli_without_weights_says_so(tmp_path):
    with pytest.raises(ValueError, match="reference weights"):
        reference.main(["--data", f"sim:{tmp_path}", "--weights", str(tmp_path / "none.safetensors")])
