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
