"""Typed records that plugins return from the registration hooks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
