"""Choosing the compute device: never a silent fallback."""

from __future__ import annotations

import numbers
import re
from typing import TYPE_CHECKING

from galmerge.errors import GalmergeError, named

if TYPE_CHECKING:
    import torch

# the devices galmerge runs on; torch knows more names (xpu, meta, ...) that it cannot train with
CHOICES = "auto, cpu, cuda, cuda:N (N a GPU index) or mps"
_NAME = re.compile(r"auto|cpu|mps(?::0)?|cuda(?::(\d+))?")  # mps:0, torch's name of mps


def check_device_name(name: str | None) -> str:
    """``name`` in lower case (None: ``auto``) when it is one of `CHOICES`, else a one-line
    error; without torch, so that configs are checked before any work."""
    if name is None:
        return "auto"
    if not isinstance(name, str):  # device=0 from Python: the name of a device is text
        hint = ""
        if isinstance(name, numbers.Integral) and not isinstance(name, bool) and int(name) >= 0:
            hint = f" (e.g. 'cuda:{int(name)}' for a GPU's number)"
        elif type(name).__name__ == "device":  # a torch.device: its text names it
            hint = f" (e.g. {str(name)!r})"
        raise GalmergeError(f"device {name!r}: give a name, {CHOICES}{hint}")
    # an empty --device or device = "" was once taken as auto, unsaid: a value left out is None
    if not name.strip():
        raise GalmergeError(f"{named('device', name)}: give {CHOICES}, or leave it out (auto)")
    low = name.lower()
    if _NAME.fullmatch(low) is None:
        raise GalmergeError(f"unknown {named('device')} '{name}'; use {CHOICES}")
    return low


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA, then Apple MPS, then CPU; an explicit device that is missing, or a
    name outside `CHOICES`, is an error."""
    import torch

    name = check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise GalmergeError(f"{named('device', 'mps')} asked for, but MPS is not available; "
                                "use cpu or auto")
    elif name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GalmergeError(f"{named('device', name)} asked for, but PyTorch sees no CUDA "
                                "GPU here; use cpu or auto")
        count, index = torch.cuda.device_count(), name.partition(":")[2]
        if index and int(index) >= count:
            raise GalmergeError(f"{named('device', name)}: PyTorch sees {count} CUDA GPU(s) "
                                f"here, cuda:0 "
                                f"to cuda:{count - 1}; pick one of them, or cuda")
    return torch.device(name)


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
