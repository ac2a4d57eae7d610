"""The plugin contract: discovery, broken and conflicting plugins, blocking, typo protection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from galmerge import hookimpl
from galmerge.cli import cli
from galmerge.errors import PluginError
from galmerge.plugin.records import Backbone, Strategy, Survey

BUILTIN_PLUGINS = {
    "deepmerge_backbones",
    "da_strategies",
    "synthetic_survey",
    "hdf5_survey",
    "illustris_survey",
    "sdss_survey",
}


def _fake_distribution(root: Path, dist: str, ep_name: str, module: str, source: str) -> Path:
    """Install a plugin the way pip does: a module plus a .dist-info with entry_points.txt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[galmerge]\n{ep_name} = {module}\n")
    return root


def _run_cli(*args: str, extra_path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    if extra_path is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(extra_path), *filter(None, [full_env.get("PYTHONPATH")])]
        )
    return subprocess.run(
        [sys.executable, "-m", "galmerge", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def test_builtins_are_listed_as_galmerge_plugins():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = {r["name"] for r in rows}
    assert names >= BUILTIN_PLUGINS
    for row in rows:
        assert set(row) >= {"name", "distribution", "version", "builtin", "hooks", "components"}
        if row["name"] in BUILTIN_PLUGINS:
            assert row["builtin"] is True
            assert row["distribution"] == "galmerge"
            assert row["error"] is None


def test_plugins_table_output():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "sdss_survey" in result.output


@pytest.mark.parametrize("kind", ["backbones", "strategies", "surveys"])
def test_list_json_shape(kind):
    result = CliRunner().invoke(cli, ["list", kind, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows, f"no {kind} registered"
    for row in rows:
        assert row["name"] and row["description"]
        assert row["distribution"] == "galmerge"


def test_list_unknown_kind_exits_nonzero():
    result = CliRunner().invoke(cli, ["list", "telescopes"])
    assert result.exit_code == 2
    assert "telescopes" in result.output


def test_in_process_plugin_adds_components(register_plugin):
    class Extra:
        @hookimpl
        def register_backbones(self):
            yield Backbone(name="tiny-test", description="a test backbone", build=lambda c, s: None)

    register_plugin(Extra(), "extra-test")
    result = CliRunner().invoke(cli, ["list", "backbones", "--json"])
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in json.loads(result.output)]
    assert "tiny-test" in names


def test_conflicting_names_name_both_plugins(register_plugin, plugin_manager):
    def make(tag: str):
        class P:
            @hookimpl
            def register_surveys(self):
                return [Survey(name="lsst", description=f"LSST from {tag}")]

        return P()

    register_plugin(make("a"), "lsst-a")
    register_plugin(make("b"), "lsst-b")
    # the clash takes only that name out: every other survey still works
    surveys = plugin_manager.components("surveys")
    assert "lsst" not in surveys and "sdss" in surveys
    with pytest.raises(PluginError) as err:
        plugin_manager.get("surveys", "lsst")
    message = str(err.value)
    assert "'lsst'" in message and "lsst-a" in message and "lsst-b" in message
    result = CliRunner().invoke(cli, ["list", "surveys"])
    assert result.exit_code == 0 and "sdss" in result.stdout and "lsst" not in result.stdout
    # using the name: one line and a non-zero exit, no traceback
    result = CliRunner().invoke(cli, ["preview", "lsst"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "lsst-a" in result.output and "lsst-b" in result.output


def test_galmerge_plugins_shows_a_name_clash_on_both_plugins(register_plugin, plugin_manager,
                                                             monkeypatch):
    """`galmerge plugins` once listed both plugins of a clash as "ok" with components "-"
    (the clash was swallowed), while `galmerge list surveys` refused it."""
    def make(tag: str):
        class P:
            @hookimpl
            def register_surveys(self):
                return [Survey(name="lsst", description=f"LSST from {tag}")]

        return P()

    register_plugin(make("a"), "lsst-a")
    register_plugin(make("b"), "lsst-b")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("lsst-a", "lsst-b"):
        error = rows[name]["error"]
        assert error and "survey name 'lsst' is registered by two plugins" in error
        assert "lsst-a" in error and "lsst-b" in error and "\n" not in error
    assert rows["sdss_survey"]["error"] is None
    monkeypatch.setenv("COLUMNS", "400")  # rich's width: one line per row
    table = CliRunner().invoke(cli, ["plugins"])
    assert table.output.count("failed: survey name 'lsst' is registered by two") == 2, table.output
    from galmerge.config.rundir import environment

    assert {"lsst-a", "lsst-b"} <= set(environment("cpu")["plugins"])  # loaded, so recorded
    plugin_manager.unregister("lsst-b")  # the clash gone, so is the error
    assert {i.name: i.error for i in plugin_manager.plugin_infos()}["lsst-a"] is None


def test_alias_conflict_is_detected(register_plugin, plugin_manager):
    def make(name: str):
        class P:
            @hookimpl
            def register_strategies(self):
                return [Strategy(name=name, description="x", build=lambda c, o: None, aliases=("zz",))]

        return P()

    register_plugin(make("adv-one"), "alias-one")
    register_plugin(make("adv-two"), "alias-two")
    strategies = plugin_manager.components("strategies")
    assert "adv-one" not in strategies and "adv-two" not in strategies and "dann" in strategies
    for name in ("zz", "adv-one", "adv-two"):  # each name of a record in the clash
        with pytest.raises(PluginError, match="'zz'.*alias-one.*alias-two"):
            plugin_manager.get("strategies", name)


def test_hookimpl_typo_fails_loudly(register_plugin):
    class Typo:
        @hookimpl
        def register_backbone(self):  # missing "s"
            return []

    with pytest.raises(PluginError, match="did you mean 'register_backbones'"):
        register_plugin(Typo(), "typo")


def test_wrong_record_type_is_reported(register_plugin, plugin_manager):
    class Wrong:
        @hookimpl
        def register_backbones(self):
            return [{"name": "dict-not-record"}]

    register_plugin(Wrong(), "wrong")
    backbones = plugin_manager.components("backbones")  # the plugin is skipped, with a warning
    assert "dict-not-record" not in backbones and "deepmerge" in backbones
    failed = {i.name: i.error for i in plugin_manager.failed}
    assert "expected a list of galmerge.plugin.records.Backbone" in failed["wrong"]


def test_unknown_component_lists_available(plugin_manager):
    with pytest.raises(PluginError, match="available: .*sdss"):
        plugin_manager.get("surveys", "euclid")


def test_plugin_commands_are_added(register_plugin):
    import click

    class Cmd:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="hello-test")
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")

    register_plugin(Cmd(), "cmd-test")
    from galmerge.cli import LazyGroup
    from galmerge.cli import cli as group

    group._plugin_commands_loaded = False
    try:
        result = CliRunner().invoke(group, ["hello-test"])
        assert result.exit_code == 0, result.output
        assert "hello from a plugin" in result.output
    finally:
        group.commands.pop("hello-test", None)
        LazyGroup._plugin_commands_loaded = False
        group._plugin_commands_loaded = False


def test_broken_installed_plugin_warns_and_cli_still_works(tmp_path):
    site = _fake_distribution(
        tmp_path / "site",
        "galmerge-broken",
        "broken",
        "galmerge_broken_plugin",
        "raise RuntimeError('this plugin is broken on purpose')\n",
    )
    proc = _run_cli("list", "surveys", "--json", extra_path=site, GALMERGE_LOAD_PLUGINS="broken")
    assert proc.returncode == 0, proc.stderr
    assert "sdss" in {r["name"] for r in json.loads(proc.stdout)}
    warning = [line for line in proc.stderr.splitlines() if "broken" in line]
    assert len(warning) == 1
    assert "GALMERGE_DISABLE_PLUGINS=broken" in warning[0]
    assert "galmerge-broken" in warning[0]
    assert "Traceback" not in proc.stderr

    proc = _run_cli("plugins", "--json", extra_path=site, GALMERGE_LOAD_PLUGINS="broken")
    row = next(r for r in json.loads(proc.stdout) if r["name"] == "broken")
    assert row["error"].startswith("RuntimeError")

    blocked = _run_cli(
        "list",
        "surveys",
        extra_path=site,
        GALMERGE_LOAD_PLUGINS="broken",
        GALMERGE_DISABLE_PLUGINS="broken",
    )
    assert blocked.returncode == 0
    assert "broken" not in blocked.stderr


def test_installed_third_party_plugin_is_discovered(tmp_path):
    site = _fake_distribution(
        tmp_path / "site",
        "galmerge-lsst",
        "lsst",
        "galmerge_lsst_plugin",
        """
        from galmerge import hookimpl
        from galmerge.plugin.records import Survey

        @hookimpl
        def register_surveys():
            return [Survey(name="lsst", description="Rubin LSST cutouts")]
        """,
    )
    proc = _run_cli("list", "surveys", "--json", extra_path=site, GALMERGE_LOAD_PLUGINS="lsst")
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in json.loads(proc.stdout) if r["name"] == "lsst")
    assert row["distribution"] == "galmerge-lsst" and row["version"] == "1.2.3"

    # not allowed -> not loaded; blocked -> not loaded
    proc = _run_cli("list", "surveys", "--json", extra_path=site, GALMERGE_LOAD_PLUGINS="")
    assert "lsst" not in {r["name"] for r in json.loads(proc.stdout)}
    proc = _run_cli(
        "list", "surveys", "--json", extra_path=site, GALMERGE_LOAD_PLUGINS="lsst",
        GALMERGE_DISABLE_PLUGINS="lsst",
    )
    assert "lsst" not in {r["name"] for r in json.loads(proc.stdout)}


def test_disable_builtin_plugin(monkeypatch, plugin_manager):
    from galmerge.plugin.manager import get_plugin_manager, reset_plugin_manager

    monkeypatch.setenv("GALMERGE_DISABLE_PLUGINS", "sdss_survey")
    reset_plugin_manager()
    assert "sdss" not in get_plugin_manager().components("surveys")
    assert "illustris" in get_plugin_manager().components("surveys")


def test_importing_cli_loads_no_plugin():
    code = (
        "import sys, galmerge.cli; "
        "from galmerge.plugin.manager import BUILTIN_PLUGINS; "
        "print(any(m in sys.modules for m in [*BUILTIN_PLUGINS.values(), 'torch']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_and_help_exit_codes():
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and "galmerge" in result.output
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("train", "classify", "evaluate", "fetch", "plugins", "list"):
        assert name in result.output
    result = runner.invoke(cli, ["no-such-command"])
    assert result.exit_code == 2


def test_installed_plugin_with_a_misspelt_hook_is_skipped_visibly(tmp_path):
    # README: reported in one warning line, skipped (exit 0), listed as failed by `plugins`
    site = _fake_distribution(
        tmp_path / "site",
        "galmerge-typo",
        "typo",
        "galmerge_typo_plugin",
        """
        from galmerge import hookimpl

        @hookimpl
        def register_strategy():
            return []
        """,
    )
    proc = _run_cli("list", "strategies", extra_path=site, GALMERGE_LOAD_PLUGINS="typo")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "typo" in line]
    assert len(warning) == 1 and "skipped" in warning[0]
    assert "did you mean 'register_strategies'" in warning[0]
    proc = _run_cli("plugins", extra_path=site, GALMERGE_LOAD_PLUGINS="typo", COLUMNS="200")
    row = next(line for line in proc.stdout.splitlines() if "typo" in line)
    assert "failed" in row and "register_strategy" in row


def _one_record_plugin(record: Survey | Strategy) -> object:
    """A plugin object whose registration hook returns ``record``."""
    hook_name = "register_surveys" if isinstance(record, Survey) else "register_strategies"

    def hook(self):
        return [record]

    hook.__name__ = hook_name
    return type("OneRecord", (), {hook_name: hookimpl(hook)})()


def _cli_lines_about(plugin: str) -> tuple[list[str], dict]:
    """Run the commands that list components; (stderr lines naming ``plugin``, plugins rows)."""
    err, rows = "", {}
    for args in (["plugins", "--json"], ["list", "surveys", "--json"],
                 ["list", "strategies", "--json"], ["list", "backbones"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, (args, res.output, res.exception)
        assert "Traceback" not in res.output
        err += res.stderr
        if args[0] == "plugins":
            rows = {r["name"]: r for r in json.loads(res.stdout)}
    return [line for line in err.splitlines() if plugin in line], rows


def _build(context, options):
    return None


@pytest.mark.parametrize("record, why", [
    (Survey(name=None, description="x"), "name is None; a name is a non-empty"),
    (Survey(name=7, description="x"), "name is 7; a name is a non-empty"),
    (Survey(name=" ", description="x"), "name is ' '; a name is a non-empty"),
    (Strategy(name="ok-test", description="x", build=_build, aliases="ab"),
     "aliases 'ab'; aliases are a tuple of names"),
    (Strategy(name="ok-test", description="x", build=_build, aliases=(None,)),
     "alias None; a name is a non-empty"),
    # listed, but never found: survey specs and strategy expressions are matched in lower
    # case, ':'/'?' split a survey spec, '+' joins strategies
    (Survey(name="MySurvey", description="x"), "name is 'MySurvey'; a name is a non-empty"),
    (Strategy(name="ok-test", description="x", build=_build, aliases=("OK",)),
     "alias 'OK'; a name is a non-empty lower-case"),
    (Survey(name="my:survey", description="x"), "name is 'my:survey'; a name is"),
    (Strategy(name="a+b", description="x", build=_build), "name is 'a+b'; a name is"),
])
def test_a_record_without_a_usable_name_skips_its_plugin(record, why, register_plugin,
                                                         plugin_manager):
    """A record named None once crashed every command that lists or looks up its kind
    (`plugins`, `list surveys`, `preview synthetic:sdss`) with a TypeError."""
    register_plugin(_one_record_plugin(record), "badname-test")
    warnings, rows = _cli_lines_about("badname-test")
    assert len(warnings) == 1, warnings
    assert why in warnings[0] and "GALMERGE_DISABLE_PLUGINS=badname-test" in warnings[0]
    assert why in rows["badname-test"]["error"]
    assert plugin_manager.get("surveys", "synthetic").name == "synthetic"  # what preview uses


@pytest.mark.parametrize("error", [SystemExit(3), RuntimeError("broken on purpose"),
                                   KeyboardInterrupt()])
def test_a_generator_hook_that_raises_skips_its_plugin(error, register_plugin):
    """Hooks may yield their records; one that raised SystemExit once ended `plugins` and
    `list strategies` silently with its exit code, as no plain hook can."""
    class Gen:
        @hookimpl
        def register_strategies(self):
            yield Strategy(name="gen-test", description="x", build=_build)
            raise error

    register_plugin(Gen(), "gen-test")
    warnings, rows = _cli_lines_about("gen-test")
    assert len(warnings) == 1, warnings
    why = f"failed in register_strategies and was skipped ({type(error).__name__}"
    assert why in warnings[0] and "GALMERGE_DISABLE_PLUGINS=gen-test" in warnings[0]
    assert rows["gen-test"]["error"].startswith(type(error).__name__)


def test_a_plugin_survey_named_in_lower_case_is_found_however_it_is_typed(tmp_path,
                                                                         register_plugin):
    """The other half of the name rule: `preview MySurvey` finds a survey 'mysurvey'."""
    import numpy as np
    import torch

    from galmerge import ImageSet

    def load(arg, options):
        return ImageSet(images=torch.rand(4, 3, 16, 16), labels=torch.tensor([0, 1, 0, 1]),
                        ids=np.arange(4), bands=("g", "r", "i"), survey="mysurvey")

    register_plugin(_one_record_plugin(Survey(name="mysurvey", description="x", load=load)),
                    "mysurvey-test")
    res = CliRunner().invoke(cli, ["preview", "MySurvey", "--n", "2",
                                   "--output", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").is_file()
