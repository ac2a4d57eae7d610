"""What a third-party plugin may get wrong, and how the core answers: plain values in
checkpoints, options the core adds, bugs in build/load named as the plugin's, name clashes
with built-ins, and cutout services that break the fetch protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_toys import ToyPlugin, _NoNone, toy_sets

from galmerge import ImageSet, Survey, hookimpl
from galmerge.cli import cli

TRAIN = ["train", "--backbone", "tiny", "--strategy", "meangap", "--device", "cpu", "--quiet",
         "--epochs", "1", "--batch-size", "8"]


def _toys(register_plugin, plugin_manager) -> None:
    plugin = _NoNone() if "none" in plugin_manager.components("strategies") else ToyPlugin()
    register_plugin(plugin, "toys")


class NumpySurvey:
    """A survey whose ImageSet carries what np.load / h5py / FITS give: numpy strings and
    scalars (subclasses of str and float)."""

    @hookimpl
    def register_surveys(self):
        def load(arg: str | None, options: Mapping[str, Any]) -> ImageSet:
            target = toy_sets()[1]
            return ImageSet(
                images=target.images, labels=target.labels, ids=target.ids,
                bands=tuple(np.array(["g", "r"])), survey=np.str_("npsurv"),
                pixel_scale_arcsec=np.float64(0.4), stretch_scale=np.float32(2.0),
            )

        return [Survey(name="npsurv", description="numpy-valued survey", load=load)]


def test_a_survey_giving_numpy_strings_and_scalars_makes_a_readable_checkpoint(
        register_plugin, plugin_manager, tmp_path):
    # np.str_ bands and a np.float64 pixel scale went into the checkpoint's preprocessing
    # spec; torch's weights-only loader refused them, and every command then called best.pt
    # "damaged ... train again" after a full training run
    _toys(register_plugin, plugin_manager)
    register_plugin(NumpySurvey(), "npsurv-plugin")
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, [*TRAIN, "--source", "toy:source", "--target", "npsurv",
                                   "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    payload = torch.load(run / "best.pt", weights_only=True)
    target = payload["preprocess"]["target"]
    assert target["bands"] == ["g", "r"] and type(target["bands"][0]) is str
    assert type(target["pixel_scale_arcsec"]) is float
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--device", "cpu"])
    assert "not a readable" not in res.output and "damaged" not in res.output, res.output


def test_a_checkpoint_holding_an_object_is_named_as_such_not_as_damage(tmp_path):
    # written by an older version from a numpy-valued survey: the file is whole, and
    # "damaged ... train again" sent the user round the same failure
    bad = tmp_path / "run" / "best.pt"
    bad.parent.mkdir()
    torch.save({"format": "galmerge-checkpoint/1", "preprocess": {"target": {
        "pixel_scale_arcsec": np.float64(0.4)}}}, bad)
    from galmerge.errors import GalmergeError
    from galmerge.models.model import read_checkpoint

    try:
        read_checkpoint(bad.parent)
    except GalmergeError as exc:
        assert "numpy" in str(exc) and "not damaged" in str(exc), exc
        assert "damaged, cut short" not in str(exc)
    else:
        raise AssertionError("a checkpoint holding a numpy scalar was read")


def test_save_checkpoint_stores_plain_values_or_names_the_value_it_cannot_store(tmp_path):
    from galmerge.errors import GalmergeError
    from galmerge.models.model import read_checkpoint, save_checkpoint

    state = torch.nn.BatchNorm1d(2).state_dict()
    save_checkpoint(tmp_path / "a.pt", {"model": state, "extra": {
        "scale": np.float64(0.4), "bands": (np.str_("g"),), "mean": np.zeros(2)}})
    payload = read_checkpoint(tmp_path / "a.pt")
    assert payload["extra"] == {"scale": 0.4, "bands": ("g",), "mean": [0.0, 0.0]}
    assert type(payload["extra"]["bands"][0]) is str
    try:
        save_checkpoint(tmp_path / "b.pt", {"extra": {"where": tmp_path}})
    except GalmergeError as exc:
        assert "'extra.where'" in str(exc) and "PosixPath" in str(exc)
    else:
        raise AssertionError("an object in a checkpoint was written")
    assert not (tmp_path / "b.pt").exists()


# -- classify and a survey's cutout service ------------------------------------------------

CATALOG = "objID,ra,dec\n1,150.0,2.0\n2,151.0,2.0\n3,152.0,2.0\n"


class StampService:
    cache_key = "contract:g,r,i:16px"

    def __init__(self, options):
        self.options = dict(options)
        self.mode = options.get("mode") or "ok"

    def fetch(self, requests_):
        from test_classify import stamp_for

        from galmerge import CutoutResult

        for req in requests_:
            image = stamp_for(req.ra, req.dec)
            if self.mode == "skip" and req.id == "2":
                continue
            if self.mode == "small" and req.id == "2":
                image = image[:, :8, :8]
            row = req.row + 1000 if self.mode == "offrow" else req.row
            yield CutoutResult(row, image, "ok")

    def summary(self):
        return ""

    def close(self):
        pass


class StampSurvey:
    """A survey that declares its cutout options, as docs/plugins.md asks, without workers."""

    seen: list[dict] = []

    @hookimpl
    def register_surveys(self):
        from galmerge import Option

        def cutouts(preprocess, options):
            StampSurvey.seen.append(dict(options))
            return StampService(options)

        return [Survey(name="stampsurv", description="declares its cutout options",
                       cutouts=cutouts,
                       cutout_options={"mode": Option("ok", "what the toy does")})]


def _classify_stamps(tmp_path, spec):
    from test_classify import make_checkpoint

    (tmp_path / "cat.csv").write_text(CATALOG)
    ckpt = tmp_path / "run" / "best.pt"
    if not ckpt.exists():
        make_checkpoint(ckpt)
    return CliRunner().invoke(cli, [
        "classify", str(tmp_path / "cat.csv"), "--model", str(ckpt), "--survey", spec,
        "--output", str(tmp_path / "out.csv"), "--cache", str(tmp_path / "stamps.h5"),
        "--workers", "3"])


def test_classify_gives_workers_only_to_a_survey_that_takes_it(register_plugin, tmp_path,
                                                               monkeypatch):
    # classify added workers to every survey's options, so a survey declaring its own schema
    # (without workers) always failed: "unknown option 'workers'", an option nobody typed
    monkeypatch.chdir(tmp_path)
    register_plugin(StampSurvey(), "stampsurv-plugin")
    StampSurvey.seen.clear()
    res = _classify_stamps(tmp_path, "stampsurv?mode=ok")
    assert res.exit_code == 0, res.output
    assert StampSurvey.seen and all(seen == {"mode": "ok"} for seen in StampSurvey.seen)
    # a survey with no schema checks its own options, and is still given workers
    from test_classify_plugins import ToySurveyPlugin

    register_plugin(ToySurveyPlugin(), "toy-plugin")
    import test_classify_plugins

    opened = []
    monkeypatch.setattr(test_classify_plugins, "ToyService",
                        lambda options: opened.append(dict(options)) or StampService({}))
    res = _classify_stamps(tmp_path, "toy")
    assert res.exit_code == 0, res.output
    assert opened and opened[0]["workers"] == 3


# -- a plugin's build and load: bugs named as the plugin's ---------------------------------


class _Four(torch.nn.Module):
    def __init__(self, out_features):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        if out_features is not None:
            self.out_features = out_features

    def forward(self, x):
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1)


def _explode(*args, **kwargs):
    raise ValueError("plugin build exploded")


def _offline(*args, **kwargs):
    raise ConnectionError("cannot download pretrained weights")  # an OSError


class BrokenComponents:
    @hookimpl
    def register_backbones(self):
        from galmerge import Backbone

        return [
            Backbone(name="fnnet", description="", build=lambda c, s: (lambda x: x)),
            Backbone(name="nowidth", description="", build=lambda c, s: _Four(None)),
            Backbone(name="wrongwidth", description="", build=lambda c, s: _Four(7)),
            Backbone(name="boomnet", description="", build=_explode),
            Backbone(name="offline", description="", build=_offline),
        ]

    @hookimpl
    def register_strategies(self):
        from galmerge import Strategy

        return [
            Strategy(name="fnstrat", description="", build=lambda ctx, o: (lambda step: {})),
            Strategy(name="boomstrat", description="", build=_explode),
        ]

    @hookimpl
    def register_surveys(self):
        def keyload(arg, options):
            return {}["images"]

        return [
            Survey(name="dictload", description="", load=lambda arg, o: {"images": None}),
            Survey(name="keyload", description="", load=keyload),
            Survey(name="nofile", description="",
                   load=lambda arg, o: np.load(arg)),
            Survey(name="nosvc", description="", cutouts=lambda spec, o: object()),
        ]


@pytest.mark.parametrize(("args", "component", "says"), [
    (["--backbone", "fnnet"], "backbone 'fnnet'", "returns a torch.nn.Module"),
    (["--backbone", "nowidth"], "backbone 'nowidth'", "out_features is None"),
    (["--backbone", "wrongwidth"], "backbone 'wrongwidth'",
     "features of shape (2, 4) for 2 images, but its out_features says 7"),
    (["--backbone", "boomnet"], "backbone 'boomnet'", "raised ValueError: plugin build exploded"),
    (["--strategy", "fnstrat"], "strategy 'fnstrat'", "returns a torch.nn.Module"),
    (["--strategy", "boomstrat"], "strategy 'boomstrat'",
     "raised ValueError: plugin build exploded"),
    (["--target", "dictload"], "survey 'dictload'", "load returned a dict"),
    (["--target", "keyload"], "survey 'keyload'", "load raised KeyError"),
])
def test_a_plugins_broken_build_or_load_is_a_plugin_bug_naming_it(
        args, component, says, register_plugin, plugin_manager, tmp_path):
    # these ended in a 50-line traceback through core frames ("'function' object has no
    # attribute 'to'", "mat1 and mat2 shapes cannot be multiplied") that named no plugin
    from galmerge.errors import PluginBug

    _toys(register_plugin, plugin_manager)
    register_plugin(BrokenComponents(), "brk-plugin")
    base = {"--source": "toy:source", "--target": "toy:target", "--backbone": "tiny",
            "--strategy": "meangap"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [a for a in TRAIN if a not in ("--backbone", "tiny", "--strategy", "meangap")]
    for flag, value in base.items():
        argv += [flag, value]
    res = CliRunner().invoke(cli, [*argv, "--run-dir", str(tmp_path / "r")])
    assert isinstance(res.exception, PluginBug), (res.output, res.exception)
    text = str(res.exception)
    assert f"{component} (plugin 'brk-plugin'" in text and says in text, text


def test_a_build_that_cannot_fetch_its_weights_is_a_one_line_error_not_a_bug(
        register_plugin, plugin_manager, tmp_path):
    _toys(register_plugin, plugin_manager)
    register_plugin(BrokenComponents(), "brk-plugin")
    res = CliRunner().invoke(cli, [*TRAIN, "--source", "toy:source", "--target", "toy:target",
                                   "--backbone", "offline", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "backbone 'offline' (plugin 'brk-plugin'" in res.output
    assert "ConnectionError: cannot download pretrained weights" in res.output


def test_a_file_a_survey_cannot_read_is_a_one_line_error(register_plugin, plugin_manager,
                                                         tmp_path):
    _toys(register_plugin, plugin_manager)
    register_plugin(BrokenComponents(), "brk-plugin")
    res = CliRunner().invoke(cli, [*TRAIN, "--source", "toy:source",
                                   "--target", f"nofile:{tmp_path / 'missing.npz'}",
                                   "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "nofile:" in res.output and "cannot read it (FileNotFoundError" in res.output


def test_a_cutouts_that_returns_no_service_is_a_plugin_bug_naming_it(register_plugin, tmp_path,
                                                                     monkeypatch):
    from galmerge.errors import PluginBug

    monkeypatch.chdir(tmp_path)
    register_plugin(BrokenComponents(), "brk-plugin")
    res = _classify_stamps(tmp_path, "nosvc")
    assert isinstance(res.exception, PluginBug), res.output
    assert "survey 'nosvc' (plugin 'brk-plugin'" in str(res.exception)
    assert "has no fetch() or close()" in str(res.exception)


# -- name clashes ---------------------------------------------------------------------------


class ClashesWithBuiltin:
    """A third-party plugin registering strategy 'coral' (a built-in's) beside its own."""

    @hookimpl
    def register_strategies(self):
        from galmerge import Strategy

        return [Strategy(name="coral", description="not the built-in", build=_explode),
                Strategy(name="ownstrat", description="its own", build=_explode)]

    @hookimpl
    def register_backbones(self):
        from galmerge import Backbone

        return [Backbone(name="ownnet", description="its own", build=lambda c, s: _Four(4))]


def test_a_third_party_name_owned_by_a_builtin_skips_only_that_component(
        register_plugin, plugin_manager, tmp_path, capsys):
    # one such plugin made every train and `galmerge list` fail, showed the built-in plugin
    # as failed and hid every plugin's strategies and backbones in `galmerge plugins --json`
    import json

    _toys(register_plugin, plugin_manager)
    register_plugin(ClashesWithBuiltin(), "clash-plugin")
    coral = plugin_manager.get("strategies", "coral")
    assert coral.description != "not the built-in"
    assert plugin_manager.describe_owner("strategies", "coral").startswith(
        "plugin 'da_strategies'")
    assert "ownstrat" in plugin_manager.components("strategies")
    err = capsys.readouterr().err
    assert err.count("plugin 'clash-plugin'") == 1, err
    assert "registers strategy 'coral', which galmerge's built-in plugin 'da_strategies' " \
           "owns; its strategy 'coral' was skipped" in err
    res = CliRunner().invoke(cli, [*TRAIN, "--source", "toy:source", "--target", "toy:target",
                                   "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["da_strategies"]["error"] is None
    assert "coral" in rows["da_strategies"]["components"]["strategies"]
    assert rows["clash-plugin"]["components"]["strategies"] == ["ownstrat"]
    assert rows["clash-plugin"]["components"]["backbones"] == ["ownnet"]
    assert rows["toys"]["components"]["backbones"] == ["tiny"]


def test_two_third_party_plugins_clashing_leave_everything_else_working(
        register_plugin, plugin_manager, tmp_path):
    import json

    class Other:
        @hookimpl
        def register_strategies(self):
            from galmerge import Strategy

            return [Strategy(name="ownstrat", description="the other's", build=_explode)]

    _toys(register_plugin, plugin_manager)
    register_plugin(ClashesWithBuiltin(), "clash-plugin")
    register_plugin(Other(), "other-plugin")
    res = CliRunner().invoke(cli, [*TRAIN, "--source", "toy:source", "--target", "toy:target",
                                   "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*TRAIN, "--source", "toy:source", "--target", "toy:target",
                                   "--strategy", "ownstrat", "--run-dir", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert ("strategy name 'ownstrat' is registered by two plugins: 'clash-plugin' "
            "(no distribution) and 'other-plugin'") in res.output
    rows = {r["name"]: r for r in json.loads(
        CliRunner().invoke(cli, ["plugins", "--json"]).stdout)}
    assert rows["clash-plugin"]["components"]["backbones"] == ["ownnet"]
    assert "ownstrat" in rows["other-plugin"]["error"]


# -- a cutout service that breaks the fetch protocol -----------------------------------------


def _statuses(path):
    import csv

    with open(path, newline="") as fh:
        return {row["objID"]: row["status"] for row in csv.DictReader(fh)}


@pytest.mark.parametrize(("mode", "status"), [
    ("skip", "plugin-error: no result from the survey's fetch"),
    ("small", "plugin-error: stamp shape (3, 8, 8), model needs (3, 16, 16)"),
])
def test_a_stamp_the_plugin_got_wrong_is_a_plugin_error_not_network_trouble(
        mode, status, register_plugin, tmp_path, monkeypatch):
    # these rows were 'fetch-failed', and the run said "check the network (proxy, firewall)
    # ... run the same command again", which can never help
    monkeypatch.chdir(tmp_path)
    register_plugin(StampSurvey(), "stampsurv-plugin")
    res = _classify_stamps(tmp_path, f"stampsurv?mode={mode}")
    assert res.exit_code == 0, res.output
    assert _statuses(tmp_path / "out.csv") == {"1": "ok", "2": status, "3": "ok"}
    assert "check the network" not in res.output
    assert "broke the cutout protocol" in res.output and "not network trouble" in res.output
    # fixed, the same command fetches that row again
    res = _classify_stamps(tmp_path, "stampsurv?mode=ok")
    assert res.exit_code == 0, res.output
    assert _statuses(tmp_path / "out.csv") == {"1": "ok", "2": "ok", "3": "ok"}


def test_a_result_for_a_row_not_asked_for_is_a_plugin_bug_naming_it(register_plugin, tmp_path,
                                                                    monkeypatch):
    from galmerge.errors import PluginBug

    monkeypatch.chdir(tmp_path)
    register_plugin(StampSurvey(), "stampsurv-plugin")
    res = _classify_stamps(tmp_path, "stampsurv?mode=offrow")
    assert isinstance(res.exception, PluginBug), res.output
    text = str(res.exception)
    assert "survey 'stampsurv' (plugin 'stampsurv-plugin'" in text
    assert "a result for row 1000, which it was not asked for" in text


# -- smaller parts of the contract ------------------------------------------------------------


def test_a_hookimpl_with_pluggys_specname_is_accepted(register_plugin, plugin_manager):
    # @hookimpl(specname="register_surveys") on a method of another name was taken for a
    # misspelt hook, and the whole plugin was dropped
    class Named:
        @hookimpl(specname="register_surveys")
        def more_surveys(self):
            return [Survey(name="specnamed", description="via specname",
                           load=lambda arg, o: toy_sets()[0])]

    register_plugin(Named(), "specname-plugin")
    assert "specnamed" in plugin_manager.components("surveys")


def test_a_plugins_own_bad_search_space_is_named_as_the_plugins(register_plugin, plugin_manager,
                                                               capsys):
    # a misspelt option in a record's search_space reached the user only at tune time, as
    # "narrow the range or drop that choice", naming no plugin
    from galmerge import Strategy

    class BadSpace:
        @hookimpl
        def register_strategies(self):
            return [Strategy(name="badspace", description="", build=_explode,
                             defaults={"weight": 1.0},
                             search_space={"wieght": {"type": "float", "low": 0.1,
                                                      "high": 1.0}})]

    register_plugin(BadSpace(), "badspace-plugin")
    assert "badspace" not in plugin_manager.components("strategies")
    err = capsys.readouterr().err
    assert "plugin 'badspace-plugin'" in err and "skipped" in err
    assert "strategy 'badspace' has search_space option(s) wieght, which it does not declare " \
           "(did you mean 'weight'?)" in err


def test_a_misspelt_survey_option_gets_a_hint(register_plugin, plugin_manager, tmp_path):
    from galmerge import Option

    class Opts:
        @hookimpl
        def register_surveys(self):
            return [Survey(name="optsurv", description="", load=lambda arg, o: toy_sets()[0],
                           options={"limit": Option(3, "rows"), "npscale": Option(False, "")})]

    register_plugin(Opts(), "opts-plugin")
    res = CliRunner().invoke(cli, ["preview", "optsurv?limt=3", "--output",
                                   str(tmp_path / "p.png")])
    assert res.exit_code == 1
    assert "optsurv: unknown option 'limt' (did you mean 'limit'?)" in res.output, res.output


def test_plugin_tests_reset_the_manager_through_the_public_api(monkeypatch):
    import galmerge
    from galmerge.plugin import manager

    assert {"reset_plugin_manager", "PluginBug"} <= set(galmerge.__all__)
    before = manager.get_plugin_manager()
    galmerge.reset_plugin_manager()
    assert manager.get_plugin_manager() is not before
    assert galmerge.PluginBug is __import__("galmerge.errors").errors.PluginBug


def test_a_plugin_command_named_like_a_builtin_is_ignored_with_a_warning(register_plugin,
                                                                          capsys):
    import click

    from galmerge.cli import LazyGroup
    from galmerge.cli import cli as group

    class Cmd:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="train")
            def train():
                """Not the built-in."""
                click.echo("plugin train")

            @cli.command(name="hello-contract")
            def hello():
                click.echo("hello")

    register_plugin(Cmd(), "cmd-plugin")
    group._plugin_commands_loaded = False
    try:
        res = CliRunner().invoke(group, ["--help"])
        assert res.exit_code == 0
        assert "hello-contract" in res.output
        assert "a built-in command; the plugin's command was ignored" in res.output
        assert "plugin 'cmd-plugin'" in res.output
        res = CliRunner().invoke(group, ["train", "--help"])
        assert "plugin train" not in res.output and "Not the built-in" not in res.output
        assert "train" not in group.commands
    finally:
        group.commands.pop("hello-contract", None)
        group.commands.pop("train", None)
        LazyGroup._plugin_commands_loaded = False
        group._plugin_commands_loaded = False


def test_a_plugin_skipped_after_one_kind_lists_no_components(register_plugin, plugin_manager):
    # `galmerge plugins --json` listed the backbones of a plugin skipped when its strategies
    # hook failed later, though they were gone with it
    import json

    class HalfBroken:
        @hookimpl
        def register_backbones(self):
            from galmerge import Backbone

            return [Backbone(name="halfnet", description="", build=lambda c, s: _Four(4))]

        @hookimpl
        def register_strategies(self):
            raise RuntimeError("strategies hook broken")

    register_plugin(HalfBroken(), "half-plugin")
    assert "halfnet" in plugin_manager.components("backbones")
    plugin_manager.components("strategies")
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    row = {r["name"]: r for r in json.loads(res.stdout)}["half-plugin"]
    assert "strategies hook broken" in row["error"]
    assert not any(row["components"].values()), row
    assert "halfnet" not in plugin_manager.components("backbones")
