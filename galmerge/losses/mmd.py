"""Multi-kernel Gaussian MMD between source and target feature batches (DeepMerge II's MMD).

DeepMerge II (``loss.mmd_distance`` in github.com/AleksCipri/DeepMergeDomainAdaptation) sums 19
Gaussian kernels exp(-‖x-y‖² / (2σ)) with fixed σ from 1e-6 to 1e6 and takes the biased
estimate mean K(x,x') + mean K(y,y') - 2 mean K(x,y), clamped at zero. We compute the same value
from squared norms and one matrix product instead of a (batch × batch × features) broadcast:
about 8× faster on CPU at 64 × 2592 (benchmarks/bench_mmd.py). That code also floors the result
at 1e-4, which only hides small values (its gradient there is zero); we leave it out.

``kernel="mean"`` makes the term independent of the features' scale: five kernels whose
bandwidths are 1/4, 1/2, 1, 2 and 4 times the mean squared distance of the joint batch
(detached), as DAN's multi-kernel MMD sets them (Long et al. 2015; the tllib implementation).
The fixed DeepMerge II bandwidths see 2592-d DeepMerge features (squared distances ~1e2-1e4)
with only a few kernels; a backbone with other feature norms sees others, so one weight cannot
fit all. ``kernel="deepmerge"`` keeps the 19 fixed bandwidths.

``align="target"`` detaches the source features, so only the target side is moved
(``galmerge.losses.align``).

``class_weights="estimated"`` is the class-weighted MMD of Yan et al. 2017 ("Mind the Class
Weight Bias"): when the target's merger fraction differs from the source's, plain MMD pulls
target non-mergers onto source mergers to make the marginals match. Each source image is
weighted by π_t(y)/π_s(y): π_s from the source batch's labels, π_t a running estimate of the
target's class shares (mean predicted probability over target batches, detached, momentum
``PRIOR_MOMENTUM``, clipped to ``PRIOR_CLIP``) — no target label is read.
``class_weights="given"`` takes π_t from ``target_fraction`` instead (a merger fraction the
astronomer expects, e.g. from the literature): under domain shift the running estimate is
biased (on the dev pair with 20% mergers it read 0.53-0.64). ``class_weights="bbse"`` corrects
the running estimate with the source predictions' class-conditional means (see
``galmerge.losses.label_shift``, which holds all three).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from galmerge.losses.align import check_align, source_side
from galmerge.losses.label_shift import ClassWeighting
from galmerge.plugin.options import warmup_factor
from galmerge.plugin.strategy_api import StepInputs

KERNELS = ("deepmerge", "mean")
MEAN_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
BANDWIDTHS: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 100.0,
    1e3, 1e4, 1e5, 1e6,
)  # fmt: skip


def squared_distances(z: torch.Tensor) -> torch.Tensor:
    """All pairwise squared distances of the rows of ``z`` (exact zeros on the diagonal)."""
    sq = (z * z).sum(dim=1)
    norms = sq[:, None] + sq[None, :]
    d2 = norms - 2.0 * (z @ z.T)
    # ‖x‖² + ‖y‖² - 2x·y leaves rounding noise of up to ~8 eps (‖x‖² + ‖y‖²) (measured, float32,
    # 16-20000 features) where the true distance is 0; with σ = 1e-6 that noise would read as
    # exp(-huge) instead of 1. Distances below the noise level are therefore taken as exact
    # zeros, as the broadcast formulation gives for duplicates, and the diagonal is pinned.
    noise = 16.0 * torch.finfo(z.dtype).eps * norms
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return torch.where((d2 <= noise) | eye, torch.zeros_like(d2), d2)


def gaussian_mmd(
    source: torch.Tensor,
    target: torch.Tensor,
    bandwidths: Sequence[float] = BANDWIDTHS,
    relative: bool = False,
    source_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Biased multi-kernel MMD² between two batches (sizes may differ), clamped at zero.

    Kernels exp(-‖x-y‖² / (2σ)) for σ in ``bandwidths``; with ``relative`` the kernels are
    exp(-‖x-y‖² / (σ · mean squared distance)), the mean over distinct pairs, detached.
    ``source_weights`` (n,), non-negative: the source side is the weighted mean embedding.
    """
    n, m = source.shape[0], target.shape[0]
    z = torch.cat([source.flatten(1), target.flatten(1)], dim=0)
    d2 = squared_distances(z)
    sigmas = torch.tensor(bandwidths, dtype=z.dtype, device=z.device)
    if relative:
        pairs = max(z.shape[0] * (z.shape[0] - 1), 1)
        mean_d2 = (d2.detach().sum() / pairs).clamp_min(torch.finfo(z.dtype).tiny)
        betas = 1.0 / (sigmas * mean_d2)
    else:
        betas = 1.0 / (2.0 * sigmas)
    exponent = -d2.unsqueeze(0) * betas[:, None, None]
    # Subnormal numbers (below ~1e-38 in float32), from exp() or from gradients multiplied by
    # tiny kernel values in the backward pass, cost x86 CPUs ~100× more per operation (measured:
    # 40 ms instead of 0.4 ms for 19 × 128 × 128). Kernel values below sqrt(smallest normal)
    # (1e-19 in float32) are set to exact zeros: every kernel sum includes the σ = 1e6 term,
    # which is ~1 for squared distances below ~1e5, so they are far below float resolution.
    floor = 0.5 * math.log(torch.finfo(z.dtype).tiny)
    exponent = torch.where(exponent < floor, torch.full_like(exponent, -math.inf), exponent)
    kernel = torch.exp(exponent).sum(dim=0)
    # s^T K s with s = (1/n, ..., -1/m, ...) is mean Kxx + mean Kyy - 2 mean Kxy
    if source_weights is None:
        s_source = torch.full((n,), 1.0 / n, dtype=z.dtype, device=z.device)
    else:
        w = source_weights.to(z.dtype).detach()
        s_source = w / w.sum().clamp_min(torch.finfo(z.dtype).tiny)
    s = torch.cat([s_source, torch.full((m,), -1.0 / m, dtype=z.dtype, device=z.device)])
    return (s @ kernel @ s).clamp_min(0.0)


class MMDLoss(ClassWeighting):
    """Strategy module: ``{"mmd": warm-up factor · MMD²(source features, target features)}``."""

    def __init__(
        self,
        bandwidths: Sequence[float] | None = None,
        kernel: str = "deepmerge",
        warmup: float = 0.0,
        class_weights: str = "off",
        num_classes: int = 2,
        target_fraction: float = 0.0,
        align: str = "both",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.align = check_align(align)
        self.kernel = kernel
        default = MEAN_MULTIPLIERS if kernel == "mean" else BANDWIDTHS
        self.bandwidths = tuple(float(b) for b in (bandwidths or default))
        self.warmup = float(warmup)
        self._init_class_weights(class_weights, num_classes, target_fraction)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        weights = self._source_weights(step)
        value = gaussian_mmd(source_side(step.source_features, self.align),
                             step.target_features, self.bandwidths,
                             relative=self.kernel == "mean", source_weights=weights)
        out = {"mmd": warmup_factor(step.progress, self.warmup) * value}
        out.update(self._prior_diagnostics())  # logged: the estimated target merger share
        return out
