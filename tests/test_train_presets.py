"""The DeepMerge II presets resolve to the values of the authors' code, per experiment, method and
backbone (galmerge/config/presets.py cites each), and the synthetic preset to the benchmark configs."""

from __future__ import annotations

import pytest
from torch import nn

from galmerge import Option, Strategy, hookimpl
from galmerge.config.resolve import resolve_config
from galmerge.errors import GalmergeError

BASE = {"source": "synthetic:illustris", "target": "synthetic:sdss"}


def resolved(**cli):
    return resolve_config(cli={**BASE, **cli})


def get(config: dict, key: str):
    """A dotted key of a resolved config; lr_multipliers keys hold a dot themselves."""
    head, _, rest = key.partition(".")
    if head == "lr_multipliers":
        return config[head].get(rest)
    node = config
    for part in key.split("."):
        node = node[part]
    return node


COMMON = {
    "batch_size": 128, "epochs": 200, "patience": 20, "optimizer.betas": [0.7, 0.8],
    "optimizer.eps": 1e-8, "schedule.kind": "cyclic", "select_by": "source_val_accuracy",
    "stop_by": "source_val_batch_loss", "early_stopping": "deepmerge",
    "backbone_options.dropout": 0.0, "epoch_steps": "ceil",
}
FISHER_ENTROPY = {"strategies.fisher.weight": 1.0, "strategies.fisher.inter_weight": 1.0,
                  "strategies.fisher.form": "tr", "strategies.entropy.include_source": True,
                  "strategies.entropy.diversity": 0.0, "lr_multipliers.fisher.centers": 10.0}
DANN = {"strategies.dann.weight": 1.0, "strategies.dann.grl": "constant",
        "strategies.dann.feature_loss": "reversed", "strategies.dann.hidden": 1024,
        "optimizer.amsgrad": False}

# (preset, strategy): expected values beyond COMMON
EXPECTED = {
    ("deepmerge2-sim-sim", "none"): {
        "lr": 1e-3, "weight_decay": 1e-3, "schedule.cycle_length": 5, "optimizer.amsgrad": False},
    ("deepmerge2-sim-sim", "mmd"): {
        "lr": 1e-3, "weight_decay": 1e-3, "schedule.cycle_length": 5, "optimizer.amsgrad": True,
        "strategies.mmd.weight": 1.0},
    ("deepmerge2-sim-sim", "mmd+fisher+entropy"): {
        "lr": 1e-3, "weight_decay": 1e-3, "schedule.cycle_length": 5, "optimizer.amsgrad": True,
        "strategies.fisher.intra_weight": 0.01, "strategies.entropy.weight": 0.05,
        **FISHER_ENTROPY},
    ("deepmerge2-sim-sim", "dann"): {
        "lr": 1e-3, "weight_decay": 1e-4, "schedule.cycle_length": 8,
        "lr_multipliers.dann.discriminator": 1.0, **DANN},
    ("deepmerge2-sim-sim", "dann+fisher+entropy"): {
        "lr": 1e-3, "weight_decay": 1e-4, "schedule.cycle_length": 8,
        "lr_multipliers.dann.discriminator": 0.1, "strategies.fisher.intra_weight": 0.01,
        "strategies.entropy.weight": 0.05, **FISHER_ENTROPY, **DANN},
    ("deepmerge2-sim-real", "none"): {
        "lr": 1e-3, "weight_decay": 1e-3, "schedule.cycle_length": 5, "optimizer.amsgrad": False},
    ("deepmerge2-sim-real", "mmd"): {
        "lr": 1e-3, "weight_decay": 1e-3, "schedule.cycle_length": 5, "optimizer.amsgrad": True},
    ("deepmerge2-sim-real", "mmd+fisher+entropy"): {
        "lr": 1e-3, "weight_decay": 1e-3, "schedule.cycle_length": 5, "optimizer.amsgrad": True,
        "strategies.fisher.intra_weight": 0.01, "strategies.entropy.weight": 0.05,
        **FISHER_ENTROPY},
    ("deepmerge2-sim-real", "dann"): {
        "lr": 1e-3, "weight_decay": 1e-4, "schedule.cycle_length": 8,
        "lr_multipliers.dann.discriminator": 1.0, **DANN},
    ("deepmerge2-sim-real", "dann+fisher+entropy"): {
        "lr": 1e-3, "weight_decay": 1e-4, "schedule.cycle_length": 8,
        "lr_multipliers.dann.discriminator": 0.01, "strategies.fisher.intra_weight": 1e-4,
        "strategies.entropy.weight": 1e-4, **FISHER_ENTROPY, **DANN},
    ("deepmerge2-sim-real-tl", "mmd+fisher+entropy"): {
        "lr": 0.01, "weight_decay": 1e-4, "schedule.cycle_length": 5, "optimizer.amsgrad": True,
        "init_keep_preprocess": True, **FISHER_ENTROPY},
    ("deepmerge2-sim-real-tl", "dann+fisher+entropy"): {
        "lr": 1e-3, "weight_decay": 1e-4, "lr_multipliers.dann.discriminator": 0.01,
        "init_keep_preprocess": True, **DANN},
}


@pytest.mark.parametrize(("preset", "strategy"), sorted(EXPECTED))
def test_paper_preset_resolves_to_the_authors_values(preset, strategy):
    c = resolved(preset=preset, strategy=strategy)
    for key, value in {**COMMON, **EXPECTED[(preset, strategy)]}.items():
        assert get(c, key) == value, key
    # multipliers only for components in use
    owners = {k.partition(".")[0] for k in c["lr_multipliers"]}
    assert owners <= set(strategy.split("+"))
    assert c["init_keep_preprocess"] is preset.endswith("-tl")
    # the authors' --ckpt_path loads the network (and ad_net); Fisher centres start fresh
    fresh = ["fisher"] if preset.endswith("-tl") and "fisher" in strategy else []
    assert c["init_fresh_strategies"] == fresh


# options a paper preset may leave at galmerge's default: each default is the authors' code
# (nothing reweighted, conditioned or relaxed; one shared encoder, so alignment is two-sided;
# gamma only shapes the ramp that grl="constant" does not use)
NEUTRAL_DEFAULTS = {
    "mmd": {"align": "auto", "class_weights": "off", "target_fraction": 0.0},
    "dann": {"align": "auto", "class_weights": "off", "target_fraction": 0.0,
             "condition": "none", "relax": 0.0, "gamma": 10.0},
}


@pytest.mark.parametrize("preset", ["deepmerge2-sim-sim", "deepmerge2-sim-real",
                                    "deepmerge2-sim-real-tl"])
def test_paper_presets_pin_every_option_of_their_strategies(plugin_manager, preset):
    """galmerge's own defaults move (issue 14 gave entropy a diversity term of weight 1, which
    the paper presets then trained with): every option of a paper method's strategies is set
    by the preset, or is listed above with the default that is the authors' code."""
    from galmerge.config.presets import PAPER_METHODS, preset_values

    for method in PAPER_METHODS:
        names = [n for n in method.split("+") if n != "none"]
        pinned = preset_values(preset, method.split("+"), "deepmerge").get("strategies", {})
        c = resolved(preset=preset, strategy=method)
        assert c["target_encoder"] == "shared" and c["domain_batchnorm"] == "joint"
        for name in names:
            for option in plugin_manager.get("strategies", name).options:
                neutral = NEUTRAL_DEFAULTS.get(name, {})
                if option in neutral:
                    assert c["strategies"][name][option] == neutral[option], (method, option)
                else:
                    assert option in pinned.get(name, {}), f"{preset} {method}: {name}.{option}"


def test_resnet18_is_built_as_the_paper_built_it():
    c = resolved(preset="deepmerge2-sim-real", strategy="mmd", backbone="resnet18")
    assert c["backbone_options"] == {"bottleneck": 256, "bottleneck_layer": "linear",
                                     "stem": "imagenet", "dropout": 0.0, "lr_mult": 10.0}
    # the x10 of the bottleneck and head is declared by the backbone (lr_mult), as the trainer
    # reads it, not repeated in the lr_multipliers table
    from galmerge.models.model import build_model
    from galmerge.training.optim import declared_multipliers

    model = build_model("resnet18", 3, 75, 2, c["backbone_options"])
    assert declared_multipliers(model, {}) == {"model.backbone.bottleneck": 10.0,
                                               "model.head": 10.0}
    assert not any(k.startswith("model.") for k in c["lr_multipliers"])
    assert (c["lr"], c["weight_decay"]) == (1e-3, 1e-3)


def test_ada_alias_and_flags_beat_presets():
    c = resolved(preset="deepmerge2-sim-sim", strategy="ada+fisher+entropy")
    assert c["strategy"] == "dann+fisher+entropy"
    assert (c["lr"], c["weight_decay"]) == (1e-3, 1e-4)
    c = resolved(preset="deepmerge2-sim-real", strategy="mmd", lr=0.5,
                 schedule={"kind": "onecycle"})
    assert c["lr"] == 0.5 and c["schedule"]["kind"] == "onecycle"
    with pytest.raises(GalmergeError, match="available: deepmerge2-sim-real, "):
        resolved(preset="deepmerge3")


def test_values_borrowed_from_another_experiment_say_so():
    from galmerge.config.presets import cited_values

    rows = dict(cited_values("deepmerge2-sim-real", ["dann"], "deepmerge"))
    assert "plain-ADA" in rows["lr"].caveat
    assert rows["strategies.dann.grl"].caveat == ""
    assert all(c.source for c in rows.values())
    rows = dict(cited_values("deepmerge2-sim-sim", ["none"], "resnet18"))
    assert "ResNet18" in rows["lr"].caveat and "experiment" in rows["lr"].caveat
    rows = dict(cited_values("deepmerge2-sim-real", ["coral"], "deepmerge"))
    assert "not one of the paper's methods" in rows["lr"].caveat


def test_synthetic_preset_matches_the_benchmark_configs():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    for strategy in ("mmd+fisher+entropy", "dann+fisher", "none"):
        c = resolved(preset="synthetic-sim-real", strategy=strategy)
        bench = tomllib.loads((root / f"{strategy}.toml").read_text())
        for key in ("epochs", "batch_size", "lr"):
            assert c[key] == bench[key], key
        assert c["backbone_options"]["dropout"] == bench["backbone_options"]["dropout"]
        for name, options in bench.get("strategies", {}).items():
            for option, value in options.items():
                assert c["strategies"][name][option] == value, (name, option)


def test_synthetic_preset_resolves_as_before():
    """The README main job's numbers rest on these values: pinned, whatever the defaults."""
    c = resolved(preset="synthetic-sim-real", strategy="mmd+fisher+entropy")
    assert (c["lr"], c["weight_decay"], c["batch_size"], c["epochs"], c["patience"]) == (
        2e-3, 1e-3, 32, 30, 20)
    assert c["strategies"] == {
        "mmd": {"weight": 0.3, "kernel": "deepmerge", "warmup": 0.0, "align": "auto",
                "class_weights": "off", "target_fraction": 0.0},
        "fisher": {"weight": 0.01, "intra_weight": 0.01, "inter_weight": 0.01, "form": "tr",
                   "reduction": "sum", "warmup": 0.0},
        "entropy": {"weight": 0.3, "include_source": False, "diversity": 1.0, "warmup": 0.0},
    }
    assert c["optimizer"]["amsgrad"] is False
    assert c["schedule"]["kind"] == "onecycle" and c["select_by"] == "source_val_loss"
    assert c["domain_batchnorm"] == "joint"  # the layout it was tuned with (default: separate)
    assert c["target_encoder"] == "shared"  # joint batches: one encoder, align "auto" = both


def test_presets_command_lists_and_cites():
    from click.testing import CliRunner

    from galmerge.cli import cli

    listed = CliRunner().invoke(cli, ["presets"])
    assert listed.exit_code == 0, listed.output
    assert "deepmerge2-sim-real-tl" in listed.output and "synthetic-sim-real" in listed.output
    shown = CliRunner().invoke(cli, ["presets", "deepmerge2-sim-real", "--strategy", "ada"])
    assert shown.exit_code == 0, shown.output
    assert "strategies.dann.grl = 'constant'" in shown.output
    assert "! no sim-real plain-ADA command found" in shown.output
    assert "[A3]" in shown.output
    bad = CliRunner().invoke(cli, ["presets", "nosuch"])
    assert bad.exit_code != 0 and "unknown preset 'nosuch'" in bad.output
    assert "Traceback" not in bad.output


def test_train_says_when_a_paper_preset_borrows_values(tmp_path, monkeypatch):
    """The note comes before training starts; a missing data file then stops the run."""
    from click.testing import CliRunner

    from galmerge.cli import cli

    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path))
    result = CliRunner().invoke(cli, ["train", "--source", "illustris", "--target", "sdss",
                                      "--strategy", "ada", "--preset", "deepmerge2-sim-real",
                                      "--select-by", "source_val_loss",
                                      "--run-dir", str(tmp_path / "r")])
    assert "note: --preset deepmerge2-sim-real: lr, weight_decay" in result.output
    assert "galmerge presets deepmerge2-sim-real --strategy dann --backbone deepmerge" in (
        result.output)
    assert result.exit_code != 0 and "galmerge fetch" in result.output


@pytest.mark.parametrize("preset", ["deepmerge2-sim-sim", "deepmerge2-sim-real"])
def test_paper_presets_keep_the_joint_batchnorm_of_the_authors_code(preset):
    assert resolved(preset=preset, strategy="mmd")["domain_batchnorm"] == "joint"
    assert resolved(strategy="mmd")["domain_batchnorm"] == "separate"  # galmerge's default


@pytest.mark.parametrize("name", ["none", "adabn", "dann+fisher", "mmd+fisher+entropy"])
def test_the_benchmark_configs_train_what_the_preset_trains(name):
    """The README calls benchmarks/configs/*.toml the settings of --preset synthetic-sim-real:
    a default changed later must be pinned in them, or they drift from the preset."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / f"{name}.toml"
    config = resolve_config(file=path)
    preset = resolve_config(cli={"strategy": config["strategy"], "source": config["source"],
                                 "target": config["target"], "preset": "synthetic-sim-real"})
    config.pop("preset"), preset.pop("preset")
    assert config == preset


def test_presets_command_prints_what_synthetic_sim_real_sets():
    """Not just its description: every value, as the run's config.toml will hold it."""
    from click.testing import CliRunner

    from galmerge.cli import cli

    for strategy in ("dann+fisher", "mmd+fisher+entropy", "none"):
        shown = CliRunner().invoke(cli, ["presets", "synthetic-sim-real", "--strategy", strategy])
        assert shown.exit_code == 0, shown.output
        assert "benchmarks/results/da_sim_real.md" in shown.output
        values = [line.strip().split(" = ", 1) for line in shown.output.splitlines()
                  if line.startswith("   ") and " = " in line]
        assert len(values) >= 7, shown.output
        cfg = resolve_config(cli={"source": "synthetic:illustris", "target": "synthetic:sdss",
                                  "strategy": strategy, "preset": "synthetic-sim-real"})
        for key, value in values:
            node = cfg
            *parents, last = (key.split(".", 1) if key.startswith("lr_multipliers.")
                              else key.split("."))
            for part in parents:
                node = node[part]
            assert repr(node[last]) == value, key
    every = CliRunner().invoke(cli, ["presets", "synthetic-sim-real"]).output
    assert "strategies.dann.feature_loss = 'inverted'" in every
    assert "domain_batchnorm = 'joint'" in every and "batch_size = 32" in every


class _TauPlugin:
    """A third-party strategy no preset knows: its values are its record's defaults."""

    @hookimpl
    def register_strategies(self):
        return [Strategy(name="tau-test", description="a plugin strategy",
                         build=lambda context, options: nn.Identity(),
                         options={"weight": Option(0.4, "term weight", min=0.0),
                                  "tau": Option(0.7, "a temperature")})]


@pytest.mark.parametrize("preset", ["deepmerge2-sim-real", "synthetic-sim-real"])
def test_presets_command_shows_a_plugin_strategys_values_and_their_source(register_plugin,
                                                                         preset):
    """Its lines were left out: `presets NAME --strategy mmd+PLUGIN` showed mmd's values only."""
    from click.testing import CliRunner

    from galmerge.cli import cli

    register_plugin(_TauPlugin(), "tau-plugin")
    shown = CliRunner().invoke(cli, ["presets", preset, "--strategy", "mmd+tau-test"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    cfg = resolve_config(cli={**BASE, "strategy": "mmd+tau-test", "preset": preset})
    for key in ("weight", "tau"):
        [line] = [ln for ln in lines if f"strategies.tau-test.{key} = " in ln]
        value = cfg["strategies"]["tau-test"][key]
        assert f"strategies.tau-test.{key} = {value!r}" in line  # what the run trains with
    source = "default of strategy tau-test, from plugin 'tau-plugin'"
    assert source in shown.output
    # in the cited table, on each value's own line; in the tuned one, once after them
    assert (sum(source in ln for ln in lines) == 2) == (preset != "synthetic-sim-real")
    assert "strategies.mmd.kernel = 'deepmerge'" in shown.output  # the preset's own, as before
