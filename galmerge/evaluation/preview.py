"""PNG grids of a labelled image set: mergers above, non-mergers below, colour composites."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.plugin.imageset import ImageSet

MAX_COLUMNS = 8
CLASS_NAMES = {1: "mergers", 0: "non-mergers", -1: "unlabelled"}


def pick_examples(imageset: ImageSet, n: int, seed: int) -> dict[int, np.ndarray]:
    """``n`` indices in all (fewer when the set has fewer), split as evenly as the classes
    present allow (mergers first; a class short of its share leaves the rest to the other),
    sorted per class and drawn with ``seed``; a class given none is left out."""
    rng = np.random.default_rng(seed)
    labels = imageset.labels.numpy()
    chosen: dict[int, np.ndarray] = {}
    classes = [c for c in (1, 0) if (labels == c).any()] or [-1]
    members = {c: np.flatnonzero(labels == c) for c in classes}
    share = dict.fromkeys(classes, 0)
    left = n
    while left and any(share[c] < len(members[c]) for c in classes):
        for cls in classes:  # one each in turn: n=1 shows one image, n=3 two mergers and one
            if left and share[cls] < len(members[cls]):
                share[cls] += 1
                left -= 1
    for cls in classes:
        if share[cls]:
            chosen[cls] = np.sort(rng.choice(members[cls], size=share[cls], replace=False))
    return chosen


def colour_composite(images: np.ndarray, imageset: ImageSet) -> np.ndarray:
    """(N, C, H, W) survey images -> (N, H, W, 3) uint8 arcsinh (Lupton) colour composites."""
    from astropy.visualization import make_lupton_rgb

    out = np.empty((len(images), images.shape[2], images.shape[3], 3), dtype=np.uint8)
    jpeg = imageset.image_source == "jpeg"
    stretch_scale = float(imageset.stretch_scale or 0.0)
    for k, img in enumerate(images):
        # channels run blue -> red; red, green, blue planes take the reddest bands
        planes = [img[min(2, len(img) - 1)], img[min(1, len(img) - 1)], img[0]]
        if jpeg:
            rgb = np.stack(planes, axis=-1)
            lo, hi = float(rgb.min()), float(rgb.max())
            out[k] = np.clip((rgb - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
            continue
        scale = stretch_scale
        if scale <= 0:  # no declared level: use the image's own faint level
            scale = float(np.percentile(np.abs(img), 50)) or 1e-3
        # display weights as in SDSS colour images, so discs look blue and bulges yellow
        planes = [planes[0] * 0.9, planes[1] * 1.1, planes[2] * 1.6]
        out[k] = make_lupton_rgb(*planes, minimum=0.0, stretch=6 * scale, Q=8)
    return out


def check_preview_output(output: str | Path) -> None:
    """One line for an ``--output`` that is no figure name or may not be replaced
    (`galmerge.io.atomic.check_figure`)."""
    if Path(output).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise GalmergeError(f"--output {output}: use a .png, .pdf or .svg file name")
    atomic.check_figure(output, option="--output")


def write_preview(
    imageset: ImageSet, output: str | Path, n: int = 16, seed: int = 0, title: str | None = None
) -> Path:
    """Write a PNG grid of ``n`` examples (split between the classes, `pick_examples`) of
    ``imageset`` to ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_preview_output(output)
    if len(imageset) == 0:
        raise GalmergeError(f"survey {imageset.survey} has no images to preview")
    if n < 1:
        raise GalmergeError(f"--n must be at least 1, got {n}")
    chosen = pick_examples(imageset, n, seed)
    rows: list[tuple[int, np.ndarray]] = []
    for cls, idx in chosen.items():
        for start in range(0, len(idx), MAX_COLUMNS):
            rows.append((cls, idx[start : start + MAX_COLUMNS]))
    cols = min(MAX_COLUMNS, max(len(idx) for _, idx in rows))
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.75 * cols + 0.4, 1.95 * len(rows) + 0.55), squeeze=False
    )
    for r, (cls, idx) in enumerate(rows):
        rgb = colour_composite(imageset.batch(idx).numpy(), imageset)
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(idx):
                ax.axis("off")
                continue
            ax.imshow(rgb[c], origin="lower", interpolation="nearest", aspect="equal")
            ax.set_title(_short_id(imageset.ids[idx[c]]), fontsize=7)
            if c == 0:
                ax.set_ylabel(CLASS_NAMES[cls], fontsize=11, fontweight="bold")
    bands = ",".join(imageset.bands)
    scale = imageset.pixel_scale_arcsec
    scale_txt = f', {scale:g}"/px, {imageset.image_size * scale:.3g}" across' if scale else ""
    fig.suptitle(title or f"{imageset.survey}  ({bands}{scale_txt})", fontsize=12)
    top = 1 - 0.55 / fig.get_figheight()
    fig.subplots_adjust(left=0.04, right=0.995, bottom=0.01, top=top, wspace=0.06, hspace=0.2)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.save_figure(fig, path, option="--output", dpi=110)
    plt.close(fig)
    return path


def _short_id(value: object, width: int = 30) -> str:
    """Whole up to ``width`` characters, else head and tail around an ellipsis: cutting the
    front (``…nthetic-illustris-s0-000040``) hid which set an image came from."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[-(width - 1 - head) :]
