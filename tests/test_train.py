"""training.train / training.evaluate: a real (tiny) training run, resume, evaluate --json, DDP."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_CONFIG, edited_checkpoint_copy

from stream.coverage import window_coverage
from stream.events import EVENT_DTYPE, GestureSegment, SensorSize, make_events
from stream.formats.aedat31 import write_aedat31
from stream.formats.labels import write_gesture_labels, write_trials
from training import BUILTIN_CHECKPOINT, train
from training.__main__ import main as training_main
from training.checkpoint import load_checkpoint, read_metadata
from training.spikeformer import build_model

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_CONFIG  # the tests' one tiny model (16x16 input, 4 time steps, 11 classes)


def class_motion(label: int, start_us: int, end_us: int, rng: np.random.Generator) -> np.ndarray:
    """A dot whose position and speed tell its class (0..3), with a little noise."""
    t = np.arange(start_us, end_us, 200, dtype=np.int64)
    angle = (1.0 + label) * 2 * np.pi * (t - start_us) / 1e6
    cx, cy = 30 + 22 * (label % 2), 30 + 22 * (label // 2)  # a quadrant per class
    x = np.clip(np.round(cx + 18 * np.cos(angle) + rng.normal(0, 1, len(t))), 0, 127)
    y = np.clip(np.round(cy + 18 * np.sin(angle) + rng.normal(0, 1, len(t))), 0, 127)
    return make_events(t, x.astype(np.int16), y.astype(np.int16), (np.arange(len(t)) % 2).astype(np.int8))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-class DVS128-Gesture-layout data set (6 recordings), a tiny model config and a cache dir."""
    root = tmp_path_factory.mktemp("tiny")
    data_dir = root / "dvs"
    data_dir.mkdir()
    names = []
    for index in range(6):
        rng = np.random.default_rng(index)
        segments, pieces, t = [], [], 100_000
        for label in rng.permutation(4).tolist():
            segments.append(GestureSegment(label, t, t + 500_000))
            pieces.append(class_motion(label, t, t + 500_000, rng))
            t += 600_000
        name = f"user{index + 1:02d}_led"
        write_aedat31(data_dir / f"{name}.aedat", np.concatenate(pieces).astype(EVENT_DTYPE), SensorSize(128, 128))
        write_gesture_labels(data_dir / f"{name}_labels.csv", segments)
        names.append(f"{name}.aedat")
    write_trials(data_dir / "trials_to_train.txt", names[:5])
    write_trials(data_dir / "trials_to_test.txt", names[5:])
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY.to_dict()))
    return {"data": data_dir, "config": config, "cache": root / "cache", "root": root}


def train_args(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--config", str(tiny["config"]), "--data", f"dvsgesture:{tiny['data']}", "--out", str(out),
            "--cache", str(tiny["cache"]), "--bins", "4", "--bin-us", "50000", "--input-size", "16x16",
            "--batch-size", "5", "--lr", "5e-3", "--warmup-epochs", "0", "--train-windows", "2",
            "--eval-windows", "2", "--augment", "none", "--stretch", "1", "--no-progress", *extra]  # fmt: skip


def from_args(tiny: dict[str, Path], parent: Path, out: Path, *extra: str) -> list[str]:
    """One epoch of fine-tuning ``parent`` (``--from``) on the tiny data, no augmentation."""
    return ["--from", str(parent), "--data", f"dvsgesture:{tiny['data']}", "--out", str(out), "--cache",
            str(tiny["cache"]), "--batch-size", "5", "--lr", "1e-3", "--warmup-epochs", "0", "--train-windows", "2",
            "--eval-windows", "2", "--augment", "none", "--stretch", "1", "--no-progress", "--epochs", "1",
            *extra]  # fmt: skip


def read_metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def trained_run(tiny_data: dict[str, Path]) -> Path:
    out = tiny_data["root"] / "run"
    torch.manual_seed(0)
    assert train.main(train_args(tiny_data, out, "--epochs", "4")) == 0
    return out


def test_lr_schedule_warms_up_then_decays():
    lrs = [train.lr_at(step, 100, 10, 1e-3, 0.1) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_training_reduces_loss_and_writes_csv_and_checkpoints(trained_run: Path):
    rows = read_metrics(trained_run)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    losses = [float(row["train_loss"]) for row in rows]
    assert losses[-1] < losses[0] - 0.1, losses
    for name in ("best", "last"):
        model, metadata = load_checkpoint(trained_run / f"{name}.json")
        assert metadata["input"]["window"] == {"bins": 4, "bin_us": 50000, "stride_us": 50000}
        assert metadata["input"]["sensor_mapping"]["flip_y"] is False
        assert metadata["data"]["source_orientation"] == "top-left"
        assert 0 < metadata["input"]["coverage"]["median"] <= 1 and metadata["input"]["coverage"]["windows"] >= 16
        assert 0.0 <= metadata["metrics"]["test_accuracy"] <= 1.0
    assert any((trained_run / "tensorboard").iterdir())
    state = json.loads((trained_run / "train_state.json").read_text())
    assert state["epoch"] == 4 and state["step"] == 4 * 4  # 20 segments / batch 5


def test_resume_continues_from_the_saved_epoch(tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path):
    out = tmp_path / "resumed"
    (out).mkdir()
    for name in ("metrics.csv", "train_state.json", "train_state.safetensors", "best.json", "best.safetensors"):
        (out / name).write_bytes((trained_run / name).read_bytes())
    assert train.main(train_args(tiny_data, out, "--epochs", "6", "--resume", str(out))) == 0
    rows = read_metrics(out)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert int(rows[4]["step"]) == 20  # continued from step 16, not from 0
    state = json.loads((out / "train_state.json").read_text())
    assert state["epoch"] == 6 and state["options"]["resume"] == str(out)


def test_train_state_round_trip_without_pickle(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 4, 2, 16, 16)).sum().backward()
    optimizer.step()
    ema = train.ModelEma(model, 0.9)
    train.save_train_state(tmp_path, model, optimizer, ema,
                           {"epoch": 1, "step": 1, "best_accuracy": 0.5, "model_config": TINY.to_dict()})
    assert b"pickle" not in (tmp_path / "train_state.json").read_bytes()
    fresh = build_model(TINY)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_ema = train.ModelEma(fresh, 0.9)
    state = train.load_train_state(tmp_path, fresh, fresh_optimizer, fresh_ema)
    assert state["epoch"] == 1
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"][0]["betas"] == loaded["param_groups"][0]["betas"]
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][index][key]))
    with pytest.raises(ValueError, match="resume"):
        train.load_train_state(tmp_path / "nothing", fresh, fresh_optimizer, None)
    other = build_model(dataclasses.replace(TINY, embed_dim=32, tokenizer_channels=(8, 32)))
    with pytest.raises(ValueError, match="another model configuration"):
        train.load_train_state(tmp_path, other, torch.optim.AdamW(other.parameters()), None)


def test_evaluate_json_and_confusion_png(tiny_data: dict[str, Path], trained_run: Path, capsys: pytest.CaptureFixture):
    png = tiny_data["root"] / "confusion.png"
    code = training_main(["evaluate", "--checkpoint", str(trained_run / "best.json"), "--data",
                          f"dvsgesture:{tiny_data['data']}", "--cache", str(tiny_data["cache"]), "--windows", "3",
                          "--json", "--confusion", str(png)])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 4 * 3  # 4 test segments x 3 windows
    # how much of the input fires on these windows, against the training windows the checkpoint measured
    training = read_metadata(trained_run / "best.json")["input"]["coverage"]
    coverage = report["coverage"]
    assert coverage["windows"] == 12 and coverage["training_median"] == training["median"]
    assert coverage["ratio"] == pytest.approx(coverage["median"] / training["median"], abs=1e-4)
    assert 0.0 <= report["accuracy"] <= 1.0
    assert set(report["per_class"]) == set(report["classes"]) and report["per_class"]["air guitar"] is None
    assert np.trace(np.array(report["confusion"])) == round(report["accuracy"] * report["samples"])
    from PIL import Image

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert training_main(["train", "--config", "small", "--data", "bogus", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: data spec must be KIND:LOCATION")
    assert training_main(["evaluate", "--checkpoint", str(tmp_path / "none.json"), "--data", "sim:5"]) == 2
    assert "error:" in capsys.readouterr().err
    assert training_main(["train", "--config", "small", "--data", "sim:5", "--out", str(tmp_path),
                          "--normalisation", "cube"]) == 2  # fmt: skip
    assert "--normalisation" in capsys.readouterr().err
    assert training_main(["train", "--from", str(BUILTIN_CHECKPOINT), "--data", "sim:5", "--out", str(tmp_path),
                          "--causal", "--previous-frame", "--bins", "8"]) == 2  # fmt: skip
    assert capsys.readouterr().err.startswith("error: --bins, --previous-frame cannot change with --from")
    assert training_main(["train", "--config", "small", "--data", "sim:5", "--out", str(tmp_path),
                          "--onset-windows", "2"]) == 2  # fmt: skip
    assert capsys.readouterr().err.startswith("error: --onset-windows needs a causal model")


def test_from_a_windowed_checkpoint_with_causal_trains_a_causal_model(tiny_data: dict[str, Path], trained_run: Path,
                                                                      tmp_path: Path):  # fmt: skip
    """``--from WINDOWED --causal``: every weight of the parent but its time embedding, then a causal run
    (with onset windows)."""
    parent, metadata = load_checkpoint(trained_run / "last.json")
    assert not parent.config.causal and parent.time_embed is not None
    model = build_model(dataclasses.replace(parent.config, causal=True))
    assert train.initial_weights(model, parent, metadata["classes"], metadata["classes"]) == []
    parent_state = parent.state_dict()
    assert {name: value.shape for name, value in model.state_dict().items()} == {
        name: value.shape for name, value in parent_state.items() if name != "time_embed"}
    assert all(torch.equal(value, parent_state[name]) for name, value in model.state_dict().items())

    out = tmp_path / "causal"
    assert training_main(["train", *from_args(tiny_data, trained_run / "last.json", out, "--causal",
                                              "--onset-windows", "2")]) == 0  # fmt: skip
    child, child_metadata = load_checkpoint(out / "last.json")
    assert child_metadata["data"]["onset_windows"] == 2
    assert child.config == dataclasses.replace(parent.config, causal=True, name="custom")
    assert child_metadata["data"]["parent"]["sha256"] == metadata["weights"]["sha256"]
    assert child_metadata["input"]["window"] == metadata["input"]["window"]
    with torch.no_grad():
        assert child.forward_steps(torch.zeros(1, 4, 2, 16, 16)).shape == (1, 4, len(metadata["classes"]))


def test_distillation_loss_is_the_kl_to_the_teacher_at_labelled_steps_only() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(3, 5)
    student = torch.randn(3, 4, 5)
    labels = torch.tensor([[0, 0, 0, 0], [-100, -100, 1, 1], [2, 2, 2, 2]])
    temperature = train.DISTILL_TEMPERATURE
    expected = [
        torch.nn.functional.kl_div(torch.log_softmax(student[b, s] / temperature, -1),
                                   torch.softmax(teacher[b] / temperature, -1), reduction="sum")
        for b in range(3) for s in range(4) if labels[b, s] != -100
    ]  # fmt: skip
    assert torch.isclose(train.distillation_loss(student, teacher, labels),
                         torch.stack(expected).mean() * temperature**2, atol=1e-6)  # fmt: skip
    changed = student.clone()
    changed[1, :2] += 10.0  # unlabelled steps carry no loss
    assert torch.equal(train.distillation_loss(changed, teacher, labels), train.distillation_loss(student, teacher, labels))
    assert train.distillation_loss(teacher[:, None].expand(3, 4, 5), teacher, labels) < 1e-6  # the teacher itself: 0


def test_distill_from_the_windowed_model_trains_a_causal_student_and_records_its_teacher(
    tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):  # fmt: skip
    teacher = trained_run / "last.json"
    out = tmp_path / "student"
    assert training_main(["train", *from_args(tiny_data, teacher, out, "--causal", "--onset-windows", "1",
                                              "--distill-from", str(teacher), "--distill-weight", "0.7")]) == 0  # fmt: skip
    _, metadata = load_checkpoint(out / "last.json")
    assert metadata["data"]["distill"] == {"checkpoint": str(teacher), "weight": 0.7,
                                           "temperature": train.DISTILL_TEMPERATURE,
                                           "sha256": read_metadata(teacher)["weights"]["sha256"]}  # fmt: skip
    assert f"distilling from {teacher} (weight 0.7" in capsys.readouterr().out

    other = edited_checkpoint_copy(teacher, tmp_path / "other.json",
                                   lambda document: document["input"].update(normalisation=None))  # fmt: skip
    assert training_main(["train", *from_args(tiny_data, teacher, tmp_path / "refused", "--causal",
                                              "--distill-from", str(other))]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert error.startswith(f"error: --distill-from {other}: its input normalisation None is not the student's")
    assert len(error.strip().splitlines()) == 1
    assert training_main(["train", *from_args(tiny_data, teacher, tmp_path / "refused", "--causal",
                                              "--distill-from", str(teacher), "--distill-weight", "0")]) == 2  # fmt: skip
    assert capsys.readouterr().err.startswith("error: --distill-weight must be in (0, 1]")


def test_interpolate_saves_the_weight_space_mix_of_parent_and_trained(
    tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--from PARENT --interpolate 0.25``: each saved checkpoint is 0.75 * parent + 0.25 * the trained
    weights (which train_state keeps), and it records the mix."""
    from safetensors.torch import load_file

    parent, _ = load_checkpoint(trained_run / "last.json")
    out = tmp_path / "mixed"
    args = from_args(tiny_data, trained_run / "last.json", out, "--lr", "1e-2")  # the later --lr wins
    assert training_main(["train", *args, "--interpolate", "0.25"]) == 0
    saved, metadata = load_checkpoint(out / "last.json")
    trained = {name[len("model."):]: value for name, value in load_file(out / "train_state.safetensors").items()
               if name.startswith("model.")}  # fmt: skip
    parent_state, moved = parent.state_dict(), 0
    for name, value in saved.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * parent_state[name] + 0.25 * trained[name], atol=1e-6, rtol=1e-5)
            moved += not torch.equal(trained[name], parent_state[name])
    assert moved > 10  # the run did train: the mix is not the parent's weights
    assert metadata["data"]["interpolate"] == 0.25

    assert training_main(["train", *args, "--interpolate", "1.5"]) == 2
    assert "--interpolate must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert training_main(["train", *train_args(tiny_data, tmp_path / "scratch"), "--interpolate", "0.5"]) == 2
    assert "it needs --from CHECKPOINT" in capsys.readouterr().err


def test_rehearse_adds_as_many_windows_of_the_parents_data_as_the_takes_give(
    tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--rehearse SPEC``: every epoch twice the steps (the takes' windows, then as many of SPEC's);
    SPEC without one of the data's classes is a clear error."""
    out = tmp_path / "rehearsed"
    rehearse = ("--rehearse", f"dvsgesture:{tiny_data['data']}")
    assert training_main(["train", *from_args(tiny_data, trained_run / "last.json", out, *rehearse)]) == 0
    assert int(read_metrics(out)[0]["step"]) == 8  # (20 take segments + 20 rehearsal windows) / batch 5
    assert "rehearsal dvsgesture:" in capsys.readouterr().out
    assert load_checkpoint(out / "last.json")[1]["data"]["rehearse"] == f"dvsgesture:{tiny_data['data']}"

    (tmp_path / "labels.csv").write_text("file,class,start_us,end_us,split\n"
                                         f"{tiny_data['data'] / 'user01_led.aedat'},wave,100000,600000,train\n"
                                         f"{tiny_data['data'] / 'user01_led.aedat'},wave,700000,1200000,test\n")  # fmt: skip
    own = ("--data", f"folder:{tmp_path / 'labels.csv'}")  # the later --data wins
    own_run = from_args(tiny_data, trained_run / "last.json", tmp_path / "own", *rehearse, *own)
    assert training_main(["train", *own_run]) == 2
    error = capsys.readouterr().err
    assert "--rehearse dvsgesture:" in error and "none of its classes is one of the data's (wave)" in error
    assert training_main(["train", *train_args(tiny_data, tmp_path / "scratch"), "--rehearse", "sim:5"]) == 2
    assert "it needs --from CHECKPOINT" in capsys.readouterr().err


def test_weight_mix_keeps_the_trained_rows_of_new_classes() -> None:
    """A class the parent did not have has no parent row to mix with: its output row is the trained one."""
    torch.manual_seed(0)
    model = build_model(TINY)
    mix = train.WeightMix(model, 0.5, keep_rows=[3])
    trained = build_model(TINY)  # other random weights
    mixed = mix(trained).state_dict()
    initial, trained_state = model.state_dict(), trained.state_dict()
    torch.testing.assert_close(mixed["head.fc.weight"][3], trained_state["head.fc.weight"][3])
    torch.testing.assert_close(mixed["head.fc.bias"][3], trained_state["head.fc.bias"][3])
    half = (initial["head.fc.weight"][:3] + trained_state["head.fc.weight"][:3]) / 2
    torch.testing.assert_close(mixed["head.fc.weight"][:3], half)
    name = next(name for name in initial if name.startswith("tokenizer.") and initial[name].is_floating_point())
    torch.testing.assert_close(mixed[name], (initial[name] + trained_state[name]) / 2)


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path):
    """torchrun, 2 CPU processes, gloo: one epoch trains, rank 0 writes, evaluation covers every window once."""
    out = tmp_path / "ddp"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training", "train", *train_args(tiny_data, out, "--epochs", "1")]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(out)
    assert len(rows) == 1 and int(rows[0]["step"]) == 2  # 20 segments / (2 ranks x batch 5)
    _, metadata = load_checkpoint(out / "last.json")
    assert metadata["metrics"]["test_samples"] == 8  # 4 test segments x 2 windows, sharded then summed
    assert result.stdout.count("epoch 1/1") == 1  # only rank 0 logs


def test_finetune_background_activity_auto_keeps_the_window_the_parent_scores_best_with_on_the_train_takes(
    tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``finetune --background-activity``: auto scores the parent on the train takes with each candidate
    window, prints them and keeps the best in the new checkpoint (train --filters over the parent's);
    a window in µs is taken as given, ``keep`` keeps the parent's filters (here none)."""
    from training.evaluate import checkpoint_inputs, evaluate_checkpoint
    from training.finetune import BACKGROUND_ACTIVITY_CANDIDATES_US
    from training.finetune import main as finetune_main

    spec, cache = f"dvsgesture:{tiny_data['data']}", str(tiny_data["cache"])

    def filters_of(name: str, choice: str) -> dict | None:
        export = tmp_path / f"{name}.json"
        assert finetune_main(["--from", str(trained_run / "last.json"), "--data", spec, "--out", str(tmp_path / name),
                              "--export", str(export), "--cache", cache, "--epochs", "1", "--no-progress",
                              "--background-activity", choice]) == 0  # fmt: skip
        return read_metadata(export)["input"]["filters"]

    assert filters_of("given", "2000") == {"background_activity_us": 2000, "hot_pixels": None, "flicker": None}
    assert filters_of("keep", "keep") is None
    capsys.readouterr()
    chosen = (filters_of("auto", "auto") or {}).get("background_activity_us")
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (none|\d+)( \(kept\))? \| ([\d.]+)% \|", out, flags=re.MULTILINE)
    # the summary's last row: before (the parent) ... after; a parent that reads more is named as the one to keep
    before, after = map(float, re.findall(r"^\| \d+ segments, \d+ windows \| ([\d.]+)% \|.*\| ([\d.]+)% \|$", out,
                                          flags=re.MULTILINE)[0])  # fmt: skip
    assert ("note: the parent reads more of your test takes" in out) == (before > after), out
    shown = [None if window == "none" else int(window) for window, _, _ in rows]
    assert shown == list(BACKGROUND_ACTIVITY_CANDIDATES_US)
    assert [window for window, kept, _ in rows if kept] == [str(chosen).lower()]
    scores = {window: float(score) for window, _, score in rows}
    assert scores[str(chosen).lower()] == max(scores.values())
    inputs = checkpoint_inputs(read_metadata(trained_run / "last.json"))  # the table is the parent's on the train takes
    inputs = inputs._replace(filters={"background_activity_us": chosen, "hot_pixels": None, "flicker": None})
    score = evaluate_checkpoint(trained_run / "last.json", spec, split="train", cache_dir=cache, inputs=inputs)[0]
    assert f"{score.accuracy:.1%}" == f"{scores[str(chosen).lower()]}%"


def test_finetune_scores_an_adaptive_parent_window_first_then_fixed_windows_without_its_adaptation() -> None:
    """With a parent whose window follows the noise (the built-in's), ``auto`` scores that filter as it
    is, then each fixed window with the parent's other filters; a fixed window drops the adaptation."""
    from training.finetune import BACKGROUND_ACTIVITY_CANDIDATES_US, background_activity_candidates

    flicker = {"min_hz": 80.0, "max_hz": 150.0}
    parent = {"background_activity_us": 5000, "hot_pixels": None, "flicker": flicker,
              "background_activity_adapt": {"knee_hz": 1.0, "power": 1.6}}  # fmt: skip
    named = background_activity_candidates(parent)
    assert named[0] == ("5000, adaptive (1 Hz, power 1.6; the parent's)", parent)
    assert [filters["background_activity_us"] for _, filters in named[1:]] == list(BACKGROUND_ACTIVITY_CANDIDATES_US)
    assert all("background_activity_adapt" not in filters and filters["flicker"] == flicker for _, filters in named[1:])
    fixed = background_activity_candidates(None, (None, 250))  # a parent without filters: none, then 250 µs alone
    assert fixed == [("none", None), ("250", {"background_activity_us": 250, "hot_pixels": None, "flicker": None})]


def test_finetune_epochs_0_exports_the_parent_with_the_fitted_filter_and_needs_a_parent_that_knows_the_classes(
    tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``finetune --epochs 0``: no training; the parent's weights, classes and inputs with the window
    ``--background-activity`` picks, recording where they came from. A parent that does not know the
    data's classes cannot be exported as it is: one clear error, before any work."""
    from training.evaluate import checkpoint_inputs, evaluate_checkpoint
    from training.finetune import main as finetune_main

    spec, cache, parent = f"dvsgesture:{tiny_data['data']}", str(tiny_data["cache"]), trained_run / "last.json"
    export = tmp_path / "filtered.json"
    argv = ["--from", str(parent), "--data", spec, "--out", str(tmp_path / "out"), "--export", str(export), "--cache",
            cache, "--no-progress", "--epochs", "0", "--background-activity", "2000"]  # fmt: skip
    assert finetune_main(argv) == 0
    assert not (tmp_path / "out" / "run").exists()  # nothing trained
    # how much of the input the takes fire, against the parent's training data (its input.coverage)
    told = capsys.readouterr().out.split("your test takes against the parent's training data: input coverage ")[1]
    takes = evaluate_checkpoint(export, spec, cache_dir=cache)[1]
    ratio = np.median(window_coverage(takes.frames)) / read_metadata(parent)["input"]["coverage"]["median"]
    assert told.startswith(f"{ratio:.2f}x training")
    exported, original = read_metadata(export), read_metadata(parent)
    assert exported["weights"]["sha256"] == original["weights"]["sha256"] and exported["classes"] == original["classes"]
    assert exported["input"]["filters"] == {"background_activity_us": 2000, "hot_pixels": None, "flicker": None}
    assert exported["input"]["window"] == original["input"]["window"]
    assert exported["data"]["parent"]["sha256"] == original["weights"]["sha256"]
    assert "--epochs 0" in exported["data"]["command"]
    inputs = checkpoint_inputs(original)._replace(filters=exported["input"]["filters"])
    assert (evaluate_checkpoint(export, spec, cache_dir=cache)[0].accuracy
            == evaluate_checkpoint(parent, spec, cache_dir=cache, inputs=inputs)[0].accuracy)  # fmt: skip

    def rename(document: dict) -> None:  # the same weights under other class names
        document["classes"] = [f"gesture {index}" for index in range(len(document["classes"]))]

    renamed = edited_checkpoint_copy(parent, tmp_path / "last.json", rename)
    with pytest.raises(ValueError, match="--epochs 0 .* needs a parent that knows your classes"):
        finetune_main([*argv[2:], "--from", str(renamed)])


def test_finetune_gives_the_same_weights_for_a_seed_and_other_weights_for_another(
    tiny_data: dict[str, Path], trained_run: Path, tmp_path: Path
) -> None:
    """``finetune --seed``: the window draws, augmentation and batches follow the seed, so the same
    command on the same recordings (and the same machine) gives the same weights bit for bit."""
    from safetensors.torch import load_file

    from training.finetune import main as finetune_main

    def weights(name: str, seed: str) -> dict[str, torch.Tensor]:
        export = tmp_path / f"{name}.json"
        assert finetune_main(["--from", str(trained_run / "last.json"), "--data", f"dvsgesture:{tiny_data['data']}",
                              "--out", str(tmp_path / name), "--export", str(export), "--cache",
                              str(tiny_data["cache"]), "--epochs", "1", "--seed", seed, "--no-progress"]) == 0  # fmt: skip
        return load_file(export.with_suffix(".safetensors"))

    first, again, other = weights("a", "3"), weights("b", "3"), weights("c", "4")
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
