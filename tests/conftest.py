"""Shared test fixtures. Tests never need ../shared: fixtures that use it skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REAL_AEDAT4 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "davis346_street.aedat4"


@pytest.fixture
def real_aedat4() -> Path:
    """The DAVIS346 street recording from ../shared (skipped where the checkout has no ../shared)."""
    if not REAL_AEDAT4.is_file():
        pytest.skip("../shared/data/real/davis346_street.aedat4 is not present")
    return REAL_AEDAT4


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny randomly initialised Spikeformer checkpoint (``test_pipeline.make_tiny_checkpoint``) for
    the tests that run stages; test modules with a checkpoint of their own define this name again."""
    from test_pipeline import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def stage_env(tmp_path_factory) -> dict:
    """Environment for stage processes: ONNX/engine caches in one temp dir for the session (an export
    is made once, not once per test module), the repository importable."""
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env
