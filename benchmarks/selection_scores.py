"""Cost of the label-free selection scores the trainer computes every epoch.

Sizes follow DeepMerge II: validation splits of ~10% of each domain, DeepMerge features of
2592 dimensions. Prints JSON; run with OMP_NUM_THREADS set to what training uses.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial

import torch

from galmerge.scores import selection
from galmerge.scores.selection import SplitOutputs


def _time(fn, repeat: int = 3) -> float:
    fn()  # warm-up (sklearn imports, allocations)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    g = torch.Generator().manual_seed(0)
    results = {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sizes": [],
    }
    for n, dim in ((150, 2592), (1500, 2592), (1500, 512)):
        fs, ft = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g) + 0.1
        zs, zt = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
        ys = torch.randint(0, 2, (n,), generator=g)
        src = SplitOutputs(fs, zs, ys)
        tgt = SplitOutputs(ft, zt, torch.full((n,), -1))
        results["sizes"].append(
            {
                "n_per_domain": n,
                "feature_dim": dim,
                "all_scores_s": _time(partial(selection.label_free_scores, src, tgt)),
                "dev_s": _time(partial(selection.deep_embedded_validation, src, tgt)),
                "snd_s": _time(partial(selection.soft_neighbourhood_density, zt)),
                "entropy_s": _time(partial(selection.prediction_entropy, zt)),
                "im_s": _time(partial(selection.information_maximisation, zt)),
            }
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
