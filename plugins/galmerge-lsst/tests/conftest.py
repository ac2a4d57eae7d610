"""Fixtures for the galmerge-lsst tests: a loopback Rubin Science Platform and isolation."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_rsp, however pytest was started

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only this third-party plugin loads; no token or URL leaks in from the caller's shell."""
    from galmerge import reset_plugin_manager

    monkeypatch.setenv("GALMERGE_LOAD_PLUGINS", "lsst")
    monkeypatch.delenv("GALMERGE_DISABLE_PLUGINS", raising=False)
    for name in ("GALMERGE_RSP_TOKEN", "ACCESS_TOKEN", "GALMERGE_LSST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def rsp(monkeypatch: pytest.MonkeyPatch):
    """A started fake RSP; GALMERGE_LSST_URL and GALMERGE_RSP_TOKEN point at it."""
    from fake_rsp import FakeRsp

    server = FakeRsp().start()
    monkeypatch.setenv("GALMERGE_LSST_URL", server.url)
    monkeypatch.setenv("GALMERGE_RSP_TOKEN", server.token)
    try:
        yield server
    finally:
        server.stop()
