"""MMD cost per training step: galmerge's matmul form vs the DeepMerge II broadcast form, JSON.

Both compute the same 19-bandwidth Gaussian MMD (value and gradient) between a source and a
target batch of DeepMerge features (default 64 × 2592 each, the paper's feature size). The figure
reported is "images/s-equivalent": the 2 × batch images of one step divided by the time of the
MMD forward + backward alone, i.e. the throughput ceiling the loss would impose on training.

    python benchmarks/bench_mmd.py [--batch 64] [--features 2592] [--threads N] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from galmerge.losses.mmd import BANDWIDTHS, gaussian_mmd


def broadcast_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DeepMerge II's formulation: pairwise distances via a (n × d × m) broadcast per block."""
    sigmas = torch.tensor(BANDWIDTHS, dtype=x.dtype, device=x.device)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a.unsqueeze(2) - b.T) ** 2).sum(1)  # (n, d, 1) - (d, m) -> (n, d, m) -> (n, m)
        beta = 1.0 / (2.0 * sigmas.unsqueeze(1))
        return torch.exp(-(beta @ d2.reshape(1, -1))).sum(0).view_as(d2)

    cost = kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()
    return cost.clamp_min(0.0)


def time_step(fn, x: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median and min seconds of one forward + backward."""
    times = []
    for i in range(repeats + 2):
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        start = time.perf_counter()
        fn(xs, ys).backward()
        elapsed = time.perf_counter() - start
        if i >= 2:  # two warm-up calls
            times.append(elapsed)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, default=2592)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    # post-ReLU-like features, target shifted: the regime of a real DA step
    x = torch.randn(args.batch, args.features, generator=gen).relu()
    y = (torch.randn(args.batch, args.features, generator=gen) + 0.2).relu()

    ours = gaussian_mmd(x.double(), y.double()).item()
    reference = broadcast_mmd(x.double(), y.double()).item()
    results = {}
    for name, fn in (("matmul", gaussian_mmd), ("broadcast", broadcast_mmd)):
        median, best = time_step(fn, x, y, args.repeats)
        results[name] = {
            "step_ms_median": round(median * 1e3, 2),
            "step_ms_min": round(best * 1e3, 2),
            "images_per_s_equivalent": round(2 * args.batch / median, 1),
        }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(
        json.dumps(
            {
                "benchmark": "mmd_forward_backward",
                "batch_per_domain": args.batch,
                "features": args.features,
                "bandwidths": len(BANDWIDTHS),
                "dtype": "float32",
                "torch_threads": args.threads,
                "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "load_average_1min": load,
                "note": "machine shared with other jobs while measured"
                if load and load > 1
                else "",
                "value_float64": {"matmul": ours, "broadcast": reference},
                "results": results,
                "speedup_median": round(
                    results["broadcast"]["step_ms_median"] / results["matmul"]["step_ms_median"],
                    2,
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
