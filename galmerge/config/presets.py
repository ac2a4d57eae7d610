"""Hyperparameter presets: DeepMerge II as its authors trained it, and galmerge's synthetic pair.

``deepmerge2-sim-sim``, ``deepmerge2-sim-real`` and ``deepmerge2-sim-real-tl`` train what DeepMerge
II (Ćiprijanović et al. 2021, arXiv:2103.01373) trained, per method (the strategy expression:
``none`` = noDA, ``mmd``, ``mmd+fisher+entropy``, ``dann`` = ADA, ``dann+fisher+entropy``) and
backbone (``deepmerge``, ``resnet18``). Every value is a `Cited`: its source, and a caveat where it
was not found for this exact experiment, method or backbone. ``galmerge presets NAME --strategy S
--backbone B`` prints them.

Sources (repository github.com/AleksCipri/DeepMergeDomainAdaptation, HEAD 2ffb6ce; line numbers as
in /work/shared/DEEPMERGE2-AUDIT.md):
  [NB]     the notebook "Running DeepMerge domain adaptation files.ipynb": command lines for noDA
           (cell TL6Wn2byi2PT), MMD(+Fisher+entropy) (cell NspnKji4lIB0) and ADA(+Fisher+
           entropy) (cell eaYYYcXPm1aP). The notebook does not say which experiment they are
           for; its noDA/MMD values equal the sim-to-real Table A3 quote.
  [A3]     the paper's Table A3 (sim-to-real) as quoted by a reproduction report; the paper's
           appendix itself was not reachable, so this quote is unverified: noDA and MMD lr 1e-3,
           weight decay 1e-3, cycle 5, patience 20; TL+MMD lr 0.01, weight decay 1e-4.
  [ADA]    python_files/train_ADA.py:1-27, a sim-to-real (Illustris z=0 -> SDSS) ADA+Fisher
           command; the code's argparse and optimiser set-up.
  [MMD]    python_files/train_MMD.py:1-27, a sim-to-real MMD+Fisher command (lr 1e-4, weight
           decay 1e-4, cycle 2, against an earlier SDSS target file); the code.
  [noDA]   python_files/no_domain_adaptation.py; its docstring is a sim-to-real noDA command
           (lr 1e-3, weight decay 0.01, cycle 8) that disagrees with [A3].
  [NET]    python_files/network.py (DeepMerge :91-126, ResNetFc :43-88, AdversarialLayer :11-28,
           AdversarialNetwork :130-166); [LR] python_files/lr_schedule.py:16-67 (cycle1);
           [ES] python_files/galaxy_utils.py:27-52 (EarlyStopping).
NOT FOUND: the paper's tables A1, A2, A4 and its results tables; any ResNet18-specific learning
rate or weight decay (the DeepMerge values are used); any noDA or plain-ADA sim-to-real command
besides the above; a TL cycle length.

The original trains the discriminator and the Fisher centres only before commit 4215a5c
(2020-12-29): HEAD leaves both out of its optimiser. galmerge trains them, at the pre-2021
multipliers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from galmerge.errors import GalmergeError

# the short legend `galmerge presets NAME` prints (the module docstring has the details)
SOURCES = {
    "[NB]": "notebook 'Running DeepMerge domain adaptation files.ipynb' (experiment not stated)",
    "[A3]": "paper Table A3 (sim-to-real) as quoted by a reproduction report; unverified",
    "[ADA]": "python_files/train_ADA.py (docstring: a sim-to-real ADA+Fisher command)",
    "[MMD]": "python_files/train_MMD.py (docstring: a sim-to-real MMD+Fisher command)",
    "[noDA]": "python_files/no_domain_adaptation.py",
    "[NET]": "python_files/network.py",
    "[LR]": "python_files/lr_schedule.py, cycle1",
    "[ES]": "python_files/galaxy_utils.py, EarlyStopping",
}
REPOSITORY = "github.com/AleksCipri/DeepMergeDomainAdaptation"


@dataclass(frozen=True)
class Cited:
    """A preset value with its source; ``caveat`` says where it was borrowed from, if it was."""

    value: Any
    source: str
    caveat: str = ""


def C(value: Any, source: str, caveat: str = "") -> Cited:  # noqa: N802 (a table helper)
    return Cited(value, source, caveat)


# --- DeepMerge II: values shared by every experiment --------------------------------------------
_COMMON: dict[str, Cited] = {
    "batch_size": C(128, "[MMD]/[ADA]/[noDA] DataLoader(batch_size=128)"),
    "epochs": C(200, "[NB] --epoch 200; argparse default 200"),
    "patience": C(20, "[NB] --early_stop_patience 20; [A3]"),
    "early_stopping": C("deepmerge", "[ES]: graded counter (+1/0.5/0.25/0.1), never reset"),
    "stop_by": C("source_val_batch_loss",
                 "[MMD] train_MMD.py:384-394: CE of one random 64-image source-val batch"),
    "select_by": C("source_val_accuracy",
                   "[MMD] train_MMD.py:204-235: best_model = highest source-val accuracy"),
    "schedule.kind": C("cyclic", "[LR] cycle1 via --one_cycle 'yes': triangular lr/10..lr, "
                       "period 0.9 * cycle_length epochs"),
    "optimizer.betas": C([0.7, 0.8], "[MMD]/[ADA]/[noDA] optim_params betas (0.7, 0.8)"),
    "optimizer.eps": C(1e-8, "[MMD]/[ADA]/[noDA] optim_params eps 1e-8"),
    "domain_batchnorm": C("joint", "[MMD]/[ADA] source and target batches concatenated in one "
                          "forward (DEEPMERGE2-AUDIT 3.4); one set of BatchNorm statistics"),
    "epoch_steps": C("ceil", "[MMD]/[ADA]/[noDA] len(DataLoader(batch_size=128)) steps per "
                     "epoch, no drop_last: ceil(n/128) (85 in sim-sim, [LR] :74); each batch is "
                     "full (the first of a fresh shuffle, train_MMD.py:262-263)"),
}

_AMSGRAD_MMD = C(True, "[MMD] train_MMD.py:633 amsgrad=True")
_AMSGRAD_NODA = C(False, "[noDA] no_domain_adaptation.py:411-412 amsgrad=False")
_AMSGRAD_ADA = C(False, "[ADA] train_ADA.py:683-684 amsgrad=False")
_CENTERS = C(10.0, "[MMD] train_MMD.py:174 centres lr_mult 10 (ADA: the same before 4215a5c)")
_DANN_NET = {
    "strategies.dann.hidden": C(1024, "[NET] AdversarialNetwork 1024-1024-1"),
    "strategies.dann.dropout": C(0.5, "[NET] AdversarialNetwork Dropout(0.5)"),
    "strategies.dann.feature_loss": C("reversed", "[NET]/[ADA] BCE through the GRL"),
    "strategies.dann.grl": C("constant", "[NET] AdversarialLayer.backward returns -1 * grad"),
    "strategies.dann.max_coeff": C(1.0, "[ADA] config['high'] = 1.0 (lambda = 1)"),
}
# galmerge's own mmd defaults are kernel "mean" + warmup 10 (issue 14); the paper's are these
_MMD_KERNEL = C("deepmerge", "[MMD] loss.mmd_distance: 19 fixed bandwidths 1e-6..1e6")
_MMD_WARMUP = C(0.0, "[MMD] trade_off applied from the first step (no ramp)")
_FISHER_SUM = C("sum", "[MMD] loss.FisherTR: intra scatter summed over the batch")
_NO_RAMP = C(0.0, "[MMD]/[ADA] loss terms weighted from the first step (no ramp)")
_FORM = C("tr", "[MMD]/[ADA] --fisher_loss_type default 'tr' (trace ratio)")
_ENTROPY_BATCH = C(True, "[MMD] train_MMD.py:405, [ADA] :436: entropy of the whole batch")
# galmerge's entropy default adds a diversity term (information maximisation, issue 14)
_ENTROPY_PLAIN = C(0.0, "[MMD]/[ADA] loss.EntropyLoss: plain entropy, no diversity term")


def _method(lr: Cited, wd: Cited, cycle: Cited, amsgrad: Cited, **extra: Cited) -> dict:
    return {"lr": lr, "weight_decay": wd, "schedule.cycle_length": cycle,
            "optimizer.amsgrad": amsgrad, **{k.replace("__", "."): v for k, v in extra.items()}}


def _mmd_methods(lr: Cited, wd: Cited, cycle: Cited, fisher_note: str = "",
                 fisher_lr: Cited | None = None, fisher_wd: Cited | None = None,
                 fisher_cycle: Cited | None = None, entropy: Cited | None = None,
                 intra: Cited | None = None) -> dict[str, dict[str, Cited]]:
    plain = _method(lr, wd, cycle, _AMSGRAD_MMD,
                    strategies__mmd__weight=C(1.0, "[NB]/[MMD] --trade_off 1.0"),
                    strategies__mmd__kernel=_MMD_KERNEL, strategies__mmd__warmup=_MMD_WARMUP)
    fisher = {
        **_method(fisher_lr or lr, fisher_wd or wd, fisher_cycle or cycle, _AMSGRAD_MMD),
        "strategies.mmd.weight": C(1.0, "[NB]/[MMD] --trade_off 1.0"),
        "strategies.mmd.kernel": _MMD_KERNEL,
        "strategies.mmd.warmup": _MMD_WARMUP,
        "strategies.fisher.weight": C(1.0, "[MMD] total = trade_off*transfer + fisher + "
                                      "em*entropy + CE"),
        "strategies.fisher.intra_weight": intra or C(0.01, "[NB]/[MMD] --intra_loss_coef 0.01"),
        "strategies.fisher.inter_weight": C(1.0, "[NB]/[MMD] --inter_loss_coef 1.0"),
        "strategies.fisher.form": _FORM,
        "strategies.fisher.reduction": _FISHER_SUM,
        "strategies.fisher.warmup": _NO_RAMP,
        "strategies.entropy.weight": entropy or C(0.05, "[NB]/[MMD] --em_loss_coef 0.05"),
        "strategies.entropy.include_source": _ENTROPY_BATCH,
        "strategies.entropy.diversity": _ENTROPY_PLAIN,
        "strategies.entropy.warmup": _NO_RAMP,
        "lr_multipliers.fisher.centers": _CENTERS,
    }
    return {"mmd": plain, "mmd+fisher+entropy": fisher}


SIM_SIM_NOTE = "the notebook does not say which experiment its commands are for"

_SIM_SIM: dict[str, dict[str, Cited]] = {
    "none": _method(
        C(1e-3, "[NB] noDA --lr 0.001", SIM_SIM_NOTE),
        C(1e-3, "[NB] noDA --weight_decay 0.001", SIM_SIM_NOTE),
        C(5, "[NB] noDA --cycle_length 5", SIM_SIM_NOTE),
        _AMSGRAD_NODA,
    ),
    **_mmd_methods(
        C(1e-3, "[NB] MMD --lr 0.001", SIM_SIM_NOTE),
        C(1e-3, "[NB] MMD --weight_decay 0.001", SIM_SIM_NOTE),
        C(5, "[NB] MMD --cycle_length 5", SIM_SIM_NOTE),
    ),
    "dann": {
        **_method(
            C(1e-3, "[NB] ADA --lr 0.001", SIM_SIM_NOTE),
            C(1e-4, "[NB] ADA --weight_decay 0.0001", SIM_SIM_NOTE),
            C(8, "[NB] ADA --cycle_length 8", SIM_SIM_NOTE),
            _AMSGRAD_ADA,
        ),
        "strategies.dann.weight": C(1.0, "[NB] ADA --trade_off 1.0"),
        **_DANN_NET,
        "lr_multipliers.dann.discriminator": C(
            1.0, "[ADA] ad_net_mult_lr forced to 1 without Fisher (train_ADA.py:705-708)"),
    },
}
_SIM_SIM["dann+fisher+entropy"] = {
    **_SIM_SIM["dann"],
    "strategies.fisher.weight": C(1.0, "[ADA] total = trade_off*transfer + fisher + em*entropy "
                                  "+ CE"),
    "strategies.fisher.intra_weight": C(0.01, "[NB] ADA --intra_loss_coef 0.01"),
    "strategies.fisher.inter_weight": C(1.0, "[NB] ADA --inter_loss_coef 1.0"),
    "strategies.fisher.form": _FORM,
    "strategies.fisher.reduction": _FISHER_SUM,
    "strategies.fisher.warmup": _NO_RAMP,
    "strategies.entropy.weight": C(0.05, "[NB] ADA --em_loss_coef 0.05"),
    "strategies.entropy.include_source": _ENTROPY_BATCH,
    "strategies.entropy.diversity": _ENTROPY_PLAIN,
    "strategies.entropy.warmup": _NO_RAMP,
    "lr_multipliers.fisher.centers": C(10.0, "[ADA] centres lr_mult 10 before 4215a5c"),
    "lr_multipliers.dann.discriminator": C(
        0.1, "[ADA] --ad_net_mult_lr default 0.1 (the notebook passes none; unused after "
        "4215a5c)"),
}

A3_MMD_NOTE = ("Table A3's MMD row; the quote does not separate MMD+Fisher, and [MMD]'s example "
               "uses lr 1e-4, weight decay 1e-4, cycle 2")
_SIM_REAL_ADA_F = {
    "lr": C(1e-3, "[ADA] sim-real ADA+F --lr 0.001"),
    "weight_decay": C(1e-4, "[ADA] sim-real ADA+F --weight_decay 0.0001"),
    "schedule.cycle_length": C(8, "[ADA] sim-real ADA+F --cycle_length 8"),
    "optimizer.amsgrad": _AMSGRAD_ADA,
    "strategies.dann.weight": C(1.0, "[ADA] --trade_off 1.0"),
    **_DANN_NET,
}
_SIM_REAL: dict[str, dict[str, Cited]] = {
    "none": _method(
        C(1e-3, "[A3] noDA lr 1e-3"),
        C(1e-3, "[A3] noDA weight decay 1e-3", "[noDA]'s docstring command has 0.01"),
        C(5, "[A3] noDA cycle 5", "[noDA]'s docstring command has 8"),
        _AMSGRAD_NODA,
    ),
    **_mmd_methods(
        C(1e-3, "[A3] MMD lr 1e-3"),
        C(1e-3, "[A3] MMD weight decay 1e-3"),
        C(5, "[A3] MMD cycle 5"),
        fisher_lr=C(1e-3, "[A3] MMD lr 1e-3", A3_MMD_NOTE),
        fisher_wd=C(1e-3, "[A3] MMD weight decay 1e-3", A3_MMD_NOTE),
        fisher_cycle=C(5, "[A3] MMD cycle 5", A3_MMD_NOTE),
    ),
    "dann": {
        **{k: Cited(v.value, v.source, "no sim-real plain-ADA command found; the sim-real "
                    "ADA+Fisher command's value")
           if k in ("lr", "weight_decay", "schedule.cycle_length") else v
           for k, v in _SIM_REAL_ADA_F.items()},
        "lr_multipliers.dann.discriminator": C(
            1.0, "[ADA] ad_net_mult_lr forced to 1 without Fisher (train_ADA.py:705-708)"),
    },
    "dann+fisher+entropy": {
        **_SIM_REAL_ADA_F,
        "strategies.fisher.weight": C(1.0, "[ADA] total = trade_off*transfer + fisher + "
                                      "em*entropy + CE"),
        "strategies.fisher.intra_weight": C(1e-4, "[ADA] sim-real --intra_loss_coef 0.0001"),
        "strategies.fisher.inter_weight": C(1.0, "[ADA] sim-real --inter_loss_coef 1.0"),
        "strategies.fisher.form": _FORM,
        "strategies.fisher.reduction": _FISHER_SUM,
        "strategies.fisher.warmup": _NO_RAMP,
        "strategies.entropy.weight": C(1e-4, "[ADA] sim-real --em_loss_coef 0.0001"),
        "strategies.entropy.include_source": _ENTROPY_BATCH,
        "strategies.entropy.diversity": _ENTROPY_PLAIN,
        "strategies.entropy.warmup": _NO_RAMP,
        "lr_multipliers.fisher.centers": C(10.0, "[ADA] centres lr_mult 10 before 4215a5c"),
        "lr_multipliers.dann.discriminator": C(0.01, "[ADA] sim-real --ad_net_mult_lr 0.01"),
    },
}

TL_NOTE = "no TL value found for this method; the sim-real (non-TL) value"
_KEEP = C(True, "[NB] note cell AK-rgAMCqpMK: TL keeps the pretrained data's normalisation; "
          "[ADA] also loads ad_net")


def _tl(method: str) -> dict[str, Cited]:
    row = {k: Cited(v.value, v.source, "; ".join(filter(None, (TL_NOTE, v.caveat))))
           if k in ("lr", "weight_decay", "schedule.cycle_length") else v
           for k, v in _SIM_REAL[method].items()}
    if method.startswith("mmd"):
        fisher = ("Table A3's TL+MMD row; the quote does not separate MMD+Fisher"
                  if method != "mmd" else "")
        row["lr"] = C(0.01, "[A3] TL+MMD lr 0.01", fisher)
        row["weight_decay"] = C(1e-4, "[A3] TL+MMD weight decay 1e-4", fisher)
        row["schedule.cycle_length"] = C(5, "[A3] MMD cycle 5",
                                         "no TL cycle quoted; the non-TL MMD row's")
    if method == "none":
        row = {k: Cited(v.value, v.source, "the paper has no TL row for noDA; the sim-real "
                        "noDA value") for k, v in row.items()}
    row["init_keep_preprocess"] = _KEEP
    if "fisher" in method.split("+"):
        row["init_fresh_strategies"] = C(
            ["fisher"], "[MMD] train_MMD.py:146-149, [ADA] :157-161: --ckpt_path loads "
            "base_network (and ad_net); the Fisher centres start fresh")
    return row


_SIM_REAL_TL = {method: _tl(method) for method in _SIM_REAL}

RESNET_NOTE = "no ResNet18-specific value found; the DeepMerge value"
_BACKBONES: dict[str, dict[str, Cited]] = {
    "deepmerge": {
        "backbone_options.dropout": C(0.0, "[NET] DeepMerge :91-126 has no dropout (final code)"),
    },
    "resnet18": {
        "backbone_options.stem": C("imagenet", "[NET] ResNetFc: torchvision resnet18 as is"),
        "backbone_options.bottleneck": C(256, "[NET]/[MMD] bottleneck_dim 256"),
        "backbone_options.bottleneck_layer": C(
            "linear", "[NET] ResNetFc: plain Linear(512, 256), N(0, 0.005); head N(0, 0.01)"),
        "backbone_options.dropout": C(0.0, "[NET] ResNetFc: no dropout"),
        "backbone_options.lr_mult": C(10.0, "[MMD] train_MMD.py:158-162, [ADA] :171-175: "
                                      "bottleneck and fc lr_mult 10"),
    },
}

PAPER_METHODS = ("none", "mmd", "mmd+fisher+entropy", "dann", "dann+fisher+entropy")

PRESETS: dict[str, dict[str, Any]] = {
    "deepmerge2-sim-sim": {
        "description": "DeepMerge II Illustris z=2 pristine -> noisy (sim-to-sim), as trained "
        "by the authors' code",
        "paper": {"common": _COMMON, "methods": _SIM_SIM, "backbones": _BACKBONES},
    },
    "deepmerge2-sim-real": {
        "description": "DeepMerge II Illustris z=0 -> SDSS (sim-to-real), as trained by the "
        "authors' code",
        "paper": {"common": _COMMON, "methods": _SIM_REAL, "backbones": _BACKBONES},
    },
    "deepmerge2-sim-real-tl": {
        "description": "DeepMerge II sim-to-real with transfer learning: add --init-from a "
        "deepmerge2-sim-sim run of the same method and backbone",
        "paper": {"common": _COMMON, "methods": _SIM_REAL_TL, "backbones": _BACKBONES},
        "needs_init_from": True,
    },
    "synthetic-sim-real": {
        "description": "galmerge's synthetic:illustris -> synthetic:sdss pair (tuned here, not the paper)",
        # Tuned by hand on seed 0 of the built-in synthetic pair (benchmarks/bench_da.py,
        # benchmarks/results/da_sim_real.md); reported seeds 1-3 never took part in tuning.
        # lr_multipliers: one Adam group, as when these values were tuned and recorded
        # domain_batchnorm joint: the layout these values were tuned with (the default then)
        "common": {"batch_size": 32, "epochs": 30, "patience": 20, "lr_multipliers": {"*": 1.0},
                   "domain_batchnorm": "joint"},
        "by_strategy": {
            "none": {"lr": 2e-3},
            "mmd": {"lr": 2e-3},
            "dann": {"lr": 2e-3},
        },
        "strategy_options": {
            # tuned with the fixed DeepMerge II bandwidths and no ramp (the defaults then)
            "mmd": {"weight": 0.3, "kernel": "deepmerge", "warmup": 0.0},
            # the domains are told apart perfectly within an epoch: with the paper's reversed
            # BCE the features then get no gradient (adapting at random, or never); the
            # non-saturating "inverted" loss adapts steadily, weight 0.3 keeps source accuracy
            "dann": {"weight": 0.3, "hidden": 256, "feature_loss": "inverted"},
            # fisher is the trace ratio (~40-60 early on), hence the small weight
            "fisher": {"weight": 0.01, "intra_weight": 0.01, "inter_weight": 0.01,
                       "reduction": "sum", "warmup": 0.0},
            # information maximisation: plain entropy minimisation let target predictions
            # collapse into one class on seed 0; diversity 1.0 keeps both classes in use
            "entropy": {"weight": 0.3, "diversity": 1.0, "warmup": 0.0},
        },
        "backbone_options": {"deepmerge": {"dropout": 0.1}},
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def _get(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise GalmergeError(f"unknown preset '{name}'; available: {', '.join(preset_names())}")
    return PRESETS[name]


def paper_method(strategies: list[str]) -> tuple[str, str]:
    """The DeepMerge II method whose values a strategy expression gets, and a caveat if the
    expression is not exactly that method."""
    names = set(strategies)
    if names <= {"none", "adabn"}:
        method = "none"
    else:
        base = "dann" if "dann" in names else "mmd"
        method = f"{base}+fisher+entropy" if names & {"fisher", "entropy"} else base
    expression = "+".join(strategies)
    if expression == method:
        return method, ""
    return method, f"strategy {expression} is not one of the paper's methods; {method}'s values"


def _split(key: str) -> list[str]:
    """Config path of a dotted table key; ``lr_multipliers.OWNER.PREFIX`` keeps OWNER.PREFIX."""
    head, _, rest = key.partition(".")
    if head == "lr_multipliers":
        return [head, rest]
    if head == "strategies":
        name, _, option = rest.partition(".")
        return [head, name, option]
    return [head, rest] if rest else [head]


def cited_values(name: str, strategies: list[str], backbone: str) -> list[tuple[str, Cited]]:
    """(dotted key, Cited) for every value a DeepMerge II preset sets for this strategy
    expression and backbone; values for components not in use are left out."""
    from galmerge.plugin.manager import get_plugin_manager

    paper = _get(name).get("paper")
    if paper is None:
        raise GalmergeError(f"preset '{name}' is not a DeepMerge II preset; it cites no sources")
    method, caveat = paper_method(strategies)
    rows = {**paper["common"], **paper["methods"][method]}
    if caveat:
        rows = {k: Cited(v.value, v.source, "; ".join(filter(None, (v.caveat, caveat))))
                if k not in paper["common"] else v for k, v in rows.items()}
    backbone_rows = paper["backbones"].get(backbone)
    if backbone_rows is None:
        rows["backbone_options"] = C({}, "-", f"backbone {backbone} is not in the paper")
        backbone_rows = {}
    elif backbone == "resnet18":
        rows = {k: Cited(v.value, v.source, "; ".join(filter(None, (v.caveat, RESNET_NOTE))))
                if k in ("lr", "weight_decay", "schedule.cycle_length") else v
                for k, v in rows.items()}
    rows.update(backbone_rows)
    pm = get_plugin_manager()
    bknown = set(pm.get("backbones", backbone).defaults)
    known = {s: set(pm.get("strategies", s).defaults) for s in strategies}
    out = []
    for key, cited in rows.items():
        path = _split(key)
        if key == "backbone_options":
            continue
        if path[0] == "strategies" and path[2] not in known.get(path[1], ()):
            continue
        if path[0] == "backbone_options" and path[1] not in bknown:
            continue
        if path[0] == "lr_multipliers":
            owner = path[1].partition(".")[0]
            if owner != "model" and owner not in strategies:
                continue
            if owner == "model" and backbone not in paper["backbones"]:
                continue
        out.append((key, cited))
    return out


def preset_values(name: str, strategies: list[str], backbone: str) -> dict[str, Any]:
    """The config layer a preset gives for this strategy expression and backbone."""
    from galmerge.plugin.manager import get_plugin_manager

    preset = _get(name)
    if "paper" in preset:
        layer: dict[str, Any] = {}
        for key, cited in cited_values(name, strategies, backbone):
            *parents, last = _split(key)
            node = layer
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = cited.value
        return layer
    layer = dict(preset["common"])
    # The adaptation method (MMD or ADA/DANN) decides lr and weight decay; add-ons (Fisher,
    # entropy) ride on it. Other strategies (coral, third-party) use the MMD row.
    base = "dann" if "dann" in strategies else ("none" if strategies == ["none"] else "mmd")
    layer.update(preset["by_strategy"][base])
    pm = get_plugin_manager()
    layer["strategies"] = {}
    for strategy in strategies:
        known = pm.get("strategies", strategy).defaults
        options = preset["strategy_options"].get(strategy, {})
        layer["strategies"][strategy] = {k: v for k, v in options.items() if k in known}
    bknown = pm.get("backbones", backbone).defaults
    options = preset.get("backbone_options", {}).get(backbone, {})
    layer["backbone_options"] = {k: v for k, v in options.items() if k in bknown}
    return layer


def unset_strategy_options(name: str, strategies: list[str],
                           backbone: str) -> list[tuple[str, Cited]]:
    """(dotted key, Cited) for the options of each strategy in the expression that preset
    ``name`` sets none of (a plugin's strategy, or one the preset has no values for): the
    strategy record's defaults, which the run takes, cited as such."""
    from galmerge.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    pinned = preset_values(name, strategies, backbone).get("strategies", {})
    rows = []
    for strategy in strategies:
        # none adds no term: its weight is no value a run trains with
        if strategy == "none" or pinned.get(strategy):
            continue
        record = pm.get("strategies", strategy)
        source = (f"default of strategy {record.name}, from "
                  f"{pm.describe_owner('strategies', record.name)}; {name} sets none of its options")
        rows += [(f"strategies.{record.name}.{key}", Cited(value, source))
                 for key, value in record.defaults.items()]
    return rows


def borrowed_note(name: str, strategy: str, backbone: str) -> str | None:
    """One line for `galmerge train` when a DeepMerge II preset borrows values for this run."""
    from galmerge.plugin.manager import get_plugin_manager
    from galmerge.plugin.strategy_api import canonical_strategies

    if "paper" not in PRESETS.get(name, {}):
        return None
    pm = get_plugin_manager()
    names = canonical_strategies(strategy)
    bname = pm.get("backbones", backbone).name
    borrowed = [k for k, c in cited_values(name, names, bname) if c.caveat]
    if not borrowed:
        return None
    return (
        f"note: --preset {name}: {', '.join(borrowed)} carry a caveat (taken from another "
        f"experiment, method or backbone, or the sources disagree); `galmerge presets {name} "
        f"--strategy {'+'.join(names)} --backbone {bname}` shows them"
    )
