"""Was the model adapted to a target during training, and which way does that bias a fraction?

The corrected estimators (acc, em, bbse) assume the source's error rates hold on the survey.
A model trained with a strategy that reads target images (mmd, dann, coral, adabn, entropy, a
plugin's) was fitted to make the target's features or predictions look like the source's, and
the source's classes come in the source's proportions. When the target's merger fraction is
far from the source's, that alignment moves target non-mergers toward the merger side (or the
reverse), and every estimator inherits the pull: on renderer pairs with 5% and 20% mergers in
the target and a balanced source, dann models gave estimates +0.18 to +0.31 too high, with 95%
intervals that missed the truth (``benchmarks/results/fraction_sim_real_dann.md``); the
label-shift check does not see it. There is no label-free correction for it yet, so the check
says so and, for the aligning strategies measured to pull (``PULLS``: dann; mmd in
mmd+fisher+entropy, ``fraction_sim_real.md``; dann, mmd and entropy with their own target
encoder, the defaults since stops 28-29: ``fraction_adda_seed1.md``, ``fraction_mmd_seed1.md``,
``fraction_entropy_seed1.md``), names the direction: the truth is likely further from the source
fraction than the estimates. ``adabn`` and ``coral`` models do not pull, they overshoot: on the
same pairs they called ~95% of the target galaxies mergers at 5% and 20%
(``fraction_sim_real_adabn.md``, ``fraction_sim_real_coral.md``; coral with its own encoder
80-88%, ``fraction_coral_seed1.md``), so for them, and for strategies nobody measured (a
plugin's), the check names no direction. A run with ``dann.class_weights = "given"`` or
``mmd.class_weights = "given"`` was told the survey's fraction and is not flagged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from galmerge.config import rundir
from galmerge.errors import GalmergeError

# where a reader finds the measurements: the docs page (a pip install has no benchmarks/),
# and the result files behind it in the repository (fraction_sim_real_dann.md,
# fraction_adda_seed1.md, fraction_mmd_seed1.md, fraction_entropy_seed1.md;
# fraction_sim_real_adabn.md, fraction_sim_real_coral.md, fraction_coral_seed1.md)
EVIDENCE = ("galmerge docs, Merger fractions; benchmarks/results/fraction_*.md in the "
            "repository")
MEASURED = ("dann, mmd and entropy models on renderer pairs with 5% and 20% mergers in the "
            f"target and a balanced source: estimates +0.12 to +0.54 too high ({EVIDENCE})")
MEASURED_OTHER = ("adabn and coral models on the same pairs: estimates 0.7 to 0.95 too high at "
                  f"5% and 20% ({EVIDENCE})")
# an estimate this close to the source's fraction gives no direction to warn about
NEAR = 0.05
# measured to pull estimates toward the source's fraction; and measured to overshoot it
PULLS = frozenset({"dann", "mmd", "entropy"})
OVERSHOOTS = frozenset({"adabn", "coral"})


def adapted_strategies(run: Path) -> list[str]:
    """The strategies of ``run`` that read target images in training and were not given the
    target's merger fraction; empty for source-only runs or a folder without ``config.toml``."""
    from galmerge.plugin.manager import get_plugin_manager

    try:
        config = rundir.read_config(Path(run))
    except (GalmergeError, OSError):
        return []
    pm = get_plugin_manager()
    out = []
    for name, options in dict(config.get("strategies") or {}).items():
        try:
            record = pm.get("strategies", name)
        except GalmergeError:  # a plugin no longer installed: assume it read the target
            needs = True
        else:
            needs = bool(getattr(record, "needs_target", True))
        if needs and not (isinstance(options, dict) and options.get("class_weights") == "given"):
            out.append(str(name))
    return out


def adaptation_check(run: Path, source_fraction: float, estimate: float | None,
                     labelled: bool = False) -> dict[str, Any] | None:  # fmt: skip
    """``{"strategies", "source_fraction", "estimate", "warning", "message"}`` for an adapted
    run, else None. ``warning`` is true when ``estimate`` (the recommended label-free fraction,
    or None for binned results) lies more than ``NEAR`` from the source's fraction. The message
    ends by pointing to a labelled sample (``labelled``: one was given, so ``ppi`` stands)."""
    adapted = adapted_strategies(run)
    if not adapted:
        return None
    src = float(source_fraction)
    known = math.isfinite(src)
    far = (estimate is not None and known and abs(float(estimate) - src) > NEAR)
    side = "below" if far and float(estimate) < src else "above"  # type: ignore[arg-type]
    pulls = bool(PULLS & set(adapted)) and not OVERSHOOTS & set(adapted)
    if not pulls:  # no measured direction: say how far off such models were
        message = (f"the model was adapted to a target in training ({'+'.join(adapted)}); "
                   f"where the survey's merger fraction differs from the source's"
                   + (f" ({src:.2f})" if known else "")
                   + f", estimates of models adapted this way can be far off in either "
                   f"direction and their intervals do not hold ({MEASURED_OTHER}); where the "
                   "fraction is known, give it with classify --prior VALUE")
    elif far:
        message = (f"the model was adapted to a target in training ({'+'.join(adapted)}), which "
                   f"pulls estimates toward the source's merger fraction {src:.2f}; the "
                   f"estimate lies {side} it, so the survey's fraction is likely further "
                   f"{side} than every interval here ({MEASURED}); where the fraction is known, "
                   "give it with classify --prior VALUE or train with class_weights=given")
    else:
        message = (f"the model was adapted to a target in training ({'+'.join(adapted)}); "
                   "where the survey's merger fraction differs much from the source's"
                   + (f" ({src:.2f})" if known else "")
                   + f", the estimates are pulled toward the source's ({MEASURED})")
    message += ("; the ppi estimate of your labelled sample does not rest on the classifier's "
                "error rates, so this bias does not reach it" if labelled else
                "; a random sample of survey galaxies labelled by eye (fraction --labels FILE) "
                "gives an estimate this bias does not reach")
    return {"strategies": adapted, "source_fraction": src if known else None,
            "estimate": None if estimate is None else float(estimate), "warning": bool(far),
            "message": message}
