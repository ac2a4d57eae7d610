"""Does `shift_score` tell artefacts and survey stamps from the source's galaxies? What does it
cost in classify throughput?

Models: the built-in sim->real pair (``--preset synthetic-sim-real``: source synthetic:illustris,
target synthetic:sdss, deepmerge with dropout 0.1), strategies ``none`` and ``dann+fisher``,
``--n`` images per domain, ``--epochs`` epochs, seeds 1..``--seeds``. Every run's
``shift_stats.npz`` is fitted by `galmerge train` itself (no flag).

Test sets (scenes never used in training: other render seeds):
- ``source``: synthetic:illustris galaxies, classified with the source preprocessing;
- ``target``: synthetic:sdss galaxies, classified with the target preprocessing;
- ``artefacts_source`` / ``artefacts_target``: artefact-only stamps made here (the renderer has
  field stars but no artefact-only stamps), on a noise background matching the domain's galaxy
  stamps (sky level and noise from their 4-pixel borders), in four kinds (equal shares):
  ``star`` (a bright star centred: Gaussian PSF, FWHM 1.5-4 px, peak 1-20x the galaxies' 99.5th
  percentile central pixel, random colour), ``cosmic`` (1-4 hot tracks of 1-6 px in one band),
  ``trail`` (a satellite trail: a line across the stamp, Gaussian width 0.5-1.5 px, all bands),
  ``column`` (a hot or dead column in one band);
- ``stars_field``: synthetic:illustris galaxies with the renderer's ``stars=8`` (Poisson mean 8,
  but at most 8 field sources are drawn per stamp: 6.9 field stars per stamp on average;
  galaxies, reported only).

Reported per strategy and seed (and the mean over seeds): AUC of shift_score for
artefacts vs galaxies of the same domain (all kinds and per kind), for target vs source
stamps, and the share of each set above the run's threshold (shift_flag). No number here is
chosen by looking at test labels: the threshold is the 99th percentile of the source validation
scores, fixed at training time.

Throughput: the same HDF5 image file (``--bench-n`` target stamps) classified by the same run
with and without its statistics (a copy of the run directory without shift_stats.npz),
alternating, ``--repeats`` times each; load average recorded.

    nice -n 15 python benchmarks/bench_shift.py --runs-dir /tmp/shiftbench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = "synthetic:illustris?n={n}&seed=0"
TARGET = "synthetic:sdss?n={n}&seed=1"
STRATEGIES = ("none", "dann+fisher")
KINDS = ("star", "cosmic", "trail", "column")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r = ranks[: len(pos)].sum()
    return float((r - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def artefact_stamps(reference: np.ndarray, n: int, seed: int, kinds_of: tuple[str, ...] = KINDS,
                    background: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n`` artefact-only stamps (N, C, H, W) in the pixel units of ``reference`` (galaxy
    stamps of one domain) and their kinds; ``background=False``: the artefacts alone (to add
    to galaxy stamps); kind ``blank``: sky and noise only."""
    rng = np.random.default_rng(seed)
    _, c, h, w = reference.shape
    border = np.concatenate([reference[:, :, :4].reshape(len(reference), c, -1),
                             reference[:, :, -4:].reshape(len(reference), c, -1)], axis=2)
    sky = np.median(border, axis=(0, 2))
    sigma = 1.4826 * np.median(np.abs(border - sky[None, :, None]), axis=(0, 2))
    peak = np.percentile(reference[:, :, h // 2 - 2 : h // 2 + 3, w // 2 - 2 : w // 2 + 3]
                         .max(axis=(2, 3)), 99.5, axis=0) - sky
    sigma = np.maximum(sigma, 1e-3 * np.abs(peak) + 1e-12)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((n, c, h, w), np.float32)
    kinds = np.array([kinds_of[i % len(kinds_of)] for i in range(n)])
    for i, kind in enumerate(kinds):
        img = sky[:, None, None] + sigma[:, None, None] * rng.standard_normal((c, h, w))
        if not background:
            img[:] = 0.0
        if kind == "star":
            fwhm = rng.uniform(1.5, 4.0)
            s = fwhm / 2.355
            cy, cx = (h - 1) / 2 + rng.uniform(-1, 1), (w - 1) / 2 + rng.uniform(-1, 1)
            prof = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
            amp = peak * rng.uniform(1, 20) * rng.uniform(0.5, 1.5, c)
            img += amp[:, None, None] * prof
        elif kind == "cosmic":
            for _ in range(rng.integers(1, 5)):
                b = rng.integers(c)
                y0, x0 = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
                length, ang = rng.integers(1, 7), rng.uniform(0, np.pi)
                amp = np.abs(peak[b]) * rng.uniform(0.5, 5)
                for t in range(length):
                    y = int(round(y0 + t * np.sin(ang)))
                    x = int(round(x0 + t * np.cos(ang)))
                    if 0 <= y < h and 0 <= x < w:
                        img[b, y, x] += amp
        elif kind == "trail":
            ang = rng.uniform(0, np.pi)
            y0, x0 = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
            dist = np.abs((yy - y0) * np.cos(ang) - (xx - x0) * np.sin(ang))
            width = rng.uniform(0.5, 1.5)
            amp = np.abs(peak) * rng.uniform(0.2, 2) * rng.uniform(0.7, 1.3, c)
            img += amp[:, None, None] * np.exp(-dist**2 / (2 * width**2))
        elif kind == "column":  # a hot or dead column in one band
            b, x = rng.integers(c), rng.integers(w)
            base = sky[b] if background else 0.0
            img[b, :, x] = (base + np.abs(peak[b]) * rng.uniform(1, 10) if rng.random() < 0.7
                            else base - 5 * sigma[b])
        out[i] = img
    return out, kinds


def _write(path: Path, images: np.ndarray, like: Any, labels: np.ndarray | None = None) -> None:
    import torch

    from galmerge.io.hdf5 import write_imageset
    from galmerge.plugin.imageset import ImageSet

    n = len(images)
    write_imageset(path, ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images, np.float32)),
        labels=torch.as_tensor(labels if labels is not None else np.full(n, -1)),
        ids=np.arange(n), bands=like.bands, survey=like.survey,
        pixel_scale_arcsec=like.pixel_scale_arcsec, meta=dict(like.meta)))


def _train(runs: Path, name: str, strategy: str, seed: int, n: int, epochs: int) -> float:
    if (runs / name / "summary.json").is_file():
        return float("nan")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "galmerge", "train", "--preset", "synthetic-sim-real",
                    "--strategy", strategy, "--source", SOURCE.format(n=n), "--target",
                    TARGET.format(n=n), "--epochs", str(epochs), "--patience", "0", "--seed",
                    str(seed), "--device", "cpu", "--run-dir", str(runs / name), "--quiet"],
                   check=True)
    return time.time() - t0


def _scores(run: Path, h5: Path, domain: str, out: Path, **kw: Any) -> np.ndarray:
    from galmerge.classification.pipeline import classify

    classify(h5, run, output=out, domain=domain, device="cpu", quiet=True, **kw)
    with open(out, newline="") as fh:
        import csv

        rows = list(csv.DictReader(fh))
    return np.array([float(r["shift_score"]) for r in rows])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from galmerge.data.datasets import load_imageset

    runs = Path(args.runs_dir)
    data = runs / "data"
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_s: dict[str, float] = {}
    sets: dict[str, tuple[Path, str]] = {}
    src = load_imageset(f"synthetic:illustris?n={args.n_test}&seed=50")
    tgt = load_imageset(f"synthetic:sdss?n={args.n_test}&seed=51")
    crowd = load_imageset(f"synthetic:illustris?n={args.n_test}&seed=52&stars=8")
    for name, s, dom in (("source", src, "source"), ("target", tgt, "target"),
                         ("stars_field", crowd, "source")):
        _write(data / f"{name}.h5", s.images.numpy(), s)
        sets[name] = (data / f"{name}.h5", dom)
    kinds = {}
    for name, s, dom in (("artefacts_source", src, "source"),
                         ("artefacts_target", tgt, "target")):
        imgs, kinds[name] = artefact_stamps(s.images.numpy(), args.n_test, seed=7)
        _write(data / f"{name}.h5", imgs, s)
        sets[name] = (data / f"{name}.h5", dom)
    blank, _ = artefact_stamps(src.images.numpy(), args.n_test, seed=8, kinds_of=("blank",))
    _write(data / "blank_source.h5", blank, src)
    sets["blank_source"] = (data / "blank_source.h5", "source")
    # the same galaxies as `source`, each with one artefact on top (a harder case)
    over, kinds["contaminated_source"] = artefact_stamps(src.images.numpy(), args.n_test, seed=9,
                                                         background=False)
    _write(data / "contaminated_source.h5", src.images.numpy() + over, src)
    sets["contaminated_source"] = (data / "contaminated_source.h5", "source")

    per: dict[str, list[dict[str, Any]]] = {s: [] for s in STRATEGIES}
    throughput = None
    for seed in range(1, args.seeds + 1):  # seed by seed: a partial result is written each time
        for strategy in STRATEGIES:
            name = f"{strategy.replace('+', '-')}-s{seed}"
            train_s[name] = _train(runs, name, strategy, seed, args.n, args.epochs)
            run_dir = runs / name
            from galmerge.models.shift import load

            stats, _ = load(run_dir, None)
            assert stats is not None
            threshold = float(stats["threshold"])
            sc = {k: _scores(run_dir, p, d, runs / "out" / f"{run_dir.name}-{k}.csv")
                  for k, (p, d) in sets.items()}
            row: dict[str, Any] = {
                "seed": seed, "threshold": threshold,
                "auc_target_vs_source": auc(sc["target"], sc["source"]),
                "auc_artefacts_vs_source_galaxies": auc(sc["artefacts_source"], sc["source"]),
                "auc_artefacts_vs_target_galaxies": auc(sc["artefacts_target"], sc["target"]),
                "auc_field_stars_vs_source": auc(sc["stars_field"], sc["source"]),
                "auc_blank_sky_vs_source": auc(sc["blank_source"], sc["source"]),
                "auc_contaminated_vs_source": auc(sc["contaminated_source"], sc["source"]),
                "flagged": {k: float((v > threshold).mean()) for k, v in sc.items()},
                "median_score": {k: float(np.median(v)) for k, v in sc.items()},
            }
            for which, ref in (("artefacts_source", "source"), ("artefacts_target", "target"),
                               ("contaminated_source", "source")):
                row[f"auc_by_kind_{which}"] = {
                    kind: auc(sc[which][kinds[which] == kind], sc[ref]) for kind in KINDS}
            per[strategy].append(row)
        if seed == 1 and args.repeats:  # early: a partial result has it too
            throughput = _throughput(runs, args)
        if args.partial:
            args.partial(_record(args, per, sets, throughput, train_s, t0))
    return _record(args, per, sets, throughput, train_s, t0)


def _record(args: argparse.Namespace, per: dict[str, list[dict[str, Any]]], sets: dict[str, Any],
            throughput: dict[str, Any] | None, train_s: dict[str, float],
            t0: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for strategy, per_seed in per.items():
        if not per_seed:
            continue
        keys = [k for k in per_seed[0] if k.startswith("auc_") and not k.startswith("auc_by")]
        results[strategy] = {
            "seeds": per_seed,
            "mean": {k: statistics.mean(r[k] for r in per_seed) for k in keys},
            "mean_flagged": {k: statistics.mean(r["flagged"][k] for r in per_seed)
                             for k in sets},
        }
    return {
        "benchmark": "bench_shift", "n_per_domain": args.n, "epochs": args.epochs,
        "seeds": max(len(v) for v in per.values()), "n_test": args.n_test, "source": SOURCE.format(n=args.n),
        "target": TARGET.format(n=args.n), "preset": "synthetic-sim-real",
        "results": results, "throughput": throughput, "train_seconds": train_s,
        "seconds": time.time() - t0, "host": platform.node(), "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
    }


def _throughput(runs: Path, args: argparse.Namespace) -> dict[str, Any]:
    from galmerge.classification.pipeline import classify
    from galmerge.data.datasets import load_imageset

    run_dir = runs / "none-s1"
    bare = runs / "none-s1-without-stats"
    if not bare.is_dir():
        shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("shift_stats.npz", "*.log",
                                                                     "events.*"))
    h5 = runs / "data" / "bench.h5"
    if not h5.is_file():
        s = load_imageset(f"synthetic:sdss?n={args.bench_n}&seed=60")
        _write(h5, s.images.numpy(), s)
    times: dict[str, list[float]] = {"with": [], "without": []}
    loads = []
    classify(h5, run_dir, output=runs / "out" / "warm.csv", device="cpu", quiet=True)
    for _ in range(args.repeats):
        for label, model in (("with", run_dir), ("without", bare)):
            loads.append(os.getloadavg()[0])
            t = time.perf_counter()
            classify(h5, model, output=runs / "out" / f"bench-{label}.csv", device="cpu",
                     quiet=True)
            times[label].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "images": args.bench_n, "repeats": args.repeats, "seconds": times,
        "rows_per_s_median": {k: args.bench_n / v for k, v in med.items()},
        "cost_percent": 100 * (med["with"] / med["without"] - 1),
        "loadavg_1min": loads, "torch_threads": __import__("torch").get_num_threads(),
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Shift score: artefacts and survey stamps vs the source's galaxies",
        "",
        f"Pair {res['source']} -> {res['target']} (preset {res['preset']}), {res['epochs']} "
        f"epochs, seeds 1-{res['seeds']}; test sets of {res['n_test']} stamps from other render "
        "seeds; artefacts from `benchmarks/bench_shift.py` (bright centred star, cosmic rays, "
        "satellite trail, bad column). AUC = P(score of the first set > score of the second).",
        "",
        "| strategy | target vs source | artefacts vs source gal. | artefacts vs target gal. | "
        "field stars (stars=8: 6.9/stamp) vs source | blank sky vs source | galaxy + artefact vs the same "
        "galaxies |",
        "|---|---|---|---|---|---|---|",
    ]
    for strat, r in res["results"].items():
        m = r["mean"]
        per = lambda k, r=r: ", ".join(f"{s[k]:.3f}" for s in r["seeds"])  # noqa: E731
        lines.append(
            f"| {strat} | {m['auc_target_vs_source']:.3f} ({per('auc_target_vs_source')}) | "
            f"{m['auc_artefacts_vs_source_galaxies']:.3f} "
            f"({per('auc_artefacts_vs_source_galaxies')}) | "
            f"{m['auc_artefacts_vs_target_galaxies']:.3f} "
            f"({per('auc_artefacts_vs_target_galaxies')}) | "
            f"{m['auc_field_stars_vs_source']:.3f} ({per('auc_field_stars_vs_source')}) | "
            f"{m['auc_blank_sky_vs_source']:.3f} ({per('auc_blank_sky_vs_source')}) | "
            f"{m['auc_contaminated_vs_source']:.3f} ({per('auc_contaminated_vs_source')}) |")
    lines += ["", "Mean over seeds (per seed in brackets).", "",
              "## Share flagged (shift_score above the run's threshold, the 99th percentile of "
              "its source validation scores)", "",
              "| strategy | " + " | ".join(res["results"]["none"]["mean_flagged"]) + " |",
              "|---|" + "---|" * len(res["results"]["none"]["mean_flagged"])]
    for strat, r in res["results"].items():
        lines.append(f"| {strat} | " + " | ".join(f"{v:.3f}" for v in
                                                   r["mean_flagged"].values()) + " |")
    lines += ["", "## AUC by artefact kind (mean over seeds)", "",
              "| strategy | set | " + " | ".join(KINDS) + " |", "|---|---|" + "---|" * len(KINDS)]
    for strat, r in res["results"].items():
        for which in ("artefacts_source", "artefacts_target", "contaminated_source"):
            vals = [statistics.mean(s[f"auc_by_kind_{which}"][k] for s in r["seeds"])
                    for k in KINDS]
            lines.append(f"| {strat} | {which} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    tp = res.get("throughput")
    if tp:
        lines += ["", "## Classify throughput", "",
                  f"{tp['images']} target stamps (HDF5 image file), CPU, the none-s1 run with "
                  f"and without shift_stats.npz, alternating, {tp['repeats']} times each: median "
                  f"{tp['rows_per_s_median']['with']:.0f} vs "
                  f"{tp['rows_per_s_median']['without']:.0f} rows/s, cost "
                  f"{tp['cost_percent']:+.1f}% of the time; 1-min load average during the runs "
                  f"{min(tp['loadavg_1min']):.1f}-{max(tp['loadavg_1min']):.1f} on "
                  f"{res['cpus']} CPUs (shared machine)."]
    lines += ["", f"Total {res['seconds']:.0f} s on {res['host']}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--n", type=int, default=1000, help="training images per domain")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--bench-n", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "shift_score"))
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save(res: dict[str, Any]) -> None:
        Path(args.out + ".json").write_text(json.dumps(res, indent=1) + "\n")
        Path(args.out + ".md").write_text(markdown(res))

    args.partial = save
    res = run(args)
    save(res)
    print(markdown(res))


if __name__ == "__main__":
    main()
