"""`galmerge install` / `uninstall`: pip in galmerge's own interpreter, offline (a local wheel)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from galmerge.cli import cli

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_SOURCE = '''
from galmerge import Strategy, hookimpl


def _build(context, options):
    raise RuntimeError("not for training")


@hookimpl
def register_strategies():
    return [Strategy(name="toyplug", description="installed by galmerge install", build=_build)]
'''


def _write_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel (what `python -m build` makes for a one-module plugin)."""
    dist, version, module = "galmerge_toyplug", "0.1.0", "galmerge_toyplug"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}.py": PLUGIN_SOURCE,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: galmerge-toyplug\nVersion: 0.1.0\n"
        "Keywords: galmerge-plugin\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[galmerge]\ntoyplug = {module}\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True)
    wheel = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


@pytest.fixture
def env_python(tmp_path: Path) -> Path:
    """A fresh venv that sees this environment's packages through a .pth file, so pip installs
    into the venv (and uninstalls from it) while torch, click and pip come from here."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
                   check=True)  # fmt: skip
    python = tmp_path / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    parents = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    Path(purelib, "_galmerge_test_parent.pth").write_text("\n".join(dict.fromkeys(parents)))
    return python


def _galmerge(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "GALMERGE_LOAD_PLUGINS": "toyplug"}  # fmt: skip
    return subprocess.run([str(python), "-m", "galmerge", *args], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


def _strategies(python: Path) -> set[str]:
    result = _galmerge(python, "list", "strategies", "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"] for row in json.loads(result.stdout)}


def test_install_and_uninstall_a_plugin_offline(tmp_path: Path, env_python: Path) -> None:
    wheels = _write_wheel(tmp_path / "wheels").parent
    assert "toyplug" not in _strategies(env_python)

    # pip options galmerge does not know pass through to pip
    result = _galmerge(env_python, "install", "--no-index", "--find-links", str(wheels),
                       "galmerge-toyplug")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "toyplug" in _strategies(env_python)
    installed = list((tmp_path / "venv").rglob("galmerge_toyplug.py"))
    assert installed, "pip did not install into galmerge's own environment"

    result = _galmerge(env_python, "uninstall", "-y", "galmerge-toyplug")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "toyplug" not in _strategies(env_python)


def test_pip_failure_is_the_exit_status(tmp_path: Path, env_python: Path) -> None:
    result = _galmerge(env_python, "install", "--no-index", "--find-links", str(tmp_path),
                       "galmerge-no-such-plugin")  # fmt: skip
    assert result.returncode != 0
    assert "galmerge-no-such-plugin" in result.stderr


def test_dry_run_installs_nothing(tmp_path: Path, env_python: Path) -> None:
    wheels = _write_wheel(tmp_path / "wheels").parent
    result = _galmerge(env_python, "install", "--dry-run", "--no-index", "--find-links",
                       str(wheels), "galmerge-toyplug")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Would install galmerge-toyplug-0.1.0" in result.stdout
    assert "toyplug" not in _strategies(env_python)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["install"], "name a plugin to install"),
        (["uninstall", "-y", "galmerge"], "removes plugins, not galmerge itself"),
        (["uninstall", "-y", "Galmerge[onnx]==0.1.0"], "removes plugins, not galmerge itself"),
        (["uninstall", "-y", "torch"], "torch is not an installed galmerge plugin"),
        (["uninstall", "-y", "-r", "req.txt"], "not a requirements file"),
        (["uninstall", "-y", "-rreq.txt"], "not a requirements file"),
        (["uninstall", "-y", "--log", "pip.log", "torch"], "torch is not an installed"),
        # pip reads an abbreviation as --requirement: only named options reach it
        (["uninstall", "-y", "--requirem=req.txt"], "does not pass --requirem to pip"),
        (["uninstall", "-y", "--python", "/usr/bin/python3", "galmerge-mcc"],
         "does not pass --python to pip"),
    ],
)
def test_mistakes_are_one_line(args: list[str], message: str, monkeypatch) -> None:
    from galmerge.commands import install

    def no_pip(*pip_args: str) -> None:  # a regression must fail here, not uninstall torch
        raise AssertionError(f"pip ran: {pip_args}")

    monkeypatch.setattr(install, "_pip", no_pip)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_plugins_points_to_the_plugin_listing() -> None:
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "pypi.org/search/?q=galmerge-plugin" in result.output
    assert "galmerge install NAME" in result.output
