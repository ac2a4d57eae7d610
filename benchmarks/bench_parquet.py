"""Benchmark `galmerge classify` on Parquet: rows/s from a warm cutout cache (Parquet in and
out, against the same rows as CSV in and out) and peak memory (RSS) at 10^5 and 10^6 rows.
Prints one JSON object (``--out`` also writes it).

Uses bench_classify's in-process survey (seeded noise stamps, 3x75x75) and its child runner,
so the numbers are comparable with benchmarks/results/bench_classify.json; each measurement
runs in a fresh child process.

    OMP_NUM_THREADS=1 python benchmarks/bench_parquet.py [--warm-rows 10000] [--rss-rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import _catalog as csv_catalog  # noqa: E402
from bench_classify import _checkpoint, _run  # noqa: E402


def parquet_catalog(path: Path, rows: int, distinct: int) -> Path:
    """The rows of bench_classify's CSV catalog as Parquet (int64 ids, row groups of 10^5)."""
    schema = pa.schema([("objID", pa.int64()), ("ra", pa.float64()), ("dec", pa.float64()),
                        ("petroMag_r", pa.float64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            i = np.arange(start, min(rows, start + 100_000))
            k = i % distinct
            writer.write_table(pa.table({
                "objID": 1237648720693755918 + k, "ra": np.round((k * 0.0137) % 360, 6),
                "dec": np.round((k * 0.0071) % 60 - 30, 6), "petroMag_r": 17 + (i % 1000) / 1000,
            }, schema=schema))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm-rows", type=int, default=10000)
    ap.add_argument("--rss-rows", type=int, default=1_000_000)
    ap.add_argument("--distinct", type=int, default=256)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    result: dict = {"threads": args.threads, "load_1min_before": load_before}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = _checkpoint(tmp / "best.pt")
        cache = tmp / "cache.h5"
        pq_cat = parquet_catalog(tmp / "warm.parquet", args.warm_rows, args.warm_rows)
        csv_cat = csv_catalog(tmp / "warm.csv", args.warm_rows, args.warm_rows)
        _run(tmp, pq_cat, ckpt, cache, "cold.parquet", 4096, args.threads, 256)  # fills cache
        result["warm_parquet"] = _run(tmp, pq_cat, ckpt, cache, "warm_out.parquet", 4096,
                                      args.threads, 256)
        result["warm_csv"] = _run(tmp, csv_cat, ckpt, cache, "warm_out.csv", 4096, args.threads,
                                  256)
        rss_cache = tmp / "rss_cache.h5"
        for rows in (args.rss_rows // 10, args.rss_rows):
            cat = parquet_catalog(tmp / f"rss_{rows}.parquet", rows, args.distinct)
            result[f"parquet_{rows}_rows"] = _run(tmp, cat, ckpt, rss_cache,
                                                  f"rss_{rows}_out.parquet", 65536, args.threads,
                                                  256)
            cat.unlink()
    result["load_1min_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
