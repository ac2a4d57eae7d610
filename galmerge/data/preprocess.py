"""The preprocessing spec saved with every model, and the one function that applies it.

A spec is a plain dict (TOML/JSON/torch-safe)::

    {"survey": "synthetic:sdss", "bands": ["g", "r", "i"], "channels": 3, "image_size": 75,
     "pixel_scale_arcsec": 0.396, "image_source": "frames",
     "stretch": "arcsinh", "stretch_scale": 0.05, "mean": [...], "std": [...]}

Images are stretched (``asinh(x / stretch_scale)`` or left alone), then standardised per band
with ``mean``/``std`` measured on the training split of that domain.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from galmerge.plugin.imageset import ImageSet

MAX_STAT_IMAGES = 2000


LN2 = 0.6931471805599453


def asinh_(x: torch.Tensor) -> torch.Tensor:
    """``asinh(x)`` computed in place (float tensors, within ~1 ulp of torch.asinh).

    sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))), from ops ATen vectorises on every CPU:
    torch.asinh and numpy.arcsinh are scalar loops on CPUs without AVX-512, where they cost
    more than the DeepMerge forward pass (classify's warm-cache path; 3-6x slower there).
    """
    a = x.abs()
    t = torch.mul(a, a)
    t.div_(torch.add(t, 1.0).sqrt_().add_(1.0)).add_(a).log1p_()
    huge = a > 1e18  # x^2 overflows: asinh(x) = log(2|x|) to float precision
    if bool(huge.any()):
        t = torch.where(huge, a.log_().add_(LN2), t)
    return x.copy_(t.copysign_(x))


def _stretch(images: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    if spec.get("stretch", "none") == "arcsinh":
        return torch.asinh(images / float(spec.get("stretch_scale", 1.0)))
    return images


def compute_spec(imageset: ImageSet, indices: np.ndarray, survey: str) -> dict[str, Any]:
    """Measure per-band statistics on ``indices`` (at most 2000 of them, evenly spaced)."""
    idx = np.asarray(indices)
    if len(idx) > MAX_STAT_IMAGES:
        idx = idx[np.linspace(0, len(idx) - 1, MAX_STAT_IMAGES).astype(np.int64)]
    spec: dict[str, Any] = {
        "survey": survey,
        "bands": list(imageset.bands),
        "channels": imageset.channels,
        "image_size": imageset.image_size,
        "pixel_scale_arcsec": imageset.pixel_scale_arcsec,
        "image_source": imageset.meta.get("image_source", "frames"),
        "stretch": imageset.meta.get("stretch", "none"),
        "stretch_scale": float(imageset.meta.get("stretch_scale", 1.0)),
    }
    x = _stretch(imageset.batch(idx).double(), spec)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-8)
    spec["mean"] = [float(v) for v in mean]
    spec["std"] = [float(v) for v in std]
    return spec


def normalise(images: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Apply a spec to raw images (N, C, H, W); returns float32 on the same device."""
    x = _stretch(images.float(), spec)
    mean = torch.tensor(spec["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
