"""The public API for plugin authors: everything importable from ``galmerge`` itself.

The two plugins under plugins/ are the reference users: they may import only names that
``galmerge`` exports, never a submodule (whose path may move between releases).
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import galmerge

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted(
    path
    for plugin in (ROOT / "plugins").iterdir()
    if plugin.is_dir()
    for path in plugin.rglob("*.py")
    # the plugins' own tests may reach into galmerge's internals (the manager, the CLI);
    # build/ holds copies made by setuptools
    if not {"tests", "build"} & set(path.relative_to(plugin).parts)
)


def galmerge_imports(source: str, filename: str) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import of galmerge or one of its submodules."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "galmerge":
                    found.append((node.lineno, alias.name, []))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "galmerge"
        ):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def private_imports(source: str, filename: str) -> list[str]:
    """Imports that bypass the public API, as ``file:line module[.name]``."""
    bad = []
    for line, module, names in galmerge_imports(source, filename):
        if module != "galmerge":
            bad.append(f"{filename}:{line} {module}")
            continue
        bad += [f"{filename}:{line} galmerge.{n}" for n in names if n not in galmerge.__all__]
    return bad


def test_plugins_import_only_the_public_api() -> None:
    assert len(PLUGIN_SOURCES) >= 4, PLUGIN_SOURCES  # both plugins were found
    bad = []
    for path in PLUGIN_SOURCES:
        bad += private_imports(path.read_text(), str(path.relative_to(ROOT)))
    assert not bad, "plugins import private galmerge modules:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source",
    [
        "from galmerge.plugin.records import Strategy",
        "import galmerge.io.http",
        "from galmerge import training",
        "def f():\n    from galmerge.plugin.strategy_api import StepInputs\n",
    ],
)
def test_the_check_catches_private_imports(source: str) -> None:
    assert private_imports(source, "plugin.py")


def test_the_check_passes_public_imports() -> None:
    assert not private_imports("from galmerge import hookimpl, ImageSet\nimport numpy", "p.py")


def test_tab_completion_offers_the_public_names_only() -> None:
    """dir() (what IPython and rlcompleter list) holds the public API and the module's dunders,
    not the names the annotations need at run time (os, Path, the package itself...)."""
    shown = dir(galmerge)
    assert set(galmerge.__all__) <= set(shown)
    assert not {"os", "Path", "Any", "Mapping", "galmerge", "Table", "importlib"} & set(shown)
    importlib.import_module("galmerge.plugin")  # a loaded subpackage is offered, as dir() does
    assert "plugin" in dir(galmerge)


def test_every_public_name_resolves_to_its_definition() -> None:
    from galmerge.io import http as http_retry
    from galmerge.plugin import cutouts, imageset, records, strategy_api

    assert set(galmerge._LAZY) <= set(galmerge.__all__)
    for name in galmerge.__all__:
        assert getattr(galmerge, name) is not None, name
    assert galmerge.ImageSet is imageset.ImageSet
    assert galmerge.StepInputs is strategy_api.StepInputs
    assert galmerge.StrategyContext is strategy_api.StrategyContext
    assert galmerge.CutoutService is cutouts.CutoutService
    assert galmerge.CutoutRequest is cutouts.CutoutRequest
    assert galmerge.RetryingClient is http_retry.RetryingClient
    assert galmerge.Strategy is records.Strategy
    assert issubclass(galmerge.PluginError, galmerge.GalmergeError)
    with pytest.raises(AttributeError):
        galmerge.no_such_name  # noqa: B018


def test_plugin_modules_stay_light() -> None:
    """Listing components imports every plugin: that must not pull in torch or requests."""
    paths = [str(p) for p in sorted((ROOT / "plugins").iterdir()) if p.is_dir()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *paths])}
    code = (
        "import sys, galmerge, galmerge_mcc, galmerge_legacysurvey.plugin\n"
        "heavy = sorted({'torch', 'numpy', 'requests'} & set(sys.modules))\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_register_plugin_makes_a_component_available() -> None:
    from galmerge.plugin.manager import get_plugin_manager, reset_plugin_manager

    class Plugin:
        @galmerge.hookimpl
        def register_strategies(self):
            return [galmerge.Strategy(name="inprocess", description="test", build=print)]

    reset_plugin_manager()
    try:
        assert "inprocess" not in get_plugin_manager().components("strategies")
        galmerge.register_plugin(Plugin(), name="inprocess-test")
        assert "inprocess" in get_plugin_manager().components("strategies")
    finally:
        reset_plugin_manager()


def test_old_module_paths_of_released_plugins_are_the_moved_modules() -> None:
    """A plugin built before the layout change imports e.g. ``galmerge.records``: for one release
    that is the very module now at ``galmerge.plugin.records`` (same classes, not a copy)."""
    code = (
        "import importlib, sys\n"
        "from galmerge.records import Strategy\n"
        "from galmerge.losses.options import resolve_options\n"
        "import galmerge\n"
        "assert Strategy is galmerge.Strategy and resolve_options is galmerge.resolve_options\n"
        "from galmerge._moved import MOVED\n"
        "for old, new in MOVED.items():\n"
        "    module = importlib.import_module(old)\n"
        "    assert module is importlib.import_module(new), old\n"
        "    assert module.__spec__.name == new, (old, module.__spec__.name)\n"
        "print(len(MOVED))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "5", out.stdout + out.stderr


def test_the_typed_spec_and_option_schema_are_public() -> None:
    from galmerge.data import preprocess
    from galmerge.plugin import options

    assert galmerge.PreprocessSpec is preprocess.PreprocessSpec
    assert galmerge.Option is options.Option
    assert {"PreprocessSpec", "Option"} <= set(galmerge.__all__)


# galmerge.train/classify/evaluate/fraction: each wrapper's own signature and docstring are what
# help() and the API reference page show, so they must be the job's, argument for argument
WRAPPED = [
    ("train", "galmerge.training", "train"),
    ("classify", "galmerge.classification.pipeline", "classify"),
    ("predict", "galmerge.classification.predict", "predict"),
    ("evaluate", "galmerge.evaluation.pipeline", "evaluate"),
    ("fraction", "galmerge.fractions.report", "fraction"),
]


@pytest.mark.parametrize(("name", "module", "attr"), WRAPPED)
def test_pipeline_wrappers_carry_the_real_signature(name: str, module: str, attr: str) -> None:
    import importlib
    import inspect

    wrapper = getattr(galmerge, name)
    real = getattr(importlib.import_module(module), attr)
    shown = inspect.signature(wrapper).parameters
    # the job's own parameters, less internal ones (``_member``, set by the ensemble)
    expected = {k: p for k, p in inspect.signature(real).parameters.items()
                if not k.startswith("_")}
    assert list(shown) == list(expected)
    for key, param in expected.items():
        assert (shown[key].kind, shown[key].default) == (param.kind, param.default), key
    doc = inspect.getdoc(wrapper) or ""
    missing = [key for key in expected if f":param {key}:" not in doc]
    assert not missing, f"galmerge.{name}'s docstring does not document {missing}"


def test_type_hints_of_the_public_functions_resolve_in_a_fresh_interpreter() -> None:
    """`typing.get_type_hints` on each public function, right after a cheap `import galmerge`
    (torch not loaded, no lazy name used before): real classes, no NameError."""
    code = (
        "import sys, types, typing\n"
        "import galmerge\n"
        "assert not {'torch', 'numpy', 'requests'} & set(sys.modules)\n"
        "names = sorted(n for n, v in vars(galmerge).items() if n in galmerge.__all__\n"
        "               and isinstance(v, types.FunctionType) and v.__module__ == 'galmerge')\n"
        "hints = {n: typing.get_type_hints(getattr(galmerge, n)) for n in names}\n"
        "from galmerge.plugin.imageset import ImageSet\n"
        "from galmerge.classification.pipeline import ClassifySummary\n"
        "assert hints['train']['source'] == str | ImageSet | None, hints['train']\n"
        "assert hints['evaluate']['target'] == ImageSet | str | None, hints['evaluate']\n"
        "assert hints['classify']['return'] is ClassifySummary, hints['classify']\n"
        "from astropy.table import Table\n"
        "assert hints['predict']['return'] is Table, hints['predict']\n"
        "assert hints['register_plugin'] == {'plugin': object, 'name': str, 'return': type(None)}\n"
        "print(' '.join(names))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert {"train", "classify", "predict", "evaluate", "fraction", "register_plugin",
            "reset_plugin_manager"} <= set(out.stdout.split()), out.stdout


def test_train_signature_names_its_arguments() -> None:
    import inspect

    params = inspect.signature(galmerge.train).parameters
    assert {"source", "target", "strategy", "preset", "config", "sets", "strategy_options",
            "on_epoch", "select_by", "resume"} <= set(params)
    assert "kwargs" not in params


def test_pipeline_wrappers_pass_every_argument_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import galmerge.training

    seen: dict[str, object] = {}
    monkeypatch.setattr(galmerge.training, "train", lambda **kw: seen.update(kw) or {"ok": 1})
    assert galmerge.train("synthetic:illustris", "synthetic:sdss", preset="synthetic-sim-real",
                          sets=["domain_batchnorm=joint"], epochs=3) == {"ok": 1}
    assert (seen["source"], seen["target"], seen["preset"], seen["sets"], seen["epochs"]) == (
        "synthetic:illustris", "synthetic:sdss", "synthetic-sim-real",
        ["domain_batchnorm=joint"], 3)
    assert seen["lr"] is None and seen["quiet"] is False
    import inspect

    assert set(seen) == set(inspect.signature(galmerge.train).parameters)  # and nothing else


def test_pipeline_wrappers_reach_the_real_jobs(tmp_path: Path) -> None:
    """Called for real, each wrapper gets to its job's own checks (no stray keyword)."""
    with pytest.raises(galmerge.GalmergeError, match="not a run directory"):
        galmerge.evaluate(tmp_path)
    with pytest.raises(galmerge.GalmergeError, match="mc_dropout must be"):
        galmerge.classify(tmp_path / "cat.csv", tmp_path, mc_dropout=1)
    with pytest.raises(galmerge.GalmergeError, match="unknown preset"):
        galmerge.train("synthetic:illustris", "synthetic:sdss", preset="nosuch")


def test_what_the_docs_import_is_public() -> None:
    """The notebooks' loader and the API page's exporter are importable from galmerge itself
    (the docs tell readers to import from nowhere else)."""
    from galmerge.data import datasets
    from galmerge.models import export

    assert galmerge.load_imageset is datasets.load_imageset
    assert galmerge.export_model is export.export_model
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert private_imports(_code_of(notebook), notebook.name) == []


def _code_of(notebook: Path) -> str:
    import json

    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"
                     and not "".join(c["source"]).lstrip().startswith(("%", "!")))


def test_every_public_name_is_in_the_api_or_plugin_docs() -> None:
    docs = (ROOT / "docs" / "api.md").read_text() + (ROOT / "docs" / "plugins.md").read_text()
    missing = [n for n in galmerge.__all__ if n != "__version__" and n not in docs]
    assert not missing, missing
