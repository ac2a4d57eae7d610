"""The whole plugin contract: four hooks. Implement any of them with ``@galmerge.hookimpl``.

When the hooks run:

- galmerge imports every plugin module (entry-point group ``galmerge``) the first time it needs
  a component in a process: ``galmerge list``, ``galmerge plugins``, and at the start of every
  ``train``, ``classify``, ``evaluate`` or ``preview``. A plugin module must therefore be cheap to
  import: import torch, numpy or network clients inside the functions that need them. A module
  that fails to import is skipped with a one-line warning; the other plugins keep working.
- ``register_backbones``, ``register_strategies`` and ``register_surveys`` are called once per
  process, the first time a component of that kind is looked up, and their records are cached.
  They must only describe components (return records): no I/O, no model building.
- ``register_commands`` is called when the ``galmerge`` command group lists or looks up a command
  that is not built in (``galmerge --help``, or running a plugin's command).
- The record's callables run later, in the job that uses them: ``Strategy.build`` once per
  training run (on every process under DDP) with a `StrategyContext`, before the first step;
  the module it returns is called once per training step with a `StepInputs`.
  ``Survey.load`` when a data set is read; ``Survey.cutouts`` once per classify run, and the
  service's ``close()`` when that run ends, also after an error or an interruption.

Strategy outputs: the module's ``forward(step)`` returns ``{term: scalar tensor}``. Every term
is multiplied by the strategy's ``weight`` and added to the loss, except terms whose name starts
with ``_``: those are diagnostics, detached, never weighted nor added to the loss, and logged as
per-epoch means in metrics.csv column ``diag_NAME`` (NAME without the underscore; loss terms are
``loss_NAME``) and in TensorBoard. Use them for quantities worth watching (a discriminator's
accuracy, a kernel bandwidth) that must not be optimised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from galmerge.plugin.records import Backbone, Strategy, Survey

PROJECT = "galmerge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backbones() -> Iterable[Backbone]:
    """Return (or yield) the `Backbone` records this plugin provides.

    Called once per process, when backbones are first looked up; ``Backbone.build`` runs when a
    model is made (training, and loading a checkpoint for classify or evaluate).
    """


@hookspec
def register_strategies() -> Iterable[Strategy]:
    """Return (or yield) the domain-adaptation `Strategy` records this plugin provides.

    Called once per process, when strategies are first looked up. ``Strategy.build`` is called
    once per training run; its module's outputs whose names start with ``_`` are diagnostics
    (logged, never added to the loss).
    """


@hookspec
def register_surveys() -> Iterable[Survey]:
    """Return (or yield) the `Survey` records (data sources) this plugin provides.

    Called once per process, when surveys are first looked up. ``Survey.load`` runs when a data
    set ``NAME[:ARG]`` is read; ``Survey.cutouts`` once per classify run.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the `galmerge` command group.

    Called when the command group lists its commands or meets a name that is not built in.
    A command named like a built-in one is ignored, with a warning naming the plugin.
    """
