"""Built-in DA strategies: none, adabn, mmd, coral, dann (alias ada), fisher, entropy, bsp.

``none`` is source only: its record says ``needs_target=False``, so a ``none`` run never
forwards a target image. ``adabn`` adds no loss term either, but the target batch goes through
the model with the source batch, so BatchNorm batch and running statistics see both domains (an
AdaBN-like adaptation; what ``none`` did before it became source only).

Each builder imports its loss module lazily (no torch at import time, so `galmerge --help` stays
fast); the core checks options against the record's ``options`` schema before ``build``. The returned module's forward gives
unweighted terms; the trainer multiplies them by the ``weight`` option. Keys starting with ``_``
are detached diagnostics to log, never to add to the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from galmerge.errors import GalmergeError
from galmerge.losses.align import ALIGNS
from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import Option
from galmerge.plugin.records import Strategy

if TYPE_CHECKING:
    from torch import nn

    from galmerge.plugin.strategy_api import StrategyContext

WEIGHT = Option(1.0, "factor of the strategy's terms in the loss", min=0.0)
# warm-up ramp 2/(1+exp(-γp))-1 of training progress p (`galmerge.plugin.options.warmup_factor`)
WARMUP = "steepness γ of the warm-up ramp of the term's weight (0: no ramp; 10: DANN's)"
# choices: galmerge.losses.label_shift CLASS_WEIGHTS (not imported: torch)
LABEL_SHIFT = {
    "class_weights": Option("off", "weight source images by the target's class shares over the "
                            "source's, for a target merger fraction unlike the source's: "
                            "estimated (mean target prediction), bbse (the same corrected by "
                            "the source predictions' class means) or given (target_fraction); "
                            "off: plain alignment",
                            choices=("off", "estimated", "bbse", "given")),
    "target_fraction": Option(0.0, "the expected target merger fraction, for "
                              "class_weights=given", min=0.0, below=1.0),
}
# auto: resolved by `_align`
ALIGN = Option("auto", "which features the term moves: both domains' or the target's only "
               "(one-sided, as ADDA); auto: the target's when it has its own encoder, else both",
               choices=("auto", *ALIGNS))
OPTIONS: dict[str, dict[str, Option]] = {
    "none": {"weight": WEIGHT},
    "adabn": {"weight": WEIGHT},
    # kernel "mean" + warmup 10: chosen on the dev pairs (benchmarks/results/study_defaults_dev.md)
    "mmd": {
        "weight": WEIGHT,
        # choices: galmerge.losses.mmd KERNELS (not imported: torch)
        "kernel": Option("mean", "bandwidths: relative to the batch's mean squared distance "
                         "(mean, scale-free) or DeepMerge II's 19 fixed ones (deepmerge)",
                         choices=("deepmerge", "mean")),
        "warmup": Option(10.0, WARMUP, min=0.0),
        "align": ALIGN,
        **LABEL_SHIFT,
    },
    "coral": {"weight": WEIGHT, "warmup": Option(0.0, WARMUP, min=0.0), "align": ALIGN},
    # weight 0.3 (stop 23): with per-domain BatchNorm, 0.3 beat 1.0 in target and source
    # accuracy on each dev pair (benchmarks/results/study_weights23_dev.md)
    "dann": {
        "weight": Option(0.3, "factor of the strategy's terms in the loss", min=0.0),
        "hidden": Option(1024, "units of the discriminator's two hidden layers", min=1),
        "dropout": Option(0.5, "dropout after each hidden layer", min=0.0, below=1.0),
        "gamma": Option(10.0, "steepness of the gradient-reversal ramp", min=0.0),
        "max_coeff": Option(1.0, "gradient-reversal coefficient at the end of the ramp",
                            min=0.0),
        # choices: galmerge.losses.dann FEATURE_LOSSES and GRL_SCHEDULES (not imported: torch)
        "feature_loss": Option("reversed", "what the features get: the reversed discriminator "
                               "gradient or the inverted-label loss",
                               choices=("reversed", "inverted")),
        "grl": Option("ramp", "gradient-reversal schedule", choices=("ramp", "constant")),
        # choices: galmerge.losses.dann CONDITIONS (not imported: torch)
        "condition": Option("none", "what the discriminator sees: the features (none), their "
                            "outer product with the class probabilities (predictions: CDAN), "
                            "and that weighted by prediction confidence (predictions+entropy: "
                            "CDAN+E)", choices=("none", "predictions", "predictions+entropy")),
        # auto: "target" with the target's own encoder (ADDA, the default layout since stop 28:
        # benchmarks/results/study_adda28_*.md), "both" with a shared one (DANN)
        "align": ALIGN,
        "relax": Option(0.0, "asymmetric relaxation β (Wu et al. 2019): target feature density "
                        "up to (1 + β) times the source's is not penalised, so a target merger "
                        "fraction unlike the source's may stay; 0: plain alignment; 1 admits any "
                        "fraction with a balanced source", min=0.0),
        **LABEL_SHIFT,
    },
    # intra 0.01 / inter 1.0: every Fisher command line of the DeepMerge II repository
    # reduction "mean" + warmup 10 (issue 14): the summed trace grows with the batch and cost
    # 8 points of source accuracy on the dev pairs at weight 1; the mean costs 4-5
    "fisher": {
        "weight": WEIGHT,
        "intra_weight": Option(0.01, "weight of the within-class scatter", min=0.0),
        "inter_weight": Option(1.0, "weight of the between-class scatter", min=0.0),
        # choices: galmerge.losses.fisher FORMS and REDUCTIONS
        "form": Option("tr", "trace ratio (tr) or trace difference (td)", choices=("tr", "td")),
        "reduction": Option("mean", "within-class spread averaged over the batch (mean) or "
                            "summed as in DeepMerge II (sum)", choices=("sum", "mean")),
        "warmup": Option(10.0, WARMUP, min=0.0),
    },
    # diversity 1 + warmup 10 (information maximisation, issue 14): plain entropy minimisation
    # kept the source-only collapse (every target image in one class) on the dev pairs
    "entropy": {
        "weight": WEIGHT,
        "include_source": Option(False, "minimise the source predictions' entropy too"),
        "diversity": Option(1.0, "weight of the batch-diversity term", min=0.0),
        "warmup": Option(10.0, WARMUP, min=0.0),
    },
}
#: default values, by strategy
DEFAULTS: dict[str, dict[str, Any]] = {
    name: {k: o.default for k, o in opts.items()} for name, opts in OPTIONS.items()
}

OPTIONS["bsp"] = {
    "weight": WEIGHT,
    "k": Option(1, "number of largest singular values penalised per domain", min=1),
    # choices: galmerge.losses.bsp FORMS (not imported: torch)
    "form": Option("ratio", "ratio: the top-k share of the batch's feature energy (scale-free); "
                   "raw: the top-k squared singular values (the paper's)",
                   choices=("ratio", "raw")),
    "warmup": Option(0.0, WARMUP, min=0.0),
}

# What `galmerge tune` searches for each strategy (log ranges around the defaults and the
# benchmark settings; the weights span two orders of magnitude either side of useful values).
SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "mmd": {"weight": {"type": "float", "low": 0.01, "high": 3.0, "log": True}},
    "coral": {"weight": {"type": "float", "low": 0.01, "high": 10.0, "log": True}},
    "dann": {
        "weight": {"type": "float", "low": 0.01, "high": 3.0, "log": True},
        "max_coeff": {"type": "float", "low": 0.1, "high": 1.0, "log": True},
    },
    "fisher": {
        "weight": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
        "intra_weight": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
    },
    "entropy": {
        "weight": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "diversity": {"type": "float", "low": 0.0, "high": 2.0},
    },
    "bsp": {"weight": {"type": "float", "low": 0.01, "high": 3.0, "log": True}},
}


def _align(context: StrategyContext, options: Mapping[str, Any]) -> str:
    """The ``align`` option resolved: "auto" is one-sided exactly when the target has its own
    encoder (then the source features are the source-only path's, and moving them would only
    cost source accuracy)."""
    if options["align"] != "auto":
        return str(options["align"])
    return "target" if context.target_encoder == "separate" else "both"


def _build_none(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.none import NoLoss

    return NoLoss()


def _build_adabn(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.none import NoLoss

    return NoLoss()


def _check_given(strategy: str, options: Mapping[str, Any]) -> None:
    if options["class_weights"] == "given" and not 0.0 < options["target_fraction"] < 1.0:
        raise GalmergeError(
            f"{strategy} option class_weights=given needs target_fraction, the expected target "
            f"merger fraction between 0 and 1 (e.g. --set {strategy}.target_fraction=0.05)"
        )


def _build_mmd(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.mmd import MMDLoss

    _check_given("mmd", options)
    return MMDLoss(kernel=options["kernel"], warmup=options["warmup"],
                   class_weights=options["class_weights"], num_classes=context.num_classes,
                   target_fraction=options["target_fraction"],
                   align=_align(context, options)).to(context.device)


def _build_coral(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.coral import CORALLoss

    return CORALLoss(warmup=options["warmup"], align=_align(context, options)).to(context.device)


def _build_dann(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.dann import DANNLoss

    opts = options  # checked against OPTIONS["dann"] by the core
    _check_given("dann", opts)
    module = DANNLoss(
        context.feature_dim,
        hidden=opts["hidden"],
        dropout=opts["dropout"],
        gamma=opts["gamma"],
        max_coeff=opts["max_coeff"],
        feature_loss=opts["feature_loss"],
        grl=opts["grl"],
        class_weights=opts["class_weights"],
        num_classes=context.num_classes,
        target_fraction=opts["target_fraction"],
        condition=opts["condition"],
        align=_align(context, opts),
        relax=opts["relax"],
    )
    return module.to(context.device)


def _build_fisher(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.fisher import FisherLoss

    opts = options  # checked against OPTIONS["fisher"] by the core
    if opts["form"] == "tr" and opts["inter_weight"] == 0:
        raise GalmergeError(
            "fisher option inter_weight must be > 0 with form 'tr' (it divides the loss)"
        )
    module = FisherLoss(
        context.num_classes,
        context.feature_dim,
        intra_weight=opts["intra_weight"],
        inter_weight=opts["inter_weight"],
        form=opts["form"],
        reduction=opts["reduction"],
        warmup=opts["warmup"],
    )
    return module.to(context.device)


def _build_entropy(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.entropy import EntropyLoss

    opts = options  # checked against OPTIONS["entropy"] by the core
    module = EntropyLoss(
        include_source=opts["include_source"], diversity=opts["diversity"], warmup=opts["warmup"]
    )
    return module.to(context.device)


def _build_bsp(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
    from galmerge.losses.bsp import BSPLoss

    return BSPLoss(k=options["k"], form=options["form"], warmup=options["warmup"]).to(
        context.device
    )


@hookimpl
def register_strategies() -> list[Strategy]:
    return [
        Strategy(
            name="none",
            description="source only: no domain adaptation term, target images never forwarded",
            build=_build_none,
            options=OPTIONS["none"],
            search_space=SEARCH_SPACES["none"],
            needs_target=False,
        ),
        Strategy(
            name="adabn",
            description="no loss term; the target batch is forwarded, so BatchNorm keeps "
            "target statistics (AdaBN; with joint batches they mix both domains)",
            build=_build_adabn,
            options=OPTIONS["adabn"],
        ),
        Strategy(
            name="mmd",
            description="multi-kernel Gaussian MMD between source and target features "
            "(bandwidths relative to the batch; DeepMerge II's 19 with kernel=deepmerge)",
            build=_build_mmd,
            options=OPTIONS["mmd"],
            search_space=SEARCH_SPACES["mmd"],
            # the target's own encoder, aligned one-sided (stop 29: chosen on the dev pairs by
            # the rule written before the runs, benchmarks/results/study_onesided29_dev.md)
            target_encoder="separate",
        ),
        Strategy(
            name="coral",
            description="CORAL: align source and target feature covariances (Sun & Saenko 2016)",
            build=_build_coral,
            options=OPTIONS["coral"],
            search_space=SEARCH_SPACES["coral"],
            target_encoder="separate",  # as mmd's (study_onesided29_dev.md)
        ),
        Strategy(
            name="dann",
            description="domain-adversarial: discriminator behind a gradient-reversal layer, "
            "ramped or constant (the paper's ADA)",
            build=_build_dann,
            options=OPTIONS["dann"],
            search_space=SEARCH_SPACES["dann"],
            target_encoder="separate",
            aliases=("ada",),
        ),
        Strategy(
            name="fisher",
            description="Fisher loss (trace ratio) around learnable class centres on source "
            "features",
            build=_build_fisher,
            options=OPTIONS["fisher"],
            search_space=SEARCH_SPACES["fisher"],
            # it reads source features and labels only: alone, it trains source only (it
            # forwarded the target before stop 24, which made `fisher` alone adabn + fisher)
            needs_target=False,
        ),
        Strategy(
            name="entropy",
            description="entropy minimisation of target predictions, with a diversity term "
            "(information maximisation)",
            build=_build_entropy,
            options=OPTIONS["entropy"],
            search_space=SEARCH_SPACES["entropy"],
            # the target's own encoder, read through the source path's head, which the term
            # does not train: SHOT's frozen hypothesis (stop 29, study_shot29_dev.md)
            target_encoder="separate",
        ),
        Strategy(
            name="bsp",
            description="batch spectral penalization: keeps the largest singular values of "
            "source and target feature batches from dominating (Chen et al. 2019; with dann)",
            build=_build_bsp,
            options=OPTIONS["bsp"],
            search_space=SEARCH_SPACES["bsp"],
        ),
    ]
