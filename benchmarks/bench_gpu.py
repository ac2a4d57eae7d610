"""GPU check: training and inference on CUDA beside a CPU baseline measured in the same run. JSON.

Runs `galmerge.train` on the built-in synthetic sim-to-real pair (`--preset synthetic-sim-real`)
on CUDA (bf16 autocast, channels_last, data on the GPU), once without and once with
`--compile`, for mmd+fisher+entropy and dann+fisher, plus one CPU epoch as the baseline; then
classifies the target set's HDF5 cache with the trained model on CUDA and on CPU; with two or
more GPUs, a 2-process torchrun (NCCL) epoch. Every step is recorded, failures included, so
one run on a lent GPU machine answers "do the CUDA paths work, and how fast".

    python benchmarks/bench_gpu.py > benchmarks/results/bench_gpu.json      # ~5 min on one GPU
    python benchmarks/bench_gpu.py --device cpu --n 128 --epochs 1         # check the script

Without a GPU (and without ``--device cpu``) it prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import galmerge
from galmerge.classification.pipeline import classify


def _step(name: str, fn, results: dict[str, Any]) -> Any:
    """Run ``fn``; record its figures or its error under ``name`` (the run goes on)."""
    t0 = time.perf_counter()
    try:
        out = fn()
        results[name] = {"ok": True, "wall_s": round(time.perf_counter() - t0, 2), **(out or {})}
        return out
    except Exception as exc:  # a GPU check reports what broke instead of stopping
        results[name] = {
            "ok": False,
            "wall_s": round(time.perf_counter() - t0, 2),
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
            "traceback_tail": traceback.format_exc().splitlines()[-6:],
        }
        return None


def _train(run_dir: Path, source: str, target: str, strategy: str, device: str, epochs: int,
           compile: bool) -> dict[str, Any]:
    summary = galmerge.train(
        source=source, target=target, strategy=strategy, preset="synthetic-sim-real", epochs=epochs,
        device=device, compile=compile, run_dir=run_dir, quiet=True, seed=0,
    )
    env = json.loads((run_dir / "env.json").read_text())
    return {
        "device": summary["device"],
        "device_name": env.get("device_name"),
        "epochs": summary["epochs_run"],
        "train_images_per_s": round(summary["train_images_per_s"], 1),
        "source_test_accuracy": summary["metrics"]["source_test"]["accuracy"],
        "target_test_accuracy": summary["metrics"]["target_test"]["accuracy"],
        "run_dir": str(run_dir),
    }


def _classify(h5: Path, model: Path, output: Path, device: str) -> dict[str, Any]:
    done = classify(h5, model, output=output, device=device, quiet=True, batch_size=512)
    return {"rows": done.rows, "rows_per_s": round(done.rows_per_s, 1), "ok_rows": done.ok}


def _torchrun(run_dir: Path, source: str, target: str, device: str, env: dict[str, str]) -> dict:
    exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [exe, "--standalone", "--nproc_per_node", "2", "-m", "galmerge", "train",
           "--source", source, "--target", target, "--strategy", "mmd+fisher+entropy",
           "--preset", "synthetic-sim-real", "--epochs", "1", "--device", device,
           "--run-dir", str(run_dir), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr.strip()[-400:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"world_size": summary["world_size"],
            "train_images_per_s": round(summary["train_images_per_s"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (script check)")
    parser.add_argument("--n", type=int, default=2000, help="images per domain")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each GPU training run")
    parser.add_argument("--work-dir", help="keep runs and data here (default: a temp dir)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU machine (or --device cpu to "
              "check the script)", file=sys.stderr)
        sys.exit(2)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="galmerge-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GALMERGE_DATA"] = str(work / "data")
    source = f"synthetic:illustris?n={args.n}&seed=0"
    target = f"synthetic:sdss?n={args.n}&seed=1"
    cuda = args.device.startswith("cuda")
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": args.device,
    }
    if cuda:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    results: dict[str, Any] = {}

    # the CPU baseline: one epoch, same data and settings (torch's default thread count)
    _step("train_cpu_baseline_mmd+fisher+entropy", lambda: _train(
        work / "cpu", source, target, "mmd+fisher+entropy", "cpu", 1, False), results)
    for strategy in ("mmd+fisher+entropy", "dann+fisher"):
        for compiled in (False, True):
            tag = f"train_{args.device}{'_compile' if compiled else ''}_{strategy}"
            _step(tag, lambda s=strategy, c=compiled, t=tag: _train(
                work / t, source, target, s, args.device, args.epochs, c), results)

    model_dir = work / f"train_{args.device}_mmd+fisher+entropy"
    caches = sorted((work / "data").rglob("*.h5"))
    h5 = next((p for p in caches if "sdss" in p.name), None)
    if h5 is not None and (model_dir / "best.pt").exists():
        for dev in dict.fromkeys([args.device, "cpu"]):
            _step(f"classify_{dev}", lambda d=dev: _classify(
                h5, model_dir, work / f"classified_{d}.csv", d), results)
    else:
        results["classify"] = {"ok": False, "error": "no trained model or no target cache"}

    gpus = torch.cuda.device_count() if cuda else 0
    if gpus >= 2:
        _step("train_ddp_nccl_2_processes", lambda: _torchrun(
            work / "ddp", source, target, args.device, dict(os.environ)), results)
    else:
        results["train_ddp_nccl_2_processes"] = {
            "ok": None, "skipped": f"{gpus} GPU(s): NCCL needs one GPU per process"}

    print(json.dumps({"benchmark": "CUDA paths and throughput vs CPU", "n_per_domain": args.n,
                      "gpu_epochs": args.epochs, "environment": info, "results": results},
                     indent=2))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
