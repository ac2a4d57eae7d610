"""Adam with per-module learning-rate multipliers, and the learning-rate schedules.

Multipliers are declared by the modules themselves (see ``declared_multipliers``) and can be
changed in the config table ``lr_multipliers`` with keys ``OWNER.PREFIX``: OWNER is ``model``
(PREFIX a parameter-name prefix inside the classifier, e.g. ``backbone.bottleneck``, ``head``) or
a strategy name (PREFIX inside its module, e.g. ``fisher.centers``); ``"*"`` sets every declared
multiplier at once. A parameter takes the multiplier of its longest matching prefix, else 1.
Parameters with equal multipliers share one Adam parameter group (in first-seen order), so a run
where every multiplier is 1 has the single group it always had.

Schedules (``schedule.kind``): ``"onecycle"`` is ``torch.optim.lr_scheduler.OneCycleLR`` over all
planned steps (a warm-up of one step, which it cannot run, lengthened: ``onecycle_pct_start``);
``"cyclic"`` is DeepMerge II's ``lr_schedule.cycle1`` as that code runs it: a repeating triangle
from lr/10 up to lr and back, period int(0.9 · cycle_length · steps_per_epoch) steps (its 10 %
"annihilation" tail is never reached, because the step counter is taken modulo the period
first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from galmerge.errors import GalmergeError

WILDCARD = "*"
KINDS = ("onecycle", "cyclic")


def declared_multipliers(model: nn.Module, strategies: Mapping[str, nn.Module]) -> dict[str, float]:
    """``{"OWNER.PREFIX": multiplier}`` from the modules' ``lr_multipliers`` attributes.

    The backbone's ``lr_multipliers`` prefixes are inside the backbone (``model.backbone.P``); its
    ``head_lr_multiplier`` applies to the classifier head (``model.head``); a strategy module's
    ``lr_multipliers`` prefixes are inside that module (``NAME.P``).
    """
    out: dict[str, float] = {}
    backbone = getattr(model, "backbone", model)
    for prefix, mult in dict(getattr(backbone, "lr_multipliers", {}) or {}).items():
        out[_join("model.backbone", prefix)] = float(mult)
    head_mult = getattr(backbone, "head_lr_multiplier", None)
    if head_mult is not None:
        out["model.head"] = float(head_mult)
    for name, module in strategies.items():
        for prefix, mult in dict(getattr(module, "lr_multipliers", {}) or {}).items():
            out[_join(name, prefix)] = float(mult)
    return out


def _join(owner: str, prefix: str) -> str:
    return f"{owner}.{prefix}" if prefix else owner


def resolve_multipliers(
    declared: Mapping[str, float], overrides: Mapping[str, Any], parameter_names: list[str]
) -> dict[str, float]:
    """Declared multipliers with the config's overrides applied; every key must match a
    parameter (a typo is an error, not a silent no-op)."""
    # a declared prefix with no parameters here (a ResNet without bottleneck) is not in force
    out = {k: m for k, m in declared.items() if any(_matches(_full(k), n) for n in parameter_names)}
    if WILDCARD in overrides:
        out = {k: float(overrides[WILDCARD]) for k in out}
    for key, mult in overrides.items():
        if key == WILDCARD:
            continue
        if not any(_matches(_full(key), n) for n in parameter_names):
            raise GalmergeError(
                f"lr_multipliers.{key} matches no parameter of this run; declared: "
                f"{', '.join(sorted(declared)) or 'none'} (keys are OWNER.PREFIX, OWNER = model "
                f"or a strategy name)"
            )
        out[key] = float(mult)
    for key, mult in out.items():
        if not mult >= 0:
            raise GalmergeError(f"lr_multipliers.{key} must be a number >= 0, got {mult!r}")
    return out


def _full(key: str) -> str:
    """A config key -> the parameter-name prefix inside the trainer's step module."""
    owner, _, prefix = key.partition(".")
    base = "model" if owner == "model" else f"strategies.{owner}"
    return f"{base}.{prefix}" if prefix else base


def _matches(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def parameter_groups(
    named: list[tuple[str, nn.Parameter]], multipliers: Mapping[str, float]
) -> list[tuple[float, list[nn.Parameter]]]:
    """(multiplier, parameters) groups in first-seen order."""
    prefixes = sorted(((_full(k), m) for k, m in multipliers.items()), key=lambda t: -len(t[0]))
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in named:
        mult = next((m for p, m in prefixes if _matches(p, name)), 1.0)
        groups.setdefault(mult, []).append(param)
    return list(groups.items())


def build_optimizer(
    groups: list[tuple[float, list[nn.Parameter]]], config: Mapping[str, Any]
) -> torch.optim.Adam:
    lr = float(config["lr"])
    opt = config["optimizer"]
    params: Any = groups[0][1] if len(groups) == 1 and groups[0][0] == 1.0 else [
        {"params": p, "lr": lr * m} for m, p in groups
    ]
    return torch.optim.Adam(
        params,
        lr=lr,
        betas=(float(opt["betas"][0]), float(opt["betas"][1])),
        eps=float(opt["eps"]),
        amsgrad=bool(opt["amsgrad"]),
        weight_decay=float(config["weight_decay"]),
    )


class CyclicTriangular(torch.optim.lr_scheduler.LRScheduler):
    """DeepMerge II's ``cycle1``: each group's lr runs base/10 -> base -> base/10, repeating."""

    def __init__(self, optimizer: torch.optim.Optimizer, period: int, last_epoch: int = -1) -> None:
        self.period = max(2, int(period))
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [cyclic_lr(base, self.last_epoch, self.period) for base in self.base_lrs]


def cyclic_lr(lr: float, step: int, period: int) -> float:
    """The lr of ``cycle1`` at (0-based) ``step``: min lr/10, max lr, ``period`` steps a cycle."""
    low, high = lr / 10, lr
    half = period // 2
    on = step % period
    if on <= half:
        return low + (high - low) * (on / half)
    return high - (high - low) * ((on - half) / (period - half))


def cycle_period(cycle_length: float, steps_per_epoch: int) -> int:
    """int(0.9 · cycle_length · steps_per_epoch), as ``cycle1`` computes it (at least 2)."""
    return max(2, int(cycle_length * steps_per_epoch * (1.0 - 0.1)))


def onecycle_pct_start(pct_start: float, total_steps: int) -> float:
    """``pct_start`` as ``OneCycleLR`` can run it. Its warm-up runs from step 0 to step
    pct_start · total − 1, so a warm-up of one step (pct_start · total = 1, e.g. 0.1 of 10 steps)
    has zero length and divides by zero. That warm-up is made one step long (the peak at step 1;
    a run of 2 steps, too short for warm-up and annealing, anneals only). Every other value is
    kept, so the lr of runs that trained before is unchanged."""
    if pct_start * total_steps != 1:  # the product OneCycleLR computes
        return pct_start
    return 2 / total_steps if total_steps >= 3 else 0.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Mapping[str, Any], total_steps: int,
    steps_per_epoch: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    sch = config["schedule"]
    if sch.get("kind", "onecycle") == "cyclic":
        period = cycle_period(float(sch["cycle_length"]), steps_per_epoch)
        return CyclicTriangular(optimizer, period)
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lrs[0] if len(lrs) == 1 else lrs,
        total_steps=total_steps,
        pct_start=onecycle_pct_start(float(sch["pct_start"]), total_steps),
        div_factor=float(sch["div_factor"]),
        final_div_factor=float(sch["final_div_factor"]),
        cycle_momentum=False,  # keep the paper's Adam betas fixed
    )
