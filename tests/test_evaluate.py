"""`galmerge evaluate` on two tiny real runs (`none` and `mmd`), and Grad-CAM on real backbones."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair
from PIL import Image

import galmerge
from galmerge.cli import cli
from galmerge.models.model import build_model, load_model, read_checkpoint

PNGS = (
    "training_curves.png",
    "roc.png",
    "confusion.png",
    "reliability.png",
    "embedding.png",
    "gallery_target.png",
    "gradcam_target.png",
    "selection.png",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    source, target = write_pair(root / "data")
    out = {}
    for strategy in ("none", "mmd"):
        out[strategy] = root / "runs" / strategy
        # one shared encoder: no source stage of its own, so the baseline is runs/none
        tiny_run(out[strategy], source, target, strategy, epochs=3,
                 sets=["target_encoder=shared"])
    return out


@pytest.fixture(scope="module")
def evaluated(runs: dict[str, Path]) -> tuple[Path, str]:
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(runs["mmd"]),
            "--device",
            "cpu",
            "--bootstrap",
            "30",
            "--embedding-points",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    return runs["mmd"] / "report", result.output


def test_every_report_file_exists_and_every_png_is_a_real_image(evaluated) -> None:
    report, _ = evaluated
    for name in (*PNGS, "metrics.json", "report.html"):
        assert (report / name).is_file(), name
    for name in PNGS:
        with Image.open(report / name) as img:
            img.verify()
        with Image.open(report / name) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100, name
        assert pixels.std() > 5, f"{name} is blank"
    html = (report / "report.html").read_text()
    for name in PNGS:
        assert f"data-file='{name}'" in html, name
    assert html.count("data:image/png;base64,") == len(PNGS)
    assert "oracle" in html


def test_metrics_reproduce_the_trainers_test_numbers(runs, evaluated) -> None:
    """Same splits, same model: evaluate's point metrics equal summary.json's."""
    report, output = evaluated
    metrics = json.loads((report / "metrics.json").read_text())
    summary = json.loads((runs["mmd"] / "summary.json").read_text())
    for split in ("source_test", "target_test"):
        ours = metrics["metrics"][split]
        for name, value in summary["metrics"][split].items():
            if value is None:
                assert ours["value"][name] is None
                continue
            assert math.isclose(ours["value"][name], value, abs_tol=1e-5), (split, name)
            low, high = ours["interval_68"][name]
            assert low <= high
        assert ours["bootstrap"] == 30
    assert "source_test" in output and "target_test" in output and "report.html" in output


def test_selection_table_matches_metrics_csv_and_marks_the_oracle(runs, evaluated) -> None:
    report, _ = evaluated
    metrics = json.loads((report / "metrics.json").read_text())
    with (runs["mmd"] / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by_score = {c["score"]: c for c in metrics["selection"]}
    directions = {"source_val_loss": min, "entropy": min, "im": min, "snd": max, "dev": min}
    for score, pick in directions.items():
        values = [float(r[f"score_{score}"]) for r in rows]
        best = values.index(pick(values))
        assert by_score[score]["epoch"] == int(rows[best]["epoch"]), score
        assert by_score[score]["target_val_accuracy"] == pytest.approx(
            float(rows[best]["target_val_accuracy"])
        )
        assert not by_score[score]["oracle"]
    accs = [float(r["target_val_accuracy"]) for r in rows]
    oracle = by_score["oracle_target_accuracy"]
    assert oracle["oracle"] and "oracle" in oracle["label"]
    assert oracle["target_val_accuracy"] == max(accs)
    assert all(c["gap_to_oracle"] >= -1e-12 for c in metrics["selection"])


def test_embedding_includes_the_none_baseline_found_beside_the_run(runs, evaluated) -> None:
    report, _ = evaluated
    metrics = json.loads((report / "metrics.json").read_text())
    assert Path(metrics["baseline"]).resolve() == runs["none"].resolve()
    assert metrics["embedding_method"] in ("t-SNE", "UMAP")


def test_calibrate_writes_the_fitted_temperature_into_the_checkpoint(runs, tmp_path) -> None:
    run = tmp_path / "none-copy"
    shutil.copytree(runs["none"], run, ignore=shutil.ignore_patterns("report"))
    before = read_checkpoint(run / "best.pt")
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(run),
            "--device",
            "cpu",
            "--calibrate",
            "--bootstrap",
            "0",
            "--embedding-points",
            "8",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["applied"] and cal["fitted_temperature"] > 0
    assert cal["source_val_nll"]["fitted"] <= cal["source_val_nll"]["T=1"] + 1e-12
    assert set(cal["ece"]) == {"source_test", "target_test"}
    # importance-weighted calibration (Wang et al. 2020) is reported beside the plain one
    assert cal["importance_weighted_temperature"] > 0
    assert cal["importance_weights"]["fitted"] and cal["importance_weights"]["effective_n"] > 0
    for split in ("source_test", "target_test"):
        assert set(cal["ece"][split]) == {"T=1", "fitted", "importance_weighted"}
        assert set(cal["brier"][split]) == {"T=1", "fitted", "importance_weighted"}
    after = read_checkpoint(run / "best.pt")
    assert after["temperature"] == pytest.approx(cal["fitted_temperature"])
    assert load_model(run).temperature == pytest.approx(cal["fitted_temperature"])
    for key, value in before["model"].items():  # only the temperature changed
        assert torch.equal(value, after["model"][key])
    assert metrics["baseline"] is None  # a `none` run has no baseline of its own
    assert "interval_68" not in metrics["metrics"]["target_test"]  # --bootstrap 0


def test_user_errors_are_one_line(runs, tmp_path) -> None:
    runner = CliRunner()
    cases = [
        (["evaluate", str(tmp_path)], "not a run directory"),
        (
            ["evaluate", str(runs["none"]), "--source", "hdf5:" + str(tmp_path / "gone.h5")],
            "--source",
        ),
        (["evaluate", str(runs["none"]), "--bootstrap", "-1"], "--bootstrap"),
    ]
    for args, needle in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code != 0
        assert needle in result.output, result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_scikit_learn_refuses_is_one_line_before_any_work(runs, seed) -> None:
    """evaluate's seed also seeds t-SNE and the domain classifier (0 to 2**32 - 1): it was a
    traceback from inside numpy or scikit-learn."""
    with pytest.raises(galmerge.GalmergeError, match=r"seed=.*from 0 to 2\*\*32 - 1"):
        galmerge.evaluate(runs["none"], device="cpu", seed=seed, bootstrap=2, quiet=True)


@pytest.mark.parametrize("backbone", ["deepmerge", "resnet18"])
def test_grad_cam_maps_for_built_in_backbones(backbone: str) -> None:
    from galmerge.evaluation.gradcam import grad_cam

    torch.manual_seed(0)
    model = build_model(backbone, 3, 75)
    x = torch.randn(2, 3, 75, 75)
    cams = grad_cam(model, x)
    assert cams.shape == (2, 75, 75)
    assert torch.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert model.training  # the model's mode is restored


@pytest.mark.parametrize("backbone", ["deepmerge", "resnet18"])
def test_grad_cam_maps_are_the_same_for_models_that_compute_the_same_function(backbone) -> None:
    """An offset added to the last convolution's output and removed by the BatchNorm after it
    changes no logit; it must change no map either (Grad-CAM reads the normalised activation)."""
    import copy

    from galmerge.evaluation.gradcam import evidence_maps, last_conv_layer

    torch.manual_seed(0)
    model = build_model(backbone, 3, 32).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    twin = copy.deepcopy(model)
    conv = last_conv_layer(twin)
    modules = list(twin.backbone.modules())
    bn = next(m for m in modules[modules.index(conv):] if isinstance(m, torch.nn.BatchNorm2d))
    delta = torch.linspace(-3, 3, conv.out_channels)
    with torch.no_grad():
        if conv.bias is None:
            conv.bias = torch.nn.Parameter(torch.zeros(conv.out_channels))
        conv.bias += delta
        bn.running_mean += delta
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x)[1], twin(x)[1], atol=1e-5)
    ours, theirs = evidence_maps(model, x), evidence_maps(twin, x)
    assert ours.max() > 0
    assert torch.allclose(ours, theirs, atol=1e-6 * float(ours.max()) + 1e-12)


def test_grad_cam_points_at_the_feature_that_drives_the_merger_logit() -> None:
    """A positive filter and a head that rewards its response: the map peaks on the blob."""
    from torch import nn

    from galmerge.evaluation.gradcam import grad_cam
    from galmerge.models.model import GalaxyClassifier

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.out_features = 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    net = Net()
    with torch.no_grad():
        net.conv.weight.fill_(1 / 9)
        net.conv.bias.zero_()
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        head.bias.zero_()
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 8:11, 20:23] = 5.0
    cam = grad_cam(GalaxyClassifier(net, head), x)[0]
    row, col = divmod(int(cam.argmax()), 32)
    assert 8 <= row <= 10 and 20 <= col <= 22
    assert cam[28:, :5].max() < 0.05  # nothing far from the blob


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["deepmerge", "resnet18"])
def test_sim_to_real_synthetic_runs_end_to_end(backbone: str, tmp_path) -> None:
    """The built-in synthetic surveys at 75x75, a `dann` run (ADDA: its own target encoder)
    and its `none` baseline, the source-only stage it trained first."""
    source, target = "synthetic:illustris?n=60", "synthetic:sdss?n=60"
    tiny_run(tmp_path / "dann", source, target, "dann", epochs=2, backbone=backbone)
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(tmp_path / "dann"),
            "--device",
            "cpu",
            "--bootstrap",
            "20",
            "--embedding-points",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    report = tmp_path / "dann" / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert Path(metrics["baseline"]) == tmp_path / "dann" / "source_only"
    for name in PNGS:
        with Image.open(report / name) as img:
            assert np.asarray(img.convert("RGB"), dtype=np.float64).std() > 5, name


def test_unlabelled_target_gets_a_report_without_target_metrics(tmp_path) -> None:
    """A real-sky target has no labels: metrics are null, the gallery uses predicted classes."""
    import torch as _torch
    from train_toys import toy_sets

    from galmerge.io.hdf5 import write_imageset

    source, target = toy_sets(n_source=40, n_target=40, channels=3, size=16, seed=4)
    target.labels = _torch.full_like(target.labels, -1)
    write_imageset(tmp_path / "s.h5", source)
    write_imageset(tmp_path / "t.h5", target)
    run = tmp_path / "run"
    tiny_run(run, f"hdf5:{tmp_path / 's.h5'}", f"hdf5:{tmp_path / 't.h5'}", "coral", epochs=1)
    shutil.copyfile(tmp_path / "t.h5", tmp_path / "other.h5")  # evaluated on other data
    result = CliRunner().invoke(
        cli,
        ["evaluate", str(run), "--device", "cpu", "--bootstrap", "5", "--embedding-points", "8",
         "--target", f"hdf5:{tmp_path / 'other.h5'}"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    # provenance: the data the metrics are on, evaluate's own seed, the checkpoint's hash
    assert metrics["target"] == f"hdf5:{tmp_path / 'other.h5'}"
    assert metrics["source"] == f"hdf5:{tmp_path / 's.h5'}"
    assert metrics["evaluate_seed"] == 0 and metrics["galmerge_version"]
    assert metrics["checkpoint_sha256"] == hashlib.sha256(
        (run / "best.pt").read_bytes()).hexdigest()
    assert metrics["metrics"]["target_test"]["n"] == 0
    assert all(v is None for v in metrics["metrics"]["target_test"]["value"].values())
    assert metrics["metrics"]["source_test"]["value"]["accuracy"] is not None
    assert (run / "report" / "gallery_target.png").is_file()


def test_evaluate_says_what_it_is_doing_and_reports_the_grad_cam_sanity_check(evaluated) -> None:
    report, output = evaluated
    steps = [line for line in output.splitlines() if line.startswith("evaluate [")]
    assert any("t-SNE" in line for line in steps) and any("Grad-CAM" in line for line in steps)
    assert any("sanity check" in line for line in steps)
    metrics = json.loads((report / "metrics.json").read_text())
    facts = metrics["gradcam"]
    assert facts["explains"].startswith("logit difference")
    assert -1.0 <= facts["randomised_weights_rank_correlation"] <= 1.0
    assert -1.0 <= facts["strength_vs_score_rank_correlation"] <= 1.0
    verdict = "passed" if facts["sanity_check_passed"] else "FAILED"
    assert f"Grad-CAM sanity checks {verdict}" in output
    html = (report / "report.html").read_text()
    assert "Adebayo et al. 2018" in html and "one scale for all maps" in html
    assert "before, the source-only `none` baseline" in html  # the before/after t-SNE
    assert output.rstrip().splitlines()[-1].startswith("report: ")


def test_grad_cam_maps_share_one_scale_and_randomisation_changes_every_weight() -> None:
    from galmerge.evaluation.gradcam import common_scale, randomised_copy

    strong = torch.zeros(1, 20, 20)
    strong[0, 5:8, 5:8] = 10.0
    weak = torch.rand(1, 20, 20) * 0.5  # noise: per-map scaling would stretch it to 1
    maps = torch.cat([strong, weak])
    scaled = (maps / common_scale(maps)).clamp(max=1)
    assert scaled[0].max() == 1.0 and scaled[1].max() < 0.3  # below the lowest contour
    torch.manual_seed(0)
    model = build_model("deepmerge", 3, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = randomised_copy(model, seed=1)
    for name, value in clone.state_dict().items():
        random_init = before[name].unique().numel() > 1  # not BatchNorm's constant 1s and 0s
        if value.is_floating_point() and random_init and "running" not in name:
            assert not torch.equal(value, before[name]), name
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_randomised_copy_changes_no_random_stream_and_repeats_by_seed(monkeypatch) -> None:
    from galmerge.evaluation.gradcam import randomised_copy

    seeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    torch.manual_seed(0)
    model = build_model("deepmerge", 3, 32)
    seeded.clear()
    state = torch.get_rng_state()
    first, second = randomised_copy(model, seed=3), randomised_copy(model, seed=3)
    assert seeded == []  # the GPU generators a run draws dropout from are not reset
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())


def test_gallery_ids_keep_both_ends() -> None:
    from galmerge.evaluation.pipeline import _short

    assert _short("1237648720693755918") == "1237648720693755918"  # a whole SDSS objID
    assert _short("synthetic-sdss-s1-001343") == "synthetic-sdss-s1-001343"
    long = _short("TNG50-snapshot-099-subhalo-0001234567")
    assert long.startswith("TNG50-snaps") and long.endswith("01234567") and "…" in long


def test_grad_cam_strength_must_follow_the_merger_score() -> None:
    from galmerge.evaluation.gradcam import strength_score_correlation

    maps = torch.stack([torch.full((4, 4), float(v)) for v in (1, 2, 3, 4, 5)])
    assert strength_score_correlation(maps, np.array([0.1, 0.5, 1.0, 2.0, 3.0])) > 0.99
    # strongest maps on the images the model calls non-mergers: not evidence for 'merger'
    assert strength_score_correlation(maps, np.array([3.0, 2.0, 1.0, 0.5, 0.1])) < -0.99


def test_the_report_page_is_composed_from_metrics_json_by_the_report_module(evaluated) -> None:
    from galmerge.evaluation.pipeline import _gradcam_caption
    from galmerge.evaluation.report import write_evaluation_report

    report, _ = evaluated
    payload = json.loads((report / "metrics.json").read_text())
    again = write_evaluation_report(report / "again.html", payload,
                                    _gradcam_caption(payload["gradcam"]))
    try:
        assert again.read_text() == (report / "report.html").read_text()
    finally:
        again.unlink()


# --------------------------------------------------------------------------------------------
# the embedding's "before" model (the `none` baseline)


@pytest.fixture(scope="module")
def baseline_runs(runs: dict[str, Path]) -> dict[str, Path]:
    """Beside a copy of the mmd run (seed 0, 3 epochs): a same-seed `none` run of other epochs
    and lr, a seed-1 `none` run of the mmd run's settings, a `none` run on swapped data and a
    resnet18 `none` run."""
    root = runs["mmd"].parent.parent / "baseline"
    config = read_checkpoint(runs["mmd"])["config"]
    source, target = config["source"], config["target"]
    out = {"mmd": root / "c_mmd"}
    shutil.copytree(runs["mmd"], out["mmd"], ignore=shutil.ignore_patterns("report"))
    for name, kw in {
        "other": dict(seed=0, epochs=1, lr=0.01),
        "seed1": dict(seed=1, epochs=3),
        "swapped": dict(seed=0, epochs=1, swap=True),
        "resnet": dict(seed=0, epochs=1, backbone="resnet18", max_steps_per_epoch=1),
    }.items():
        out[name] = root / f"none_{name}"
        pair = (target, source) if kw.pop("swap", False) else (source, target)
        tiny_run(out[name], *pair, "none", sets=["target_encoder=shared"], **kw)
    return out


def _evaluate(run: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--device", "cpu", "--bootstrap", "0",
                                      "--embedding-points", "8", "--quiet", *extra])
    return result.exit_code, result.output


def test_the_automatic_baseline_is_the_none_run_of_the_runs_settings_then_its_seed(
        baseline_runs) -> None:
    """A same-seed `none` run of other epochs and lr loses to a seed-1 `none` run of the run's
    settings; metrics.json and the caption name the run and its one difference, the seed."""
    code, output = _evaluate(baseline_runs["mmd"])
    assert code == 0, output
    report = baseline_runs["mmd"] / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert Path(metrics["baseline"]).resolve() == baseline_runs["seed1"].resolve()
    assert metrics["baseline_name"] == "none_seed1"
    assert metrics["baseline_strategy"] == "none"
    assert metrics["baseline_chosen_by"] == "automatic"
    assert metrics["baseline_differences"] == ["seed=1 (this run 0)"]
    html = (report / "report.html").read_text()
    assert "run none_seed1 (found beside this run;" in html
    assert "seed=1 (this run 0)" in html


def test_an_explicit_baseline_of_other_data_or_backbone_is_refused_in_one_line(
        baseline_runs) -> None:
    for name, needle in (("swapped", "its source"), ("resnet", "its backbone resnet18")):
        code, output = _evaluate(baseline_runs["mmd"], "--baseline", str(baseline_runs[name]))
        assert code != 0
        assert needle in output and "cannot be compared" in output, output
        assert str(baseline_runs[name]) in output
        assert "Traceback" not in output
        assert len(output.strip().splitlines()) == 1, output


def test_an_explicit_baseline_that_is_no_checkpoint_says_what_it_is(baseline_runs,
                                                                    tmp_path) -> None:
    """A TorchScript file (e.g. a `galmerge export`) as --baseline, no config.toml beside it:
    read_checkpoint's own line says what the file is, not a vaguer "no config"."""
    import torch

    other = tmp_path / "elsewhere"
    other.mkdir()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), other / "model.pt")
    code, output = _evaluate(baseline_runs["mmd"], "--baseline", str(other / "model.pt"))
    assert code != 0 and "is a TorchScript archive, not a galmerge checkpoint" in output, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output


def test_an_explicit_baseline_is_named_by_its_strategy_and_differences(
        runs, baseline_runs, tmp_path) -> None:
    """Another strategy's run is drawn as what it is, not as "none, source only"; a `none`
    run of other settings is kept with its differences recorded."""
    run = tmp_path / "mmd-copy"
    shutil.copytree(runs["mmd"], run, ignore=shutil.ignore_patterns("report"))
    code, output = _evaluate(run, "--baseline", str(runs["mmd"]))
    assert code == 0, output
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["baseline_strategy"] == "mmd"
    assert metrics["baseline_chosen_by"] == "--baseline"
    assert metrics["baseline_differences"][0] == "strategy=mmd (not source only)"
    html = (run / "report" / "report.html").read_text()
    assert "strategy mmd, not a source-only run: run mmd" in html
    assert "the source-only `none` baseline" not in html

    code, output = _evaluate(run, "--baseline", str(baseline_runs["other"]))
    assert code == 0, output
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["baseline_strategy"] == "none"
    assert metrics["baseline_differences"] == ["epochs=1 (this run 3)", "lr=0.01 (this run 0.001)"]
