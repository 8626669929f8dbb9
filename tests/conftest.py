"""Shared fixtures (helpers are in ``helpers.py``). Tests never need ../shared: fixtures that use it
skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one CPU per worker, its stages and trainings included
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REAL_AEDAT4 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "davis346_street.aedat4"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first (those given a longer timeout, then those marked slow), so that with
    ``-n 2`` both workers start on them and the run does not end waiting for one of them alone."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("timeout") else 1 if item.get_closest_marker("slow") else 2)


@pytest.fixture
def real_aedat4() -> Path:
    """The DAVIS346 street recording from ../shared (skipped where the checkout has no ../shared)."""
    if not REAL_AEDAT4.is_file():
        pytest.skip("../shared/data/real/davis346_street.aedat4 is not present")
    return REAL_AEDAT4


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny randomly initialised Spikeformer (``helpers.TINY_CONFIG``) as a checkpoint, once per
    session: its predictions are noise, fast on any CPU."""
    from helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def stage_env(tmp_path_factory) -> dict:
    """Environment for stage processes: ONNX/engine caches in one temp dir for the session (an export
    is made once, not once per test module), the repository importable."""
    from helpers import stage_environment

    return stage_environment(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_checkpoint, stage_env):
    """The tiny checkpoint on the test backend (ONNX Runtime on the CPU) in this process, and its metadata."""
    from helpers import TEST_BACKEND

    from inference.backends import create_backend
    from training.checkpoint import read_metadata

    os.environ.setdefault("XDG_CACHE_HOME", stage_env["XDG_CACHE_HOME"])
    return create_backend(TEST_BACKEND, tiny_checkpoint, device="cpu"), read_metadata(tiny_checkpoint)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: the test box is shared, and a 2-thread OpenMP pool under
    load is ~50x slower than one thread (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
