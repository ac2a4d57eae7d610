"""Benchmark `galmerge classify`: rows/s from a warm cutout cache with the `deepmerge` backbone,
and peak memory (RSS) at 10^5 and 10^6 catalog rows. Prints one JSON object.

Stamps come from an in-process survey plugin (seeded noise, 3x75x75 float32), so the numbers
measure galmerge itself — catalog reading, cache lookups and reads, inference, output — not a
network. Each measurement runs in a fresh child process (its own peak RSS).

The 10^6-row memory run cycles over ``--distinct`` positions, so every row is read, keyed,
looked up and written, but a chunk of rows shares at most ``--distinct`` stamps (the model then
runs on those only): it measures that memory stays flat with catalog size, not model speed.

    OMP_NUM_THREADS=1 python benchmarks/bench_classify.py [--warm-rows 10000] [--rss-rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from galmerge import hookimpl
from galmerge.config.rundir import cpu_description

SIZE = 75
SPEC = {"survey": "sdss", "bands": ["g", "r", "i"], "channels": 3, "image_size": SIZE,
        "pixel_scale_arcsec": 0.396, "image_source": "frames", "stretch": "arcsinh",
        "stretch_scale": 0.05, "mean": [0.1, 0.1, 0.1], "std": [1.0, 1.0, 1.0]}


class _Service:
    cache_key = f"bench:g,r,i:{SIZE}px:0.396"

    def fetch(self, requests):
        from galmerge.plugin.cutouts import CutoutResult

        for req in requests:
            rng = np.random.default_rng(abs(hash((round(req.ra, 6), round(req.dec, 6)))))
            yield CutoutResult(req.row, rng.normal(0, 0.1, (3, SIZE, SIZE)).astype(np.float32),
                               "ok")

    def close(self):
        pass


class _BenchSurvey:
    @hookimpl
    def register_surveys(self):
        from galmerge.plugin.records import Survey

        return [Survey(name="bench", description="benchmark stamps",
                       cutouts=lambda preprocess, options: _Service())]


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so
    a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _child(args: argparse.Namespace) -> None:
    """One classify run in this process; prints its numbers as JSON."""
    os.environ["PYTHONHASHSEED"] = "0"
    import torch

    torch.set_num_threads(args.threads)
    from galmerge.classification.pipeline import classify
    from galmerge.plugin.manager import get_plugin_manager

    get_plugin_manager().register(_BenchSurvey(), name="bench-survey")
    t0 = time.perf_counter()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage0.ru_utime + usage0.ru_stime
    summary = classify(args.catalog, args.model, survey="bench", output=args.output,
                       cache=args.cache, quiet=True, chunk_rows=args.chunk_rows,
                       batch_size=args.batch_size, device="cpu")
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    print(json.dumps({
        "cpu_seconds": round(cpu, 3), "rows_per_cpu_second": round(summary.rows / cpu, 1),
        "rows": summary.rows, "ok": summary.ok, "fetched": summary.fetched,
        "seconds": round(seconds, 3), "rows_per_s": round(summary.rows / seconds, 1),
        "peak_rss_mb": _peak_rss_mb(),
        "output_bytes": Path(args.output).stat().st_size,
    }))


def _model_only(ckpt: Path, threads: int, batch_size: int, n: int = 2048) -> tuple[float, float]:
    """Images per wall second and per CPU second of the model alone (normalise + forward)."""
    import torch

    torch.set_num_threads(threads)
    from galmerge.classification.pipeline import _Inference

    inf = _Inference(ckpt, "target", "cpu", batch_size, 0)
    images = np.random.default_rng(0).normal(0, 0.1, (n, 3, SIZE, SIZE)).astype(np.float32)
    inf.probabilities(images[:batch_size])
    t0, c0 = time.perf_counter(), time.process_time()
    inf.probabilities(images)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _model_only_eager(ckpt: Path, threads: int, batch_size: int, n: int = 2048) -> dict:
    """The same measurement for plain eager torch and for the `galmerge export` ONNX file run
    by ONNX Runtime (classify --model model.onnx), both on the same stamps."""
    import torch

    torch.set_num_threads(threads)
    from galmerge.data.preprocess import normalise
    from galmerge.models.inference import merger_probability
    from galmerge.models.model import load_model

    loaded = load_model(ckpt)
    images = np.random.default_rng(0).normal(0, 0.1, (n, 3, SIZE, SIZE)).astype(np.float32)

    def eager(block: np.ndarray) -> None:
        with torch.inference_mode():
            for start in range(0, len(block), batch_size):
                x = normalise(torch.from_numpy(block[start : start + batch_size]), SPEC)
                merger_probability(loaded.model(x)[1], loaded.temperature)

    def rate(fn) -> tuple[float, float]:
        fn(images[:batch_size])
        t0, c0 = time.perf_counter(), time.process_time()
        fn(images)
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)

    out = {"eager_torch": rate(eager)}
    try:
        from galmerge.models.export import OnnxInference, export_model

        onnx_file = export_model(ckpt, "onnx", ckpt.parent / "model.onnx")
        onnx = OnnxInference(onnx_file, "target", batch_size, threads=threads)
        out["onnxruntime"] = rate(onnx.probabilities)
    except Exception as exc:  # onnx extra not installed: say so in the JSON
        out["onnxruntime_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return out


def _checkpoint(path: Path) -> Path:
    import torch

    from galmerge.models.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("deepmerge", 3, SIZE)
    save_checkpoint(path, {
        "galmerge_version": "bench", "backbone": "deepmerge", "backbone_options": {},
        "in_channels": 3, "image_size": SIZE, "num_classes": 2, "model": model.state_dict(),
        "temperature": 1.0, "preprocess": {"source": SPEC, "target": SPEC}, "config": {},
        "epoch": 0, "training_state": None,
    })
    return path


def _catalog(path: Path, rows: int, distinct: int) -> Path:
    """CasJobs-style CSV; row i sits at position i % distinct."""
    with open(path, "w") as fh:
        fh.write("#Table1\nobjID,ra,dec,petroMag_r\n")
        block = []
        for i in range(rows):
            k = i % distinct
            block.append(f"{1237648720693755918 + k},{(k * 0.0137) % 360:.6f},"
                         f"{(k * 0.0071) % 60 - 30:.6f},17.{i % 1000:03d}\n")
            if len(block) >= 100_000:
                fh.writelines(block)
                block = []
        fh.writelines(block)
    return path


def _run(tmp: Path, catalog: Path, ckpt: Path, cache: Path, out: str, chunk_rows: int,
         threads: int, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--catalog", str(catalog), "--model", str(ckpt),
           "--cache", str(cache), "--output", str(tmp / out), "--chunk-rows", str(chunk_rows),
           "--threads", str(threads), "--batch-size", str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GALMERGE_DATA": str(tmp / "data")}
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--catalog")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    ap.add_argument("--output")
    ap.add_argument("--warm-rows", type=int, default=10000)
    ap.add_argument("--rss-rows", type=int, default=1_000_000)
    ap.add_argument("--distinct", type=int, default=256)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = _checkpoint(tmp / "best.pt")
        model_rate, model_cpu_rate = _model_only(ckpt, args.threads, args.batch_size)
        others = _model_only_eager(ckpt, args.threads, args.batch_size)
        warm_cat = _catalog(tmp / "warm.csv", args.warm_rows, args.warm_rows)
        cache = tmp / "cache.h5"
        cold = _run(tmp, warm_cat, ckpt, cache, "cold.csv", args.chunk_rows, args.threads,
                    args.batch_size)
        warm = _run(tmp, warm_cat, ckpt, cache, "warm_out.csv", args.chunk_rows, args.threads,
                    args.batch_size)
        cache_bytes = cache.stat().st_size
        rss = {}
        rss_cache = tmp / "rss_cache.h5"
        big_chunk = 65536
        for rows in (args.rss_rows // 10, args.rss_rows):
            cat = _catalog(tmp / f"rss_{rows}.csv", rows, args.distinct)
            rss[str(rows)] = _run(tmp, cat, ckpt, rss_cache, f"rss_{rows}_out.csv", big_chunk,
                                  args.threads, args.batch_size)
            cat.unlink()
    per_row_out = warm["output_bytes"] / max(1, warm["rows"])
    stamp_bytes = 3 * SIZE * SIZE * 4
    rate = warm["rows_per_cpu_second"]
    result = {
        "benchmark": "classify",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average "
                   f"{load_before:.2f} before the run ("
                   + ("other work shared the CPU" if load_before > 0.5 else "otherwise idle")
                   + f"), {os.getloadavg()[0]:.2f} at the end",
        "cpu": cpu_description(),
        "torch_threads": args.threads,
        "backbone": "deepmerge", "stamp": [3, SIZE, SIZE],
        "note": "wall-clock rates depend on how busy the machine was; per CPU second "
                "rates are what one dedicated core of this CPU would do",
        "model_only_images_per_s": round(model_rate, 1),
        "model_only_images_per_cpu_second": round(model_cpu_rate, 1),
        "model_only_by_runtime": {
            "note": "same stamps, batch size and threads; galmerge = classify's own CPU path "
                    "(FX-optimised torch), onnxruntime = classify --model model.onnx",
            "galmerge": [round(model_rate, 1), round(model_cpu_rate, 1)],
            **{k: [round(v[0], 1), round(v[1], 1)] if isinstance(v, tuple) else v
               for k, v in others.items()},
            "columns": ["images_per_s", "images_per_cpu_second"],
        },
        "cold_cache_rows_per_s_inprocess_survey": cold["rows_per_s"],
        "warm_cache": {**warm, "goal_rows_per_s": 1000},
        "cache_bytes_per_stamp": round(cache_bytes / args.warm_rows),
        "memory": {"note": f"rows cycle over {args.distinct} positions; chunk of {big_chunk} rows",
                   **rss},
        "lsst_1e9_rows": {
            "core_hours_at_warm_rate_per_cpu_second": round(1e9 / rate / 3600, 1),
            "cores_for_24_hours": int(np.ceil(1e9 / rate / 86400)),
            "cache_TB_float32": round(1e9 * stamp_bytes / 1e12, 1),
            "output_csv_GB": round(1e9 * per_row_out / 1e9, 1),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
