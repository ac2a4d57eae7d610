"""Option schemas: declared once by a plugin, checked once by the core, shown by `list`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from torch import nn

from galmerge import Backbone, GalmergeError, Option, Strategy, Survey, hookimpl
from galmerge.cli import cli

BUILT: list[dict] = []


def _build(context, options):
    BUILT.append(dict(options))
    return nn.Identity()


class SchemaPlugin:
    @hookimpl
    def register_strategies(self):
        return [
            Strategy(name="typed-test", description="declares a schema", build=_build,
                     options={"weight": Option(1.0, "term weight", min=0.0),
                              "k": Option(3, "neighbours", min=1),
                              "mode": Option("a", "how", choices=("a", "b"))}),
            Strategy(name="plain-test", description="declares defaults only", build=_build,
                     defaults={"weight": 1.0, "tau": 0.5}),
        ]

    @hookimpl
    def register_backbones(self):
        return [Backbone(name="typed-bb-test", description="a backbone",
                         build=lambda c, s, width: BUILT.append({"width": width}),
                         options={"width": Option(8, "channels", min=1)})]

    @hookimpl
    def register_surveys(self):
        def load(arg, options):
            BUILT.append(dict(options))
            raise GalmergeError("loaded")

        return [Survey(name="typed-sv-test", description="a survey", load=load,
                       options={"depth": Option(None, "mag limit", type=float)})]


@pytest.fixture
def manager(register_plugin, plugin_manager):
    register_plugin(SchemaPlugin(), "schema-test")
    BUILT.clear()
    return plugin_manager


def test_the_plugin_gets_complete_typed_options(manager):
    record = manager.get("strategies", "typed-test")
    assert record.defaults == {"weight": 1.0, "k": 3, "mode": "a"}
    record.build(None, {"k": "5", "weight": 2})  # text and ints, as from a command line
    assert BUILT == [{"weight": 2.0, "k": 5, "mode": "a"}]
    assert type(BUILT[0]["weight"]) is float


@pytest.mark.parametrize(("options", "message"), [
    ({"kk": 1}, "unknown option(s) kk for strategy 'typed-test' (did you mean 'k'?)"),
    ({"k": 0}, "strategy 'typed-test': option k must be >= 1, got 0"),
    ({"k": 2.5}, "option 'k' of strategy 'typed-test' must be int, got 2.5"),
    ({"mode": "c"}, "option mode must be one of a, b; got mode 'c'"),
    ({"weight": -1}, "option weight must be >= 0"),
])
def test_a_bad_option_is_refused_before_the_plugin_runs(manager, options, message):
    with pytest.raises(GalmergeError) as info:
        manager.get("strategies", "typed-test").build(None, options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert BUILT == []


def test_a_record_with_defaults_only_gets_a_schema_from_them(manager):
    record = manager.get("strategies", "plain-test")
    assert record.options["tau"] == Option(0.5) and record.options["weight"].min == 0.0
    record.build(None, {"tau": "0.25"})
    assert BUILT == [{"weight": 1.0, "tau": 0.25}]
    with pytest.raises(GalmergeError, match="must be float"):
        record.build(None, {"tau": "warm"})


@pytest.mark.parametrize("weight", [-5, "nan", "inf"])
def test_a_declared_weight_without_bounds_keeps_the_implied_ones(manager, weight):
    """A strategy declaring ``weight`` with no min once took -5 and nan (the implied >= 0,
    finite, was applied to records with defaults only)."""
    record = Strategy(name="bare-weight-test", description="x", build=_build,
                      options={"weight": Option(1.0), "k": Option(3, min=1)})
    assert record.options["weight"].min == 0.0 and record.options["weight"].help
    with pytest.raises(GalmergeError) as info:
        record.build(None, {"weight": weight})
    assert "option weight must be >= 0" in str(info.value) and "\n" not in str(info.value)
    assert BUILT == []


def test_a_declared_weight_bound_is_kept(manager):
    record = Strategy(name="min-weight-test", description="x", build=_build,
                      options={"weight": Option(1.0, "w", min=0.5, max=2.0)})
    assert record.options["weight"] == Option(1.0, "w", min=0.5, max=2.0)
    with pytest.raises(GalmergeError, match="option weight must be >= 0.5 and <= 2"):
        record.build(None, {"weight": 0.1})


def test_backbone_and_survey_options_are_checked_by_the_core(manager):
    from galmerge.data.datasets import load_imageset
    from galmerge.models.model import build_model

    with pytest.raises(GalmergeError, match="backbone 'typed-bb-test': option width must be"):
        build_model("typed-bb-test", 3, 16, options={"width": 0})
    with pytest.raises(GalmergeError, match=r"typed-sv-test:x: unknown option 'dept' \(did you "
                                            r"mean 'depth'\?\); valid options: depth"):
        load_imageset("typed-sv-test:x?dept=2")
    with pytest.raises(GalmergeError, match="loaded"):
        load_imageset("typed-sv-test:x?depth=21")
    assert BUILT == [{"depth": 21.0}]  # only what was given: the survey tells "not given"


def test_a_run_config_holds_the_checked_values(manager):
    from galmerge.config.resolve import resolve_config as resolve

    data = {"source": "synthetic:pristine", "target": "synthetic:noisy",
            "strategy": "typed-test"}
    config = resolve(cli={**data, "strategies": {"typed-test": {"k": "7"}}})
    assert config["strategies"]["typed-test"] == {"weight": 1.0, "k": 7, "mode": "a"}
    with pytest.raises(GalmergeError, match="option mode must be one of a, b"):
        resolve(cli={**data, "strategies": {"typed-test": {"mode": "z"}}})


def test_list_shows_each_options_type_default_and_help(manager):
    rows = json.loads(CliRunner().invoke(cli, ["list", "strategies", "--json"]).output)
    row = next(r for r in rows if r["name"] == "typed-test")
    assert row["options"] == {"weight": 1.0, "k": 3, "mode": "a"}  # as before: the defaults
    assert row["option_schema"]["options"]["k"] == {
        "default": 3, "type": "int", "help": "neighbours", "choices": None, "min": 1,
        "max": None, "below": None}
    dann = next(r for r in rows if r["name"] == "dann")
    assert dann["option_schema"]["options"]["grl"]["choices"] == ["ramp", "constant"]
    text = " ".join(CliRunner().invoke(cli, ["list", "strategies"]).output.split())
    assert "mode: str = 'a' (one of a, b): how" in text.replace("│", "").replace("  ", " ")
    surveys = json.loads(CliRunner().invoke(cli, ["list", "surveys", "--json"]).output)
    hdf5 = next(r for r in surveys if r["name"] == "hdf5")
    assert set(hdf5["option_schema"]["options"]) == {"in_memory", "memory_limit_mb",
                                                     "check_finite"}

