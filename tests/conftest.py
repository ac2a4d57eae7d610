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

# No test reaches the internet. Every service URL defaults to a closed loopback port (a test
# that serves one sets its own), and this process refuses connections to any address but the
# machine itself, so a test that forgets to point a service at its loopback server fails at
# once instead of asking the real SDSS, MAST or Zenodo.
for _name in ("GALMERGE_ZENODO_URL", "GALMERGE_MAST_URL", "GALMERGE_SDSS_SKYSERVER_URL",
              "GALMERGE_SDSS_SAS_URL", "GALMERGE_LEGACYSURVEY_URL", "GALMERGE_LSST_URL"):
    os.environ.setdefault(_name, "http://127.0.0.1:9")
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _local_only(sock: socket.socket, address: object) -> None:
    import ipaddress

    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = str(address[0])
        try:
            local = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            local = host == "localhost"
        if not local:
            raise OSError(f"tests may not reach the network ({host}); serve it on 127.0.0.1")


def _guarded_connect(sock: socket.socket, address: object) -> None:
    _local_only(sock, address)
    return _connect(sock, address)


def _guarded_connect_ex(sock: socket.socket, address: object) -> int:
    _local_only(sock, address)
    return _connect_ex(sock, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


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
