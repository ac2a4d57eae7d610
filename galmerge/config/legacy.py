"""The settings older run records lack, at the values their runs trained with.

A run's ``config.toml`` records every setting that existed when the run was made. A setting or
option added later is absent from it, and would resolve to today's default (or today's preset
value), which for several of them is not what the run did. ``LEGACY_VALUES`` holds, for every
setting and built-in strategy or backbone option added after the first ``config.toml``
(fdcf660), the value that reproduces what runs did before it existed; `with_legacy_values`
fills the absent ones into a run's record. Entries whose value is today's default too are kept:
a preset may pin another value (the file layer sits above the preset), a default may change
again, and `compare` groups records by their values. A default changed after its setting
existed needs no entry: the records from before the change hold the old value.

Keys: a top-level setting (``domain_batchnorm``), a section option (``schedule.kind``),
``strategies.NAME.OPTION`` (filled when NAME is in the record's strategy expression) or
``backbones.NAME.OPTION`` (``backbone_options.OPTION`` when the record's backbone is NAME).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from galmerge.errors import GalmergeError

LEGACY_VALUES: dict[str, Any] = {
    # 4c3bddf (presets; honoured by the trainer from fe355c9, merged in 31226fa): early
    # stopping watched select_by ...
    "stop_by": "",
    # ... with the patience rule (the graded DeepMerge II counter came with the key) ...
    "early_stopping": "patience",
    # ... --init-from measured a new preprocessing spec ...
    "init_keep_preprocess": False,
    # ... the learning rate followed OneCycleLR (schedule.kind/cycle_length came in 4c3bddf;
    # cycle_length's value then, unused by onecycle) ...
    "schedule.kind": "onecycle",
    "schedule.cycle_length": 5,
    # ... and Adam had one parameter group: the multipliers the modules declare since fe355c9
    # (fisher.centers 10, dann.discriminator, resnet18's bottleneck and head) did not exist
    "lr_multipliers": {"*": 1.0},
    # fe355c9 (default joint, separate since 3a75efb): source and target forwarded as one
    # concatenated batch, BatchNorm statistics mixing the domains
    "domain_batchnorm": "joint",
    # 4ffd270 (default shared, auto since ad55a58): one encoder for both domains
    "target_encoder": "shared",
    # a544731: the source path kept training ("train", the default then and now)
    "source_path": "train",
    # e43569a: the source was not observed through a PSF or sky noise ...
    "observe.psf_fwhm": [0.0, 0.0],
    "observe.sky_sigma": "none",
    # ... 8cb998a: nor given the target's field sources (rate and scale unused without them)
    "observe.field": "none",
    "observe.field_rate": "auto",
    "observe.field_scale": "auto",
    # 5f2092f (defaults floor and []; the DeepMerge II presets pin ceil and ["fisher"] since):
    # floor(n / b) steps per epoch, and --init-from loaded every strategy state it held
    "epoch_steps": "floor",
    "init_fresh_strategies": [],
    # c30b814 ("defaults unchanged so far"; kernel mean and warmup 10 since b8befb7): MMD had
    # DeepMerge II's 19 fixed bandwidths and no warm-up ramp
    "strategies.mmd.kernel": "deepmerge",
    "strategies.mmd.warmup": 0.0,
    # 2a55f05 (default auto: one-sided with the target's own encoder): mmd and coral moved both
    # domains' features in either layout (target_encoder=separate existed from 4ffd270)
    "strategies.mmd.align": "both",
    "strategies.coral.align": "both",
    # 26213ca / 11fe27d (default off): source images unweighted
    "strategies.mmd.class_weights": "off",
    "strategies.mmd.target_fraction": 0.0,
    # c30b814: no warm-up ramp (the default then and now)
    "strategies.coral.warmup": 0.0,
    # cc8d69a: the features got the reversed discriminator gradient
    "strategies.dann.feature_loss": "reversed",
    # 733b56f: the ramped gradient reversal (the DeepMerge II presets pin constant since)
    "strategies.dann.grl": "ramp",
    # 9972887: the discriminator saw the features only
    "strategies.dann.condition": "none",
    # 5800b29 (default both, auto since ad55a58): the adversary moved both domains' features
    "strategies.dann.align": "both",
    # e9e5991: plain (unrelaxed) adversarial alignment
    "strategies.dann.relax": 0.0,
    # 11fe27d (default off): source images unweighted
    "strategies.dann.class_weights": "off",
    "strategies.dann.target_fraction": 0.0,
    # c30b814 ("defaults unchanged so far"; mean and warmup 10 since f103622): the within-class
    # scatter summed over the batch, as DeepMerge II, and no warm-up ramp
    "strategies.fisher.reduction": "sum",
    "strategies.fisher.warmup": 0.0,
    # bff50c5 (default false; the DeepMerge II presets pin true since): the target's entropy only
    "strategies.entropy.include_source": False,
    # 9cb1943 (default 0, 1 since f103622): plain entropy minimisation, no diversity term
    "strategies.entropy.diversity": 0.0,
    # c30b814 (default 0, 10 since f103622): no warm-up ramp
    "strategies.entropy.warmup": 0.0,
    # 549d44b: a plain BatchNorm + ReLU bottleneck (the default then and now) ...
    "backbones.resnet18.bottleneck_layer": "bn-relu",
    # ... and no learning-rate factor (default 1 then, 10 since the trainer merge 31226fa)
    "backbones.resnet18.lr_mult": 1.0,
}


def setting_name(key: str) -> str:
    """How ``--set`` names a `LEGACY_VALUES` key: ``mmd.kernel``, ``backbone_options.lr_mult``."""
    head, _, rest = key.partition(".")
    if head == "strategies":
        return rest
    if head == "backbones":
        return f"backbone_options.{rest.partition('.')[2]}"
    return key


def config_path(key: str) -> tuple[str, ...]:
    """Where a `LEGACY_VALUES` key lives in a config: ``("strategies", "mmd", "kernel")``."""
    head, _, rest = key.partition(".")
    if head == "backbones":
        return ("backbone_options", rest.partition(".")[2])
    return tuple(key.split("."))


def _strategies(saved: Mapping[str, Any]) -> list[str]:
    return [n.strip().lower() for n in str(saved.get("strategy") or "none").split("+")]


def applies(key: str, saved: Mapping[str, Any]) -> bool:
    """Whether a `LEGACY_VALUES` key belongs to this record's strategies and backbone."""
    head, _, rest = key.partition(".")
    if head == "strategies":
        return rest.partition(".")[0] in _strategies(saved)
    if head == "backbones":
        return rest.partition(".")[0] == str(saved.get("backbone") or "deepmerge")
    return True


def fill_legacy(saved: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of a run's recorded config with every `LEGACY_VALUES` entry it lacks filled in,
    and the keys filled. A table that is not a table is left for `resolve_config` to refuse."""
    out = copy.deepcopy(dict(saved))
    filled = []
    for key, value in LEGACY_VALUES.items():
        if not applies(key, out):
            continue
        *parents, last = config_path(key)
        node: Any = out
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last in node:
            continue
        if key == "lr_multipliers":
            value = {**value, **_preset_multipliers(out)}
        node[last] = copy.deepcopy(value)
        filled.append(key)
    return out, filled


def with_legacy_values(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A run's recorded config with the settings it lacks at the values its run trained with
    (`LEGACY_VALUES`); the input is not changed."""
    return fill_legacy(saved)[0]


def _preset_multipliers(saved: Mapping[str, Any]) -> dict[str, float]:
    """1.0 for each multiplier the record's preset pins today: the preset layer sits below the
    file's ``lr_multipliers``, and a run from before them trained every parameter at lr."""
    from galmerge.config.presets import preset_values
    from galmerge.config.resolve import _flatten

    name = str(saved.get("preset") or "")
    if not name:
        return {}
    try:
        layer = preset_values(name, _strategies(saved), str(saved.get("backbone") or ""))
    except GalmergeError:  # a preset or plugin no longer there: resolve_config says so
        return {}
    table = layer.get("lr_multipliers")
    return {k: 1.0 for k in _flatten(table) if k != "*"} if isinstance(table, Mapping) else {}
