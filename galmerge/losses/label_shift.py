"""Source-image weights for aligning domains whose merger fractions differ (label shift).

Marginal alignment (MMD, DANN) matches p_s(z) to p_t(z). When the target's class shares π_t
differ from the source's π_s, the only way to match the marginals is to move target images of
one class onto source images of the other: with a balanced source and a 5%-merger survey, the
aligned model calls a third of the survey mergers (benchmarks/results/fraction_sim_real_dann.md).
Weighting each source image by w(y) = π_t(y) / π_s(y) makes the source side look like the
target's class mix, so class-conditional alignment is what minimises the term (Yan et al. 2017
for MMD; IWDAN, Tachet des Combes et al. 2020, for DANN).

Modes (the ``class_weights`` option):

- ``off``: no weights (plain alignment).
- ``estimated``: π_t is a running mean of the target batches' predicted probabilities. Under
  domain shift it is biased toward the source mix by the very alignment it steers (stop 23:
  0.53-0.64 on a 20%-merger dev pair).
- ``bbse`` (two classes): π_t solves M π_t = μ_t, black-box shift estimation (Lipton et al.
  2018) on soft predictions, as IWDAN re-estimates its weights: μ_t is the running mean of the target
  predictions and M[:, j] the running mean of the source predictions of class j. Where the
  aligned model's errors are the same on both domains, this is unbiased; the plain mean is not
  (a classifier with 90% recall and 10% false positives reads 0.14 for a 5% target).
- ``given``: π_t from ``target_fraction``, the merger fraction the astronomer expects.

Estimates are detached (no gradient flows through a weight), clipped to ``PRIOR_CLIP`` so no
class is ever weighted away, and kept in buffers that travel with the strategy's state (resume,
``--init-from``). Running means use momentum ``PRIOR_MOMENTUM`` per step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from galmerge.plugin.strategy_api import StepInputs

CLASS_WEIGHTS = ("off", "estimated", "bbse", "given")
PRIOR_MOMENTUM = 0.05  # ~20 steps of memory: a 32-image batch alone is a noisy estimate
PRIOR_CLIP = (0.05, 0.95)  # no class is ever weighted away entirely (a collapse would feed on it)


def check_class_weights(mode: str, num_classes: int, target_fraction: float) -> None:
    """ValueError unless ``mode`` is known, ``given`` has a usable fraction and the binary modes
    (``given``, ``bbse``) see two classes."""
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights must be one of {CLASS_WEIGHTS}, got {mode!r}")
    if mode == "given" and not (0.0 < target_fraction < 1.0 and num_classes == 2):
        raise ValueError("class_weights = \"given\" needs target_fraction between 0 and 1 "
                         f"(the expected merger fraction), got {target_fraction!r}")
    if mode == "bbse" and num_classes != 2:
        raise ValueError(f"class_weights = \"bbse\" is for two classes, got {num_classes}")


def solve_prior(conditional: torch.Tensor, target_mean: torch.Tensor) -> torch.Tensor:
    """Class shares (non-merger, merger) from the adjusted count on soft predictions:
    π₁ = (μ₁ - M₁₀) / (M₁₁ - M₁₀), clipped to [0, 1], where ``conditional[:, j]`` (M) is the mean
    predicted distribution of class-j source images and ``target_mean`` (μ) the target's.

    The same estimate as ``galmerge.fractions.estimators.soft_bbse``, which this layer may not
    import (fractions sits above losses) and which works on numpy floats; here it runs on
    tensors at every step, and a classifier that does not separate the classes (M₁₁ ≤ M₁₀)
    leaves the source's guess, π = 1/2, instead of NaN.
    """
    gap = conditional[1, 1] - conditional[1, 0]
    if not bool(gap > 1e-6):
        return torch.full((2,), 0.5, dtype=target_mean.dtype, device=target_mean.device)
    share = ((target_mean[1] - conditional[1, 0]) / gap).clamp(0.0, 1.0)
    return torch.stack([1.0 - share, share])


class ClassWeighting(nn.Module):
    """Mixin for alignment strategies: ``_source_weights(step)`` gives w(y_i) per source image.

    Call ``_init_class_weights`` in ``__init__``; the estimate is logged as ``_target_prior``
    (the merger share) by ``_prior_diagnostics``.
    """

    def _init_class_weights(self, mode: str, num_classes: int, target_fraction: float) -> None:
        check_class_weights(mode, num_classes, target_fraction)
        self.class_weights = mode
        self.given = torch.tensor([1.0 - target_fraction, target_fraction])
        if mode in ("estimated", "bbse"):  # (only then: older runs' states stay loadable)
            # the running target class shares (NaN: no target batch seen yet); saved, resumed
            self.register_buffer("target_prior", torch.full((num_classes,), math.nan))
        if mode == "bbse":
            self.register_buffer("target_mean", torch.full((num_classes,), math.nan))
            self.register_buffer("source_conditional",
                                 torch.full((num_classes, num_classes), math.nan))

    @staticmethod
    def _running(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isnan(old), new, (1 - PRIOR_MOMENTUM) * old + PRIOR_MOMENTUM * new)

    def _estimate(self, step: StepInputs) -> torch.Tensor:
        target_probs = torch.softmax(step.target_logits.float(), dim=1)
        if self.class_weights == "estimated":
            self.target_prior.copy_(self._running(self.target_prior, target_probs.mean(0)))
        else:
            self.target_mean.copy_(self._running(self.target_mean, target_probs.mean(0)))
            source_probs = torch.softmax(step.source_logits.float(), dim=1)
            cond = self.source_conditional.clone()
            for j in range(cond.shape[1]):
                rows = step.source_labels == j
                if bool(rows.any()):
                    cond[:, j] = self._running(cond[:, j], source_probs[rows].mean(0))
            self.source_conditional.copy_(cond)
            if bool(torch.isnan(cond).any()):  # a class not seen yet: the source's guess
                prior = torch.full_like(self.target_mean, 0.5)
            else:
                prior = solve_prior(cond, self.target_mean)
            self.target_prior.copy_(prior)
        target = self.target_prior.clamp(*PRIOR_CLIP)
        return target / target.sum()

    def _source_weights(self, step: StepInputs) -> torch.Tensor | None:
        """π_t(y_i) / π_s(y_i) for each source image (π_s: the batch's label shares), rescaled
        to mean 1, or None. A class missing from the batch cannot be reweighted: the classes
        present share its weight, so the source keeps its share of a loss (DANN's half)."""
        if self.class_weights == "off" or len(step.target_logits) == 0:
            return None
        with torch.no_grad():
            if self.class_weights == "given":
                target = self.given.to(step.source_features.device)
            else:
                target = self._estimate(step)
            k = len(target)
            counts = torch.bincount(step.source_labels, minlength=k).float()
            source = counts / counts.sum().clamp_min(1.0)
            ratio = torch.where(source > 0, target / source.clamp_min(1e-12),
                                torch.zeros_like(source))
            weights = ratio[step.source_labels]
            return weights / weights.mean().clamp_min(1e-12)

    def _prior_diagnostics(self) -> dict[str, torch.Tensor]:
        """``{"_target_prior": merger share}`` when the share is estimated, else empty."""
        if self.class_weights in ("estimated", "bbse"):
            return {"_target_prior": self.target_prior[-1].detach().clone()}
        return {}
