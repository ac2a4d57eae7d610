"""Typed records that plugins return from the registration hooks.

Each record may declare its options as a schema (``options``: name -> `Option`, with default,
type and help); the core checks the options a user gives against it before calling the
plugin's ``build`` (backbones, strategies) or ``load``/``cutouts`` (surveys), so the plugin gets
complete, typed values and need not check names or types itself. ``defaults`` (name -> value)
is the older, schema-less form and is still accepted; each form is derived from the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from galmerge.plugin.options import Option, check_options, schema_from_defaults

if TYPE_CHECKING:
    from torch import nn

    from galmerge.plugin.cutouts import CutoutService
    from galmerge.plugin.imageset import ImageSet
    from galmerge.plugin.strategy_api import StrategyContext


@dataclass(frozen=True)
class Backbone:
    """A feature extractor.

    ``build(in_channels, image_size, **options)`` returns an ``nn.Module`` whose forward maps
    images (N, C, H, W) to features (N, out_features) and that exposes ``out_features``.
    ``build_head(out_features, num_classes)`` returns the classifier on top (default: Linear).
    The module may define ``init_head(head)`` (called once the head is built).
    ``search_space`` declares the options `galmerge tune` searches (see `Strategy`).

    Learning-rate multipliers: the built module may set ``lr_multipliers: dict[str, float]``
    (a parameter-name prefix inside the module, e.g. ``"bottleneck"``, -> factor on the run's lr)
    and ``head_lr_multiplier: float`` (the classifier head's factor). Users override them with
    ``--set lr_multipliers.model.backbone.PREFIX=X`` / ``lr_multipliers.model.head=X``.
    """

    name: str
    description: str
    build: Callable[..., nn.Module]
    build_head: Callable[[int, int], nn.Module] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    options: Mapping[str, Option] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _schema(self)
        plugin_build = self.build

        def build(in_channels: int, image_size: int, **options: Any) -> nn.Module:
            return plugin_build(in_channels, image_size, **self.check(options))

        object.__setattr__(self, "build", build)

    def check(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``options``, checked against the schema (one-line errors)."""
        return check_options("backbone", self.name, self.options, options)


@dataclass(frozen=True)
class Strategy:
    """A domain-adaptation strategy contributing named loss terms.

    ``build(context, options)`` returns an ``nn.Module`` whose ``forward(step: StepInputs)``
    returns ``{term_name: scalar tensor}``; the trainer adds ``weight * term`` to the loss and
    optimises the module's own parameters (a discriminator, class centres) too.
    ``defaults`` lists every option with its default value (``weight`` included).
    ``search_space`` maps options to the ranges `galmerge tune` searches, e.g.
    ``{"weight": {"type": "float", "low": 0.01, "high": 3.0, "log": True}}`` (types: float,
    int with low/high/log, categorical with choices); options left out keep their value.

    ``needs_target``: whether the module reads the target batch. When no strategy of a run does,
    target images are never forwarded during training (source-only; ``StepInputs``' target
    tensors are then empty).

    ``target_encoder``: the layout the strategy's defaults were chosen for, "shared" or
    "separate" (the target's own encoder, ADDA's layout). With the config's
    ``target_encoder = "auto"`` (the default) a run gets its own target encoder when every
    strategy of it that reads the target says "separate"; the module learns the run's layout
    from ``StrategyContext.target_encoder``.

    Learning-rate multipliers: the built module may set ``lr_multipliers: dict[str, float]``
    (a parameter-name prefix inside the module, e.g. ``"centers"``, -> factor on the run's lr);
    users override them with ``--set lr_multipliers.NAME.PREFIX=X``.
    """

    name: str
    description: str
    build: Callable[[StrategyContext, Mapping[str, Any]], nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=lambda: {"weight": 1.0})
    aliases: tuple[str, ...] = ()
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    needs_target: bool = True
    options: Mapping[str, Option] = field(default_factory=dict)
    target_encoder: str = "shared"

    def __post_init__(self) -> None:
        _schema(self, {"weight": Option(1.0, "factor of this strategy's terms in the loss",
                                        min=0.0)})
        plugin_build = self.build

        def build(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
            return plugin_build(context, self.check(options))

        object.__setattr__(self, "build", build)

    def check(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``options``, checked against the schema (one-line errors)."""
        return check_options("strategy", self.name, self.options, options)


@dataclass(frozen=True)
class Survey:
    """A data source.

    ``load(arg, options)`` returns a labelled ``ImageSet`` (``arg`` is the part after the colon
    in ``NAME:ARG``, or None). ``cutouts(preprocess, options)`` returns a ``CutoutService`` that
    fetches stamps for catalog positions, for surveys with an image service.
    """

    name: str
    description: str
    load: Callable[[str | None, Mapping[str, Any]], ImageSet] | None = None
    cutouts: Callable[[Mapping[str, Any], Mapping[str, Any]], CutoutService] | None = None
    presets: tuple[str, ...] = ()
    #: schemas of ``load``'s and ``cutouts``' options; empty: the survey checks its own
    options: Mapping[str, Option] = field(default_factory=dict)
    cutout_options: Mapping[str, Option] = field(default_factory=dict)

    def __post_init__(self) -> None:
        plugin_load, plugin_cutouts = self.load, self.cutouts
        if plugin_load is not None and self.options:
            def load(arg: str | None, options: Mapping[str, Any]) -> ImageSet:
                label = f"{self.name}:{arg}" if arg else self.name
                return plugin_load(arg, self.check(options, label))

            object.__setattr__(self, "load", load)
        if plugin_cutouts is not None and self.cutout_options:
            def cutouts(preprocess: Mapping[str, Any], options: Mapping[str, Any]
                        ) -> CutoutService:
                return plugin_cutouts(preprocess, self.check(options, self.name, cutouts=True))

            object.__setattr__(self, "cutouts", cutouts)

    def check(self, options: Mapping[str, Any] | None, label: str, *,
              cutouts: bool = False) -> dict[str, Any]:
        """Names and types of the options given to ``load`` (``cutouts``: to ``cutouts``)
        checked against the schema, when the survey declares one; values not given stay
        unset (a survey may tell "not given" from its default). ``label``: the spec, for
        messages."""
        schema = self.cutout_options if cutouts else self.options
        if not schema:
            return dict(options or {})
        return check_options("survey", self.name, schema, options, fill=False, label=label)


def _schema(record: Any, implied: Mapping[str, Option] | None = None) -> None:
    """Fill ``options`` from ``defaults`` or ``defaults`` from ``options`` (frozen record)."""
    options = dict(record.options) or schema_from_defaults(record.defaults)
    for key, option in (implied or {}).items():  # e.g. a strategy's weight: >= 0
        current = options.get(key)
        if current is not None and not record.options:
            options[key] = Option(current.default, option.help, option.type, option.choices,
                                  option.min, option.max, option.below)
        elif current is not None and current.min is None:  # declared without a lower bound
            options[key] = replace(current, min=option.min, help=current.help or option.help)
    object.__setattr__(record, "options", options)
    object.__setattr__(record, "defaults", {k: o.default for k, o in options.items()})
