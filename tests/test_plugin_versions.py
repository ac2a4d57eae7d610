"""Checkpoints name the plugin versions that made them; loading one under other versions says so.

The plugin here is a real distribution: a package and its own ``.dist-info`` (METADATA and an
entry point in the "galmerge" group) in a folder put on ``sys.path``, as pip leaves it. Its
"releases" live in separate folders; upgrading is swapping the folder on ``sys.path``.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from eval_helpers import write_pair

import galmerge
from galmerge.cli import cli
from galmerge.errors import GalmergeError, PluginBug
from galmerge.models.model import load_model, read_checkpoint, save_checkpoint
from galmerge.plugin.manager import reset_plugin_manager

DIST = "galmerge-vtoy"

# the backbone's option, by release: 0.3.0 renamed it; 0.4.0's build has a bug
RELEASES = {
    "0.2.0": ("width", ""),
    "0.2.1": ("width", ""),
    "0.3.0": ("channels", ""),
    "0.4.0": ("width", "raise ValueError('oops')"),
}

PLUGIN = '''
import torch
from torch import nn

from galmerge import Backbone, Option, Strategy, hookimpl


class Net(nn.Module):
    def __init__(self, in_channels, image_size, size):
        super().__init__()
        {bug}
        self.conv = nn.Conv2d(in_channels, size, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.out_features = size * 4

    def forward(self, x):
        return torch.flatten(self.pool(torch.relu(self.conv(x))), 1)


class Gap(nn.Module):
    def forward(self, step):
        return {{"vgap": (step.source_features.mean(0) - step.target_features.mean(0))
                 .pow(2).sum()}}


@hookimpl
def register_backbones():
    return [Backbone(name="vbb", description="versioned test backbone",
                     build=lambda c, s, {option}: Net(c, s, {option}),
                     options={{"{option}": Option(4, "channels", min=1)}})]


@hookimpl
def register_strategies():
    return [Strategy(name="vgap", description="versioned test strategy",
                     build=lambda context, options: Gap(), defaults={{"weight": 1.0}})]
'''


def _release(root: Path, version: str) -> Path:
    """A folder holding release ``version`` of the plugin as an installed distribution."""
    folder = root / f"site-{version}"
    if folder.exists():
        return folder
    module = f"galmerge_vtoy_{version.replace('.', '_')}"  # one module per release: no stale import
    option, bug = RELEASES[version]
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(
        textwrap.dedent(PLUGIN).format(option=option, bug=bug or "pass"))
    info = folder / f"galmerge_vtoy-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[galmerge]\nvtoy = {module}\n")
    return folder


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install("0.3.0")`` makes that release the installed one; ``install(None)`` removes it."""
    monkeypatch.setenv("GALMERGE_LOAD_PLUGINS", "vtoy")
    base = list(sys.path)

    def _install(version: str | None) -> None:
        extra = [str(_release(tmp_path / "releases", version))] if version else []
        monkeypatch.setattr(sys, "path", extra + base)
        importlib.invalidate_caches()
        reset_plugin_manager()

    return _install


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    return write_pair(tmp_path_factory.mktemp("vdata"))


def _train(run: Path, data: tuple[str, str], **kw) -> dict:
    args = dict(source=data[0], target=data[1], strategy="vgap+coral", backbone="vbb",
                epochs=1, batch_size=8, device="cpu", quiet=True, patience=0, run_dir=run)
    args.update(kw)
    return galmerge.train(**args)


def _export(run: Path, out: Path):
    return CliRunner().invoke(cli, ["export", str(run), "--format", "torchscript",
                                    "--output", str(out)])


def _entry(distribution: str, version: str, plugin: str) -> dict[str, str]:
    return {"plugin": plugin, "distribution": distribution, "version": version}


def test_checkpoints_and_env_record_each_components_distribution(install, data, tmp_path):
    install("0.2.0")
    run = tmp_path / "run"
    _train(run, data)
    own = galmerge.__version__
    expected = {
        "backbone": {"vbb": _entry(DIST, "0.2.0", "vtoy")},
        "strategy": {"vgap": _entry(DIST, "0.2.0", "vtoy"),
                     "coral": _entry("galmerge", own, "da_strategies")},
        "survey": {"hdf5": _entry("galmerge", own, "hdf5_survey")},
    }
    for name in ("best.pt", "last.pt"):  # plain values: the weights-only loader reads them
        assert torch.load(run / name, weights_only=True)["plugin_versions"] == expected
    assert json.loads((run / "env.json").read_text())["plugin_versions"] == expected


def test_a_load_that_fails_names_the_version_trained_with_and_the_installed_one(
        install, data, tmp_path):
    install("0.2.0")
    run = tmp_path / "run"
    _train(run, data)
    restore = f"`galmerge install {DIST}==0.2.0` restores it"

    install("0.3.0")  # the option 'width' is 'channels' now
    result = _export(run, tmp_path / "a.pt")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "unknown option(s) width for backbone 'vbb'" in line and "\n" not in line
    assert line.endswith(f"(trained with {DIST} 0.2.0; installed: 0.3.0; {restore})")
    with pytest.raises(GalmergeError) as info:  # --resume: its config no longer resolves
        galmerge.train(resume=run, quiet=True)
    assert str(info.value).endswith(f"(trained with {DIST} 0.2.0; installed: 0.3.0; {restore})")

    install("0.4.0")  # a bug in the plugin's build: still the plugin's bug, with the versions
    with pytest.raises(PluginBug) as bug:
        load_model(run)
    assert "ValueError: oops" in str(bug.value)
    assert str(bug.value).endswith(f"(trained with {DIST} 0.2.0; installed: 0.4.0; {restore})")

    install(None)  # uninstalled
    line = _export(run, tmp_path / "b.pt").output.strip()
    assert line.startswith("Error: unknown backbone 'vbb'")
    assert line.endswith(f"(trained with {DIST} 0.2.0; installed: none; {restore})")


def test_a_load_that_works_under_another_version_warns_once(install, data, tmp_path, capsys):
    install("0.2.0")
    run = tmp_path / "run"
    _train(run, data)
    capsys.readouterr()
    load_model(run)
    assert "warning" not in capsys.readouterr().err  # the same versions: nothing to say

    install("0.2.1")
    load_model(run)
    load_model(run)
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1, warnings
    assert f"was trained with {DIST} 0.2.0; installed: 0.2.1;" in warnings[0]
    from galmerge.plugin import versions

    versions._warned.clear()  # a fresh process, as each torchrun rank is: rank 1 says nothing
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANK", "1")
        load_model(run)
    assert "warning" not in capsys.readouterr().err
    load_model(run)  # rank 0 (no RANK) says it
    assert "warning" in capsys.readouterr().err

    # --init-from reads its weights and strategy state: the same warning for that checkpoint
    _train(tmp_path / "next", data, init_from=str(run / "last.pt"))
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and str(run / "last.pt") in warnings[0], warnings


def test_a_checkpoint_without_the_record_loads_as_before(install, data, tmp_path, capsys):
    install("0.2.0")
    run = tmp_path / "run"
    _train(run, data)
    old = read_checkpoint(run / "best.pt")
    del old["plugin_versions"]  # as written before the record existed
    save_checkpoint(tmp_path / "old.pt", old)

    install("0.2.1")
    capsys.readouterr()
    load_model(tmp_path / "old.pt")
    assert "warning" not in capsys.readouterr().err
    install("0.3.0")
    with pytest.raises(GalmergeError) as info:
        load_model(tmp_path / "old.pt")
    # as before: no versions to name
    assert str(info.value) == "unknown option(s) width for backbone 'vbb'; known: channels"


def test_a_galmerge_upgrade_does_not_warn_but_a_failing_build_names_it(
        install, data, tmp_path, capsys):
    """Built-ins change with galmerge, which has its own upgrade notes: a checkpoint of another
    galmerge release loads without a warning; a build that fails says so, with pip (not
    `galmerge install`, which adds plugins) as the way back."""
    install("0.2.0")
    run = tmp_path / "run"
    _train(run, data)
    old = read_checkpoint(run / "best.pt")
    for kind in old["plugin_versions"].values():
        for entry in kind.values():
            if entry["distribution"] == "galmerge":
                entry["version"] = "0.0.9"
    save_checkpoint(tmp_path / "old.pt", old)
    capsys.readouterr()
    load_model(tmp_path / "old.pt")
    assert "warning" not in capsys.readouterr().err
    # a build that fails names galmerge's release too, with pip as the way back
    from galmerge.plugin.versions import Change, describe

    assert describe([Change(DIST, "0.2.0", "0.3.0"), Change("galmerge", "0.0.9", "0.1.0")]) == (
        f"trained with {DIST} 0.2.0, galmerge 0.0.9; installed: {DIST} 0.3.0, galmerge 0.1.0; "
        f"`galmerge install {DIST}==0.2.0` restores it; `pip install galmerge==0.0.9` restores "
        "galmerge's own")
