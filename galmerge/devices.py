"""Choosing the compute device: never a silent fallback."""

from __future__ import annotations

import torch

from galmerge.errors import GalmergeError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA, then Apple MPS, then CPU; an explicit device that is missing is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GalmergeError(
            f"--device {name} asked for, but PyTorch sees no CUDA GPU here; use --device cpu or auto"
        )
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise GalmergeError("--device mps asked for, but MPS is not available; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise GalmergeError(f"unknown device '{name}'; use auto, cpu, cuda or mps") from exc
