"""`galmerge compare`: its numbers against the runs' summary.json files, computed here."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair

from galmerge.cli import cli

NAMES = ("accuracy", "precision", "recall", "f1", "brier", "auc")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeds of `none` and two of `coral` on the same data (one epoch each)."""
    root = tmp_path_factory.mktemp("compare")
    source, target = write_pair(root / "data", n=40)
    for strategy in ("none", "coral"):
        for seed in (1, 2):
            tiny_run(root / "runs" / f"{strategy}-{seed}", source, target, strategy, seed, epochs=1)
    return root / "runs"


def _summaries(folder: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*/summary.json")):
        s = json.loads(path.read_text())
        out.setdefault(s["strategy"], []).append(s)
    return out


def _float(text: str) -> float:
    return float("nan") if text in ("", "nan") else float(text)


def test_csv_numbers_are_mean_and_std_over_seeds_of_summary_json(runs, tmp_path) -> None:
    out = tmp_path / "table.csv"
    result = CliRunner().invoke(cli, ["compare", f"{runs}/*", "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    summaries = _summaries(runs)
    assert set(rows) == set(summaries) == {"none", "coral"}
    for strategy, members in summaries.items():
        row = rows[strategy]
        assert int(row["runs"]) == 2 and row["seeds"] == "1;2"
        for split in ("source_test", "target_test"):
            for name in NAMES:
                values = [m["metrics"][split][name] for m in members]
                if any(v is None for v in values):
                    continue
                assert _float(row[f"{split}_{name}_mean"]) == pytest.approx(
                    statistics.mean(values), abs=1e-12
                )
                assert _float(row[f"{split}_{name}_std"]) == pytest.approx(
                    statistics.stdev(values), abs=1e-12
                )
    gain = statistics.mean(
        m["metrics"]["target_test"]["accuracy"] for m in summaries["coral"]
    ) - statistics.mean(m["metrics"]["target_test"]["accuracy"] for m in summaries["none"])
    assert _float(rows["coral"]["target_accuracy_gain_over_none"]) == pytest.approx(gain, abs=1e-12)
    assert _float(rows["none"]["target_accuracy_gain_over_none"]) == 0.0
    assert "coral" in result.output and "none" in result.output


def test_markdown_table_shows_mean_plus_minus_std(runs, tmp_path) -> None:
    out = tmp_path / "table.md"
    dirs = [str(p) for p in sorted(runs.iterdir())]
    result = CliRunner().invoke(cli, ["compare", *dirs, "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # header + one row per strategy
    coral = next(line for line in lines if line.startswith("| coral "))
    members = _summaries(runs)["coral"]
    acc = [m["metrics"]["target_test"]["accuracy"] for m in members]
    assert f"{statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f}" in coral
    assert lines[1].startswith("| none ")  # the baseline comes first


def _fake_summary(folder: Path, strategy: str, backbone: str, seed: int, acc: float) -> None:
    m = {n: acc for n in NAMES}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "source": "synthetic:illustris",
                "target": "synthetic:sdss",
                "strategy": strategy,
                "backbone": backbone,
                "seed": seed,
                "epochs_run": 1,
                "best_epoch": 1,
                "train_images_per_s": 1.0,
                "metrics": {"source_test": m, "target_test": m},
            }
        )
    )


def test_groups_by_backbone_and_gain_needs_a_matching_none_run(tmp_path) -> None:
    _fake_summary(tmp_path / "a", "none", "deepmerge", 0, 0.6)
    _fake_summary(tmp_path / "b", "mmd", "deepmerge", 0, 0.7)
    _fake_summary(tmp_path / "c", "mmd", "resnet18", 0, 0.9)
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(cli, ["compare", str(tmp_path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = {(r["strategy"], r["backbone"]): r for r in csv.DictReader(fh)}
    assert _float(rows[("mmd", "deepmerge")]["target_accuracy_gain_over_none"]) == pytest.approx(
        0.1
    )
    assert rows[("mmd", "resnet18")]["target_accuracy_gain_over_none"] == "nan"
    assert rows[("mmd", "resnet18")]["target_test_accuracy_std"] == "nan"  # one seed: no spread


def test_compare_user_errors_are_one_line(tmp_path) -> None:
    runner = CliRunner()
    for args, needle in (
        (["compare", str(tmp_path / "nothing-*")], "no run directory matches"),
        (["compare", str(tmp_path)], "no finished run"),
        (["compare", str(tmp_path), "--output", str(tmp_path / "t.txt")], ".md or .csv"),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code != 0
        assert needle in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    for i, metrics in enumerate((5, {"target_test": {"accuracy": "x"}}, {"target_test": 1})):
        run = tmp_path / f"bad{i}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(
            {"source": "a", "target": "b", "strategy": "none", "backbone": "x",
             "metrics": metrics}))
        result = runner.invoke(cli, ["compare", str(run)])
        assert result.exit_code != 0 and "is not split -> metric -> number" in result.output
        assert "Traceback" not in result.output, result.output


def test_terminal_table_fits_80_columns_and_shows_epochs_and_preset(runs, tmp_path) -> None:
    import shutil
    import tomllib

    import tomli_w

    # one `coral` run as if trained longer with a preset: never averaged with the others
    other = tmp_path / "coral-long"
    shutil.copytree(runs / "coral-1", other)
    config = tomllib.loads((other / "config.toml").read_text())
    config.update(epochs=30, preset="synthetic-sim-real")
    (other / "config.toml").write_text(tomli_w.dumps(config))
    result = CliRunner().invoke(cli, ["compare", f"{runs}/*", str(other)],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), result.output
    assert "…" not in result.output  # no cell cut to "0.…"
    text = " ".join(result.output.split())
    summaries = _summaries(runs)
    acc = [m["metrics"]["target_test"]["accuracy"] for m in summaries["coral"]]
    assert f"{statistics.mean(acc):.3f}" in text and f"±{statistics.stdev(acc):.3f}" in text
    assert "1 epoch " in text and "30 epochs" in text and "synthetic-sim-real" in text
    assert "differ in epochs or preset" in text
    assert sum(1 for line in lines if line.strip().startswith("coral")) == 2


def test_compare_replaces_its_own_table_but_no_other_file(runs, tmp_path) -> None:
    out = tmp_path / "table.csv"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["compare", f"{runs}/*", "--output", str(out)])
        assert result.exit_code == 0, result.output
    mine = tmp_path / "results.csv"  # e.g. a classify output
    mine.write_text("objid,p_merger,is_merger,status\n1,0.3,0,ok\n")
    result = CliRunner().invoke(cli, ["compare", f"{runs}/*", "--output", str(mine)])
    assert result.exit_code != 0 and "is not a galmerge compare table" in result.output
    assert "Traceback" not in result.output
    assert mine.read_text() == "objid,p_merger,is_merger,status\n1,0.3,0,ok\n"


def _with_config(folder: Path, text: str) -> None:
    (folder / "config.toml").write_text(text)


def test_runs_of_other_settings_are_not_averaged_and_the_baseline_rule_is_fixed(
        tmp_path) -> None:
    """A `dann` run at lr 0.01 was averaged with one at 0.001 (and a repeated seed counted as
    a second seed); a gain against a `none` of other epochs depended on folder order."""
    for name, strategy, seed, acc, config in [
        ("n2", "none", 0, 0.5, "epochs = 2\nlr = 0.001\n"),
        ("n3", "none", 0, 0.7, "epochs = 3\nlr = 0.001\n"),
        ("d-a", "dann", 1, 0.6, "epochs = 4\nlr = 0.001\nseed = 1\n"),
        ("d-b", "dann", 1, 0.62, "epochs = 4\nlr = 0.001\nseed = 1\n"),
        ("d-c", "dann", 1, 0.9, "epochs = 4\nlr = 0.01\nseed = 1\n"),
    ]:
        _fake_summary(tmp_path / "runs" / name, strategy, "deepmerge", seed, acc)
        _with_config(tmp_path / "runs" / name, config)
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = {(r["strategy"], r["settings"] or r["epochs"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {("none", "2"), ("none", "3"), ("dann", "lr=0.001"), ("dann", "lr=0.01")}
    assert rows[("dann", "lr=0.001")]["runs"] == "2"
    assert _float(rows[("dann", "lr=0.001")]["target_test_accuracy_mean"]) == pytest.approx(0.61)
    assert _float(rows[("dann", "lr=0.01")]["target_test_accuracy_mean"]) == pytest.approx(0.9)
    # no `none` of 4 epochs: the closest (3 epochs), named, whatever the folders are called
    assert rows[("dann", "lr=0.01")]["baseline"] == "none (3 epochs)"
    assert _float(rows[("dann", "lr=0.01")]["target_accuracy_gain_over_none"]) == \
        pytest.approx(0.2)
    assert rows[("dann", "lr=0.001")]["repeated_seeds"] == "1"
    assert "seeds 1 repeated" in result.output and "gain over none (3 epochs)" \
        in result.output
    (tmp_path / "runs" / "n3").rename(tmp_path / "runs" / "a-n3")  # sorts first now
    out2 = tmp_path / "t2.csv"
    assert CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--output", str(out2)]
                              ).exit_code == 0
    with out2.open() as fh:
        again = {(r["strategy"], r["settings"] or r["epochs"]): r for r in csv.DictReader(fh)}
    assert again[("dann", "lr=0.01")]["target_accuracy_gain_over_none"] == \
        rows[("dann", "lr=0.01")]["target_accuracy_gain_over_none"]


def test_runs_of_other_observe_or_lr_multipliers_are_separate_rows(tmp_path) -> None:
    """A plain run, one with [observe] and one with lr_multipliers.model=0.1 were one row; the
    seeds of a sky_sigma = "auto" configuration (numbers measured per seed) stay one row."""
    plain = '[observe]\npsf_fwhm = [0.0, 0.0]\nsky_sigma = "none"\n'
    observed = "[observe]\npsf_fwhm = [1.0, 2.0]\nsky_sigma = [%s, 0.03, 0.04]\n"
    for name, seed, acc, config in [
        ("plain", 1, 0.5, plain),
        ("obs1", 2, 0.6, observed % "0.0228659"),
        ("obs2", 3, 0.7, observed % "0.0229027"),
        ("lrmult", 4, 0.8, plain + "[lr_multipliers]\nmodel = 0.1\n"),
    ]:
        _fake_summary(tmp_path / "runs" / name, "none", "deepmerge", seed, acc)
        _with_config(tmp_path / "runs" / name, "epochs = 2\n" + config)
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "runs"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = {r["seeds"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"1", "2;3", "4"}
    assert _float(rows["2;3"]["target_test_accuracy_mean"]) == pytest.approx(0.65)
    assert "observe.psf_fwhm=[1.0, 2.0]" in rows["2;3"]["settings"]
    assert "lr_multipliers.model=0.1" in rows["4"]["settings"]
    assert rows["2;3"]["varying"] == "observe.sky_sigma"
    assert "differ in observe.sky_sigma" in result.output


def test_a_metric_some_runs_lack_says_over_how_many_runs(tmp_path) -> None:
    """`runs` counted every run while a metric's mean skipped the runs without it (AUC of a
    one-class test split is null): the table showed 3 runs for an AUC of one."""
    for name, seed, auc in [("a", 1, 0.8), ("b", 2, None), ("c", 3, None)]:
        _fake_summary(tmp_path / "runs" / name, "none", "deepmerge", seed, 0.6)
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        summary["metrics"]["target_test"]["auc"] = auc
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps(summary))
    out, md = tmp_path / "t.csv", tmp_path / "t.md"
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", str(tmp_path / "runs"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "1/3 runs" in result.output
    with out.open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["runs"], row["target_test_auc_runs"], row["target_test_accuracy_runs"]) == \
        ("3", "1", "3")
    assert runner.invoke(cli, ["compare", str(tmp_path / "runs"), "--output", str(md)]
                         ).exit_code == 0
    assert "0.800 (1 of 3 runs)" in md.read_text()


def test_credentials_in_runs_made_before_they_were_hidden_are_not_shown(tmp_path) -> None:
    """Runs of older releases recorded a survey URL's user name and password in summary.json:
    no table, CSV or terminal line of `compare` repeats them."""
    _fake_summary(tmp_path / "a", "none", "deepmerge", 0, 0.6)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    summary["target"] = "sdss?sas_url=https://ann:s3cret@sas.example.org/dr17"
    (tmp_path / "a" / "summary.json").write_text(json.dumps(summary))
    out, md = tmp_path / "t.csv", tmp_path / "t.md"
    written = ""
    for table in (out, md):
        result = CliRunner().invoke(cli, ["compare", str(tmp_path), "--output", str(table)])
        assert result.exit_code == 0, result.output
        written += table.read_text() + result.output
    assert "s3cret" not in written and "ann:" not in written
    assert "***@sas.example.org" in out.read_text()


def test_runs_from_before_and_after_paths_were_recorded_absolute_share_a_row(
        tmp_path, monkeypatch) -> None:
    """A run from before recorded `hdf5:data/s.h5` as typed; one from after records the same
    file absolute. Both are one data set: `compare` puts them in one group (so the gain over
    `none` is found) and shows the path as typed from the project folder."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for name in ("s.h5", "t.h5"):
        (project / "data" / name).write_bytes(b"")
    monkeypatch.chdir(project)
    full = {k: f"hdf5:{project / 'data' / n}" for k, n in (("source", "s.h5"), ("target", "t.h5"))}
    for folder, strategy, specs in (("old", "none", {"source": "hdf5:data/s.h5",
                                                     "target": "hdf5:data/t.h5"}),
                                    ("new", "mmd", full)):
        _fake_summary(project / "runs" / folder, strategy, "deepmerge", 0, 0.6)
        summary_path = project / "runs" / folder / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary.update(specs)
        summary_path.write_text(json.dumps(summary))
        (project / "runs" / folder / "config.toml").write_text(
            f'source = "{specs["source"]}"\ntarget = "{specs["target"]}"\nepochs = 1\n')
        # the files the run read, as env.json records them (the hdf5 survey's meta.file)
        (project / "runs" / folder / "env.json").write_text(json.dumps({"data": {
            role: {"meta": {"file": full[role].removeprefix("hdf5:")}}
            for role in ("source", "target")}}))
    out = project / "t.csv"
    result = CliRunner().invoke(cli, ["compare", "runs", "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["source"], r["target"]) for r in rows} == {("hdf5:data/s.h5", "hdf5:data/t.h5")}
    mmd = next(r for r in rows if r["strategy"] == "mmd")
    assert _float(mmd["target_accuracy_gain_over_none"]) == pytest.approx(0.0)
