"""Which side an alignment term moves: both domains' features, or the target's only.

One-sided alignment (``"target"``, as ADDA, Tzeng et al. 2017) detaches the source features, so
the term's gradient reaches the target side only; with the target's own encoder
(``target_encoder = "separate"``) the source path then trains on the source loss alone. Shared
by ``dann``, ``mmd`` and ``coral``. No torch import: the strategy records read ``ALIGNS`` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ALIGNS = ("both", "target")


def check_align(align: str) -> str:
    """``align`` when it is one of ``ALIGNS``; a ValueError otherwise (direct use: the plugin
    core checks options against the record's schema first)."""
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    return align


def source_side(features: torch.Tensor, align: str) -> torch.Tensor:
    """The source features as the term sees them: detached when only the target is moved."""
    return features.detach() if align == "target" else features
