"""Which target galaxies does a trained model call mergers, by the renderer's scene kind?

Label-free corrections of the merger fraction (adjusted count, BBSE, EM: `galmerge fraction`)
and of the decision threshold (`classify --prior`) assume that the classifier's error rates on
each class are the same on the target as on the source (label shift only). This script measures
that assumption on finished runs: for the source and target test splits it gives the share of
each scene kind (isolated, projected neighbour, close pair, post-merger; written by the
renderer) that the model calls mergers, and the resulting false- and true-positive rates. With
``--no-field`` the target test split is scored a second time rendered without its field stars
and background galaxies (same scenes, ``&stars=0&field_galaxies=0``), to see how much of the
difference they cause. Nothing is trained or chosen; target labels are used only to score.

    python benchmarks/error_by_kind.py --runs RUNS/pair8-seed11/adda ... --no-field \\
        --name error_by_kind35_dev
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tables import mean_sd

HERE = Path(__file__).resolve().parent
NO_FIELD = "&stars=0&field_galaxies=0"


def _kinds(imageset: Any, idx: np.ndarray) -> np.ndarray:
    import h5py

    with h5py.File(imageset.meta["cache_path"], "r") as f:
        return f["scene/kind"][:][idx]


def _rates(calls: np.ndarray, labels: np.ndarray, kinds: np.ndarray) -> dict[str, Any]:
    from galmerge.surveys.synthetic.render.scene import KIND_NAMES

    return {
        "called_merger": float(calls.mean()),
        "true_fraction": float(labels.mean()),
        "fpr": float(calls[labels == 0].mean()) if (labels == 0).any() else None,
        "tpr": float(calls[labels == 1].mean()) if (labels == 1).any() else None,
        "by_kind": {name: {"n": int((kinds == k).sum()),
                           "called_merger": float(calls[kinds == k].mean())
                           if (kinds == k).any() else None}
                    for k, name in enumerate(KIND_NAMES)},
    }


def score_run(run: Path, no_field: bool) -> dict[str, Any]:
    from galmerge.data.datasets import load_imageset
    from galmerge.data.splits import domain_splits
    from galmerge.evaluation.pipeline import _load_set
    from galmerge.models.inference import forward_in_batches
    from galmerge.models.model import load_model

    loaded = load_model(run)
    cfg = loaded.config
    specs = {"source": cfg["source"], "target": cfg["target"]}
    if no_field:
        specs["target_no_field"] = cfg["target"] + NO_FIELD
    sets = {k: load_imageset(v) for k, v in specs.items()}
    # the source as the run trained on it (observed when its config says so)
    sets["source"] = _load_set(sets["source"], cfg, "source", sets["target"])
    splits = domain_splits(len(sets["source"]), len(sets["target"]), int(cfg["seed"]))
    row: dict[str, Any] = {"run": str(run), "strategy": cfg["strategy"],
                           "target_encoder": cfg.get("target_encoder"), "specs": specs}
    for key, imageset in sets.items():
        domain = "source" if key == "source" else "target"
        idx = splits[domain]["test"]
        _, logits = forward_in_batches(loaded.model, imageset, idx, loaded.preprocess[domain],
                                       domain=domain)
        calls = logits.argmax(1).numpy()
        row[key] = _rates(calls, imageset.labels.numpy()[idx], _kinds(imageset, idx))
    return row


def table(rows: list[dict[str, Any]], group: str) -> list[str]:
    """Mean ± std over the runs of each group (strategy and layout) of the called-merger share
    per kind, the false-positive rate and the true-positive rate."""
    kinds = list(rows[0]["source"]["by_kind"])
    lines = [f"| {group} | runs | split | " + " | ".join(kinds) + " | FPR | TPR | called | true |",
             "| --- " * (len(kinds) + 7) + "|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for name, rs in groups.items():
        for split in ("source", "target", "target_no_field"):
            if split not in rs[0]:
                continue
            cells = [mean_sd([r[split]["by_kind"][k]["called_merger"] for r in rs
                              if r[split]["by_kind"][k]["called_merger"] is not None], 2)
                     for k in kinds]
            cells += [mean_sd([r[split][key] for r in rs], 2)
                      for key in ("fpr", "tpr", "called_merger", "true_fraction")]
            lines.append(f"| {name} | {len(rs)} | {split} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="finished run directories")
    ap.add_argument("--group", nargs="*", default=None,
                    help="a label per run (default: the run directory's name)")
    ap.add_argument("--no-field", action="store_true",
                    help="also score the target test split rendered without field objects")
    ap.add_argument("--name", default="error_by_kind")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.group and len(args.group) != len(args.runs):
        ap.error("--group needs one label per run")
    from galmerge.config.rundir import cpu_description

    rows = []
    for i, run in enumerate(args.runs):
        row = score_run(Path(run), args.no_field)
        row["group"] = args.group[i] if args.group else Path(run).name
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("run", "group")}
                         | {s: round(row[s]["fpr"], 3) for s in ("source", "target")}), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    (out / f"{args.name}.json").write_text(json.dumps(
        {"rows": rows, "cpu": cpu_description(), "load_average": load}, indent=1))
    (out / f"{args.name}.md").write_text("\n".join([
        f"# Called-merger share by scene kind ({args.name})", "",
        "Share of each kind of test galaxy that the model calls a merger (threshold 0.5), on the "
        "source and the target test splits; FPR/TPR over the non-merger/merger labels; mean ± "
        "std over the runs of a group. `benchmarks/error_by_kind.py`; nothing is trained or "
        "chosen. isolated and projected-neighbour scenes are non-mergers, close pairs and "
        "post-mergers mergers.", "", *table(rows, "model"), "",
        f"Load average when written: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}."]) + "\n")


if __name__ == "__main__":
    main()
