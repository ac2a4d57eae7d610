"""Fixtures for the galmerge-legacysurvey tests: a loopback cutout service and isolation."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_legacysurvey, however pytest was started

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only this third-party plugin loads; the data folder is private to the test."""
    from galmerge import reset_plugin_manager

    monkeypatch.setenv("GALMERGE_LOAD_PLUGINS", "legacysurvey")
    monkeypatch.delenv("GALMERGE_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def legacy_server(monkeypatch: pytest.MonkeyPatch):
    """A started fake Legacy Surveys service; GALMERGE_LEGACYSURVEY_URL points at it."""
    from fake_legacysurvey import FakeLegacySurvey

    server = FakeLegacySurvey().start()
    monkeypatch.setenv("GALMERGE_LEGACYSURVEY_URL", server.url)
    try:
        yield server
    finally:
        server.stop()
