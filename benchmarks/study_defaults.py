"""Choose robust DA defaults on the DEV pairs of bench_tune's shifted-pair family.

Runs named configurations (strategy + options + domain_batchnorm) on dev pairs and seeds, two
(``--jobs``) single-threaded training processes at a time, and writes one JSON line per run
(``--out``, resumable: finished runs are skipped) plus a markdown table of target and source
test accuracy per configuration, and its gain over source-only ``none`` on the same pair and
seed. Only DEV pairs are accepted: this script is for choosing, ``bench_tune.py`` reports.

    python benchmarks/study_defaults.py --grid phase1 --pairs 0 2 4 6 --seeds 10 --n 2000 \\
        --epochs 15 --out benchmarks/results/study_defaults_dev.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_tune import DEV_PAIRS, PAIRS, pair_specs  # noqa: E402
from tables import mean_sd  # noqa: E402

# name -> train() keyword arguments (strategy, strategy_options, sets)
# stop 31's observed source (grid observe31): the settings of every observed run
OBSERVE31 = ["observe.psf_fwhm=[1.0, 2.0]", "observe.sky_sigma=auto"]
# ADDA's layout as stop 28 spelled it (grids adda28, relax32): the target's own encoder, started
# from the pair's and seed's `none` run, aligned one-sided
ADDA28 = ["target_encoder=separate", "dann.align=target", "init_from={none}"]
# the target's own encoder started from the pair's and seed's `none` run (the layout of the
# separate-encoder defaults since stops 28/29)
OWN_ENCODER = ["target_encoder=separate", "init_from={none}"]
# the target's field sources and sky noise added to the source (galmerge.data.observe)
FIELD35 = ['observe.field="target"', "observe.sky_sigma=auto"]
# `none` and every separate-encoder default as it ships (grids fresh30, small33)
SEPARATE_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {"strategy": "none"},
    "adda": {"strategy": "dann", "sets": OWN_ENCODER},
    **{f"{s} separate": {"strategy": s, "sets": OWN_ENCODER} for s in ("mmd", "coral", "entropy")},
}

GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    # joint BatchNorm (the default) for every strategy, and the scale-free / ramped variants
    "joint": {
        "none": {"strategy": "none"},
        "adabn joint": {"strategy": "adabn"},
        "mmd joint": {"strategy": "mmd"},
        "mmd mean+warmup joint": {
            "strategy": "mmd", "strategy_options": {"mmd": {"kernel": "mean", "warmup": 10.0}},
        },
        "coral joint": {"strategy": "coral"},
        "dann joint": {"strategy": "dann"},
        "fisher joint": {"strategy": "fisher"},
        "entropy joint": {"strategy": "entropy"},
    },
    # candidates for the strategies whose old defaults lost to none on the dev pairs
    "fix": {
        "fisher mean+warmup joint": {
            "strategy": "fisher",
            "strategy_options": {"fisher": {"reduction": "mean", "warmup": 10.0}},
        },
        "entropy diversity1+warmup joint": {
            "strategy": "entropy",
            "strategy_options": {"entropy": {"diversity": 1.0, "warmup": 10.0}},
        },
    },
    # galmerge's defaults as they are now (after the choice), for held-out reporting
    "defaults": {
        "none": {"strategy": "none"},
        **{s: {"strategy": s} for s in ("entropy", "fisher", "dann", "coral", "adabn")},
    },
    # per-domain BatchNorm statistics (DSBN, `domain_batchnorm = "separate"`) for every
    # strategy that forwards the target, beside the joint default of stop 22
    "dsbn": {
        "none": {"strategy": "none"},
        "mmd joint": {"strategy": "mmd", "sets": ["domain_batchnorm=joint"]},
        **{
            f"{s} separate": {"strategy": s, "sets": ["domain_batchnorm=separate"]}
            for s in ("adabn", "mmd", "coral", "dann")
        },
    },
    # class-weighted MMD (`mmd.class_weights = "estimated"`) for a target merger fraction
    # unlike the source's, with both BatchNorm layouts
    "prior": {
        "none": {"strategy": "none"},
        **{
            f"mmd{' class-weighted' if cw == 'estimated' else ''} {bn}": {
                "strategy": "mmd",
                "sets": [f"domain_batchnorm={bn}", f"mmd.class_weights={cw}"],
            }
            for bn in ("joint", "separate") for cw in ("off", "estimated")
        },
    },
    # galmerge's defaults after stop 23 (domain_batchnorm separate), for held-out reporting
    "defaults23": {
        "none": {"strategy": "none"},
        **{s: {"strategy": s} for s in ("mmd", "dann", "coral", "adabn", "entropy", "fisher")},
        "mmd joint": {"strategy": "mmd", "sets": ["domain_batchnorm=joint"]},
        "mmd given-fraction separate": {
            "strategy": "mmd", "sets": ["mmd.class_weights=given", "mmd.target_fraction=0.2"]},
    },
    # lower term weights with per-domain BatchNorm: can source accuracy stay within 3 points?
    "weights23": {
        "none": {"strategy": "none"},
        **{f"{s} weight {w}": {"strategy": s, "sets": [f"{s}.weight={w}"]}
           for s in ("dann", "mmd") for w in (0.3,)},
    },
    # stop 24: lower dann / mmd weights and a slower GRL ramp, for source within 3 points
    "weights24": {
        "none": {"strategy": "none"},
        **{f"dann weight {w}": {"strategy": "dann", "sets": [f"dann.weight={w}"]}
           for w in (0.05, 0.1, 0.15, 0.2)},
        "dann max_coeff 0.5": {"strategy": "dann", "sets": ["dann.max_coeff=0.5"]},
        "dann gamma 5": {"strategy": "dann", "sets": ["dann.gamma=5"]},
        "mmd weight 0.6": {"strategy": "mmd", "sets": ["mmd.weight=0.6"]},
    },
    # stop 24: fisher alone trains source only (needs_target=False); was adabn + fisher
    "fisher24": {
        "none": {"strategy": "none"},
        "fisher source-only": {"strategy": "fisher"},
    },
    # stop 24: the adversary's form and size, for source accuracy within 3 points
    "dann24": {
        "none": {"strategy": "none"},
        "dann inverted": {"strategy": "dann", "sets": ["dann.feature_loss=inverted"]},
        "dann hidden 256": {"strategy": "dann", "sets": ["dann.hidden=256"]},
    },
    # stop 24: does a source-side term (fisher) keep dann's source accuracy?
    "combo24": {
        "none": {"strategy": "none"},
        "dann+fisher": {"strategy": "dann+fisher"},
        "dann+fisher+entropy": {"strategy": "dann+fisher+entropy"},
    },
    # stop 25: batch spectral penalization beside dann, for source accuracy within 3 points
    "bsp25": {
        "none": {"strategy": "none"},
        **{f"dann+bsp weight {w}": {"strategy": "dann+bsp", "sets": [f"bsp.weight={w}"]}
           for w in (0.3, 1.0, 3.0)},
    },
    # stop 26: label-shift-aware alignment (IWDAN): the discriminator's source side weighted by
    # the estimated target class shares (galmerge.losses.label_shift)
    "iw26": {
        "none": {"strategy": "none"},
        "dann": {"strategy": "dann"},
        "dann bbse": {"strategy": "dann", "sets": ["dann.class_weights=bbse"]},
        "dann estimated": {"strategy": "dann", "sets": ["dann.class_weights=estimated"]},
    },
    # stop 26: dann's weight on more dev seeds (11, 12 beside stop 24's seed 10). Rule fixed
    # before the runs: the weight with the largest mean target gain whose mean source change is
    # >= -2.5 points (0.5 of margin under the 3) with no dev run below none; none
    # qualifying keeps 0.3. (Stop 25's held-out ladder, +18.8 / -2.3 at 0.15, was known.)
    "seeds26": {
        "none": {"strategy": "none"},
        **{f"dann weight {w}": {"strategy": "dann", "sets": [f"dann.weight={w}"]}
           for w in (0.3, 0.15, 0.1)},
    },
    # stop 27: domain-specific BatchNorm affine parameters (DSBN's full form) for dann's source
    # cost. Rule fixed before the runs (dev pairs 0, 2, 4, 6 x seeds 11, 12; none and dann 0.3
    # reused from seeds26): a candidate qualifies with mean source change >= -2.5 points and no
    # dev run below none; the qualifying one with the largest mean target gain becomes the
    # default; none qualifying keeps "separate" and weight 0.3.
    "dsbn27": {
        "none": {"strategy": "none"},
        "dann weight 0.3": {"strategy": "dann", "sets": ["dann.weight=0.3"]},
        "dann specific": {"strategy": "dann", "sets": ["domain_batchnorm=specific"]},
        "dann specific weight 0.15": {
            "strategy": "dann", "sets": ["domain_batchnorm=specific", "dann.weight=0.15"]},
    },
    # stop 27: conditional adversarial alignment (CDAN, CDAN+E) for dann's source cost. Same
    # rule as dsbn27, fixed before the runs (dev pairs 0, 2, 4, 6 x seeds 11, 12).
    "cdan27": {
        "none": {"strategy": "none"},
        "dann weight 0.3": {"strategy": "dann", "sets": ["dann.weight=0.3"]},
        "dann cdan": {"strategy": "dann", "sets": ["dann.condition=predictions"]},
        "dann cdan+e": {"strategy": "dann", "sets": ["dann.condition=predictions+entropy"]},
        # added after the first two cdan runs (-5.0 and -4.5 source points), before the rest
        "dann cdan weight 0.15": {
            "strategy": "dann", "sets": ["dann.condition=predictions", "dann.weight=0.15"]},
    },
    # stop 27: one-sided alignment (the adversary moves the target features only, as ADDA),
    # alone and with per-domain affine parameters. Same rule as dsbn27, fixed before the runs.
    "align27": {
        "none": {"strategy": "none"},
        "dann weight 0.3": {"strategy": "dann", "sets": ["dann.weight=0.3"]},
        "dann align target": {"strategy": "dann", "sets": ["dann.align=target"]},
        "dann align target specific": {
            "strategy": "dann", "sets": ["dann.align=target", "domain_batchnorm=specific"]},
    },
    # stop 28: ADDA's layout for dann's source cost: the target gets its own encoder (every
    # backbone parameter), started from the pair's and seed's `none` run ("{none}" below), and
    # only the target's is aligned; the source path is a source-only run trained on. Same rule
    # as dsbn27, fixed before the runs (dev pairs 0, 2, 4, 6 x seeds 11, 12).
    "adda28": {
        "none": {"strategy": "none"},
        "dann weight 0.3": {"strategy": "dann", "sets": ["dann.weight=0.3"]},
        "adda": {"strategy": "dann", "sets": ADDA28},
        "adda weight 1": {"strategy": "dann", "sets": [*ADDA28, "dann.weight=1.0"]},
    },
    # stop 29: ADDA's layout for mmd and coral, whose defaults were below none in 2-3 of 12
    # held-out runs (all on pair 5, 30% mergers; study_defaults23_heldout.md): the target gets
    # its own encoder, started from the pair's and seed's `none` run, and the term moves only
    # the target's features (align auto -> target). Same rule as dsbn27, fixed before the runs
    # (dev pairs 0, 2, 4, 6 x seeds 11, 12; none reused from seeds26): a candidate qualifies
    # with mean source change >= -2.5 points and no dev run below none; a qualifying strategy
    # declares target_encoder="separate" (so "auto" gives it this layout); else it keeps its
    # shared encoder.
    "onesided29": {
        "none": {"strategy": "none"},
        **{f"{s} separate": {"strategy": s, "sets": ["target_encoder=separate",
                                                    "init_from={none}"]}
           for s in ("mmd", "coral")},
    },
    # stop 29: entropy (information maximisation) with the target's own encoder, its logits
    # read through the source path's head, which the term no longer trains: SHOT's frozen
    # hypothesis (Liang et al. 2020). Same rule as onesided29, fixed before the runs.
    "shot29": {
        "none": {"strategy": "none"},
        "entropy separate": {"strategy": "entropy", "sets": ["target_encoder=separate",
                                                            "init_from={none}"]},
    },
    # stop 30: the built-in strategies whose defaults were never measured on the fresh
    # held-out renders of stop 28/29 (data seeds 300+), with the same `none` runs: `bsp` alone
    # (never measured alone before), `adabn` and `fisher` (earlier renders only). Reporting only;
    # nothing is chosen from these runs.
    "gaps30": {
        "none": {"strategy": "none"},
        "bsp": {"strategy": "bsp"},
        "adabn": {"strategy": "adabn"},
        # added while the first gaps30 runs ran (stop 24 measured it on older renders only)
        "fisher": {"strategy": "fisher"},
    },
    # stop 30: entropy's diversity term (information maximisation) pulls the mean target
    # prediction to 50/50; on held-out pair 5 (30% mergers) the default fell 3.0 and 10.2 points
    # below none. A weaker pull, chosen on the dev pairs with the prior-shift dev pair 8 (20%
    # mergers) this time: pairs 0, 2, 4, 6, 8 x seeds 11, 12 (none and "entropy separate" on
    # pairs 0-6 reused from seeds26). Rule, fixed before the runs: a candidate qualifies with a
    # mean source change >= -2.5 points and no dev run below none; the qualifying one with the
    # largest mean target gain becomes the default (the current default, diversity 1, competes
    # too); none qualifying keeps diversity 1.
    "prior30": {
        "none": {"strategy": "none"},
        "entropy separate": {"strategy": "entropy", "sets": ["target_encoder=separate",
                                                            "init_from={none}"]},
        "entropy separate diversity 0.5": {
            "strategy": "entropy", "sets": ["target_encoder=separate", "init_from={none}",
                                            "entropy.diversity=0.5"]},
    },
    # stop 30: the separate-encoder defaults (dann, mmd, coral, entropy) on fresh renders of
    # the dev pair types (data seeds 300 + 2 * pair, never used for choosing; training seed 0),
    # so that issue 14's rule for defaults is measured on 8 pairs (these 4 and the 4 held-out
    # pairs of study_adda28/onesided29/shot29_heldout). Reporting only: nothing is chosen
    # from these runs. "{none}" is the stage a default run trains first (same settings).
    "fresh30": SEPARATE_DEFAULTS,
    # stop 31: the two shared-encoder defaults not in fresh30 (bsp, adabn; gaps30 measured them
    # on the held-out pairs only) on the same fresh dev-type renders, seeds 0-2, so that every
    # default that reads the target has 8 pairs x 3 seeds. Reporting only; nothing is chosen.
    "fresh31": {
        "none": {"strategy": "none"},
        "bsp": {"strategy": "bsp"},
        "adabn": {"strategy": "adabn"},
    },
    # stop 31: the source observed as the target survey would see it (galmerge.data.observe):
    # Gaussian PSF of 1.0-2.0 arcsec FWHM (SDSS's r-band seeing range, from the survey's
    # documentation, fixed before any run; the renderer's sdss preset draws a Moffat of
    # 1.1-1.8", held-out pair 1 1.65-2.7") and the sky noise the source lacks, measured on the
    # unlabelled target ("auto"). Reporting only: nothing is chosen from these runs.
    "observe31": {
        "none": {"strategy": "none"},
        "none observe": {"strategy": "none", "sets": OBSERVE31},
        # added after the first "none observe" runs (pairs 5 and 1: higher target AUC, but
        # most target galaxies called mergers): does ADDA (dann's default) gain from starting
        # at an observed source-only stage? It trains that stage itself (RUN_DIR/source_only)
        "adda observe": {"strategy": "dann", "sets": ["target_encoder=separate", *OBSERVE31]},
    },
    # stop 32: asymmetrically relaxed alignment (Wu et al. 2019; `dann.relax`) for the prior
    # shift that makes every balanced-alignment default lose on held-out pair 5. beta = 1 is not
    # tuned: with a balanced source it is the smallest relaxation that admits every target
    # merger fraction (1 / min class share - 1). Dev pairs 8 (20% mergers; first), 0, 2, 4, 6 x
    # seeds 11, 12 (none and adda on pairs 0-6 reused from seeds26). Rule, fixed before the
    # runs (as prior30's): a candidate qualifies with a mean source change >= -2.5 points and no
    # dev run below none; of the qualifying ones (adda = today's dann default competes) the one
    # with the larger mean target gain becomes dann's default; none qualifying keeps relax 0.
    "relax32": {
        "none": {"strategy": "none"},
        "adda": {"strategy": "dann", "sets": ADDA28},
        "adda relax 1": {"strategy": "dann", "sets": [*ADDA28, "dann.relax=1.0"]},
    },
    # stop 32: the dann and mmd defaults after select_by "auto" (im with the target's own
    # encoder; chosen on dev runs, selection_replay32_dev.md), on the held-out renders of
    # study_adda28/onesided29_heldout with their `none` runs. Reporting only; nothing is chosen.
    "select32": {
        "none": {"strategy": "none"},
        "adda select im": {"strategy": "dann", "sets": [
            "target_encoder=separate", "init_from={none}", "select_by=im"]},
        "mmd separate select im": {"strategy": "mmd", "sets": [
            "target_encoder=separate", "init_from={none}", "select_by=im"]},
        # added after the first two finished (the CPU was free before the stop's end)
        "coral separate select im": {"strategy": "coral", "sets": [
            "target_encoder=separate", "init_from={none}", "select_by=im"]},
    },
    # stop 33: the separate-encoder defaults (as fresh30) at 1,000 images per domain and 10
    # epochs on the dev pairs 0, 2, 4, 6, 8 x seeds 11, 12 (run with --n 1000 --epochs 10), for
    # choosing select_by "auto"'s rule again on dev runs that include small training sets
    # (benchmarks/selection_replay.py's docstring holds the rule, written before these runs).
    "small33": SEPARATE_DEFAULTS,
    # stop 33: ADDA as Tzeng et al. 2017 wrote it, the source path (source encoder, its
    # BatchNorm statistics, the head) frozen at the source-only start (`source_path=frozen`), so
    # only the target's encoder learns and source accuracy is the start's by construction.
    # Why: at 1,000 images/10 epochs the `train` default's source path lost 2.2 test points
    # against `none` on held-out pairs (study_small33_heldout.md) while it went on training.
    # Rule, fixed before the runs: on the dev pairs 0, 2, 4, 6, 8 x seeds 11, 12 at BOTH sizes
    # (1,000 images/10 epochs, `adda` and `none` reused from small33; and 2,000/15), frozen
    # qualifies as dann's default if its mean target gain over `none` is at least the `train`
    # default's (`adda`) and it has no more runs below `none`, at each size. This stop runs
    # 1,000/10 first; without 2,000/15 dev runs the default stays `train`.
    "frozen33": {
        "none": {"strategy": "none"},
        "adda": {"strategy": "dann", "sets": OWN_ENCODER},
        "adda frozen": {"strategy": "dann", "sets": [*OWN_ENCODER, "source_path=frozen"]},
    },
    # stop 34: the `entropy` default as it ships (select_by "auto" -> im since stop 32) on the
    # held-out renders at 2,000 images/15 epochs, which stop 32 measured for dann, mmd and coral
    # only (study_select32_heldout.md). `none` and "{none}" are bench_tune's `none` runs of
    # tune_adda34_heldout (same specs, seeds and settings; work dir shared). Reporting only.
    "entropy34": {
        "none": {"strategy": "none"},
        "entropy separate": SEPARATE_DEFAULTS["entropy separate"],
    },
    # stop 35: RealSim-style field sources (`observe.field = "target"`: stars and background
    # galaxies cut from the unlabelled target's outer ring, pasted into the source, with the
    # sky noise the source lacks). Why: benchmarks/results/error_by_kind35_*.md shows adapted
    # models call 3-4x more target non-mergers mergers than source ones, and about half of that
    # goes when the target is rendered without its field objects. "adda field" starts from the
    # pair's "none field" run, as the default's own source-only stage would be trained. Dev
    # pairs 0, 2, 4, 6, 8 x seeds 11, 12 (`none` and `adda` reused from the f2000 runs of stop
    # 33). Rule, fixed before the runs: nothing becomes a default unless "adda field" has a
    # mean target gain over `none` at least adda's, no more dev runs below `none` and a mean
    # source change >= -2.5 points; otherwise it stays an option, reported as measured.
    "field35": {
        "none": {"strategy": "none"},
        "adda": {"strategy": "dann", "sets": OWN_ENCODER},
        "none field": {"strategy": "none", "sets": FIELD35},
        "adda field": {"strategy": "dann", "sets": ["target_encoder=separate",
                                                    "init_from={none field}", *FIELD35]},
    },
    # stop 36: AdaBN as Li et al. 2016 wrote it ("adabn classic": the source-only model, the
    # target's own encoder started from it and never trained, only its BatchNorm running
    # statistics re-estimated on the target; source_path=frozen) against the shipped `adabn`
    # (one shared encoder trained with per-domain statistics), which fell below `none` in 2 of 12
    # held-out runs (study_gaps35_heldout.md). Dev pairs 0, 2, 4, 6, 8 x seeds 11, 12 at 2,000
    # images/15 epochs, `none` reused from the f2000 runs. Rule, fixed before the runs: "adabn
    # classic" becomes adabn's default only if it has fewer dev runs below `none` than "adabn"
    # and a mean target gain over `none` at least adabn's minus 2 points (its source change is
    # 0 by construction); then it is measured once on the held-out pairs. Otherwise it stays an
    # option (`--set target_encoder=separate --set source_path=frozen`), reported as measured.
    "adabn36": {
        "none": {"strategy": "none"},
        "adabn": {"strategy": "adabn"},
        "adabn classic": {"strategy": "adabn", "sets": [*OWN_ENCODER, "source_path=frozen"]},
    },
    # stop 36: the two combinations galmerge points users to (`dann+fisher`, DeepMerge II's
    # and the hint of `train --strategy fisher`; `mmd+fisher+entropy`, the issue-14 example
    # that lost to `none` with the old defaults) as they ship today, with no preset: the target's
    # own encoder (every strategy in them that reads the target asks for it), each term's
    # default weight, best.pt by `im`. Held-out renders at 2,000 images/15 epochs, `none` and
    # "{none}" from the tune_adda34_heldout runs as in entropy34. Reporting only.
    "combos36": {
        "none": {"strategy": "none"},
        "dann+fisher": {"strategy": "dann+fisher", "sets": OWN_ENCODER},
        "mmd+fisher+entropy": {"strategy": "mmd+fisher+entropy", "sets": OWN_ENCODER},
    },
    # stop 37: the `mmd` and `coral` defaults as they ship (own target encoder, best.pt by im)
    # on the held-out renders at 2,000 images/15 epochs with tune_adda34_heldout's `none` runs
    # (work dir shared), so that benchmarks/prior_rule.py can rescore every adapted default on
    # the same runs (study_select32_heldout measured them on other `none` runs, now gone from
    # this host). Reporting only; nothing is chosen.
    "mmdcoral37": {
        "none": {"strategy": "none"},
        "mmd separate": SEPARATE_DEFAULTS["mmd separate"],
        "coral separate": SEPARATE_DEFAULTS["coral separate"],
    },
    "phase1": {
        "none": {"strategy": "none"},
        **{
            f"{s} {bn}": {"strategy": s, "sets": [f"domain_batchnorm={bn}"]}
            for s in ("adabn", "mmd", "coral", "dann", "fisher", "entropy")
            for bn in ("joint", "separate")
        },
        "mmd mean+warmup joint": {
            "strategy": "mmd", "strategy_options": {"mmd": {"kernel": "mean", "warmup": 10.0}},
        },
        "mmd mean+warmup separate": {
            "strategy": "mmd", "strategy_options": {"mmd": {"kernel": "mean", "warmup": 10.0}},
            "sets": ["domain_batchnorm=separate"],
        },
    },
}

CHILD = r"""
import json, sys, time
import galmerge
kw = json.loads(sys.argv[1])
t0 = time.time()
r = galmerge.train(quiet=True, **kw)
m = r["metrics"]
print(json.dumps({"seconds": round(time.time() - t0, 1),
                  "source": m["source_test"]["accuracy"], "target": m["target_test"]["accuracy"],
                  "target_auc": m["target_test"]["auc"],
                  "source_val": m.get("source_val", {}).get("accuracy")}))
"""


def run_dir(work: Path, name: str, pair: int, seed: int) -> Path:
    slug = name.replace(" ", "_").replace("+", "p").replace("=", "")
    return work / f"pair{pair}-seed{seed}" / slug


def add_auc(records: list[dict[str, Any]], work: Path) -> None:
    """Target test AUC (threshold-free: a model that calls every target image a non-merger has
    AUC ~0.5 whatever its accuracy on a 70/30 target) from each run's summary.json."""
    for r in records:
        if "target" in r and "target_auc" not in r:
            summary = run_dir(work, r["name"], r["pair"], r["seed"]) / "summary.json"
            if summary.is_file():
                r["target_auc"] = json.loads(summary.read_text())["metrics"]["target_test"]["auc"]


def run_one(work: Path, name: str, pair: int, seed: int, args: argparse.Namespace,
            kwargs: dict[str, Any]) -> dict[str, Any]:
    source, target = pair_specs(pair, args.n, args.data_seeds)
    sets = list(kwargs.get("sets", []))
    if not any(s.startswith("target_encoder=") for s in sets):
        # every entry that does not say otherwise was trained with one shared encoder (dann's
        # default before stop 28): its committed rows stay reproducible
        sets.append("target_encoder=shared")
    # "{NAME}": that configuration's best.pt for the same pair and seed ("{none}": ADDA's start)
    starts = {m.group(0): run_dir(work, m.group(1), pair, seed) / "best.pt"
              for s in sets for m in re.finditer(r"\{([^{}]+)\}", s)}
    for start in starts.values():
        if not start.is_file():
            return {"name": name, "pair": pair, "seed": seed, "n": args.n,
                    "epochs": args.epochs, "error": f"{start} missing: run its configuration first"}

    def fill(setting: str) -> str:
        for key, start in starts.items():
            setting = setting.replace(key, str(start))
        return setting

    kwargs = dict(kwargs, sets=[fill(s) for s in sets])
    kw = dict(kwargs, source=source, target=target, seed=seed, epochs=args.epochs,
              batch_size=args.batch_size, device="cpu", run_dir=str(run_dir(work, name, pair, seed)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = Path(kw["run_dir"]) / "summary.json"
    rec0: dict[str, Any] = {"name": name, "pair": pair, "seed": seed, "n": args.n,
                            "epochs": args.epochs, "kwargs": kwargs, "source_spec": source,
                            "target_spec": target}
    if done.is_file():  # the same run finished before (e.g. bench_tune's none): reuse it
        m = json.loads(done.read_text())["metrics"]
        return {**rec0, "reused": str(done), "source": m["source_test"]["accuracy"],
                "target": m["target_test"]["accuracy"], "env": run_env(Path(kw["run_dir"]))}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True,
                          text=True, env=env)
    rec: dict[str, Any] = {**rec0,
                           "load_average": os.getloadavg()[0]}
    try:
        rec.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        rec["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    rec["env"] = run_env(Path(kw["run_dir"]))
    return rec


def run_env(run: Path) -> dict[str, Any]:
    """What a bit-for-bit rerun must match, from the run's env.json: the commit, torch, the
    CPU model and SIMD level, the thread count (the same config and seed on another kind of CPU
    rounds some sums differently and trains another model)."""
    try:
        env = json.loads((run / "env.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {"git_commit": env.get("git_commit"), "torch": env.get("torch"),
            "cpu": env.get("cpu"), "cpu_threads": env.get("cpu_threads")}


def cpu_note(records: list[dict[str, Any]]) -> str:
    """One line naming the CPU(s) and commit(s) the records ran on (runs before stop 35 carry
    none)."""
    cpus = sorted({f"{r['env']['cpu'].get('model', '?')} ({r['env']['cpu'].get('torch_cpu_capability', '?')})"
                   for r in records if (r.get("env") or {}).get("cpu")})
    commits = sorted({r["env"]["git_commit"][:7] for r in records
                      if (r.get("env") or {}).get("git_commit")})
    if not cpus:
        return "CPU of the runs: not recorded (records before stop 35)."
    return (f"CPU of the runs: {', '.join(cpus)}; commits: {', '.join(commits) or '?'}. The same "
            "config and seed on another kind of CPU trains another model (rounding).")


def table(records: list[dict[str, Any]]) -> list[str]:
    none = {(r["pair"], r["seed"]): r for r in records if r["name"] == "none" and "target" in r}
    names = list(dict.fromkeys(r["name"] for r in records))
    lines = ["| configuration | runs | target | source | target gain vs none | source change "
             "vs none | worst target gain | runs below none | target AUC |", "| --- " * 9 + "|"]
    for name in names:
        rs = [r for r in records if r["name"] == name and "target" in r]
        if not rs:
            continue
        gains = [100 * (r["target"] - none[(r["pair"], r["seed"])]["target"]) for r in rs
                 if (r["pair"], r["seed"]) in none]
        sgains = [100 * (r["source"] - none[(r["pair"], r["seed"])]["source"]) for r in rs
                  if (r["pair"], r["seed"]) in none]

        lines.append(
            f"| {name} | {len(rs)} | {mean_sd([r['target'] for r in rs])} | "
            f"{mean_sd([r['source'] for r in rs])} | {mean_sd(gains, 1, signed=True)} | "
            f"{mean_sd(sgains, 1, signed=True)} | "
            f"{min(gains):+.1f} | {sum(g < 0 for g in gains)} | "
            f"{mean_sd([r['target_auc'] for r in rs if r.get('target_auc') is not None])} |"
            if gains else f"| {name} | -")
    return lines


def per_run(records: list[dict[str, Any]]) -> list[str]:
    """Target / source accuracy (target AUC) of every run, a row per pair and seed."""
    names = list(dict.fromkeys(r["name"] for r in records))
    keys = sorted({(r["pair"], r["seed"]) for r in records})
    got = {(r["name"], r["pair"], r["seed"]): r for r in records if "target" in r}
    lines = ["| pair | seed | " + " | ".join(names) + " |", "| --- " * (len(names) + 2) + "|"]
    for pair, seed in keys:
        cells = []
        for name in names:
            r = got.get((name, pair, seed))
            auc = r.get("target_auc") if r else None
            cells.append("-" if r is None else f"{r['target']:.3f} / {r['source']:.3f}"
                         + (f" ({auc:.2f})" if auc is not None else ""))
        lines.append(f"| {pair} | {seed} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="phase1", choices=sorted(GRIDS))
    ap.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    ap.add_argument("--pairs", type=int, nargs="+", default=list(DEV_PAIRS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[10])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work-dir", default="study_defaults_runs")
    ap.add_argument("--out", default=str(HERE / "results" / "study_defaults_dev.jsonl"))
    ap.add_argument("--held-out", action="store_true",
                    help="report on held-out pairs (after the defaults were chosen)")
    ap.add_argument("--data-seeds", type=int, default=None, metavar="BASE",
                    help="render the pairs with data seeds BASE + 2 * pair (default: 100 dev, "
                    "200 held-out); 300: a held-out set never rendered before stop 26")
    ap.add_argument("--report-only", action="store_true",
                    help="write the markdown from --out's records without running anything")
    args = ap.parse_args()
    bad = [p for p in args.pairs if p not in DEV_PAIRS]
    if args.held_out:
        bad = [p for p in args.pairs if p in DEV_PAIRS]
    if bad and args.held_out:
        ap.error(f"pairs {bad} were used for choosing; report on held-out pairs")
    if bad and not args.held_out:
        ap.error(f"pairs {bad} are held out; choose on {list(DEV_PAIRS)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = []
    if out.is_file():
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    have = {(r["name"], r["pair"], r["seed"], r["n"], r["epochs"]) for r in done
            if "target" in r}
    grid = GRIDS[args.grid]
    names = args.only if args.only else list(grid)
    jobs = [(name, p, s) for p in args.pairs for s in args.seeds for name in names
            if (name, p, s, args.n, args.epochs) not in have and not args.report_only]
    work = Path(args.work_dir)
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, work, name, p, s, args, grid[name])
                   for name, p, s in jobs]
        for fut in futures:
            rec = fut.result()
            with out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            done.append(rec)
            print(f"[{time.time() - t0:6.0f}s] {rec['name']} pair {rec['pair']} seed "
                  f"{rec['seed']}: target {rec.get('target')} source {rec.get('source')} "
                  f"{rec.get('error', '')}", flush=True)
    sel = [r for r in done if r["n"] == args.n and r["epochs"] == args.epochs
           and r["pair"] in args.pairs]
    add_auc(sel, work)
    md = out.with_suffix(".md")
    md.write_text("\n".join([
        f"# Defaults study on {'HELD-OUT' if args.held_out else 'dev'} pairs {sorted({r['pair'] for r in sel})} "
        f"({', '.join(PAIRS[p][2] for p in sorted({r['pair'] for r in sel}))})", "",
        f"n={args.n} images per domain, {args.epochs} epochs, batch {args.batch_size}, "
        f"seeds {sorted({r['seed'] for r in sel})}"
        + (f", data seeds {args.data_seeds} + 2 * pair" if args.data_seeds is not None else "")
        + "; test accuracy; gains in points vs source-only "
        "none on the same pair and seed. "
        + ("Held-out pairs: reporting only, nothing was chosen on them." if args.held_out
           else "Dev pairs only (choosing); held-out pairs are reported separately."), "", *table(sel), "",
        "Per run: target / source test accuracy (target test AUC):", "", *per_run(sel), "",
        f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs (shared machine).", "", cpu_note(sel)]) + "\n")


if __name__ == "__main__":
    main()
