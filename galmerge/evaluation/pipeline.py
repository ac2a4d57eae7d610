"""`galmerge evaluate`: test metrics with bootstrap intervals, figures, model-selection analysis,
temperature scaling and a self-contained HTML report, written to ``RUN_DIR/report/``.

The data are reloaded from the specs in ``config.toml`` and split exactly as the trainer did
(`galmerge.data.splits.domain_splits` with the run's seed), so "test" means the same images.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from galmerge.config import rundir
from galmerge.config.legacy import with_legacy_values
from galmerge.config.paths import (
    absolute_spec,
    changed_sha256,
    data_changed_warning,
    missing_relative,
)
from galmerge.errors import GalmergeError, named
from galmerge.evaluation import plots
from galmerge.evaluation.report import (
    write_evaluation_report,
)
from galmerge.io.provenance import code_identity, sha256_file
from galmerge.models.model import LoadedModel, load_model, read_checkpoint, save_checkpoint
from galmerge.plugin.imageset import ImageSet
from galmerge.plugin.options import plain_number
from galmerge.runtime.rng import keeps_caller_rng
from galmerge.scores import selection
from galmerge.scores.calibration import expected_calibration_error, fit_temperature, nll
from galmerge.scores.metrics import METRIC_NAMES, binary_metrics

REPORT_DIR = "report"
DOMAINS = ("source", "target")
EMBEDDING_POINTS = 400  # per domain; t-SNE cost grows fast with points
GALLERY_COLUMNS = 4
# Grad-CAM maps whose rank correlation with a randomised network's maps reaches this are
# reported as failing the sanity check (Adebayo et al. 2018 read high similarity as a failure).
GRADCAM_SANITY_MAX = 0.5
# ...and when a map's total evidence does not rise with the model's merger logit difference
# over the gallery (rank correlation below this), the maps do not show what drives predictions.
GRADCAM_TRACKS_MIN = 0.3


@dataclass
class SplitData:
    indices: np.ndarray
    features: torch.Tensor
    logits: torch.Tensor
    labels: np.ndarray


@dataclass
class DomainData:
    name: str
    imageset: ImageSet
    val: SplitData
    test: SplitData


# --------------------------------------------------------------------------------------------
# loading


def _load_set(given: ImageSet | str | None, config: dict[str, Any], role: str,
              target: ImageSet | None = None, *, run: tuple[Path, str] | None = None
              ) -> ImageSet:  # fmt: skip
    """The run's ``role`` set as it trained on it (the source observed as its config's
    ``[observe]`` section says, `galmerge.data.observe`; with ``field = "target"`` the field
    sources are cut again from ``target``'s training split, the run's target by default).
    ``run``: (run directory, command name): a file whose SHA-256 is not the one the run's
    env.json records it trained on is read with a one-line warning on stderr."""
    from galmerge.data.field import field_library
    from galmerge.data.observe import needs_target, observed

    if isinstance(given, ImageSet):
        imageset = given
    else:
        from galmerge.data.datasets import in_memory_advice, load_imageset, names_no_survey

        spec = given or config.get(role)
        if not spec:
            raise GalmergeError(f"config.toml has no '{role}' spec; pass --{role} SPEC")
        rundir.refuse_credentials(str(spec), f"--{role}")  # metrics.json records it
        part = None if given else missing_relative(config, role)
        if part is not None:  # a run from before specs were recorded absolute
            raise GalmergeError(
                f"cannot reload the {role} data '{spec}': its path is relative to the folder "
                f"the run was started in, and there is no {part} here; run from that folder, "
                f"or pass --{role} SPEC")
        if not given and names_no_survey(str(spec)):
            raise GalmergeError(f"cannot reload the {role} data: "
                                f"{in_memory_advice(str(spec), role)}")
        try:
            imageset = load_imageset(str(spec))
        except GalmergeError as exc:
            raise GalmergeError(
                f"cannot reload the {role} data '{spec}' ({exc}); pass --{role} SPEC"
            ) from exc
        # the survey hashed the file as it read it (hdf5: meta.file_sha256): no second read
        if run is not None and changed_sha256(run[0], role, imageset.meta.get("file_sha256")):
            print(data_changed_warning(run[1], run[0], role,
                                       str(imageset.meta.get("file") or spec)), file=sys.stderr)
    if role != "source":
        return imageset
    field = None
    if needs_target(config.get("observe")):
        # the field sources come from the target's training split, as in training
        from galmerge.data.splits import domain_splits

        trained_on = target if target is not None else _load_set(None, config, "target", run=run)
        rows = domain_splits(len(imageset), len(trained_on), int(config.get("seed", 0)),
                             (f"source {spec}", f"target {config.get('target')}")
                             if not isinstance(given, ImageSet) else ("source", "target"))
        field = field_library(trained_on, rows["target"]["train"])
    return observed(imageset, config.get("observe"), int(config.get("seed", 0)), field)


def _outputs(
    loaded: LoadedModel,
    imageset: ImageSet,
    idx: np.ndarray,
    spec: dict[str, Any],
    device: torch.device,
    domain: str,
) -> SplitData:
    from galmerge.models.inference import forward_in_batches

    feats, logits = forward_in_batches(loaded.model, imageset, idx, spec, device, domain=domain)
    labels = imageset.labels.numpy()[idx]
    return SplitData(idx, feats, logits, labels)


def _domains(
    loaded: LoadedModel, sets: dict[str, ImageSet], seed: int, device: torch.device,
    names: tuple[str, str] = ("source data", "target data"),
) -> dict[str, DomainData]:
    from galmerge.data.splits import domain_splits

    splits = domain_splits(len(sets["source"]), len(sets["target"]), seed, names)
    out = {}
    for name in DOMAINS:
        spec = loaded.preprocess[name]
        if sets[name].channels != int(spec["channels"]):
            raise GalmergeError(
                f"{name} data has {sets[name].channels} bands but the model was trained on "
                f"{spec['channels']}; pass the run's --{name} data"
            )
        out[name] = DomainData(
            name,
            sets[name],
            _outputs(loaded, sets[name], splits[name]["val"], spec, device, name),
            _outputs(loaded, sets[name], splits[name]["test"], spec, device, name),
        )
    return out


# --------------------------------------------------------------------------------------------
# numbers


#: evaluate's bootstrap stream of each domain: resamples of independent streams of one seed
BOOTSTRAP_STREAMS = {"source": 0, "target": 1}


def bootstrap_metrics(
    labels: np.ndarray, p: np.ndarray, n_boot: int, seed: int = 0, stream: int = 0
) -> dict[str, Any]:
    """Point metrics plus 16th-84th percentile (68%) bootstrap intervals over test images.

    Resample indices come from ``numpy.random.SeedSequence(seed).spawn(...)``'s child number
    ``stream`` (``SeedSequence(seed, spawn_key=(stream,))``): each domain of `evaluate` draws
    from its own stream (`BOOTSTRAP_STREAMS`), independent of the other's, so a difference of
    their intervals is not correlated by shared resamples; the same seed gives the same numbers.
    """
    value = binary_metrics(labels, p)
    keep = labels >= 0
    y, q = labels[keep], p[keep]
    out: dict[str, Any] = {"value": value, "n": int(len(y)), "bootstrap": int(n_boot)}
    if n_boot > 0 and len(y) > 1:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
        draws = _resampled_metrics(y, q, rng.integers(0, len(y), (n_boot, len(y))))
        intervals = {}
        for name, vals in draws.items():
            arr = vals[np.isfinite(vals)]
            intervals[name] = (
                [float(np.percentile(arr, 16)), float(np.percentile(arr, 84))]
                if len(arr)
                else [math.nan, math.nan]
            )
        out["interval_68"] = intervals
    return out


def _resampled_metrics(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """`binary_metrics` for every row of resample indices ``idx`` (B, n) at once; the per-call
    overhead of sklearn would dominate otherwise. AUC is the Mann-Whitney rank statistic."""
    from scipy.stats import rankdata

    yy, pp = y[idx].astype(np.float64), p[idx]
    pred = (pp >= 0.5).astype(np.float64)
    tp = (pred * yy).sum(1)
    fp = (pred * (1 - yy)).sum(1)
    fn = ((1 - pred) * yy).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        ranks = rankdata(pp, axis=1)  # ties get average ranks, as roc_auc_score
        n1 = yy.sum(1)
        n0 = yy.shape[1] - n1
        auc = ((ranks * yy).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    auc[(n1 == 0) | (n0 == 0)] = np.nan
    return {
        "accuracy": (pred == yy).mean(1),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "brier": ((pp - yy) ** 2).mean(1),
        "auc": auc,
    }


def selection_choices(
    rows: list[dict[str, float]], summary: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """For each score: the epoch it picks from metrics.csv and target val accuracy there."""
    if not rows:
        return []
    acc = [r.get("target_val_accuracy", math.nan) for r in rows]
    oracle_i = selection.select_epoch(acc, selection.ORACLE)
    oracle_acc = acc[oracle_i] if oracle_i is not None else math.nan
    names = [n for n in selection.SCORES if any(f"score_{n}" in r or n in r for r in rows)]
    choices = []
    for name in names:
        values = [r.get(f"score_{name}", r.get(name, math.nan)) for r in rows]
        i = selection.select_epoch(values, name)
        choices.append(_choice(name, name, rows, i, oracle_acc, oracle=False))
    choices.append(
        _choice(selection.ORACLE, "oracle: target val accuracy", rows, oracle_i, oracle_acc, True)
    )
    if summary and summary.get("best_epoch"):
        best = int(summary["best_epoch"])
        i = next((k for k, r in enumerate(rows) if int(r["epoch"]) == best), None)
        picked = summary.get("select_by", "?")
        label = f"trainer best.pt ({picked})"
        choices.append(
            _choice(
                f"trainer:{picked}", label, rows, i, oracle_acc, oracle=picked == selection.ORACLE
            )
        )
    return choices


def _choice(
    name: str,
    label: str,
    rows: list[dict[str, float]],
    i: int | None,
    oracle_acc: float,
    oracle: bool,
) -> dict[str, Any]:
    acc = rows[i].get("target_val_accuracy", math.nan) if i is not None else math.nan
    if oracle and "oracle" not in label:
        label = f"{label} [oracle]"
    return {
        "score": name,
        "label": label,
        "oracle": oracle,
        "direction": selection.DIRECTIONS.get(name, ""),
        "epoch": int(rows[i]["epoch"]) if i is not None else None,
        "target_val_accuracy": acc,
        "gap_to_oracle": oracle_acc - acc if math.isfinite(acc) else math.nan,
    }


# --------------------------------------------------------------------------------------------
# baseline


#: what a baseline must share with the run: the embedding panels put the two models' features of
#: the same images side by side, which means nothing across other data or another backbone
BASELINE_MUST_MATCH = ("source", "target", "backbone", "backbone_options")


@dataclass
class Baseline:
    """The model of the embedding figure's "before" panel."""

    path: Path  # its run directory (or the checkpoint file given)
    checkpoint: Path
    name: str  # how the report names it
    strategy: str
    chosen_by: str  # "own source-only stage", "automatic" or "--baseline"
    differences: list[str]  # settings in which it is not this run's source-only counterpart


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _counterpart_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """The settings on which a baseline is compared with a run (flattened, ``a.b``): all of
    config.toml but what `compare` takes as per run (`comparison.PER_RUN`), ``lr_multipliers``
    (a strategy's own differ from a `none` run's), the adaptation's own settings that a `none`
    run does not have or use (`ADAPTATION_ONLY`), the preset's name (its values are compared),
    the seed and select_by (compared on their own) and what must match anyway. [observe] is
    compared, its "auto" values as measured."""
    from galmerge.config.resolve import ADAPTATION_ONLY
    from galmerge.evaluation.comparison import PER_RUN, flatten_settings

    drop = (PER_RUN | {"lr_multipliers"} | set(ADAPTATION_ONLY) | set(BASELINE_MUST_MATCH)
            | {"preset", "select_by"})
    return flatten_settings({k: v for k, v in config.items() if k not in drop})


def _baseline_mismatch(config: Mapping[str, Any], other: Mapping[str, Any]) -> str | None:
    """Why ``other``'s model cannot be the "before" of ``config``'s (data or backbone), or None."""
    for key in BASELINE_MUST_MATCH:
        ours, theirs = config.get(key), other.get(key)
        if _show(ours) != _show(theirs):
            return f"its {key} {_show(theirs)} is not this run's {_show(ours)}"
    return None


def baseline_differences(config: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """The settings in which ``other`` (a baseline's config) is not the source-only `none`
    counterpart of ``config`` (a run's), as ``key=theirs (this run ours)``: the strategy when
    not `none`, the seed, select_by (a run with its own target encoder also accepts the source
    validation loss, what its source-only stage and `none` choose by) and every compared
    setting (`_counterpart_settings`)."""
    out = []
    if other.get("strategy") != "none":
        out.append(f"strategy={_show(other.get('strategy'))} (not source only)")
    ours, theirs = _counterpart_settings(config), _counterpart_settings(other)
    ours["seed"], theirs["seed"] = _show(config.get("seed")), _show(other.get("seed"))
    accepted = {config.get("select_by")}
    if config.get("target_encoder") == "separate":
        accepted.add("source_val_loss")
    if other.get("select_by") not in accepted:
        ours["select_by"] = _show(config.get("select_by"))
        theirs["select_by"] = _show(other.get("select_by"))
    for key in sorted({*ours, *theirs}, key=lambda k: (k != "seed", k)):
        if ours.get(key) != theirs.get(key):
            out.append(f"{key}={theirs.get(key, '-')} (this run {ours.get(key, '-')})")
    return out


def _read_run_config(folder: Path) -> dict[str, Any] | None:
    """A run's config.toml, settings it predates at the values its run trained with."""
    try:
        return with_legacy_values(rundir.read_config(folder))
    except (GalmergeError, OSError):
        return None


def choose_baseline(run_dir: Path, config: Mapping[str, Any]) -> Baseline | None:
    """The "before" model of a run that is not `none`: its own source-only stage
    (``RUN_DIR/source_only``: the model it started from), else the best of its sibling runs of
    strategy `none` on the same data, backbone and backbone options, by a fixed rule: no
    difference but the seed first, then the same seed, then the closest planned epochs (ties:
    the fewer), then the fewest differences, then the folder name; None when there is none."""
    if config.get("strategy", "none") == "none":
        return None
    config = with_legacy_values(config)  # compared with the candidates' records, filled alike

    def candidate(folder: Path, chosen_by: str) -> tuple[Baseline, dict[str, Any]] | None:
        if not ((folder / rundir.SUMMARY).is_file() and (folder / rundir.BEST).is_file()):
            return None
        other = _read_run_config(folder)
        if other is None or other.get("strategy") != "none" or _baseline_mismatch(config, other):
            return None
        name = (f"{run_dir.name}/{folder.name}" if chosen_by != "automatic" else folder.name)
        return Baseline(folder, folder / rundir.BEST, name, "none", chosen_by,
                        baseline_differences(config, other)), other

    own = candidate(run_dir / rundir.SOURCE_STAGE, "own source-only stage")
    if own is not None:
        return own[0]

    def epochs(c: Mapping[str, Any]) -> int | None:
        value = c.get("epochs")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    found: list[tuple[tuple[Any, ...], Baseline]] = []
    for folder in sorted(run_dir.resolve().parent.iterdir()):
        if folder == run_dir.resolve() or not folder.is_dir():
            continue
        got = candidate(folder, "automatic")
        if got is None:
            continue
        base, other = got
        ours, theirs = epochs(config), epochs(other)
        gap = abs(ours - theirs) if ours is not None and theirs is not None else math.inf
        rank = (any(not d.startswith("seed=") for d in base.differences),
                other.get("seed") != config.get("seed"), gap,
                theirs if theirs is not None else math.inf, len(base.differences), folder.name)
        found.append((rank, base))
    return min(found, key=lambda f: f[0])[1] if found else None


def find_baseline(run_dir: Path) -> Path | None:
    """The folder of `choose_baseline`'s pick for a run directory, or None."""
    config = _read_run_config(run_dir)
    base = choose_baseline(run_dir, config) if config is not None else None
    return None if base is None else base.path


def given_baseline(given: Path, config: Mapping[str, Any], evaluated: Path) -> Baseline:
    """``evaluate --baseline``: a run directory (its best.pt) or a checkpoint file. Refused when
    it is the checkpoint ``evaluated`` itself, or its data, backbone or backbone options are
    not the run's; a run of another strategy is kept and named by its strategy (not "source
    only"), and every difference is recorded."""
    ckpt = given / rundir.BEST if given.is_dir() else given
    if ckpt.resolve() == evaluated.resolve():
        raise GalmergeError(f"--baseline {given} is the model evaluated itself; pass a "
                            "`none` run of the same data, or leave --baseline out")
    if not ckpt.is_file():
        raise GalmergeError(f"--baseline {given}: no best.pt there; pass a `none` run")
    other = _read_run_config(ckpt.parent) if (ckpt.parent / rundir.CONFIG).is_file() else None
    if other is None:
        # read_checkpoint's own one-line errors (a TorchScript file, a damaged one) say more
        # than "no config" would
        other = read_checkpoint(ckpt).get("config")
    if not isinstance(other, dict):
        raise GalmergeError(f"--baseline {given}: no readable {rundir.CONFIG} beside it and no "
                            "config in the checkpoint; pass a run directory from galmerge train")
    config, other = with_legacy_values(config), with_legacy_values(other)
    why = _baseline_mismatch(config, other)
    if why is not None:
        raise GalmergeError(
            f"--baseline {given}: {why}, so the two embeddings cannot be compared; pass a run "
            "of the same data and backbone (a `none` run with this run's settings)")
    name = given.name if given.is_dir() else f"{ckpt.parent.name}/{ckpt.name}"
    return Baseline(given, ckpt, name, str(other.get("strategy", "?")), "--baseline",
                    baseline_differences(config, other))


# --------------------------------------------------------------------------------------------
# figures


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _gallery_picks(labels: np.ndarray, p: np.ndarray, k: int) -> list[tuple[str, np.ndarray]]:
    """Positions (into the test split) of the most and least confident mergers / non-mergers."""
    known = labels >= 0
    cls = labels if known.any() else (p >= 0.5).astype(int)
    kind = "true" if known.any() else "predicted"
    mergers = np.flatnonzero(cls == 1)
    non = np.flatnonzero(cls == 0)
    m_order = mergers[np.argsort(-p[mergers], kind="stable")]
    n_order = non[np.argsort(p[non], kind="stable")]
    # the "least confident" rows skip images already shown as "most confident" (small sets)
    return [
        (f"{kind} mergers,\nmost confident", m_order[:k]),
        (f"{kind} mergers,\nleast confident", m_order[k:][::-1][:k]),
        (f"{kind} non-mergers,\nmost confident", n_order[:k]),
        (f"{kind} non-mergers,\nleast confident", n_order[k:][::-1][:k]),
    ]


def _gallery(
    loaded: LoadedModel,
    dom: DomainData,
    p: np.ndarray,
    out: Path,
    device: torch.device,
    k: int = GALLERY_COLUMNS,
    say: Any = None,
) -> tuple[list[str], dict[str, Any] | None]:
    """The target gallery and its Grad-CAM figure; returns the files and the Grad-CAM facts
    (common scale, randomisation check) or None when the backbone has no convolution."""
    from galmerge.data.preprocess import normalise
    from galmerge.evaluation.gradcam import (
        common_scale,
        evidence_maps,
        randomisation_check,
        strength_score_correlation,
    )
    from galmerge.models.domain_norm import statistics

    picks = _gallery_picks(dom.test.labels, p, k)
    logits = dom.test.logits
    margin = (logits[:, 1] - logits[:, 0]).numpy() if len(logits) else np.zeros(0)
    images: list[np.ndarray | None] = []
    captions: list[str] = []
    chosen: list[int] = []
    for _, pos in picks:
        for j in range(k):
            if j < len(pos):
                chosen.append(int(pos[j]))
                images.append(None)
                # the logit margin keeps ranking images where p has saturated at 1.000
                captions.append(f"p={p[pos[j]]:.3f} Δz={margin[pos[j]]:+.1f}")
            else:
                chosen.append(-1)
                images.append(None)
                captions.append("")
    valid = [c for c in chosen if c >= 0]
    raw = dom.imageset.batch(dom.test.indices[valid]) if valid else torch.empty(0)
    ids = dom.imageset.ids[dom.test.indices[valid]] if valid else []
    cams_valid: list[np.ndarray] = []
    facts: dict[str, Any] | None = None
    if valid:
        x = normalise(raw.to(device), loaded.preprocess[dom.name])
        try:
            if say is not None:
                say("Grad-CAM maps of the gallery images")
            with statistics(loaded.model, dom.name):
                maps = evidence_maps(loaded.model, x)
        except ValueError:  # a backbone without convolutions: gallery without Grad-CAM
            maps = None
        if maps is not None:
            scale = common_scale(maps)
            cams_valid = list((maps / scale).clamp(max=1.0).numpy() if scale > 0 else maps.numpy())
            if say is not None:
                say("Grad-CAM sanity check: the same maps from randomised weights")
            with statistics(loaded.model, dom.name):
                rho = randomisation_check(loaded.model, x)
            tracks = strength_score_correlation(maps, margin[np.asarray(valid)])
            facts = {
                "explains": "logit difference z_merger - z_non_merger",
                "scale": scale,
                "randomised_weights_rank_correlation": rho,
                "strength_vs_score_rank_correlation": tracks,
                "sanity_check_passed": bool(
                    np.isfinite(rho) and rho < GRADCAM_SANITY_MAX
                    and np.isfinite(tracks) and tracks >= GRADCAM_TRACKS_MIN
                ),
            }
    cams: list[np.ndarray | None] = []
    it = 0
    for slot, c in enumerate(chosen):
        if c >= 0:
            images[slot] = raw[it].numpy()
            captions[slot] = f"id {_short(ids[it])}\n{captions[slot]}"
            cams.append(cams_valid[it] if cams_valid else None)
            it += 1
        else:
            cams.append(None)
    titles = [t for t, _ in picks]
    files = ["gallery_target.png"]
    plots.gallery(
        images,
        captions,
        titles,
        k,
        out / files[0],
        title="target test images: colour composites (arcsinh); p_merger of the model and "
        "its logit difference Δz",
    )
    if cams_valid and facts is not None:
        files.append("gradcam_target.png")
        plots.gallery(
            images,
            captions,
            titles,
            k,
            out / files[1],
            cams=cams,
            title=_gradcam_title(facts),
        )
    return files, facts


def _gradcam_verdict(facts: dict[str, Any]) -> str:
    rho = facts["randomised_weights_rank_correlation"]
    tracks = facts["strength_vs_score_rank_correlation"]
    checks = (
        f"rank correlation with randomised-weight maps {rho:.2f} (Adebayo et al. 2018; "
        f"passes below {GRADCAM_SANITY_MAX}), map strength vs merger logit {tracks:.2f} "
        f"(passes from {GRADCAM_TRACKS_MIN})"
    )
    if facts["sanity_check_passed"]:
        return f"sanity checks passed: {checks}"
    return (
        f"sanity checks FAILED, do not read the maps as the model's evidence for 'merger': "
        f"{checks}"
    )


def _gradcam_title(facts: dict[str, Any]) -> str:
    return (
        "Grad-CAM of the merger-vs-non-merger logit difference; contours at 30, 60, 90% of one "
        "scale shared by all maps (no contour = weak)\n" + _gradcam_verdict(facts)
    )


def _short(identifier: object, width: int = 26) -> str:
    """An id for a caption: whole up to ``width`` characters (SDSS objIDs and synthetic ids
    fit), else its head and tail around an ellipsis (both ends of an id tend to matter)."""
    text = str(identifier)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[-(width - 1 - head) :]


def _embedding(
    panels_models: list[tuple[str, LoadedModel]],
    domains: dict[str, DomainData],
    out: Path,
    device: torch.device,
    seed: int,
    points: int,
) -> tuple[str, str]:
    from galmerge.models.inference import forward_in_batches

    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for title, model in panels_models:
        per_domain = {}
        for name, dom in domains.items():
            pick = _subsample(len(dom.test.indices), points, seed)
            idx = dom.test.indices[pick]
            feats, _ = forward_in_batches(
                model.model, dom.imageset, idx, model.preprocess[name], device, domain=name
            )
            per_domain[name] = (feats.numpy(), dom.test.labels[pick])
        panels[title] = per_domain
    path, method = plots.embedding(panels, out / "embedding.png", seed=seed)
    return path.name, method


# --------------------------------------------------------------------------------------------
# the command


@keeps_caller_rng  # evaluation draws from torch's generator; the caller's is restored
def evaluate(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "auto",
    bootstrap: int = 200,
    baseline: str | Path | None = None,
    calibrate: bool = False,
    source: ImageSet | str | None = None,
    target: ImageSet | str | None = None,
    embedding_points: int = EMBEDDING_POINTS,
    quiet: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a run directory; writes ``RUN_DIR/report/`` and returns the metrics.json payload."""
    from galmerge.runtime.devices import resolve_device

    code_identity()  # the code this job runs, read as it starts (a commit made meanwhile is not it)
    # numpy numbers from a notebook are the numbers they hold; other types, one line
    bootstrap = plain_number("bootstrap", bootstrap, whole=True)
    embedding_points = plain_number("embedding_points", embedding_points, whole=True)
    seed = plain_number("seed", seed, whole=True)
    run = Path(run_dir)
    if not (run / rundir.CONFIG).is_file():
        raise GalmergeError(
            f"{run} is not a run directory (no {rundir.CONFIG}); pass one from galmerge train"
        )
    if checkpoint not in ("best", "last"):
        raise GalmergeError(f"{named('checkpoint', checkpoint)}: use best or last")
    ckpt = run / f"{checkpoint}.pt"
    if not ckpt.is_file():
        raise GalmergeError(
            f"{ckpt} does not exist; train the run first or use --checkpoint "
            f"{'last' if checkpoint == 'best' else 'best'}"
        )
    if bootstrap < 0:
        raise GalmergeError(f"{named('bootstrap', bootstrap)}: use 0 (no intervals) or a "
                            "positive count")
    if not 0 <= seed < 2**32:  # scikit-learn's random_state (t-SNE, the domain classifier)
        raise GalmergeError(f"{named('seed', seed)}: give a whole number from 0 to 2**32 - 1")
    if embedding_points < 1:
        raise GalmergeError(f"{named('embedding_points', embedding_points)}: use a positive count "
                            f"(default {EMBEDDING_POINTS})")
    dev = resolve_device(device)
    say = _steps(quiet)
    config = rundir.read_config(run)
    summary = _read_json(run / rundir.SUMMARY)
    # the embedding's "before" model, checked before any work
    base = (given_baseline(Path(baseline), config, ckpt) if baseline is not None
            else choose_baseline(run, config))
    rows = rundir.read_metrics(run) if (run / rundir.METRICS).is_file() else []
    loaded = load_model(ckpt, dev)
    target_set = _load_set(target, config, "target", run=(run, "evaluate"))
    sets = {"source": _load_set(source, config, "source", target_set, run=(run, "evaluate")),
            "target": target_set}
    say("the model's outputs on the validation and test splits")  # after every user check
    names = (f"source {source if isinstance(source, str) else config.get('source')}",
             f"target {target if isinstance(target, str) else config.get('target')}")
    domains = _domains(loaded, sets, int(config.get("seed", 0)), dev, names)
    out = run / REPORT_DIR
    out.mkdir(exist_ok=True)

    # temperature scaling: fitted on the source validation split only
    sv = domains["source"].val
    t_ckpt = loaded.temperature
    t_fit = fit_temperature(sv.logits, torch.as_tensor(sv.labels))
    t_used = t_fit if calibrate else t_ckpt
    from galmerge.models.inference import merger_probability

    probs = {n: merger_probability(d.test.logits, t_used) for n, d in domains.items()}
    probs_uncal = {n: merger_probability(d.test.logits, 1.0) for n, d in domains.items()}
    probs_fit = {n: merger_probability(d.test.logits, t_fit) for n, d in domains.items()}
    # importance-weighted temperature (Wang et al. 2020): source validation rows weighted by
    # p_target / p_source of their features, from a domain classifier; no target labels
    t_iw, iw_info = _importance_weighted_temperature(sv, domains["target"].val, seed)
    probs_iw = {n: merger_probability(d.test.logits, t_iw) for n, d in domains.items()}
    calibration = {
        "fitted_on": "source validation split",
        "checkpoint_temperature": t_ckpt,
        "fitted_temperature": t_fit,
        "applied": bool(calibrate),
        "source_val_nll": {
            "T=1": nll(sv.logits, torch.as_tensor(sv.labels), 1.0),
            "fitted": nll(sv.logits, torch.as_tensor(sv.labels), t_fit),
        },
        "ece": {
            f"{n}_test": {
                "T=1": expected_calibration_error(probs_uncal[n], d.test.labels),
                "fitted": expected_calibration_error(probs_fit[n], d.test.labels),
                "importance_weighted": expected_calibration_error(probs_iw[n], d.test.labels),
            }
            for n, d in domains.items()
        },
        "brier": {
            f"{n}_test": {
                "T=1": _brier(probs_uncal[n], d.test.labels),
                "fitted": _brier(probs_fit[n], d.test.labels),
                "importance_weighted": _brier(probs_iw[n], d.test.labels),
            }
            for n, d in domains.items()
        },
        "importance_weighted_temperature": t_iw,
        "importance_weights": iw_info,
    }
    if calibrate:
        _write_temperature(ckpt, t_fit)

    metrics = {
        f"{n}_test": bootstrap_metrics(d.test.labels, probs[n], bootstrap, seed,
                                       BOOTSTRAP_STREAMS[n])
        for n, d in domains.items()
    }
    choices = selection_choices(rows, summary)

    files: dict[str, str] = {}
    labels_probs = {n: (d.test.labels, probs[n]) for n, d in domains.items()}
    say("figures: training curves, ROC, confusion matrices, reliability")
    if rows:
        files["training_curves"] = plots.training_curves(rows, out / "training_curves.png").name
    files["roc"] = plots.roc_curves(labels_probs, out / "roc.png").name
    files["confusion"] = plots.confusion_matrices(labels_probs, out / "confusion.png").name
    files["reliability"] = plots.reliability_diagram(
        {n: (d.test.labels, probs_uncal[n]) for n, d in domains.items()},
        out / "reliability.png",
        calibrated=probs_fit,
    ).name

    models = [(f"after: this run, {config.get('strategy', '?')} ({checkpoint}.pt)", loaded)]
    if base is not None:
        # before (source only) on the left, after (adapted) on the right
        kind = "none, source only" if base.strategy == "none" else base.strategy
        models.insert(0, (f"before: {_short(base.name, 32)}, {kind} ({base.checkpoint.name})",
                          load_model(base.checkpoint, dev)))
    say(f"embedding (t-SNE/UMAP) of {2 * embedding_points} test features per model, "
        f"{len(models)} model(s); the slowest step")
    files["embedding"], method = _embedding(models, domains, out, dev, seed, embedding_points)
    gallery_files, gradcam_facts = _gallery(
        loaded, domains["target"], probs["target"], out, dev, say=say
    )
    files["gallery"] = gallery_files[0]
    if len(gallery_files) > 1:
        files["gradcam"] = gallery_files[1]
    if choices:
        files["selection"] = plots.selection_comparison(rows, choices, out / "selection.png").name

    payload = {
        "run_dir": str(run),
        "checkpoint": checkpoint,
        "epoch": int(read_checkpoint(ckpt).get("epoch", 0)),
        "source": _spec_used(source, config, "source"),  # the data these metrics are on
        "target": _spec_used(target, config, "target"),
        # the content of each file these metrics read (a path names whatever it holds today)
        "source_sha256": sets["source"].meta.get("file_sha256"),
        "target_sha256": sets["target"].meta.get("file_sha256"),
        "strategy": config.get("strategy"),
        "backbone": config.get("backbone"),
        "seed": config.get("seed"),
        "evaluate_seed": int(seed),  # bootstrap, embedding and domain classifier
        **code_identity(),  # galmerge_version, galmerge_commit, galmerge_dirty
        "checkpoint_sha256": sha256_file(ckpt),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "temperature_used": t_used,
        "metrics": metrics,
        "calibration": calibration,
        "selection": choices,
        "baseline": None if base is None else str(base.path),
        # which model the embedding's "before" is, and how it is not this run's source-only
        # counterpart (docs/DESIGN.md, evaluate)
        "baseline_name": None if base is None else base.name,
        "baseline_strategy": None if base is None else base.strategy,
        "baseline_chosen_by": None if base is None else base.chosen_by,
        "baseline_differences": None if base is None else base.differences,
        "embedding_method": method,
        "gradcam": gradcam_facts,
        "files": files,
    }
    say("report.html")
    rundir.write_json(out / "metrics.json", payload)
    write_evaluation_report(out / "report.html", payload, _gradcam_caption(payload["gradcam"]))
    if not quiet:
        _print_summary(payload)
    return rundir._json_safe(payload)


def _spec_used(given: ImageSet | str | None, config: Mapping[str, Any], domain: str) -> Any:
    """The data spec a domain was evaluated on: the one given (`evaluate --source/--target`),
    else the run's."""
    if given is None:
        return config.get(domain)
    return absolute_spec(given) if isinstance(given, str) else f"ImageSet {given.survey}"


def _steps(quiet: bool) -> Any:
    """A printer of what evaluate is doing, one line per step on stderr (stdout keeps the
    tables), with the seconds since the start."""
    import time

    start = time.monotonic()

    def say(what: str) -> None:
        if not quiet:
            print(f"evaluate [{time.monotonic() - start:5.1f} s] {what}", file=sys.stderr,
                  flush=True)

    return say
def _brier(p: np.ndarray, labels: np.ndarray) -> float:
    keep = labels >= 0
    return float(((p[keep] - labels[keep]) ** 2).mean()) if keep.any() else math.nan


def _importance_weighted_temperature(
    sv: SplitData, tv: SplitData, seed: int
) -> tuple[float, dict[str, Any]]:
    """Temperature fitted on the source validation split with density-ratio weights
    p_target(f) / p_source(f) (cross-fitted domain classifier on backbone features,
    `galmerge.scores.selection.density_ratio_weights`); T = 1 with a reason when it cannot be fitted."""
    from galmerge.scores.selection import density_ratio_weights

    finite = bool(torch.isfinite(sv.features).all()) and bool(torch.isfinite(tv.features).all())
    if len(sv.features) < 2 or len(tv.features) < 2 or not finite:
        return 1.0, {"fitted": False, "reason": "too few or non-finite features"}
    try:
        w = density_ratio_weights(sv.features, tv.features, seed)
    except ValueError as exc:  # e.g. fewer rows than folds
        return 1.0, {"fitted": False, "reason": str(exc).splitlines()[0]}
    w = np.clip(w, 0.0, 20.0)  # a few huge ratios would make one image the whole fit
    t = fit_temperature(sv.logits, torch.as_tensor(sv.labels), weights=w)
    ess = float(w.sum() ** 2 / max((w**2).sum(), 1e-300))
    return t, {"fitted": True, "mean": float(w.mean()), "max": float(w.max()),
               "effective_n": ess, "n": int(len(w))}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_temperature(ckpt: Path, temperature: float) -> None:
    """Store the temperature in the checkpoint, and keep what names the checkpoint by its
    SHA-256 in step (the hash covers the temperature; the weights and features do not change):
    the run's shift statistics, which classify and export refuse for another checkpoint, and
    summary.json's ``best_sha256``.

    The three files are written one after the other, so the last two are re-pointed on every
    call, even when the temperature is unchanged: a run killed between the writes is repaired
    by the same command. The checkpoint lists the hashes it had at earlier temperatures
    (``calibrated_from``): only a file naming one of those is re-pointed, never one fitted for
    other weights."""
    from galmerge.config import rundir
    from galmerge.models import shift

    payload = read_checkpoint(ckpt)
    old = payload.get("sha256")
    payload.pop("format", None)
    earlier = [h for h in payload.get("calibrated_from") or [] if isinstance(h, str)]
    if old and payload.get("temperature") != float(temperature) and old not in earlier:
        payload["calibrated_from"] = earlier = [*earlier, old]
    payload["temperature"] = float(temperature)
    new = save_checkpoint(ckpt, payload)
    ours = {*earlier, old, new} - {None}  # this checkpoint's weights, at any temperature
    stats_file = shift.stats_path(ckpt)
    stats_sha = None  # the statistics' file hash, when they are fitted for best.pt as it is now
    if stats_file.is_file():
        try:
            data = stats_file.read_bytes()
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("meta")))
        except Exception:  # unreadable: classify says so itself, one line, as before
            meta = None
        if isinstance(meta, dict) and meta.get("checkpoint_sha256") == new:
            stats_sha = hashlib.sha256(data).hexdigest()
        elif isinstance(meta, dict) and meta.get("checkpoint_sha256") in ours:
            stats_sha = shift.save(stats_file, arrays, {**meta, "checkpoint_sha256": new})
    summary_file = ckpt.parent / rundir.SUMMARY
    if ckpt.name == rundir.BEST and summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except (OSError, ValueError):
            return
        if isinstance(summary, dict) and summary.get("best_sha256") in ours:
            fresh = {**summary, "best_sha256": new}
            if stats_sha is not None and shift.SUMMARY_KEY in summary:
                fresh[shift.SUMMARY_KEY] = stats_sha
            if fresh != summary:
                rundir.write_json(summary_file, fresh)


def _gradcam_caption(facts: dict[str, Any] | None) -> str:
    if not facts:
        return "No Grad-CAM."
    return (
        "Where the last convolution's activations raise the merger-minus-non-merger logit, on "
        "one scale for all maps (a map without contours holds little evidence). Coarse (the "
        "last convolution's resolution); it says where, not why. "
        + _gradcam_verdict(facts) + "."
    )


def _print_summary(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout)
    t = Table(
        title=f"{payload['strategy']} / {payload['backbone']}: test metrics "
        f"({payload['checkpoint']}.pt, 68% bootstrap intervals)",
        caption=escape(f"source: {payload.get('source')}   target: {payload.get('target')}"),
    )
    t.add_column("metric")
    for split in payload["metrics"]:
        t.add_column(split, justify="right")
    for name in METRIC_NAMES:
        cells = []
        for m in payload["metrics"].values():
            cell = _num(m["value"][name])
            iv = m.get("interval_68", {}).get(name)
            if iv and all(math.isfinite(v) for v in iv):
                cell += f" [{iv[0]:.3f}, {iv[1]:.3f}]"
            cells.append(cell)
        t.add_row(name, *cells)
    console.print(t)
    if payload["selection"]:
        s = Table(title="model selection: epoch picked and target val accuracy there")
        for col in ("score", "epoch", "target val acc", "gap to oracle"):
            s.add_column(col, justify="left" if col == "score" else "right")
        for c in payload["selection"]:
            s.add_row(
                escape(str(c["label"])),
                str(c["epoch"]),
                _num(c["target_val_accuracy"]),
                _num(c["gap_to_oracle"]),
            )
        console.print(s)
    cal = payload["calibration"]
    console.print(
        f"temperature fitted on source val: {cal['fitted_temperature']:.3f} "
        f"({'applied' if cal['applied'] else 'not applied; --calibrate writes it'})"
    )
    gc = payload.get("gradcam")
    if gc:
        console.print(f"Grad-CAM {_gradcam_verdict(gc)}", soft_wrap=True, markup=False,
                      highlight=False)
    from galmerge.runtime.progress import print_path

    print_path(console, "report:", Path(payload["run_dir"]) / REPORT_DIR / "report.html")


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3f}"
