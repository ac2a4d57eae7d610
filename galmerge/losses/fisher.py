"""Fisher loss around learnable class centres (Zhang et al. 2020), DeepMerge II's "FisherTR".

On labelled source features h_i with class centres c_k (``nn.Parameter``, N(0, 1) initialised,
learned by the optimiser together with the network, as ``loss.FisherTR`` in
github.com/AleksCipri/DeepMergeDomainAdaptation does):

- intra = Σ_i ‖h_i - c_{y_i}‖²     (trace of the within-class scatter; a sum over the batch)
- inter = Σ_k ‖c_k - mean_k c_k‖²  (trace of the between-class scatter, "global" form)
- ``form="tr"`` (trace ratio, the paper's): intra_weight · intra / (inter_weight · inter)
- ``form="td"`` (trace difference): intra_weight · intra - inter_weight · inter

Defaults intra_weight = 0.01, inter_weight = 1.0: the values of every command line in the
DeepMerge II repository that uses Fisher with MMD (the notebook's MMD and ADA cells, the
``train_MMD.py`` docstring), so that the trace ratio has the paper's scale. That code's own CLI
defaults are 0 / 0 (``--intra_loss_coef``, ``--inter_loss_coef``), which would switch the term
off; its sim-to-real ADA+Fisher command uses intra 1e-4. Only the ratio intra/inter matters for
the ``tr`` form. Because intra is a sum, the term grows with the batch size, as there;
``reduction="mean"`` divides it by the number of labelled samples instead. ``warmup`` = γ
multiplies the term by the ramp 2 / (1 + exp(-γ p)) - 1 (``galmerge.losses.options``).
"""

from __future__ import annotations

import torch
from torch import nn

from galmerge.plugin.options import warmup_factor
from galmerge.plugin.strategy_api import StepInputs

FORMS = ("tr", "td")
REDUCTIONS = ("sum", "mean")


class FisherLoss(nn.Module):
    """Strategy module: ``{"fisher": loss}`` plus ``_fisher_intra`` and ``_fisher_inter``."""

    # DeepMerge II's optimiser trains the centres at 10x the learning rate (train_MMD.py's
    # parameter groups, lr_mult 10); override with --set lr_multipliers.fisher.centers=X
    lr_multipliers = {"centers": 10.0}

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        intra_weight: float = 0.01,
        inter_weight: float = 1.0,
        form: str = "tr",
        reduction: str = "sum",
        warmup: float = 0.0,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.warmup = float(warmup)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        # drawn on the CPU generator so a seed gives the same centres on every device
        self.centers = nn.Parameter(torch.randn(num_classes, feature_dim))
        self.intra_weight = float(intra_weight)
        self.inter_weight = float(inter_weight)
        self.form = form

    def terms(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(intra, inter) scatter traces for a labelled batch."""
        features = features.flatten(1)
        centers = self.centers.to(features.dtype)
        labels = labels.long()
        # unlabelled samples (-1) contribute nothing; a mask, not boolean indexing, avoids a sync
        known = (labels >= 0).to(features.dtype)
        # index_select, not centers[labels]: the latter's backward (index_put_ with accumulate)
        # adds with atomics on several CPU threads, so the centres' gradient changed from run to
        # run; index_select's (index_add_ along dim 0) adds the rows in order on any thread count
        own = centers.index_select(0, labels.clamp_min(0))
        per_sample = (features - own).pow(2).sum(dim=1)
        intra = (known * per_sample).sum()
        if self.reduction == "mean":  # the same value for any batch size
            intra = intra / known.sum().clamp_min(1.0)
        inter = (centers - centers.mean(dim=0, keepdim=True)).pow(2).sum()
        return intra, inter

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        intra, inter = self.terms(step.source_features, step.source_labels)
        if self.form == "tr":
            loss = self.intra_weight * intra / (self.inter_weight * inter).clamp_min(1e-12)
        else:
            loss = self.intra_weight * intra - self.inter_weight * inter
        loss = warmup_factor(step.progress, self.warmup) * loss
        return {"fisher": loss, "_fisher_intra": intra.detach(), "_fisher_inter": inter.detach()}
