"""One training step's forward pass: the model and every strategy module in one ``nn.Module``.

Source and target batches go through the model together (``domain_batchnorm = "joint"``: one
concatenated forward, BatchNorm statistics mix the domains), one after the other (``"separate"``:
each BatchNorm batch is one domain, and each domain keeps its own running statistics, see
``galmerge.models.domain_norm``; with ``target_encoder = "separate"`` the target's own encoder,
and terms on target logits do not train the shared head), or the target not at all (when no strategy of the run
``needs_target``: source-only training). The loss is CE(source) + Σ weight_i · term_i; keys a
strategy returns with a leading ``_`` are detached diagnostics, never part of the loss.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from galmerge.config.resolve import ADAPTATION_ONLY
from galmerge.models.domain_norm import fixed_statistics, statistics
from galmerge.models.model import GalaxyClassifier
from galmerge.plugin.manager import get_plugin_manager
from galmerge.plugin.strategy_api import StepInputs, StrategyContext, check_strategy_output
from galmerge.runtime import distributed as ddp

Terms = dict[str, torch.Tensor]


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Forward passes inside build no graph into ``module``'s parameters (their gradient stays
    the one other passes give); gradients still flow through ``module`` to its inputs."""
    live = [p for p in module.parameters() if p.requires_grad]
    for p in live:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in live:
            p.requires_grad_(True)


class TrainStep(nn.Module):
    """Model and strategy modules in one module, so DDP sees (and syncs) every parameter."""

    def __init__(
        self,
        model: GalaxyClassifier,
        strategies: nn.ModuleDict,
        weights: dict[str, float],
        dist: ddp.DistInfo,
        autocast: bool,
        forward_model: nn.Module | None = None,
        joint: bool = True,
        source_head: bool = False,
        frozen_source: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.strategies = strategies
        self.weights = weights
        self.dist = dist
        self.autocast = autocast
        self.joint = joint
        # the target has its own encoder (ADDA's layout): the classifier head is the source
        # path's, so terms on the target's logits train the target encoder only (SHOT's frozen
        # hypothesis, Liang et al. 2020), and the source path sees the source loss alone
        self.source_head = source_head
        # source_path = "frozen" (ADDA as Tzeng et al. 2017 wrote it): the source path's
        # parameters are frozen by the trainer and its forward neither builds a graph nor moves
        # the source's running statistics
        self.frozen_source = frozen_source
        self.checked = False  # strategy outputs are checked once, at the first step
        # torch.compile'd view of ``model`` (same parameters); kept out of the module tree
        self.__dict__["_forward_model"] = forward_model

    def _net(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self._forward_model if self._forward_model is not None else self.model
        if self.autocast:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                feats, logits = net(x)
        else:
            feats, logits = net(x)
        return feats.float(), logits.float()

    def _features(
        self, xs: torch.Tensor, xt: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if xt is None:  # source only: the target never enters a forward pass
            fs, zs = self._net(xs)
            return fs, fs.new_empty((0, *fs.shape[1:])), zs, zs.new_empty((0, zs.shape[1]))
        if not self.joint:
            if self.frozen_source:
                with torch.no_grad(), fixed_statistics(self.model):
                    fs, zs = self._net(xs)
            else:
                fs, zs = self._net(xs)
            with statistics(self.model, "target"):  # per-domain running statistics (DSBN)
                if self.source_head:
                    with frozen(self.model.head):
                        ft, zt = self._net(xt)
                else:
                    ft, zt = self._net(xt)
            return fs, ft, zs, zt
        feats, logits = self._net(torch.cat([xs, xt]))
        n = len(xs)
        return feats[:n], feats[n:], logits[:n], logits[n:]

    def forward(
        self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor | None, progress: float
    ) -> tuple[torch.Tensor, Terms, Terms]:
        fs, ft, zs, zt = self._features(xs, xt)
        if self.dist.enabled:
            fs, zs = ddp.gather(fs, self.dist), ddp.gather(zs, self.dist)
            if xt is not None:
                ft, zt = ddp.gather(ft, self.dist), ddp.gather(zt, self.dist)
            ys = ddp.gather_plain(ys, self.dist)
        ce = F.cross_entropy(zs, ys)
        step = StepInputs(
            source_features=fs, source_logits=zs, source_labels=ys, target_features=ft,
            target_logits=zt, progress=progress,
        )
        return self._add_terms(ce, step)

    def _add_terms(self, ce: torch.Tensor, step: StepInputs) -> tuple[torch.Tensor, Terms, Terms]:
        total = ce
        terms: Terms = {"ce": ce}
        diagnostics: Terms = {}
        for name, module in self.strategies.items():
            out = module(step)
            if not self.checked:  # a plugin's mistake: one line naming it, at the first step
                check_strategy_output(name, out)
            for key, value in out.items():
                if key.startswith("_"):
                    diagnostics[key.lstrip("_")] = value.detach().float()
                    continue
                label = key if key not in terms else f"{name}_{key}"
                weighted = self.weights[name] * value
                terms[label] = weighted
                total = total + weighted
        self.checked = True
        return total, terms, diagnostics


def strategy_records(config: Mapping[str, Any]) -> list[Any]:
    pm = get_plugin_manager()
    return [pm.get("strategies", name) for name in config["strategies"]]


def needs_target(config: Mapping[str, Any]) -> bool:
    """Whether any strategy of the run reads the target batch (else training is source only)."""
    return any(getattr(r, "needs_target", True) for r in strategy_records(config))




def source_only_layer(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of the source-only run a target encoder of its own starts from, for
    train's stage and tune's study reference alike: the resolved ``config``'s data, backbone,
    optimiser, epochs and seed; strategy none, checkpoint by source validation loss, the model's
    learning-rate multipliers only, and no layout or stop rule of the adaptation. The preset is
    already applied in ``config``, so the layer names none."""
    multipliers = {k: v for k, v in (config.get("lr_multipliers") or {}).items()
                   if k == "*" or k.split(".")[0] == "model"}
    layer = {k: v for k, v in config.items() if k not in ADAPTATION_ONLY}
    layer.update(strategy="none", select_by="source_val_loss", preset="",
                 lr_multipliers=multipliers)
    return layer


def needs_source_stage(config: Mapping[str, Any]) -> bool:
    """Whether a resolved config's run starts with a source-only stage: the target has its own
    encoder (ADDA's layout), no ``init_from`` gives its start, and a strategy reads the target."""
    return (config["target_encoder"] == "separate" and not config["init_from"]
            and needs_target(config))


def build_strategies(
    config: Mapping[str, Any], feature_dim: int, total_steps: int, device: torch.device
) -> tuple[nn.ModuleDict, dict[str, float]]:
    context = StrategyContext(
        feature_dim=feature_dim, num_classes=2, total_steps=total_steps, device=device,
        target_encoder=str(config.get("target_encoder", "shared")),
    )
    modules = nn.ModuleDict()
    weights: dict[str, float] = {}
    for record in strategy_records(config):
        options = config["strategies"][record.name]
        modules[record.name] = record.build(context, dict(options)).to(device)
        weights[record.name] = float(options.get("weight", 1.0))
    return modules, weights
