"""The run configuration: defaults -> preset -> ``--config FILE.toml`` -> CLI flags.

A resolved config is a plain dict with every default made explicit, so ``config.toml`` of a run
feeds straight back into ``--config`` and reproduces the same run (settings added after the run
was made take the values it trained with: ``galmerge.config.legacy``)::

    source, target, strategy, backbone, seed, device, epochs, batch_size, lr, weight_decay,
    patience, select_by, max_steps_per_epoch (0 = a full pass), checkpoint_every (steps,
    0 = each epoch only), compile, init_from ("" = none), preset ("" = none),
    stop_by ("" = select_by's name), early_stopping ("patience" | "deepmerge"),
    domain_batchnorm ("joint" | "separate" | "specific"), target_encoder ("auto" | "shared" |
    "separate"; the resolved config holds shared or separate), source_path ("train" |
    "frozen"), init_keep_preprocess (bool), init_fresh_strategies (list of strategy names),
    epoch_steps ("floor" | "ceil")
    [optimizer]         Adam: betas, eps, amsgrad
    [schedule]          kind ("onecycle" | "cyclic"); one-cycle: pct_start, div_factor,
                        final_div_factor; cyclic: cycle_length (epochs)
    [observe]           psf_fwhm ([lo, hi] arcsec), sky_sigma ("none" | "auto" | per band),
                        field ("none" | "target"), field_rate ("auto" | count per stamp),
                        field_scale ("auto" | flux factor):
                        PSF blur, sky noise and the target's field sources added to the source
                        (galmerge.data.observe)
    [lr_multipliers]    "OWNER.PREFIX" = multiplier (OWNER: model or a strategy name; "*": all
                        declared); the resolved run records every multiplier in force
    [backbone_options]  options of the backbone (all of its defaults)
    [strategies.NAME]   weight and options of each term of the strategy expression

- ``select_by``: the score that picks best.pt (a name of ``galmerge.scores.selection.DIRECTIONS``).
  "auto" (the default since stop 32) resolves to "im" (information maximisation on the target
  validation predictions, label-free) when the run has its own target encoder, whose
  adaptation the source validation loss cannot see, and to "source_val_loss" otherwise; the
  resolved config records which.
- ``stop_by``: the score early stopping watches (a name of ``galmerge.scores.selection.DIRECTIONS``);
  ``select_by`` keeps choosing best.pt.
- ``early_stopping``: "patience" stops after ``patience`` epochs without a new best stop_by
  value; "deepmerge" is DeepMerge II's graded counter (see ``galmerge.training.stopping``).
- ``domain_batchnorm``: "separate" (the default since stop 23) forwards source and target
  batches one after the other, and each domain keeps its own BatchNorm running statistics
  (DSBN, ``galmerge.models.domain_norm``): evaluation and classify use the statistics of the
  domain they look at. "joint" forwards them as one concatenated batch (BatchNorm statistics
  mix the domains; DeepMerge II's code, and galmerge's default before stop 23; its presets pin
  it). "specific" is "separate" with per-domain BatchNorm affine parameters as well (DSBN's
  full form; the target's are trained only by the terms that read target images). Runs whose
  strategies need no target (``none``) never forward target images.
- ``target_encoder``: "shared" or "separate": with "separate" the target gets its own copy of
  every backbone parameter, trained only by the terms that read target images, the head stays
  shared (ADDA's layout; ``galmerge.models.domain_norm``). It starts from a source-only run:
  ``init_from``, or else the run trains one first in ``RUN_DIR/source_only`` (a target encoder
  from random weights would have nothing to align). Needs per-domain batches
  (``domain_batchnorm`` "separate" or "specific"). "auto" (the default since stop 28) resolves
  to "separate" when every strategy of the run that reads the target declares that layout
  (``dann`` does: with it, ``dann.align`` "auto" is one-sided, so this is ADDA) and to "shared"
  otherwise; the resolved config records which.
- ``source_path``: with the target's own encoder, "train" (the default) keeps training the
  source path (source encoder, its BatchNorm statistics and the shared head) on the source loss;
  "frozen" keeps all of it at its start (the source-only run), so only the target's encoder
  learns and the run's source accuracy is its start's: ADDA as Tzeng et al. 2017 wrote it.
  Needs ``target_encoder = "separate"`` and a strategy that reads the target.
- ``schedule.kind``: "onecycle" (``OneCycleLR`` over all planned steps) or "cyclic" (DeepMerge
  II's ``cycle1``: lr/10 -> lr -> lr/10, repeating every int(0.9 * cycle_length * steps per
  epoch) steps).
- ``lr_multipliers``: per-parameter-group learning-rate factors; modules declare their own
  (``galmerge.training.optim``), the table overrides them.
- ``init_keep_preprocess``: with ``init_from``, normalise with the checkpoint's preprocessing
  specs instead of measuring new ones (transfer learning as DeepMerge II did it).
- ``init_fresh_strategies``: with ``init_from``, the strategies whose learned state (Fisher
  centres, a discriminator) starts fresh instead of being loaded from the checkpoint; empty (the
  default) loads every strategy state the checkpoint holds with matching shapes. The
  ``deepmerge2-sim-real-tl`` preset lists ``fisher``: the authors' transfer learning loads the
  network (and the discriminator) only.
- ``epoch_steps``: steps per epoch from the source training split of n images at batch size b:
  "floor" (the default) floor(n / b), "ceil" ceil(n / b), as a ``DataLoader`` without
  ``drop_last`` counts them (DeepMerge II's code; its presets pin it). Every batch is full either
  way: a batch that crosses the end of a pass continues into the next permutation.
"""

from __future__ import annotations

import copy
import difflib
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.plugin.options import plain
from galmerge.runtime.devices import check_device_name

DEFAULTS: dict[str, Any] = {
    "source": "",
    "target": "",
    "strategy": "none",
    "backbone": "deepmerge",
    "seed": 0,
    "device": "auto",
    "epochs": 200,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 1e-3,
    "patience": 20,
    # "auto": "im" with the target's own encoder, else "source_val_loss" (stop 32: with its own
    # encoder the source validation loss measures the source path only; chosen on dev runs by
    # the rule written before the replay, benchmarks/results/selection_replay32_dev.md)
    "select_by": "auto",
    "max_steps_per_epoch": 0,
    "checkpoint_every": 0,
    "compile": False,
    "init_from": "",
    "preset": "",
    "stop_by": "",
    "early_stopping": "patience",
    # per-domain statistics (issue 14): on the dev pairs joint BatchNorm cost 3-7 points of
    # source accuracy (benchmarks/results/study_dsbn_dev.md)
    "domain_batchnorm": "separate",
    # "auto": the target's own encoder (ADDA) when every target-reading strategy's record asks
    # for it (dann's, since stop 28: benchmarks/results/study_adda28_*.md), else shared
    "target_encoder": "auto",
    # "frozen": with the target's own encoder, the source path stays at its start (ADDA as
    # Tzeng et al. 2017 wrote it); "train" keeps training it on the source loss (stop 28)
    "source_path": "train",
    "init_keep_preprocess": False,
    "init_fresh_strategies": [],
    "epoch_steps": "floor",
    # Adam with the paper's betas (DeepMerge II; DeepMergeDomainAdaptation's train_MMD.py uses (0.7, 0.8))
    "optimizer": {"betas": [0.7, 0.8], "eps": 1e-8, "amsgrad": False},
    # torch.optim.lr_scheduler.OneCycleLR arguments (its own defaults)
    # "cyclic": DeepMerge II's lr_schedule.cycle1 (cycle_length in epochs)
    "schedule": {"kind": "onecycle", "pct_start": 0.3, "div_factor": 25.0,
                 "final_div_factor": 1e4, "cycle_length": 5},
    # "OWNER.PREFIX" -> learning-rate multiplier, over the modules' declared ones
    "lr_multipliers": {},
    # the source as the target survey sees it (galmerge.data.observe); the defaults change
    # no pixel
    "observe": {"psf_fwhm": [0.0, 0.0], "sky_sigma": "none", "field": "none",
                "field_rate": "auto", "field_scale": "auto"},
    "backbone_options": {},
    "strategies": {},
}

TOP_KEYS = set(DEFAULTS)
#: settings of an adaptation that its source-only counterpart leaves out (train's source-only
#: stage, tune's study reference, evaluate's `none` baseline): `none` never forwards a target
#: image, so the target's layout and BatchNorm, the stop rule and the strategy's options do not
#: exist for it
ADAPTATION_ONLY = ("strategy", "strategies", "target_encoder", "domain_batchnorm", "stop_by",
                   "source_path", "init_fresh_strategies")
SECTIONS = ("optimizer", "schedule", "observe")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise GalmergeError(f"config file {p} does not exist")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise GalmergeError(f"config file {p} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError:
        raise GalmergeError(f"config file {p} is not a TOML text file (not UTF-8); pass the "
                            "config.toml of a run or a file written like it") from None
    except OSError as exc:
        raise GalmergeError(f"cannot read config file {p}: {exc.strerror or exc}") from None


def write_toml(path: str | Path, config: Mapping[str, Any]) -> None:
    """Write a resolved config (keys sorted in a stable, readable order)."""
    import tomli_w

    atomic.write_text(path, tomli_w.dumps(_toml_safe(config)))


def _toml_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple | list):
        return [_toml_safe(v) for v in value]
    return value


def parse_assignment(text: str, flag: str) -> tuple[str, Any]:
    """``"key=value"`` -> (key, typed value); values are TOML literals or bare strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        example = "dropout=0.3" if flag == "--backbone-option" else "fisher.intra_weight=0.01"
        raise GalmergeError(f"{flag} '{text}' is not KEY=VALUE; e.g. {flag} {example}")
    return key, parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def cli_overrides(
    flags: Mapping[str, Any],
    sets: list[str] | tuple[str, ...] = (),
    backbone_options: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """CLI flags (None = not given) plus ``--set`` and ``--backbone-option`` as a config layer."""
    layer: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    for text in sets:
        key, value = parse_assignment(text, "--set")
        section, dot, option = key.partition(".")
        if not dot and key in TOP_KEYS and not isinstance(DEFAULTS[key], Mapping):
            layer[key] = value  # a plain setting without its own flag, e.g. stop_by
            continue
        if not dot and key not in TOP_KEYS:  # a misspelt setting, not a missing SECTION.
            plain = sorted(k for k in TOP_KEYS if not isinstance(DEFAULTS[k], Mapping))
            hint = difflib.get_close_matches(key, plain, n=1)
            raise GalmergeError(
                f"--set '{text}': unknown setting '{key}'"
                + (f" (did you mean '{hint[0]}'?)" if hint else "")
                + f"; settings: {', '.join(plain)}; or SECTION.OPTION=VALUE, e.g. --set "
                "mmd.weight=0.5"
            )
        if not dot or not option:
            raise GalmergeError(
                f"--set '{text}' needs SECTION.OPTION=VALUE, e.g. --set mmd.weight=0.5"
            )
        section = section.lower()
        if section in SECTIONS:
            layer.setdefault(section, {})[option] = value
        elif section == "lr_multipliers":
            layer.setdefault("lr_multipliers", {})[option] = value
        elif section in ("backbone", "backbone_options"):
            layer.setdefault("backbone_options", {})[option] = value
        else:
            layer.setdefault("strategies", {}).setdefault(section, {})[option] = value
    for text in backbone_options:
        key, value = parse_assignment(text, "--backbone-option")
        layer.setdefault("backbone_options", {})[key] = value
    return layer


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(layer: Mapping[str, Any], where: str) -> None:
    for section in (*SECTIONS, "backbone_options", "strategies"):
        if section in layer and not isinstance(layer[section], Mapping):
            raise GalmergeError(f"{section} in {where} must be a table of options "
                                f"([{section}] in TOML), got {layer[section]!r}")
    for name, options in dict(layer.get("strategies") or {}).items():
        if not isinstance(options, Mapping):
            raise GalmergeError(f"strategies.{name} in {where} must be a table of options, "
                                f"got {options!r}")
    unknown = sorted(set(layer) - TOP_KEYS)
    if unknown:
        raise GalmergeError(
            f"unknown setting(s) {', '.join(unknown)} in {where}; known: {', '.join(sorted(TOP_KEYS))}"
        )
    for section in SECTIONS:
        extra = sorted(set(layer.get(section) or {}) - set(DEFAULTS[section]))
        if extra:
            raise GalmergeError(
                f"unknown {section} option(s) {', '.join(extra)} in {where}; "
                f"known: {', '.join(sorted(DEFAULTS[section]))}"
            )


def resolve_config(
    cli: Mapping[str, Any] | None = None, file: str | Path | Mapping[str, Any] | None = None,
    *, legacy: bool = False,
) -> dict[str, Any]:
    """Merge defaults, the preset, a config file and CLI overrides; validate every name.

    ``legacy``: ``file`` is a run's own record, whose absent settings take the values its run
    trained with (`galmerge.config.legacy`), not today's defaults."""
    from galmerge.config.legacy import with_legacy_values
    from galmerge.config.presets import preset_values
    from galmerge.plugin.manager import get_plugin_manager
    from galmerge.plugin.strategy_api import canonical_strategies

    cli = plain(dict(cli or {}))  # np.int64(1) from a notebook: the number it holds
    if file is None:
        file_layer: dict[str, Any] = {}
        where = "the config"
    elif isinstance(file, Mapping):
        file_layer, where = plain(dict(file)), "the config"
    else:
        file_layer, where = read_toml(file), f"config file {file}"
    if legacy:
        file_layer = with_legacy_values(file_layer)
    _check_keys(file_layer, where)
    _check_keys(cli, "the command line")

    def pick(key: str) -> Any:
        for layer in (cli, file_layer):
            if key in layer:
                return layer[key]
        return DEFAULTS[key]

    pm = get_plugin_manager()
    canonical = canonical_strategies(str(pick("strategy")))  # aliases resolved, none twice
    records = [pm.get("strategies", n) for n in canonical]
    backbone = pm.get("backbones", str(pick("backbone")))
    preset_name = str(pick("preset") or "")
    preset = preset_values(preset_name, canonical, backbone.name) if preset_name else {}

    aliases = {a: r.name for r in records for a in (r.name, *r.aliases)}
    # each layer's [strategies] under the registered names before the layers merge: else
    # `ada` and `dann` were two tables, and the later in the table's order won, not the layer
    file_layer = _strategy_spellings(file_layer, aliases, where)
    cli = _strategy_spellings(cli, aliases, "the command line")
    config = deep_merge(DEFAULTS, preset)
    config = deep_merge(config, file_layer)
    config = deep_merge(config, cli)
    config["strategy"] = "+".join(canonical)
    config["backbone"] = backbone.name
    config["preset"] = preset_name

    given = dict(config.get("strategies") or {})
    resolved_strategies: dict[str, dict[str, Any]] = {}
    for key, options in given.items():
        name = aliases.get(str(key).lower())
        if name is None:
            raise GalmergeError(
                f"options given for strategy '{key}', which is not in --strategy "
                f"{config['strategy']}; add it there or drop its options"
            )
        resolved_strategies.setdefault(name, {}).update(dict(options))
    config["strategies"] = {}
    for record in records:  # checked against the record's option schema, before any work
        config["strategies"][record.name] = record.check(resolved_strategies.get(record.name))
    config["backbone_options"] = backbone.check(config.get("backbone_options"))
    config["lr_multipliers"] = _multipliers(config.get("lr_multipliers") or {}, aliases)
    config["init_fresh_strategies"] = _fresh_strategies(config["init_fresh_strategies"],
                                                        aliases, config["strategy"])
    reading = [r for r in records if r.needs_target]
    if config.get("target_encoder") == "auto":  # the resolved config records the layout
        own = reading and config.get("domain_batchnorm") != "joint" and all(
            getattr(r, "target_encoder", "shared") == "separate" for r in reading)
        config["target_encoder"] = "separate" if own else "shared"
    if config.get("source_path") == "frozen" and (
            config["target_encoder"] != "separate" or not reading):
        raise GalmergeError(
            "source_path=frozen needs the target's own encoder and a strategy that reads the "
            f"target (here strategy {config['strategy']}, target_encoder "
            f"{config['target_encoder']}): "
            "use e.g. --strategy dann, whose default is target_encoder=separate, or drop "
            "source_path")
    if config.get("select_by") == "auto":  # the resolved config records the score
        config["select_by"] = "im" if config["target_encoder"] == "separate" else "source_val_loss"
    validate_config(config)
    return config


def _strategy_spellings(layer: dict[str, Any], aliases: Mapping[str, str],
                        where: str) -> dict[str, Any]:
    """``layer`` with its ``[strategies]`` tables keyed by registered name (``ada`` ->
    ``dann``); an option set under two spellings to two values is a one-line error naming both.
    Keys of no strategy of the run, and tables that are not tables, are left for the checks
    that name them."""
    table = layer.get("strategies")
    if not isinstance(table, Mapping):
        return layer
    out: dict[str, Any] = {}
    spelled: dict[tuple[str, str], tuple[str, Any]] = {}  # (name, option) -> (key, value)
    for key, options in table.items():
        name = aliases.get(str(key).lower())
        if name is None or not isinstance(options, Mapping):
            out[key] = options
            continue
        merged = out.setdefault(name, {})
        if not isinstance(merged, Mapping):
            out[key] = options
            continue
        for option, value in options.items():
            first = spelled.get((name, str(option)))
            if first is not None and first[1] != value:
                raise GalmergeError(
                    f"{where} sets {first[0]}.{option} = {first[1]!r} and {key}.{option} = "
                    f"{value!r}, one strategy ({name}) under two names; keep one")
            spelled[(name, str(option))] = (str(key), value)
            merged[option] = value
    return {**layer, "strategies": out}


def _fresh_strategies(value: Any, aliases: Mapping[str, str], strategy: str) -> list[str]:
    """``init_fresh_strategies`` as canonical names of the run's own strategies."""
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) and n for n in value):
        raise GalmergeError(f"init_fresh_strategies must be a list of strategy names, got "
                            f"{value!r}; e.g. --set 'init_fresh_strategies=[\"fisher\"]'")
    out = []
    for name in value:
        canonical = aliases.get(name.lower())
        if canonical is None:
            raise GalmergeError(f"init_fresh_strategies: '{name}' is not a strategy of this run "
                                f"(--strategy {strategy}); list only its own, or drop it")
        if canonical not in out:
            out.append(canonical)
    return out


#: upper bounds of the step sizes: beyond them Adam's float32 step overflows (a torch
#: traceback); far above any sensible value, so that a tuning range never meets them
LR_MAX = 10.0
WEIGHT_DECAY_MAX = 1e3
MULTIPLIER_MAX = 1e4
DIV_FACTOR_MIN = 1e-3

SEED_LIMIT = 2**32  # numpy's seed range; the run's generators derive theirs from it


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_config(config: Mapping[str, Any]) -> None:
    """Every value of a resolved config in range, or a one-line GalmergeError naming it.

    The one place values are checked, so that no bad value reaches torch as a traceback.
    """
    _validate_choices(config)
    _validate_values(config)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _multipliers(table: Mapping[str, Any], aliases: Mapping[str, str]) -> dict[str, float]:
    """``lr_multipliers`` as flat "OWNER.PREFIX" keys (TOML dotted keys nest); keys of a known
    strategy that is not in this run are dropped (presets pin every built-in's)."""
    from galmerge.plugin.manager import get_plugin_manager

    if not isinstance(table, Mapping):
        raise GalmergeError(f"lr_multipliers must be a table of OWNER.PREFIX = number, got "
                            f"{table!r}; e.g. [lr_multipliers] \"fisher.centers\" = 10")
    known = {n.lower() for n in get_plugin_manager().components("strategies")}
    out: dict[str, float] = {}
    for key, value in _flatten(table).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise GalmergeError(f"lr_multipliers.{key} must be a number >= 0, got {value!r}")
        if not value <= MULTIPLIER_MAX:  # NaN too; lr * a huge factor overflows Adam's step
            raise GalmergeError(f"lr_multipliers.{key} must be a number from 0 to "
                                f"{MULTIPLIER_MAX:g}, got {value!r}; typical factors are 0.01 "
                                "to 10")
        owner, dot, prefix = key.partition(".")
        if key == "*" or owner == "model":
            out[key] = float(value)
        elif owner.lower() in aliases:
            out[f"{aliases[owner.lower()]}{dot}{prefix}"] = float(value)
        elif owner.lower() not in known:
            raise GalmergeError(
                f"lr_multipliers.{key}: '{owner}' is neither 'model' nor a strategy; keys are "
                f"OWNER.PREFIX, e.g. lr_multipliers.fisher.centers=10"
            )
    return out


CHOICES = {
    "early_stopping": ("patience", "deepmerge"),
    "domain_batchnorm": ("joint", "separate", "specific"),
    "target_encoder": ("auto", "shared", "separate"),
    "source_path": ("train", "frozen"),
    "epoch_steps": ("floor", "ceil"),
}


def _validate_choices(config: Mapping[str, Any]) -> None:
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise GalmergeError(f"{key} must be one of {', '.join(choices)}, got {config[key]!r}")
    if config["target_encoder"] == "separate" and config["domain_batchnorm"] == "joint":
        raise GalmergeError("target_encoder=separate forwards each domain through its own "
                            "encoder: set domain_batchnorm=separate (or specific), not joint")
    if config["schedule"]["kind"] not in ("onecycle", "cyclic"):
        raise GalmergeError(
            f"schedule.kind must be onecycle or cyclic, got {config['schedule']['kind']!r}"
        )
    length = config["schedule"]["cycle_length"]
    if isinstance(length, bool) or not isinstance(length, int | float) or not length > 0:
        raise GalmergeError(f"schedule.cycle_length must be a number of epochs > 0, got {length!r}")
    if not isinstance(config["init_keep_preprocess"], bool):
        raise GalmergeError("init_keep_preprocess must be true or false")


def _check_observe(options: Mapping[str, Any]) -> None:
    """``[observe]`` (galmerge.data.observe): values only; band counts are checked against
    the data when it is loaded."""
    fwhm = options["psf_fwhm"]
    if (not isinstance(fwhm, list | tuple) or len(fwhm) != 2 or not all(map(_number, fwhm))
            or not 0 <= fwhm[0] <= fwhm[1] <= 20):
        raise GalmergeError(
            f"observe.psf_fwhm must be [lo, hi] arcsec with 0 <= lo <= hi <= 20, got {fwhm!r}; "
            "e.g. --set 'observe.psf_fwhm=[1.0, 2.0]'")
    sky = options["sky_sigma"]
    if isinstance(sky, str):
        if sky not in ("none", "auto"):
            raise GalmergeError(f"observe.sky_sigma must be none, auto or one number per band, "
                                f"got {sky!r}")
    elif (not isinstance(sky, list | tuple) or not sky
            or not all(_number(v) and v >= 0 for v in sky)):
        raise GalmergeError(f"observe.sky_sigma must be none, auto or one number >= 0 per band, "
                            f"got {sky!r}")
    if options["field"] not in ("none", "target"):
        raise GalmergeError(f"observe.field must be none or target, got {options['field']!r}")
    rate = options["field_rate"]
    if rate != "auto" and not (_number(rate) and 0 <= rate <= 100):
        raise GalmergeError(f"observe.field_rate must be auto or a mean count per stamp between 0 "
                            f"and 100, got {rate!r}")
    scale = options["field_scale"]
    if scale != "auto" and not (_number(scale) and scale > 0):
        raise GalmergeError(f"observe.field_scale must be auto or a flux factor > 0, got "
                            f"{scale!r}")
    for key in ("field_rate", "field_scale"):  # else taken and never used, unsaid
        if options["field"] != "target" and options[key] != "auto":
            raise GalmergeError(f"observe.{key} applies with observe.field = \"target\" only; "
                                f"set that too, e.g. --set observe.field=target, or drop {key}")


def _validate_values(config: Mapping[str, Any]) -> None:
    for key in ("epochs", "batch_size"):
        if not _whole(config[key]) or config[key] < 1:
            raise GalmergeError(f"{key} must be a whole number >= 1, got {config[key]!r}")
    for key in ("patience", "max_steps_per_epoch", "checkpoint_every", "seed"):
        if not _whole(config[key]) or config[key] < 0:
            raise GalmergeError(f"{key} must be a whole number >= 0, got {config[key]!r}")
    if config["seed"] >= SEED_LIMIT:
        raise GalmergeError(f"seed must be a whole number from 0 to {SEED_LIMIT - 1}, got "
                            f"{config['seed']!r}")
    for key in ("lr", "weight_decay"):
        value = config[key]
        if not _number(value) or value < 0:
            raise GalmergeError(f"{key} must be a finite number >= 0, got {value!r}")
    if not (config["lr"] > 0):
        raise GalmergeError("lr must be > 0")
    # finite but huge values overflow float32 inside Adam's step (a torch traceback)
    for key, top, typical in (("lr", LR_MAX, "1e-3"), ("weight_decay", WEIGHT_DECAY_MAX, "1e-4")):
        if config[key] > top:
            raise GalmergeError(f"{key} must be at most {top:g}, got {config[key]!r}; "
                                f"a typical value is {typical}")
    for key in ("compile",):
        if not isinstance(config[key], bool):
            raise GalmergeError(f"{key} must be true or false, got {config[key]!r}")
    for key in ("device", "select_by", "init_from", "preset", "source", "target"):
        if not isinstance(config[key], str):
            raise GalmergeError(f"{key} must be a string, got {config[key]!r}")
    check_device_name(config["device"])  # xpu, meta...: torch's names galmerge cannot train on
    opt = config["optimizer"]
    betas = opt["betas"]
    if not isinstance(betas, list | tuple) or len(betas) != 2:
        raise GalmergeError(f"optimizer.betas must be two numbers, got {betas!r}")
    if not all(_number(b) and 0 <= b < 1 for b in betas):
        raise GalmergeError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}")
    if not _number(opt["eps"]) or opt["eps"] <= 0:
        raise GalmergeError(f"optimizer.eps must be a small positive number (default 1e-8), "
                            f"got {opt['eps']!r}")
    if not isinstance(opt["amsgrad"], bool):
        raise GalmergeError(f"optimizer.amsgrad must be true or false, got {opt['amsgrad']!r}")
    sched = config["schedule"]
    if not _number(sched["pct_start"]) or not 0 < sched["pct_start"] < 1:
        raise GalmergeError("schedule.pct_start (the share of steps spent warming up) must be "
                            f"a number between 0 and 1, got {sched['pct_start']!r}")
    for key, typical in (("div_factor", "25"), ("final_div_factor", "1e4")):
        if not _number(sched[key]) or sched[key] <= 0:
            raise GalmergeError(f"schedule.{key} must be a number > 0, got {sched[key]!r}")
        if sched[key] < DIV_FACTOR_MIN:  # lr / div_factor: a tiny divisor overflows Adam's step
            raise GalmergeError(f"schedule.{key} must be at least {DIV_FACTOR_MIN:g}, got "
                                f"{sched[key]!r}; the default is {typical}")
    _check_observe(config["observe"])
    for key in ("source", "target"):
        if not config[key]:
            example = "synthetic:illustris" if key == "source" else "'synthetic:sdss?seed=1'"
            raise GalmergeError(f"no --{key} given; e.g. --{key} {example}")
