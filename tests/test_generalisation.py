"""The leave-one-domain-out protocol (#15): which data each model is trained and tested on, and the
``generalisation domains`` / ``loro --only`` commands end to end on tiny real domains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.sim.scene import LOOKS
from training.__main__ import main as training_main
from training.generalisation import LIGHT_GROUPS, domain_name, loro_splits
from training.generalisation import main as generalisation_main


def domains_of(spec: str, root: Path) -> set[str]:
    return {part.removeprefix(f"sim:{root}/") for part in spec.split("+")}


def test_a_held_out_domain_is_never_trained_on(tmp_path: Path) -> None:
    splits = loro_splits(tmp_path)
    every = {domain_name(look, group) for look in LOOKS for group in LIGHT_GROUPS}
    assert sorted(splits) == ["light flicker", "light steady", "renderer capsules", "renderer polygons",
                              "renderer shaded"]  # fmt: skip
    for name, (train_spec, test_spec) in splits.items():
        trained, tested = domains_of(train_spec, tmp_path), domains_of(test_spec, tmp_path)
        assert not trained & tested and trained | tested == every, name
        _, held_out = name.split()
        assert all(held_out in domain for domain in tested) and not any(held_out in domain for domain in trained)
    assert domains_of(splits["renderer shaded"][0], tmp_path) == {"capsules-steady", "capsules-flicker",
                                                                  "polygons-steady", "polygons-flicker"}  # fmt: skip
    two = loro_splits(tmp_path, ["renderer", "light"], looks=["capsules", "shaded"])
    assert domains_of(two["renderer capsules"][0], tmp_path) == {"shaded-steady", "shaded-flicker"}
    assert domains_of(two["light steady"][1], tmp_path) == {"capsules-steady", "shaded-steady"}
    with pytest.raises(ValueError, match="two renderers or more"):
        loro_splits(tmp_path, ["renderer"], looks=["shaded"])
    assert list(loro_splits(tmp_path, ["light"], looks=["shaded"])) == ["light steady", "light flicker"]


@pytest.mark.timeout(600)
def test_leaving_out_each_renderer_trains_on_the_other_and_tests_on_it(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "domains", tmp_path / "loro"
    looks = ["--looks", "capsules,polygons"]
    assert generalisation_main(["domains", "--root", str(root), "--samples", "22", "--workers", "2", *looks]) == 0
    assert sorted(path.name for path in root.iterdir()) == ["capsules-flicker", "capsules-steady", "polygons-flicker",
                                                            "polygons-steady"]  # 2 people each  # fmt: skip
    assert generalisation_main(["loro", "--root", str(root), "--out", str(out), "--only", "renderer", *looks, "--",
                                "--config", "small", "--epochs", "1", "--bin-workers", "1"]) == 0  # fmt: skip
    result = json.loads((out / "loro.json").read_text())
    assert sorted(result["domains"]) == ["renderer capsules", "renderer polygons"]  # no light-group trainings
    for name, row in result["domains"].items():
        held_out = name.split()[1]
        assert held_out in row["test"] and held_out not in row["train"]
        assert row["held_out_windows"] > 0 and 0.0 <= row["held_out_accuracy"] <= 1.0
    table = capsys.readouterr().out
    assert "| renderer capsules | polygons-steady+polygons-flicker |" in table and "light" not in table.split("|---")[-1]


def test_a_training_that_fails_is_one_error_line_naming_its_log(tmp_path: Path, capsys) -> None:
    root = tmp_path / "domains"  # no data sets there: every training fails at once
    assert training_main(["generalisation", "loro", "--root", str(root), "--out", str(tmp_path / "loro"), "--only",
                          "light", "--", "--config", "small", "--epochs", "1"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert error.startswith("error: the training that leaves out light") and "Traceback" not in error
    assert "log: " in error and error.count("\n") == 1


def test_accuracy_per_gesture_style_counts_every_window_once(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    """``generalisation styles``: every evaluated window falls under its gesture's class and style
    (as scenes.json records them), and the windows right add up to the evaluation's; a data set
    written without styles gets one clear error."""
    from stream.sim.dataset import write_dataset
    from training.evaluate import evaluate_checkpoint
    from training.generalisation import style_accuracy

    write_dataset(tmp_path / "data", samples=22, seed=4, gesture_us=1_200_000, idle_us=200_000)
    spec = f"sim:{tmp_path / 'data'}"
    counts = style_accuracy(tiny_checkpoint, spec, cache=tmp_path / "cache")
    result, _ = evaluate_checkpoint(tiny_checkpoint, spec, split="all", cache_dir=str(tmp_path / "cache"))
    assert sum(total for _, total in counts.values()) == result.samples == 22 * 4
    assert sum(right for right, _ in counts.values()) == int(result.confusion.trace())
    scenes = json.loads((tmp_path / "data" / "scenes.json").read_text())
    assert {style for _, style in counts} == {style for scene in scenes.values() for style in scene["styles"]}
    for (name, style), (_, total) in counts.items():
        assert total % 4 == 0, (name, style)  # whole gestures, 4 windows each
        if name == "hand clapping":
            assert "clap" in style
    assert generalisation_main(["styles", "--checkpoint", str(tiny_checkpoint), "--data", spec,
                                "--cache", str(tmp_path / "cache")]) == 0  # fmt: skip
    assert "| class | style | windows | accuracy |" in capsys.readouterr().out
    for scene in scenes.values():
        del scene["styles"]
    (tmp_path / "data" / "scenes.json").write_text(json.dumps(scenes))
    with pytest.raises(ValueError, match="gives no style for each gesture"):
        style_accuracy(tiny_checkpoint, spec, cache=tmp_path / "cache")
