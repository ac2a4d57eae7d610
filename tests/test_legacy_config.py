"""A run's config.toml from an older galmerge, which lacks settings added since: `train
--config`, `compare` and `evaluate`'s baseline choice read the absent ones at the values its
run trained with (galmerge.config.legacy), a hand-written file at today's defaults."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from test_train_cli import config_of, invoke, toys  # noqa: F401  (toys: a fixture)

import galmerge
from galmerge.cli import cli
from galmerge.config.legacy import LEGACY_VALUES, config_path, with_legacy_values
from galmerge.config.resolve import resolve_config
from galmerge.evaluation.pipeline import find_baseline

BASE = ["--source", "toy:source", "--target", "toy:target", "--backbone", "tiny",
        "--device", "cpu", "--epochs", "1", "--batch-size", "8"]
#: the settings of an entropy run from before per-domain BatchNorm (stop 23), the target's
#: own encoder (stop 28) and entropy's diversity term and warm-up ramp defaults (f103622)
OLD = ["--set", "domain_batchnorm=joint", "--set", "target_encoder=shared",
       "--set", "entropy.diversity=0.0", "--set", "entropy.warmup=0.0"]
#: what a config.toml written before those settings existed lacks
ABSENT = ("domain_batchnorm", "target_encoder", "lr_multipliers", "epoch_steps", "source_path",
          "init_fresh_strategies", "observe", "schedule.kind", "schedule.cycle_length",
          "strategies.entropy.diversity", "strategies.entropy.warmup")


def make_old(run: Path) -> None:
    """Remove ``ABSENT`` from a run's config.toml, as if an older galmerge had written it."""
    config = config_of(run)
    for key in ABSENT:
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    (run / "config.toml").write_text(tomli_w.dumps(config))


def train(run: Path, strategy: str, seed: int, sets: list[str]) -> None:
    galmerge.train(source="toy:source", target="toy:target", strategy=strategy, backbone="tiny",
                   epochs=1, batch_size=8, device="cpu", quiet=True, seed=seed, run_dir=run,
                   sets=sets)


def test_an_older_runs_config_trains_with_the_values_its_run_trained_with(toys, tmp_path):  # noqa: F811
    old = tmp_path / "old"
    assert invoke("train", *BASE, "--quiet", "--strategy", "entropy", *OLD,
                  "--run-dir", str(old)).exit_code == 0
    make_old(old)
    again = invoke("train", "--config", str(old / "config.toml"), "--run-dir",
                   str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    config = config_of(tmp_path / "again")
    assert (config["domain_batchnorm"], config["target_encoder"]) == ("joint", "shared")
    assert config["strategies"]["entropy"] == config_of(old)["strategies"]["entropy"] | {
        "diversity": 0.0, "warmup": 0.0}
    assert not (tmp_path / "again" / "source_only").exists()  # no own encoder, no stage
    notes = [line for line in again.output.splitlines() if "before these settings" in line]
    assert len(notes) == 1, again.output
    for shown in ("domain_batchnorm=joint", "target_encoder=shared", "entropy.diversity=0.0",
                  "entropy.warmup=0.0"):
        assert shown in notes[0], notes[0]
    assert "epoch_steps" not in notes[0]  # filled, but today's default is the same
    # a flag still wins, and a setting it decides is not named
    flag = invoke("train", "--config", str(old / "config.toml"), "--set",
                  "entropy.diversity=0.5", "--run-dir", str(tmp_path / "flag"))
    assert flag.exit_code == 0, flag.output
    assert config_of(tmp_path / "flag")["strategies"]["entropy"]["diversity"] == 0.5
    assert "entropy.diversity" not in flag.output and "domain_batchnorm=joint" in flag.output
    # the same file, hand-written (no run beside it): today's defaults, no note
    hand = tmp_path / "hand" / "config.toml"
    hand.parent.mkdir()
    shutil.copy(old / "config.toml", hand)
    fresh = invoke("train", "--config", str(hand), "--run-dir", str(tmp_path / "fresh"))
    assert fresh.exit_code == 0, fresh.output
    config = config_of(tmp_path / "fresh")
    assert (config["domain_batchnorm"], config["target_encoder"]) == ("separate", "separate")
    assert config["strategies"]["entropy"]["diversity"] == 1.0
    assert "before these settings" not in fresh.output


def test_resume_continues_an_older_run_with_the_values_it_trained_with(toys, tmp_path):  # noqa: F811
    import torch

    from galmerge.models.model import save_checkpoint

    settings = dict(source="toy:source", target="toy:target", strategy="entropy", epochs=3,
                    backbone="tiny", batch_size=8, device="cpu", quiet=True, patience=0,
                    sets=OLD[1::2])
    galmerge.train(run_dir=tmp_path / "ref", **settings)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        galmerge.train(run_dir=tmp_path / "old", on_epoch=stop, **settings)
    run = tmp_path / "old"
    make_old(run)  # and last.pt's copy of the config, as the older galmerge wrote it
    payload = torch.load(run / "last.pt", weights_only=True)
    for key in ("diversity", "warmup"):
        payload["config"]["strategies"]["entropy"].pop(key)
    save_checkpoint(run / "last.pt", payload)
    galmerge.train(resume=run, quiet=True)

    def rows(folder: Path) -> list[dict[str, str]]:
        with (folder / "metrics.csv").open() as fh:
            return [{k: v for k, v in r.items() if k != "images_per_s"}
                    for r in csv.DictReader(fh)]

    assert rows(run) == rows(tmp_path / "ref")


def test_compare_groups_an_older_run_with_a_run_of_the_same_settings(toys, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    for seed in (1, 2):
        train(runs / f"old-like-{seed}", "entropy", seed, OLD[1::2])
    train(runs / "today", "entropy", 3, ["target_encoder=shared"])  # separate BatchNorm
    make_old(runs / "old-like-2")
    out = tmp_path / "table.csv"
    result = CliRunner().invoke(cli, ["compare", str(runs), "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["runs"], r["seeds"]) for r in rows) == [("1", "3"), ("2", "1;2")], rows


def test_evaluate_chooses_an_older_none_run_of_the_same_settings_as_baseline(toys, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    train(runs / "adapted", "entropy", 1, OLD[1::2])
    train(runs / "a-none-seed-2", "none", 2, [])
    train(runs / "b-none-seed-1", "none", 1, [])
    make_old(runs / "b-none-seed-1")  # the same settings and seed, written by an older galmerge
    assert find_baseline(runs / "adapted") == runs / "b-none-seed-1"


def test_every_legacy_value_is_a_valid_setting_of_its_strategy_or_backbone(plugin_manager):
    """A key in the table that no longer exists, or a value today's checks refuse, is a typo."""
    for key in LEGACY_VALUES:
        head, _, rest = key.partition(".")
        record = {"strategy": rest.split(".")[0]} if head == "strategies" else {}
        if head == "backbones":
            record = {"backbone": rest.split(".")[0]}
        filled = with_legacy_values({"source": "toy:source", "target": "toy:target", **record})
        resolved = resolve_config(file=filled)
        node = resolved
        for part in config_path(key):
            node = node[part]
        assert node == LEGACY_VALUES[key], key


def test_an_older_preset_runs_record_keeps_one_adam_group(plugin_manager):
    """A preset's learning-rate multipliers sit below the record's filled ``{"*": 1.0}``: the
    ones the preset pins today are filled at 1 too (runs before them had one Adam group)."""
    record = {"source": "toy:source", "target": "toy:target", "strategy": "mmd+fisher+entropy",
              "backbone": "deepmerge", "preset": "deepmerge2-sim-real-tl"}
    config = resolve_config(file=record, legacy=True)
    assert config["lr_multipliers"] == {"*": 1.0, "fisher.centers": 1.0}
    assert (config["epoch_steps"], config["init_fresh_strategies"]) == ("floor", [])
    assert config["strategies"]["entropy"]["include_source"] is False
    today = resolve_config(file=record)
    assert today["lr_multipliers"] == {"fisher.centers": 10.0}
    assert (today["epoch_steps"], today["init_fresh_strategies"]) == ("ceil", ["fisher"])


def test_tune_takes_an_older_runs_record_at_the_values_its_run_trained_with(toys, tmp_path):  # noqa: F811
    old = tmp_path / "old"
    assert invoke("train", *BASE, "--quiet", "--strategy", "entropy", *OLD,
                  "--run-dir", str(old)).exit_code == 0
    make_old(old)
    pytest.importorskip("optuna")
    from galmerge.training.tuning import tune

    study = tmp_path / "study"
    tune("toy:source", "toy:target", "entropy", 1, study, config=old / "config.toml",
                  space={"lr": 0.001, "weight_decay": 0.001, "epochs": 1, "entropy": {
                      "weight": 1.0}}, quiet=True)
    with (study / "trials.csv").open() as fh:
        trial = next(csv.DictReader(fh))
    config = config_of(study / trial["run_dir"])
    assert (config["domain_batchnorm"], config["target_encoder"]) == ("joint", "shared")
    assert config["strategies"]["entropy"]["warmup"] == 0.0
