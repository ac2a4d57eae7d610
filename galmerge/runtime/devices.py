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


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (Linux MemAvailable, else the free
    physical pages), or None when the system does not say."""
    import os

    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
