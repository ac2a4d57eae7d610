"""Domain-adversarial training (Ganin & Lempitsky 2015; Ganin et al. 2016): DeepMerge II's "ADA".

A discriminator learns to tell source features from target features; a gradient-reversal layer
(GRL) between the features and the discriminator hands the feature extractor the negated gradient,
scaled by λ(p) = max_coeff · (2 / (1 + exp(-γ p)) - 1), which ramps from 0 to ~max_coeff as
training progress p goes 0 → 1 (γ = 10 in both papers). The discriminator follows DeepMerge II's
``network.AdversarialNetwork`` (github.com/AleksCipri/DeepMergeDomainAdaptation): two hidden
layers of 1024 with ReLU and dropout 0.5, weights N(0, 0.01) and N(0, 0.3) for the output.
That code computes λ from a step counter that never advances; we use the training progress.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from galmerge.strategy_api import StepInputs


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``-coeff``."""
    return _ReverseGradient.apply(x, float(coeff))


def grl_coefficient(progress: float, gamma: float = 10.0, max_coeff: float = 1.0) -> float:
    """λ(p) = max_coeff · (2 / (1 + exp(-γ p)) - 1), with p clipped to [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return max_coeff * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


class DomainDiscriminator(nn.Module):
    """Features (N, d) -> one domain logit per sample (source = 1, target = 0)."""

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        for layer in linears:
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(linears[-1].weight, 0.0, 0.3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


class DANNLoss(nn.Module):
    """Strategy module: ``{"dann": domain BCE}`` plus ``_domain_acc`` and ``_grl_coeff``.

    The discriminator's parameters belong to this module; minimising the returned loss trains it
    to discriminate while the reversed gradient trains the features to confuse it.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 1024,
        dropout: float = 0.5,
        gamma: float = 10.0,
        max_coeff: float = 1.0,
    ) -> None:
        super().__init__()
        self.discriminator = DomainDiscriminator(in_features, hidden, dropout)
        self.gamma = float(gamma)
        self.max_coeff = float(max_coeff)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        source, target = step.source_features.flatten(1), step.target_features.flatten(1)
        coeff = grl_coefficient(step.progress, self.gamma, self.max_coeff)
        features = reverse_gradient(torch.cat([source, target], dim=0), coeff)
        logits = self.discriminator(features)
        domain = torch.cat(
            [
                torch.ones(source.shape[0], dtype=logits.dtype, device=logits.device),
                torch.zeros(target.shape[0], dtype=logits.dtype, device=logits.device),
            ]
        )
        loss = F.binary_cross_entropy_with_logits(logits, domain)
        with torch.no_grad():
            acc = ((logits > 0).to(domain.dtype) == domain).to(logits.dtype).mean()
        return {
            "dann": loss,
            "_domain_acc": acc,
            "_grl_coeff": torch.tensor(coeff, dtype=logits.dtype, device=logits.device),
        }
