"""`galmerge tune` search spaces: the core dimensions (lr, weight decay, epochs, BatchNorm
layout), those the strategy and backbone records declare, a TOML file's overrides, their checks,
and the conversion of a trial's parameters into config settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from galmerge.config.resolve import deep_merge, read_toml, resolve_config
from galmerge.errors import GalmergeError

SPACE_TYPES = ("float", "int", "categorical")


CORE_KEYS = ("lr", "weight_decay", "epochs", "domain_batchnorm")


# How BatchNorm sees the two domains is a choice with no label-free answer known in advance:
# searched when a strategy forwards the target (`none` never does, so there it is moot).
LAYOUT_SPACE = {"type": "categorical", "choices": ["separate", "joint"]}


SECTION_KEYS = ("schedule", "optimizer", "backbone")


def core_space(epochs: int) -> dict[str, dict[str, Any]]:
    """lr and weight decay on log ranges around the defaults; epochs from half to all of the
    base number (``--epochs``)."""
    return {
        "lr": {"type": "float", "low": 1e-4, "high": 5e-3, "log": True},
        "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "epochs": {"type": "int", "low": max(1, math.ceil(epochs / 2)), "high": max(1, epochs)},
    }


def _check_spec(name: str, spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        raise GalmergeError(
            f"search space {where}: {name} has type {kind!r}; use one of {', '.join(SPACE_TYPES)}"
        )
    allowed = {"type", "low", "high", "log", "step"} if kind != "categorical" else {"type",
                                                                                   "choices"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise GalmergeError(
            f"search space {where}: {name} has unknown key(s) {', '.join(extra)}; "
            f"a {kind} takes {', '.join(sorted(allowed))}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise GalmergeError(f"search space {where}: {name} needs a non-empty list 'choices'")
        bad = [c for c in choices if not isinstance(c, str | int | float | bool)]
        if bad:  # Optuna stores strings, numbers and booleans only
            raise GalmergeError(f"search space {where}: {name} has choice {bad[0]!r}; choices "
                                "are strings, numbers or true/false")
        return {"type": kind, "choices": list(choices)}
    low, high = spec.get("low"), spec.get("high")
    number = int if kind == "int" else (int, float)
    if (isinstance(low, bool) or isinstance(high, bool) or not isinstance(low, number)
            or not isinstance(high, number) or not low <= high):  # fmt: skip
        raise GalmergeError(
            f"search space {where}: {name} needs numbers low <= high ({kind}), got "
            f"low={low!r} high={high!r}"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise GalmergeError(f"search space {where}: {name} has log = {log!r}; write log = true "
                            "or log = false")
    if log and low <= 0:
        raise GalmergeError(f"search space {where}: {name} has log = true, so low must be > 0")
    out = {"type": kind, "low": low, "high": high, "log": log}
    if "step" in spec:
        step = spec["step"]
        if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
            raise GalmergeError(
                f"search space {where}: {name} has step = {step!r}; a step is a "
                f"{'whole ' if kind == 'int' else ''}number > 0 (e.g. step = "
                f"{1 if kind == 'int' else 0.1})")
        if log and not (kind == "int" and step == 1):  # Optuna: a log range has no steps
            # (an int range's step 1 is its default, which Optuna accepts with log)
            raise GalmergeError(f"search space {where}: {name} has log = true and a step; "
                                "drop one of them")
        out["step"] = step
    return out


def declared_space(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The default space for a resolved config: core (+ ``domain_batchnorm`` when a strategy
    forwards the target) + the backbone's + each strategy's (``NAME.OPTION`` for strategy
    options, ``backbone.OPTION`` for backbone options)."""
    from galmerge.plugin.manager import get_plugin_manager
    from galmerge.training.step import needs_target

    pm = get_plugin_manager()
    space = {k: _check_spec(k, v, "core") for k, v in core_space(int(config["epochs"])).items()}
    if needs_target(config):
        space["domain_batchnorm"] = _check_spec("domain_batchnorm", LAYOUT_SPACE, "core")
    backbone = pm.get("backbones", config["backbone"])
    for option, spec in dict(getattr(backbone, "search_space", {}) or {}).items():
        space[f"backbone.{option}"] = _check_spec(option, spec, f"of backbone {backbone.name}")
    for name in config["strategies"]:
        record = pm.get("strategies", name)
        for option, spec in dict(getattr(record, "search_space", {}) or {}).items():
            space[f"{name}.{option}"] = _check_spec(option, spec, f"of strategy {name}")
    return space


def _flatten_space_file(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TOML tables -> {"lr": spec-or-value, "mmd.weight": spec-or-value, ...}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and "type" not in value:
            for option, inner in value.items():
                if isinstance(inner, Mapping) and "type" not in inner:
                    raise GalmergeError(
                        f"search space {where}: {key}.{option} is nested too deep; write "
                        f"[{key}] {option} = {{type = \"float\", low = ..., high = ...}}"
                    )
                flat[f"{key}.{option}"] = inner
        else:
            flat[str(key)] = value
    return flat


def resolve_space(
    config: Mapping[str, Any], space_file: str | Path | Mapping[str, Any] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(searched dimensions, fixed values) after a space file's overrides.

    In the file a table with ``type`` replaces or adds a dimension; a plain value fixes the
    option (it is not searched): ``lr = 0.001``, ``[mmd] weight = {type = "float", low = 0.1,
    high = 1, log = true}``, ``[entropy] diversity = 1.0``.
    """
    from galmerge.plugin.manager import get_plugin_manager

    space = declared_space(config)
    fixed: dict[str, Any] = {}
    if space_file is None:
        return space, fixed
    if isinstance(space_file, Mapping):
        data, where = dict(space_file), "given"
    else:
        path = Path(space_file)
        where = str(path)
        try:
            data = read_toml(path)
        except GalmergeError as exc:
            raise GalmergeError(f"--space: {exc}") from None
    pm = get_plugin_manager()
    aliases = {}
    for name in config["strategies"]:
        record = pm.get("strategies", name)
        for alias in (record.name, *record.aliases):
            aliases[alias.lower()] = record.name
    for key, value in _flatten_space_file(data, where).items():
        section, dot, option = key.partition(".")
        if not dot:
            if key not in CORE_KEYS:
                raise GalmergeError(
                    f"search space {where}: unknown setting {key!r}; top-level keys are "
                    f"{', '.join(CORE_KEYS)}, tables are {', '.join(SECTION_KEYS)} or a "
                    f"strategy of the expression ({', '.join(config['strategies'])})"
                )
            name = key
        elif section in ("schedule", "optimizer"):
            if option not in config[section]:
                raise GalmergeError(
                    f"search space {where}: unknown {section} option {option!r}; known: "
                    f"{', '.join(sorted(config[section]))}"
                )
            name = key
        elif section == "backbone":
            if option not in config["backbone_options"]:
                raise GalmergeError(
                    f"search space {where}: backbone {config['backbone']} has no option "
                    f"{option!r}; known: {', '.join(sorted(config['backbone_options'])) or 'none'}"
                )
            name = key
        else:
            strategy = aliases.get(section.lower())
            if strategy is None:
                raise GalmergeError(
                    f"search space {where}: {section!r} is not a strategy of "
                    f"{config['strategy']}, nor {', '.join(SECTION_KEYS)}"
                )
            if option not in config["strategies"][strategy]:
                raise GalmergeError(
                    f"search space {where}: strategy {strategy} has no option {option!r}; "
                    f"known: {', '.join(sorted(config['strategies'][strategy]))}"
                )
            name = f"{strategy}.{option}"
        if isinstance(value, Mapping):
            space[name] = _check_spec(name, value, where)
            fixed.pop(name, None)
        else:
            space.pop(name, None)
            fixed[name] = value
    return space, fixed


def check_space_values(base_layer: Mapping[str, Any], dims: Mapping[str, Mapping[str, Any]],
                       space: str | Path | Mapping[str, Any] | None = None) -> None:
    """Each searched range's ends and each choice, resolved as a trial's config is: a value no
    trial could train with is a one-line error before the study starts (or is stored)."""
    where = f" {space}" if isinstance(space, str | Path) else ""
    for name in sorted(dims):
        spec = dims[name]
        if spec["type"] == "categorical":
            values = list(spec["choices"])
        else:
            cast = int if spec["type"] == "int" else float
            values = [cast(spec["low"]), cast(spec["high"])]
        for value in values:
            try:
                resolve_config(file=deep_merge(base_layer, params_layer({name: value},
                                                                        base_layer)))
            except GalmergeError as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise GalmergeError(
                    f"search space{where}: {name} = {value!r} is not a valid setting ({first}); "
                    f"narrow the range or drop that choice") from None


def params_layer(params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat parameter names -> a config layer (``mmd.weight`` -> strategies.mmd.weight)."""
    layer: dict[str, Any] = {}
    for name, value in params.items():
        section, dot, option = name.partition(".")
        if not dot:
            layer[name] = value
        elif section in ("schedule", "optimizer"):
            layer.setdefault(section, {})[option] = value
        elif section == "backbone":
            layer.setdefault("backbone_options", {})[option] = value
        else:
            layer.setdefault("strategies", {}).setdefault(section, {})[option] = value
    return layer


def default_params(config: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, Any]:  # fmt: skip
    """The base config's value of each searched option that lies inside its range."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        section, dot, option = name.partition(".")
        if not dot:
            value = config.get(name)
        elif section in ("schedule", "optimizer"):
            value = config[section].get(option)
        elif section == "backbone":
            value = config["backbone_options"].get(option)
        else:
            value = config["strategies"].get(section, {}).get(option)
        if spec["type"] == "categorical":
            if value in spec["choices"]:
                out[name] = value
        elif (isinstance(value, int | float) and not isinstance(value, bool)
              and spec["low"] <= value <= spec["high"]):  # fmt: skip
            out[name] = int(value) if spec["type"] == "int" else float(value)
    return out


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Draw every dimension of ``space`` (sorted by name: a stable order for the sampler)."""
    params: dict[str, Any] = {}
    for name in sorted(space):
        spec = space[name]
        if spec["type"] == "float":
            params[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=spec["log"],
                step=spec.get("step"),
            )
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(
                name, int(spec["low"]), int(spec["high"]), log=spec["log"],
                step=int(spec.get("step", 1)),
            )
        else:
            params[name] = trial.suggest_categorical(name, spec["choices"])
    return params
