"""Shared fixtures. Third-party plugins installed on a developer's machine stay out of tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests draw the same examples on every run (CI must not go red by chance); set
# HYPOTHESIS_PROFILE=explore to search fresh random examples, which is how a bug is found.
# too_slow (drawing examples took long) measures how busy a shared machine is, not the code
settings.register_profile("repeatable", derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# Before anything imports galmerge: no third-party entry points unless a test opts in, and
# one torch thread per worker so tests on a 2-core machine do not fight.
os.environ["GALMERGE_LOAD_PLUGINS"] = ""
os.environ.pop("GALMERGE_DISABLE_PLUGINS", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from galmerge.plugin.manager import reset_plugin_manager

    monkeypatch.setenv("GALMERGE_LOAD_PLUGINS", "")
    monkeypatch.delenv("GALMERGE_DISABLE_PLUGINS", raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GALMERGE_DATA points at one temporary folder per test session (synthetic sets cache)."""
    data = tmp_path_factory.getbasetemp() / "galmerge-data"
    data.mkdir(exist_ok=True)
    monkeypatch.setenv("GALMERGE_DATA", str(data))
    return data


@pytest.fixture
def plugin_manager():
    """The process plugin manager, fresh for this test."""
    from galmerge.plugin.manager import get_plugin_manager

    return get_plugin_manager()


@pytest.fixture
def register_plugin(plugin_manager):
    """Register in-process plugin objects for one test: ``register_plugin(obj, "name")``."""
    names: list[str] = []

    def _register(plugin: object, name: str) -> None:
        plugin_manager.register(plugin, name=name)
        names.append(name)

    yield _register
    for name in names:
        if plugin_manager.pm.has_plugin(name):
            plugin_manager.unregister(name)


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def busy_torchrun_ports() -> Iterator[None]:
    """Hold torchrun's default port (29500) and the ports tests once hard-coded, as another
    job on a shared machine might: a test launching torchrun must still pass
    (``torchrun --standalone`` picks a free port)."""
    held = []
    for port in (29500, 29533, 29561):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:  # already taken by someone else: busy either way
            sock.close()
            continue
        held.append(sock)
    yield
    for sock in held:
        sock.close()
