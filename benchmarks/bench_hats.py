"""Benchmark `galmerge classify` on a HATS catalog: rows/s from warm per-partition caches with a
local Dask cluster of 1 and of 2 worker processes (same catalog, same caches), and the peak RSS
of the workers. Prints one JSON object (``--out`` also writes it).

Uses bench_classify's survey (seeded noise stamps, 3x75x75) registered in every worker.

    OMP_NUM_THREADS=1 python benchmarks/bench_hats.py [--rows 10000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(HERE), str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])

from distributed import WorkerPlugin  # noqa: E402


class BenchSurveyOnWorkers(WorkerPlugin):
    def setup(self, worker):
        import torch
        from bench_classify import _BenchSurvey

        from galmerge.plugin.manager import get_plugin_manager

        torch.set_num_threads(1)
        pm = get_plugin_manager()
        if not pm.pm.has_plugin("bench-survey"):
            pm.register(_BenchSurvey(), name="bench-survey")


def _worker_peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import lsdb
    import pandas as pd
    from bench_classify import _checkpoint
    from distributed import Client, LocalCluster

    from galmerge.classification.hats import classify_hats

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result: dict = {"rows": args.rows, "load_1min_before": os.getloadavg()[0], "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = _checkpoint(tmp / "best.pt")
        k = np.arange(args.rows)
        df = pd.DataFrame({"objID": 1237648720693755918 + k, "ra": np.round((k * 0.0137) % 360, 6),
                           "dec": np.round((k * 0.0071) % 60 - 30, 6)})
        cat = lsdb.from_dataframe(df, ra_column="ra", dec_column="dec", lowest_order=2,
                                  highest_order=5, partition_rows=max(1, args.rows // 16),
                                  margin_threshold=None)
        cat.write_catalog(tmp / "cat", progress_bar=False)
        result["partitions"] = len(cat.get_healpix_pixels())
        for label, workers in (("cold, 2 workers", 2), ("warm, 1 worker", 1),
                               ("warm, 2 workers", 2)):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as lc, Client(lc) as client:
                client.register_plugin(BenchSurveyOnWorkers())
                out = tmp / f"out-{workers}-{label[:4]}"
                t0 = time.perf_counter()
                counts = classify_hats(tmp / "cat", ckpt, output=out, survey="bench",
                                       cache=tmp / "cache", scheduler=lc.scheduler_address,
                                       quiet=True)
                seconds = time.perf_counter() - t0
                peaks = client.run(_worker_peak_rss_mb)
            assert counts["rows"] == args.rows and counts["statuses"].get("ok") == args.rows
            result["runs"][label] = {"seconds": round(seconds, 2),
                                     "rows_per_s": round(args.rows / seconds, 1),
                                     "worker_peak_rss_mb": sorted(round(v, 1)
                                                                  for v in peaks.values())}
            print(label, result["runs"][label], flush=True)
    result["load_1min_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
