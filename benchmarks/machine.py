"""What CPU a benchmark ran on: the same VM kind lands on different hosts, whose speeds differ."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_description() -> dict[str, str]:
    """The CPU's model name (from /proc/cpuinfo, where there is one) and the SIMD level torch uses."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"model": model, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
