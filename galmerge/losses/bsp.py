"""Batch spectral penalization (BSP; Chen et al. 2019, "Transferability vs. Discriminability:
Batch Spectral Penalization for Adversarial Domain Adaptation", ICML).

Adversarial alignment makes features transferable by letting a few directions (the largest
singular vectors of a batch's feature matrix) dominate them, and the discriminative detail in
the other directions fades; the classifier loses accuracy on both domains. BSP penalises the
``k`` largest squared singular values of the source and of the target feature batch, so the
other directions keep their share.

``form="ratio"`` (default, galmerge's): the penalty of a batch F is Σ_{i≤k} σ_i² / Σ_i σ_i²,
the share of the feature energy in the top ``k`` directions, a number in (0, 1] that does not
depend on the features' scale (one weight fits any backbone). ``form="raw"``: Σ_{i≤k} σ_i², the
paper's term (its weight, 1e-4 for ResNet-50 features, depends on the feature norms).

The squared singular values are the eigenvalues of the n × n Gram matrix F Fᵀ (n: batch size),
computed in float64: for 32 × 2592 DeepMerge features that is a 32 × 32 eigenproblem, far cheaper
than an SVD of F. (``torch.linalg.eigvalsh`` is differentiable; the penalty's gradient is that of
the top eigenvalues, well defined when they are distinct, as they are for real feature batches.)
The original code (github.com/thuml/Batch-Spectral-Penalization) calls ``torch.svd`` on F.
"""

from __future__ import annotations

import torch
from torch import nn

from galmerge.plugin.options import warmup_factor
from galmerge.plugin.strategy_api import StepInputs

FORMS = ("ratio", "raw")


def spectral_penalty(features: torch.Tensor, k: int = 1, form: str = "ratio") -> torch.Tensor:
    """Σ of the ``k`` largest squared singular values of ``features`` (n, ...) — divided by
    the sum of all of them with ``form="ratio"``; 0 for an empty or all-zero batch, NaN for a
    batch with a non-finite value."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    f = features.flatten(1)
    if f.shape[0] == 0:
        return f.new_zeros(())
    # MPS has no float64 (``.double()`` raises there): its batches go through the CPU, a 32 x D
    # copy per step (not run here: no Apple GPU on the machines this was written on)
    f64 = (f.cpu() if f.device.type == "mps" else f).double()
    if not bool(torch.isfinite(f64).all()):
        # NaN, as the trainer's non-finite guard expects (it names the step and the last good
        # checkpoint); eigvalsh would raise a LinAlgError on such a matrix instead
        return f.new_full((), float("nan"))
    eig = torch.linalg.eigvalsh(f64 @ f64.T).clamp_min(0.0)  # ascending
    top = eig[-min(k, eig.shape[0]) :].sum()
    if form == "raw":
        return top.to(f.device, f.dtype)
    total = eig.sum()
    if not bool(total > 0):
        return f.new_zeros(())
    return (top / total).to(f.device, f.dtype)


class BSPLoss(nn.Module):
    """Strategy module: ``{"bsp": warm-up factor · (penalty(source) + penalty(target))}``."""

    def __init__(self, k: int = 1, form: str = "ratio", warmup: float = 0.0) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        self.k, self.form, self.warmup = int(k), form, float(warmup)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        value = spectral_penalty(step.source_features, self.k, self.form) + spectral_penalty(
            step.target_features, self.k, self.form
        )
        return {"bsp": warmup_factor(step.progress, self.warmup) * value}
