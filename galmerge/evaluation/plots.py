"""The PNG figures of `galmerge evaluate`. Figures are built without pyplot (no global state,
no display needed) and saved with the Agg renderer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from galmerge.io import atomic
from galmerge.scores.calibration import expected_calibration_error, reliability

DPI = 110
DOMAIN_COLOURS = {"source": "#1f77b4", "target": "#ff7f0e"}
CLASS_COLOURS = {0: "#17becf", 1: "#d62728", -1: "#bbbbbb"}
DOMAIN_MARKERS = {"source": "o", "target": "x"}
CLASS_NAMES = {0: "non-merger", 1: "merger", -1: "unlabelled"}


def _save(fig: Figure, path: Path) -> Path:
    # fixed names in the run directory: a link planted there is replaced, never followed
    atomic.save_figure(fig, path, fixed_name=True, dpi=DPI, bbox_inches="tight",
                       facecolor="white")
    return path


def _finite(rows: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([r["epoch"] for r in rows], dtype=float)
    y = np.array([r.get(key, math.nan) for r in rows], dtype=float)
    ok = np.isfinite(y)
    return x[ok], y[ok]


def _pretty(column: str) -> str:
    name = column.removeprefix("loss_").removeprefix("score_")
    return {"ce": "cross-entropy (source)", "total": "total"}.get(name, name)


def training_curves(rows: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Loss terms per epoch; source validation loss; source and target validation accuracy."""
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    terms = [k for k in rows[0] if k.startswith("loss_")] if rows else []
    for key in terms:
        x, y = _finite(rows, key)
        axes[0].plot(x, y, marker="o", ms=3, label=_pretty(key), lw=2 if key == "loss_total" else 1)
    axes[0].set_title("training loss per term")
    axes[0].set_ylabel("mean loss over the epoch")
    x, y = _finite(rows, "source_val_loss")
    axes[1].plot(x, y, marker="o", ms=3, color=DOMAIN_COLOURS["source"], label="source")
    axes[1].set_title("validation loss")
    axes[1].set_ylabel("cross-entropy")
    for domain in ("source", "target"):
        x, y = _finite(rows, f"{domain}_val_accuracy")
        label = domain if domain == "source" else "target (oracle: uses target labels)"
        axes[2].plot(x, y, marker="o", ms=3, color=DOMAIN_COLOURS[domain], label=label)
    axes[2].set_title("validation accuracy per domain")
    axes[2].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def roc_curves(outputs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """ROC of each domain's test split on one axis; AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for domain, (y, p) in outputs.items():
        keep = y >= 0
        if len(np.unique(y[keep])) < 2:
            ax.plot(
                [],
                [],
                color=DOMAIN_COLOURS.get(domain),
                label=f"{domain}: no ROC (needs labelled mergers and non-mergers)",
            )
            continue
        fpr, tpr, _ = roc_curve(y[keep], p[keep])
        auc = roc_auc_score(y[keep], p[keep])
        ax.plot(fpr, tpr, color=DOMAIN_COLOURS.get(domain), lw=2, label=f"{domain} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("false positive rate (non-mergers called mergers)")
    ax.set_ylabel("true positive rate (mergers found)")
    ax.set_title("ROC on the test splits")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion_matrices(outputs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """One 2x2 matrix per domain: counts and row fractions (threshold p = 0.5)."""
    fig = Figure(figsize=(4.8 * len(outputs), 4.3))
    axes = np.atleast_1d(fig.subplots(1, len(outputs)))
    names = ["non-merger", "merger"]
    for ax, (domain, (y, p)) in zip(axes, outputs.items(), strict=True):
        keep = y >= 0
        yt, pred = y[keep], (p[keep] >= 0.5).astype(int)
        m = np.array([[np.sum((yt == i) & (pred == j)) for j in (0, 1)] for i in (0, 1)])
        frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in (0, 1):
            for j in (0, 1):
                colour = "white" if frac[i, j] > 0.6 else "black"
                ax.text(
                    j,
                    i,
                    f"{m[i, j]}\n({frac[i, j]:.0%})",
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=11,
                )
        ax.set_xticks([0, 1], names)
        ax.set_yticks([0, 1], names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{domain} test ({int(keep.sum())} images)")
    fig.tight_layout()
    return _save(fig, path)


def reliability_diagram(
    outputs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    calibrated: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Accuracy vs confidence per bin for each domain; calibrated curves dashed when given."""
    fig = Figure(figsize=(11, 5.2))
    axes = fig.subplots(1, 2)
    ax, hist = axes
    ax.plot([0.5, 1], [0.5, 1], ls=":", color="grey", label="perfect calibration")
    for domain, (y, p) in outputs.items():
        colour = DOMAIN_COLOURS.get(domain)
        curves = [("", p, "-")]
        if calibrated is not None and domain in calibrated:
            curves.append((" temperature-scaled", calibrated[domain], "--"))
        for suffix, probs, style in curves:
            r = reliability(probs, y, bins=10)
            used = r["count"] > 0
            ece = expected_calibration_error(probs, y)
            ax.plot(
                r["confidence"][used],
                r["accuracy"][used],
                style,
                marker="o",
                ms=4,
                color=colour,
                label=f"{domain}{suffix} (ECE {ece:.3f})",
            )
            if not suffix:
                centres = 0.5 * (r["edges"][1:] + r["edges"][:-1])
                width = (r["edges"][1] - r["edges"][0]) * 0.45
                shift = -width / 2 if domain == "source" else width / 2
                hist.bar(
                    centres + shift, r["count"], width=width, color=colour, alpha=0.8, label=domain
                )
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("fraction correct")
    ax.set_title("reliability diagram (test splits)")
    ax.set_xlim(0.48, 1.02)
    ax.set_ylim(0, 1.02)
    # below the axes: curves fill the upper left, where a legend inside would cover them
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(alpha=0.3)
    hist.set_xlabel("confidence of the predicted class")
    hist.set_ylabel("number of images")
    hist.set_title("confidence histogram")
    hist.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def embedding(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], path: Path, seed: int = 0
) -> tuple[Path, str]:
    """2-D t-SNE (UMAP when importable) of source and target features: one column per model
    (before/after when a baseline is given), the top row coloured by domain, the bottom row by
    class on the same points (a marker shape per class hid the classes under the colours).

    ``panels``: title -> {domain: (features (N, D), labels (N,))}. Returns the path and the
    method used.
    """
    method = "t-SNE"
    try:
        import umap  # type: ignore[import-not-found]
    except ImportError:
        umap = None
    if umap is not None:
        method = "UMAP"
    fig = Figure(figsize=(5.6 * len(panels), 10.0))
    axes = np.array(fig.subplots(2, len(panels), squeeze=False))
    for col, (title, domains) in enumerate(panels.items()):
        feats = np.concatenate([f for f, _ in domains.values()]).astype(np.float64)
        xy = _reduce(feats, method, seed, umap)
        by_domain, by_class = axes[0, col], axes[1, col]
        start = 0
        for domain, (f, labels) in domains.items():
            part = xy[start : start + len(f)]
            start += len(f)
            by_domain.scatter(part[:, 0], part[:, 1], s=12, alpha=0.6, linewidths=0,
                              color=DOMAIN_COLOURS.get(domain), label=domain)
            for cls in (0, 1, -1):
                sel = labels == cls
                if sel.any():
                    by_class.scatter(
                        part[sel, 0], part[sel, 1], s=16 if domain == "source" else 22,
                        alpha=0.6, linewidths=0 if domain == "source" else 1.0,
                        color=CLASS_COLOURS[cls], marker=DOMAIN_MARKERS.get(domain, "o"),
                        label=f"{CLASS_NAMES[cls]} ({domain})",
                    )
        by_domain.set_title(f"{title}\ncoloured by domain")
        by_class.set_title("the same points coloured by class")
        for ax in (by_domain, by_class):
            ax.set_xlabel(f"{method} 1")
            ax.set_ylabel(f"{method} 2")
            ax.legend(fontsize=8, markerscale=1.5)
    fig.tight_layout()
    return _save(fig, path), method


def _reduce(feats: np.ndarray, method: str, seed: int, umap: Any) -> np.ndarray:
    feats = (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-8)
    if len(feats) < 5:
        return np.column_stack([feats[:, 0], feats[:, 1 % feats.shape[1]]])
    if method == "UMAP":
        return umap.UMAP(random_state=seed, n_neighbors=min(15, len(feats) - 1)).fit_transform(
            feats
        )
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500
    ).fit_transform(feats)


def composite(image: np.ndarray) -> np.ndarray:
    """An arcsinh-stretched colour (or grey) image (H, W, 3) in [0, 1] from raw bands (C, H, W).

    Bands are assumed bluest first (g, r, i), so the last band is drawn red.
    """
    x = np.asarray(image, dtype=np.float64)
    if x.shape[0] >= 3:
        x = x[-3:][::-1]
    elif x.shape[0] == 2:
        x = np.stack([x[1], x.mean(0), x[0]])
    else:
        x = np.repeat(x[:1], 3, axis=0)
    x = x - np.median(x, axis=(1, 2), keepdims=True)  # sky level
    noise = 1.4826 * np.median(np.abs(x), axis=(1, 2), keepdims=True)
    soft = np.maximum(noise.mean(), 1e-6 * max(np.abs(x).max(), 1e-12))
    y = np.arcsinh(x / soft)
    top = np.percentile(y, 99.7)
    y = np.clip(y / max(top, 1e-12), 0, 1)
    return np.transpose(y, (1, 2, 0))


def gallery(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    row_titles: Sequence[str],
    columns: int,
    path: Path,
    cams: Sequence[np.ndarray | None] | None = None,
    title: str = "",
) -> Path:
    """A grid of colour composites (rows of ``columns``), optionally with Grad-CAM overlays."""
    rows = max(1, len(row_titles))
    fig = Figure(figsize=(1.9 * columns + 1.6, 2.15 * rows + 0.6))
    axes = np.array(fig.subplots(rows, columns, squeeze=False))
    for i in range(rows):
        for j in range(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            k = i * columns + j
            if k >= len(images) or images[k] is None:
                ax.axis("off")
                continue
            ax.imshow(composite(images[k]), interpolation="nearest")
            if cams is not None and cams[k] is not None:
                # contours keep the galaxy visible, unlike an opaque heat map
                ax.contour(
                    cams[k],
                    levels=[0.3, 0.6, 0.9],
                    cmap="autumn_r",
                    vmin=0.3,
                    vmax=0.9,
                    linewidths=1.2,
                )
            ax.set_title(captions[k], fontsize=8)
        axes[i, 0].set_ylabel(row_titles[i], fontsize=9)
        axes[i, 0].axis("on")
        for side in axes[i, 0].spines.values():
            side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def selection_comparison(
    rows: Sequence[Mapping[str, float]], choices: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    """Target validation accuracy per epoch with each score's chosen epoch, and a bar chart;
    without target labels, each score's curve (scaled to [0, 1]) and its chosen epoch."""
    if not _finite(rows, "target_val_accuracy")[0].size:
        return _score_curves(rows, [c for c in choices if not c["oracle"]], path)
    fig = Figure(figsize=(12, 4.6))
    curve, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    x, y = _finite(rows, "target_val_accuracy")
    curve.plot(x, y, color="grey", lw=1.5, label="target val accuracy (oracle)")
    markers = "osD^vP*Xhp"
    # several scores often pick the same epoch: spread their markers sideways around it
    same: dict[int, list[int]] = {}
    for i, choice in enumerate(choices):
        if choice["epoch"] is not None and math.isfinite(choice["target_val_accuracy"]):
            same.setdefault(int(choice["epoch"]), []).append(i)
    step = min(0.15, 0.8 / max(len(v) for v in same.values())) if same else 0.0
    for i, choice in enumerate(choices):
        if choice["epoch"] is None or not math.isfinite(choice["target_val_accuracy"]):
            continue
        group = same[int(choice["epoch"])]
        shift = (group.index(i) - (len(group) - 1) / 2) * step
        curve.scatter(
            [choice["epoch"] + shift],
            [choice["target_val_accuracy"]],
            s=70,
            zorder=3,
            marker=markers[i % len(markers)],
            label=f"{choice['label']}: epoch {choice['epoch']}",
            alpha=0.85,
        )
    curve.set_xlabel("epoch")
    curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve.set_ylabel("target validation accuracy")
    curve.set_title("epoch each selection score picks")
    curve.grid(alpha=0.3)
    curve.legend(fontsize=8, loc="best")
    labels = [c["label"] for c in choices]
    values = [
        c["target_val_accuracy"] if math.isfinite(c["target_val_accuracy"]) else 0.0
        for c in choices
    ]
    colours = ["#7f7f7f" if c["oracle"] else "#2ca02c" for c in choices]
    pos = np.arange(len(choices))
    bars.barh(pos, values, color=colours, hatch=None)
    for p_, v in zip(pos, values, strict=True):
        bars.text(v, p_, f" {v:.3f}", va="center", fontsize=8)
    bars.set_yticks(pos, labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1.12)
    bars.set_xlabel("target validation accuracy at the chosen epoch")
    bars.set_title("label-free choices vs the oracle (grey)")
    fig.tight_layout()
    return _save(fig, path)


def _score_curves(
    rows: Sequence[Mapping[str, float]], choices: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    fig = Figure(figsize=(8, 4.6))
    ax = fig.subplots()
    for choice in choices:
        name = choice["score"]
        key = f"score_{name}" if f"score_{name}" in rows[0] else name
        x, y = _finite(rows, key)
        if not len(y):
            continue
        span = y.max() - y.min()
        scaled = (y - y.min()) / span if span > 0 else np.zeros_like(y)
        line = ax.plot(
            x,
            scaled,
            marker="o",
            ms=3,
            label=f"{choice['label']} ({choice['direction']}; picks epoch {choice['epoch']})",
        )[0]
        if choice["epoch"] is not None:
            at = np.flatnonzero(x == choice["epoch"])
            if at.size:
                ax.scatter(x[at], scaled[at], s=120, marker="*", color=line.get_color(), zorder=3)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("score, scaled to [0, 1] per score")
    ax.set_title("label-free scores per epoch (no target labels, so no oracle); star = pick")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    return _save(fig, path)
