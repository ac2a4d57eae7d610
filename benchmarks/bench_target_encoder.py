"""Training speed of a separate target encoder (ADDA's layout, dann's default since stop 28)
against one shared encoder, per adaptation step, measured in the same run.

Both arms are `dann` runs started from the same `none` run (``init_from``, so neither trains a
source-only stage: that stage is a plain `none` run and costs what `none` costs); they differ
only in ``target_encoder``. The arms alternate, R times each; reported: each arm's training
images/s (``summary.json``'s ``train_images_per_s``) and the ratio separate / shared of each
adjacent pair, with the load average before and after.

    python benchmarks/bench_target_encoder.py [--n 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import galmerge

HERE = Path(__file__).resolve().parent
SOURCE = "synthetic:illustris?n={n}&seed=0"
TARGET = "synthetic:sdss?n={n}&seed=1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "target_encoder_speed.json"))
    args = ap.parse_args()
    torch_threads = os.environ.get("OMP_NUM_THREADS", "(torch default)")
    work = Path(tempfile.mkdtemp(prefix="bench-target-encoder-"))
    common = dict(source=SOURCE.format(n=args.n), target=TARGET.format(n=args.n), epochs=1,
                  batch_size=32, device="cpu", quiet=True, seed=0, patience=0)
    load_before = os.getloadavg()
    galmerge.train(strategy="none", run_dir=work / "none", **common)
    init = str(work / "none" / "best.pt")
    speed: dict[str, list[float]] = {"shared": [], "separate": []}
    for r in range(args.repeats):
        for layout in ("shared", "separate"):
            summary = galmerge.train(strategy="dann", run_dir=work / f"{layout}-{r}",
                                     sets=[f"init_from={init}", f"target_encoder={layout}"],
                                     **common)
            speed[layout].append(float(summary["train_images_per_s"]))
    ratios = [b / a for a, b in zip(speed["shared"], speed["separate"], strict=True)]
    load_after = os.getloadavg()
    result = {
        "benchmark": "dann training speed: separate target encoder vs shared, same run",
        "n_per_domain": args.n, "epochs": 1, "batch_size": 32, "repeats": args.repeats,
        "images_per_s": speed, "ratio_separate_over_shared": ratios,
        "ratio_mean": statistics.mean(ratios),
        "ratio_std": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        "load_average_before": load_before, "load_average_after": load_after,
        "cpus": os.cpu_count(), "omp_num_threads": torch_threads,
        "machine": platform.machine(), "galmerge": galmerge.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join([
        "# Training speed of a separate target encoder (ADDA) against a shared one", "",
        f"`python benchmarks/bench_target_encoder.py --n {args.n} --repeats {args.repeats}`: "
        f"`dann`, {args.n} images per domain, 1 epoch, batch 32, both arms started from the "
        "same `none` run, alternating in one process.", "",
        "| arm | training images/s (each repeat) |", "| --- | --- |",
        *(f"| {k} | {', '.join(f'{v:.1f}' for v in vals)} |" for k, vals in speed.items()),
        "",
        f"Ratio separate / shared: {result['ratio_mean']:.3f} ± {result['ratio_std']:.3f} "
        f"(pairs: {', '.join(f'{x:.3f}' for x in ratios)}).", "",
        "A default `dann` run also trains its source-only stage first: a `none` run with the "
        "same settings, which forwards the source batch only.", "",
        f"Load average before {' '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in load_after)}, on {os.cpu_count()} CPUs (shared), "
        f"OMP_NUM_THREADS {torch_threads}.",
    ]) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
