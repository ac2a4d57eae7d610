"""Domain-adversarial training (Ganin & Lempitsky 2015; Ganin et al. 2016): DeepMerge II's "ADA".

A discriminator learns to tell source features from target features; a gradient-reversal layer
(GRL) between the features and the discriminator hands the feature extractor the negated gradient
scaled by λ. ``grl="ramp"`` (default): λ(p) = max_coeff · (2 / (1 + exp(-γ p)) - 1), rising from
0 to ~max_coeff as training progress p goes 0 → 1 (γ = 10, Ganin et al. 2016). ``grl="constant"``:
λ = max_coeff for the whole run, which is what the DeepMerge II code does: its
``network.AdversarialLayer.backward`` returns ``-1 * grad`` and the ramp survives there only as a
comment (github.com/AleksCipri/DeepMergeDomainAdaptation, ``python_files/network.py``). The
discriminator follows that code's ``network.AdversarialNetwork``: two hidden layers of 1024 with
ReLU and dropout 0.5, weights N(0, 0.01) and N(0, 0.3) for the output.

``feature_loss`` chooses what the features minimise. ``"reversed"`` (default, the paper): the
negated discriminator BCE, through the GRL. ``"inverted"``: the BCE of the *flipped* domain
labels against the (frozen) discriminator, scaled by the same λ(p) — the non-saturating form of
the adversarial game (Goodfellow et al. 2014; ADDA, Tzeng et al. 2017). When the domains are
easy to tell apart, the reversed BCE of a confident discriminator is flat and the features get
no signal until the discriminator happens to break down; the inverted loss pushes hardest
exactly then.

``class_weights`` (IWDAN, Tachet des Combes et al. 2020): the discriminator's source BCE is
weighted per image by π_t(y)/π_s(y), so that a target whose merger fraction differs from the
source's is not pulled to the source's class mix (``galmerge.losses.label_shift``).

``condition`` (CDAN, Long et al. 2018): ``"predictions"`` feeds the discriminator the
multilinear map f ⊗ p (the outer product of the features and the detached class probabilities,
d · num_classes inputs), so the adversary aligns the features of each predicted class rather
than the marginal; ``"predictions+entropy"`` also weights each image by 1 + exp(-H(p))
(CDAN+E: confident predictions count more), normalised within each domain.

``relax = β`` (> 0) makes the alignment asymmetrically relaxed (Wu et al. 2019, "Domain
Adaptation with Asymmetrically-Relaxed Distribution Alignment", ICML): the discriminator
maximises the relaxed Jensen-Shannon dual E_s[log σ(d)] + E_t[log(2 + β − σ(d))] − log(1 + β)
instead of the BCE, whose optimum is σ(d) = 1 wherever p_t(z) ≤ (1 + β) p_s(z). Features whose
target density exceeds the source's by at most that factor then get no push: a target whose
merger fraction differs from the source's may keep it instead of being pulled to the source's
class mix. With a balanced source every target mix has p_t ≤ 2 p_s once the class-conditionals
match, so β = 1 admits any target merger fraction (β = 1 / min_y π_s(y) − 1 in general). The
inverted feature loss is then the target's flipped-label BCE only: the relaxation is one-sided,
and pushing source features toward a discriminator that calls everything "source" would move
them without bound.

``align = "target"`` makes the alignment one-sided, as ADDA's (Tzeng et al. 2017): the
discriminator still learns from both domains, but only the target features get its reversed
(or inverted) gradient; the source features are trained by the classification loss alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from galmerge.losses.align import ALIGNS, source_side
from galmerge.losses.label_shift import ClassWeighting
from galmerge.plugin.strategy_api import StepInputs

FEATURE_LOSSES = ("reversed", "inverted")
GRL_SCHEDULES = ("ramp", "constant")
CONDITIONS = ("none", "predictions", "predictions+entropy")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    # the plugin core checks options against the record's schema first; this guards direct use
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


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


class DANNLoss(ClassWeighting):
    """Strategy module: ``{"dann": domain BCE}`` plus ``_domain_acc`` and ``_grl_coeff``.

    The discriminator's parameters belong to this module; minimising the returned loss trains it
    to discriminate while the reversed gradient trains the features to confuse it.
    """

    # DeepMerge II's train_ADA.py before commit 4215a5c (Dec 2020) trained the discriminator at
    # 0.1x the learning rate (``ad_net_mult_lr``; 0.01 in its sim-to-real ADA+Fisher command);
    # from then on it was left out of the optimiser. --set lr_multipliers.dann.discriminator=X
    lr_multipliers = {"discriminator": 0.1}

    def __init__(
        self,
        in_features: int,
        hidden: int = 1024,
        dropout: float = 0.5,
        gamma: float = 10.0,
        max_coeff: float = 1.0,
        feature_loss: str = "reversed",
        grl: str = "ramp",
        class_weights: str = "off",
        num_classes: int = 2,
        target_fraction: float = 0.0,
        condition: str = "none",
        align: str = "both",
        relax: float = 0.0,
    ) -> None:
        super().__init__()
        if not (math.isfinite(relax) and relax >= 0.0):
            raise ValueError(f"relax must be a finite number >= 0, got {relax!r}")
        self.relax = float(relax)
        self.align = _choice("align", align, ALIGNS)
        self.condition = _choice("condition", condition, CONDITIONS)
        self.feature_loss = _choice("feature_loss", feature_loss, FEATURE_LOSSES)
        self.grl = _choice("grl", grl, GRL_SCHEDULES)
        width = in_features * (num_classes if condition != "none" else 1)
        self.discriminator = DomainDiscriminator(width, hidden, dropout)
        self.gamma = float(gamma)
        self.max_coeff = float(max_coeff)
        self._init_class_weights(class_weights, num_classes, target_fraction)

    def coefficient(self, progress: float) -> float:
        """λ at training progress ``progress`` (0 → 1)."""
        if self.grl == "constant":
            return self.max_coeff
        return grl_coefficient(progress, self.gamma, self.max_coeff)

    def _conditioned(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The discriminator's input (N+M, ·) and, for CDAN+E, per-image entropy weights."""
        # one-sided ("target"): the adversary's gradient reaches the target side only
        source = source_side(step.source_features.flatten(1), self.align)
        both = torch.cat([source, step.target_features.flatten(1)])
        if self.condition == "none":
            return both, None
        probs = torch.softmax(
            torch.cat([step.source_logits, step.target_logits]).detach().to(both.dtype), 1)
        mapped = torch.bmm(probs.unsqueeze(2), both.unsqueeze(1)).flatten(1)  # f ⊗ p
        if self.condition == "predictions":
            return mapped, None
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)
        w = 1.0 + torch.exp(-entropy)
        n = step.source_features.shape[0]
        # each domain's weights averaged to 1, so neither domain's share of the loss changes
        w = torch.cat([w[:n] / w[:n].mean(), w[n:] / w[n:].mean()])
        return mapped, w

    def _discriminator_loss(self, logits: torch.Tensor, domain: torch.Tensor,
                            weight: torch.Tensor | None) -> torch.Tensor:
        """The BCE the discriminator minimises, or with ``relax`` > 0 the negated relaxed
        Jensen-Shannon dual (weighted mean over both domains, as the BCE's ``weight``)."""
        if self.relax == 0.0:
            return F.binary_cross_entropy_with_logits(logits, domain, weight=weight)
        # source (domain 1): -log σ(d); target (domain 0): -log(2 + β - σ(d)) + log(1 + β),
        # which is 0 at σ(d) = 1 and never infinite (2 + β - σ ≥ 1 + β > 0)
        source_term = F.softplus(-logits)
        target_term = math.log1p(self.relax) - torch.log(2.0 + self.relax - torch.sigmoid(logits))
        per_image = torch.where(domain > 0.5, source_term, target_term)
        if weight is not None:
            per_image = per_image * weight
        return per_image.mean()

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        source, target = step.source_features, step.target_features
        coeff = self.coefficient(step.progress)
        both, confidence = self._conditioned(step)
        domain = torch.cat(
            [
                torch.ones(source.shape[0], dtype=both.dtype, device=both.device),
                torch.zeros(target.shape[0], dtype=both.dtype, device=both.device),
            ]
        )
        weights = self._source_weights(step)
        if weights is not None:  # each domain keeps its half of the loss; sources reweighted
            n, m = source.shape[0], target.shape[0]
            per_image = torch.cat([weights.to(both.dtype) * (n + m) / (2 * n),
                                   torch.full((m,), (n + m) / (2 * m), dtype=both.dtype,
                                              device=both.device)])
        else:
            per_image = None
        if confidence is not None:
            per_image = confidence if per_image is None else per_image * confidence
        extra: dict[str, torch.Tensor] = self._prior_diagnostics()
        if self.feature_loss == "reversed":
            logits = self.discriminator(reverse_gradient(both, coeff))
            loss = self._discriminator_loss(logits, domain, per_image)
        else:
            # the discriminator learns on detached features; the features learn against a
            # frozen copy of it (same weights, no gradient into them) with flipped labels
            logits = self.discriminator(both.detach())
            loss = self._discriminator_loss(logits, domain, per_image)
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            frozen.update(self.discriminator.named_buffers())
            fooled = torch.func.functional_call(self.discriminator, frozen, (both,))
            feature_weight = per_image
            if self.relax > 0.0:  # relaxed: only the target side is pushed (see the docstring)
                feature_weight = (1.0 - domain) if per_image is None else per_image * (1.0 - domain)
            feature_bce = F.binary_cross_entropy_with_logits(fooled, 1.0 - domain,
                                                             weight=feature_weight)
            loss = loss + coeff * feature_bce
            extra["_feature_bce"] = feature_bce.detach()
        with torch.no_grad():
            acc = ((logits > 0).to(domain.dtype) == domain).to(logits.dtype).mean()
        return {
            "dann": loss,
            "_domain_acc": acc,
            "_grl_coeff": torch.tensor(coeff, dtype=logits.dtype, device=logits.device),
            **extra,
        }
