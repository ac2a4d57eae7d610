"""The DeepMerge II presets resolve to the documented values for each strategy and backbone."""

from __future__ import annotations

import pytest

from galmerge.config import resolve_config
from galmerge.errors import GalmergeError

BASE = {"source": "synthetic:illustris", "target": "synthetic:sdss"}


def resolved(**cli):
    return resolve_config(cli={**BASE, **cli})


def test_sim_sim_mmd_fisher_entropy_deepmerge():
    c = resolved(preset="deepmerge2-sim-sim", strategy="mmd+fisher+entropy")
    assert (c["lr"], c["weight_decay"], c["batch_size"], c["epochs"], c["patience"]) == (
        1e-3, 1e-3, 128, 200, 20)
    assert c["optimizer"] == {"betas": [0.7, 0.8], "eps": 1e-8, "amsgrad": True}
    assert c["strategies"]["mmd"]["weight"] == 1.0
    assert c["strategies"]["fisher"]["intra_weight"] == 0.01
    assert c["strategies"]["fisher"]["inter_weight"] == 1.0
    assert c["strategies"]["entropy"]["weight"] == 0.05
    assert c["backbone"] == "deepmerge"


def test_sim_sim_ada_uses_its_weight_decay_and_alias():
    c = resolved(preset="deepmerge2-sim-sim", strategy="ada+fisher+entropy")
    assert c["strategy"] == "dann+fisher+entropy"
    assert (c["lr"], c["weight_decay"]) == (1e-3, 1e-4)
    assert c["strategies"]["dann"]["weight"] == 1.0


def test_sim_real_and_resnet_bottleneck():
    c = resolved(preset="deepmerge2-sim-real", strategy="mmd+fisher+entropy",
                 backbone="resnet18")
    assert (c["lr"], c["weight_decay"]) == (1e-4, 1e-4)
    assert c["backbone_options"]["bottleneck"] == 256
    none = resolved(preset="deepmerge2-sim-real", strategy="none")
    assert none["strategies"] == {"none": {"weight": 1.0}}


def test_flags_beat_presets_and_unknown_preset_is_an_error():
    c = resolved(preset="deepmerge2-sim-real", strategy="mmd", lr=0.5)
    assert c["lr"] == 0.5
    with pytest.raises(GalmergeError, match="available: deepmerge2-sim-real, deepmerge2-sim-sim"):
        resolved(preset="deepmerge3")


def test_paper_presets_keep_the_papers_deepmerge_dropout():
    c = resolved(preset="deepmerge2-sim-real", strategy="mmd")
    assert c["backbone_options"]["dropout"] == 0.5


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
