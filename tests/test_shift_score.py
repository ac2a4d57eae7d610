"""Per-galaxy shift score (`galmerge.models.shift`) and MC-dropout, through `galmerge train` and
`galmerge classify` on a tiny real run."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair

from galmerge.cli import cli
from galmerge.io.hdf5 import read_imageset, write_imageset
from galmerge.models import shift as shift_score
from galmerge.plugin.imageset import ImageSet


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shift")
    source, target = write_pair(root / "data", n=80)
    tiny_run(root / "run", source, target, "none", epochs=1, max_steps_per_epoch=2)
    return {"root": root, "run": root / "run", "target": root / "data" / "target.h5",
            "source": root / "data" / "source.h5"}


def _classify(model: Path, catalog: Path, output: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["classify", str(catalog), "--model", str(model), "--output",
                                   str(output), "--device", "cpu", *extra])
    return res.exit_code, res.output


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _reference_scores(run: Path, images: np.ndarray, domain: str) -> np.ndarray:
    """The documented formula, evaluated with the full covariance matrix and a linear solve."""
    from galmerge.models.inference import forward_in_batches
    from galmerge.models.model import load_model

    loaded = load_model(run / "best.pt")
    stats, _ = shift_score.load(run, None)
    assert stats is not None
    iset = ImageSet(images=torch.from_numpy(images), labels=torch.full((len(images),), -1),
                    ids=np.arange(len(images)), bands=("g", "r", "i"), survey="x")
    feats, _ = forward_in_batches(loaded.model, iset, np.arange(len(images)),
                                  loaded.preprocess[domain])
    f = feats.double().numpy()
    v = stats["components"].astype(np.float64)
    lam = stats["eigenvalues"].astype(np.float64)
    sigma2 = float(stats["sigma2"])
    cov = v @ np.diag(lam) @ v.T + sigma2 * (np.eye(len(v)) - v @ v.T)
    d2 = []
    for mu in stats["means"].astype(np.float64):
        diff = f - mu
        d2.append(np.einsum("nd,nd->n", diff, np.linalg.solve(cov, diff.T).T))
    return np.sqrt(np.min(d2, axis=0) / f.shape[1])


def test_train_records_the_statistics_and_every_format_gets_the_same_scores(run, tmp_path):
    summary = json.loads((run["run"] / "summary.json").read_text())
    data = (run["run"] / shift_score.STATS_FILE).read_bytes()
    assert summary[shift_score.SUMMARY_KEY] == hashlib.sha256(data).hexdigest()
    with np.load(run["run"] / shift_score.STATS_FILE, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        threshold = float(z["threshold"])
        val = z["val_scores"]
        assert meta["checkpoint_sha256"] == summary["best_sha256"]
    # the source training split of write_pair(n=80): 70%, both classes
    assert meta["classes"] == [0, 1] and meta["n_train"] > meta["n_val"] == len(val) > 0
    assert threshold == pytest.approx(np.quantile(val, 0.99))

    scores = {}
    for suffix in ("csv", "h5", "fits", "parquet"):
        code, text = _classify(run["run"], run["target"], tmp_path / f"o.{suffix}", "--quiet")
        assert code == 0, text
    rows = _csv(tmp_path / "o.csv")
    assert list(rows[0])[-5:] == ["p_merger", "is_merger", "status", "shift_score",
                                  "shift_flag"]
    scores["csv"] = np.array([float(r["shift_score"]) for r in rows])
    flags = np.array([int(r["shift_flag"]) for r in rows])
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert json.loads(f.attrs["columns"])[-2:] == ["shift_score", "shift_flag"]
        scores["h5"] = f["shift_score"][()]
        assert (f["shift_flag"][()] == flags).all()
        assert f.attrs["shift_threshold"] == pytest.approx(threshold)
    from astropy.io import fits

    with fits.open(tmp_path / "o.fits") as hdul:
        scores["fits"] = np.asarray(hdul[1].data["shift_score"])
        assert hdul[1].header["SHIFTTHR"] == pytest.approx(threshold)
    import pyarrow.parquet as pq

    scores["parquet"] = pq.read_table(tmp_path / "o.parquet").column("shift_score").to_numpy()
    for name, values in scores.items():
        assert values == pytest.approx(scores["h5"], rel=1e-5), name
    assert ((scores["h5"] > threshold) == flags.astype(bool)).all()
    prov = json.loads((tmp_path / "o.csv.provenance.json").read_text())
    assert prov["shift_threshold"] == pytest.approx(threshold)
    assert prov["shift_stats_sha256"] == summary[shift_score.SUMMARY_KEY]
    # the documented formula (full covariance, linear solve) gives the same numbers
    images = read_imageset(run["target"]).images.numpy()
    assert scores["h5"] == pytest.approx(_reference_scores(run["run"], images, "target"),
                                         rel=2e-3)


def test_artefact_stamps_are_flagged(run, tmp_path):
    rng = np.random.default_rng(0)
    galaxies = read_imageset(run["source"]).images.numpy()[:40]
    sky = rng.normal(0, galaxies[:, :, :2].std(), galaxies.shape).astype(np.float32)
    art = sky.copy()
    art[:20, :, :, 7] += 50 * galaxies.max()  # a hot column
    yy, xx = np.mgrid[0:16, 0:16]
    art[20:] += (50 * galaxies.max() * np.exp(-((yy - 7.5) ** 2 + (xx - 7.5) ** 2) / 2))[None,
                                                                                       None]
    path = tmp_path / "art.h5"
    write_imageset(path, ImageSet(images=torch.from_numpy(art), labels=torch.full((40,), -1),
                                  ids=np.arange(40), bands=("g", "r", "i"), survey="x"))
    code, text = _classify(run["run"], path, tmp_path / "a.csv", "--quiet", "--domain", "source")
    assert code == 0, text
    code, text = _classify(run["run"], run["source"], tmp_path / "s.csv", "--quiet", "--domain",
                           "source")
    assert code == 0, text
    art_rows, src_rows = _csv(tmp_path / "a.csv"), _csv(tmp_path / "s.csv")
    assert all(r["shift_flag"] == "1" for r in art_rows)
    assert np.mean([r["shift_flag"] == "1" for r in src_rows]) < 0.2
    assert min(float(r["shift_score"]) for r in art_rows) > max(
        float(r["shift_score"]) for r in src_rows)


def test_a_run_without_statistics_says_so_once_and_leaves_the_columns_out(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run["run"], old)
    (old / shift_score.STATS_FILE).unlink()
    code, text = _classify(old, run["target"], tmp_path / "o.csv")
    assert code == 0, text
    assert text.count("no shift_stats.npz") == 1 and "trained before shift scores" in text
    assert list(_csv(tmp_path / "o.csv")[0])[-3:] == ["p_merger", "is_merger", "status"]
    (old / "summary.json").unlink()  # a run killed before its end: resume it, it is not old
    code, text = _classify(old, run["target"], tmp_path / "q.csv")
    assert code == 0 and "its run has not finished" in text and "--resume" in text, text
    # a bare checkpoint copied elsewhere: no statistics beside it either
    code, text = _classify(old / "best.pt", run["target"], tmp_path / "p.h5", "--quiet")
    assert code == 0, text
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert "shift_score" not in json.loads(f.attrs["columns"])


def test_damaged_or_stale_statistics(run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run["run"], bad)
    stats = bad / shift_score.STATS_FILE
    raw = bytearray(stats.read_bytes())
    raw[-40] ^= 0xFF
    stats.write_bytes(bytes(raw))
    code, text = _classify(bad, run["target"], tmp_path / "o.csv", "--quiet")
    assert code == 1 and "damaged" in text and "shift_stats.npz" in text
    assert len(text.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()
    # fitted for another checkpoint (e.g. best.pt replaced since): no score, a note
    with np.load(run["run"] / shift_score.STATS_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    sha = shift_score.save(stats, arrays, {**meta, "checkpoint_sha256": "0" * 64})
    summary = json.loads((bad / "summary.json").read_text())
    (bad / "summary.json").write_text(json.dumps({**summary, shift_score.SUMMARY_KEY: sha}))
    code, text = _classify(bad, run["target"], tmp_path / "o.csv")
    assert code == 0 and "fitted for another checkpoint" in text
    assert "shift_score" not in _csv(tmp_path / "o.csv")[0]
    # not an npz of ours: one line
    stats.write_bytes(b"PK\x03\x04 not really a zip")
    (bad / "summary.json").write_text(json.dumps(summary | {shift_score.SUMMARY_KEY: None}))
    code, text = _classify(bad, run["target"], tmp_path / "o.csv", "--quiet")
    assert code == 1 and "cannot read" in text and len(text.strip().splitlines()) == 1


def test_mc_dropout_mean_and_spread(run, tmp_path):
    code, text = _classify(run["run"], run["target"], tmp_path / "det.csv", "--quiet")
    assert code == 0, text
    code, text = _classify(run["run"], run["target"], tmp_path / "mc.csv", "--quiet",
                           "--mc-dropout", "8")
    assert code == 0, text
    det, mc = _csv(tmp_path / "det.csv"), _csv(tmp_path / "mc.csv")
    assert list(mc[0])[-3:] == ["shift_score", "shift_flag", "p_merger_std"]
    std = np.array([float(r["p_merger_std"]) for r in mc])
    assert (std > 0).all()
    # shift scores come from the deterministic pass: the same as without MC-dropout
    assert [r["shift_score"] for r in mc] == [r["shift_score"] for r in det]
    p_det = np.array([float(r["p_merger"]) for r in det])
    p_mc = np.array([float(r["p_merger"]) for r in mc])
    assert not np.allclose(p_det, p_mc, atol=1e-7)
    # the draws are seeded by the stamps: a second run writes the same file
    code, text = _classify(run["run"], run["target"], tmp_path / "mc2.csv", "--quiet",
                           "--mc-dropout", "8")
    assert code == 0 and (tmp_path / "mc2.csv").read_bytes() == (tmp_path / "mc.csv").read_bytes()
    prov = json.loads((tmp_path / "mc.csv.provenance.json").read_text())
    assert prov["mc_dropout"] == 8
    # ... and other batches and chunks: each stamp's masks are seeded by its own bytes
    code, text = _classify(run["run"], run["target"], tmp_path / "mc3.csv", "--quiet",
                           "--mc-dropout", "8", "--batch-size", "7", "--chunk-rows", "13")
    assert code == 0, text
    p3 = np.array([float(r["p_merger"]) for r in _csv(tmp_path / "mc3.csv")])
    s3 = np.array([float(r["p_merger_std"]) for r in _csv(tmp_path / "mc3.csv")])
    np.testing.assert_allclose(p3, p_mc, atol=2e-6)
    np.testing.assert_allclose(s3, std, atol=2e-6)


@pytest.mark.parametrize(("args", "message"), [
    (["--mc-dropout", "1"], "from 2 to 1000"),
    (["--mc-dropout", "0"], "from 2 to 1000"),
    (["--mc-dropout", "3", "--model", "{run2}"], "not both"),
])
def test_mc_dropout_user_errors_are_one_line(run, tmp_path, args, message):
    args = [a.replace("{run2}", str(tmp_path / "other")) for a in args]
    code, text = _classify(run["run"], run["target"], tmp_path / "o.csv", "--quiet", *args)
    assert code != 0 and message in text
    assert len(text.strip().splitlines()) == 1


def test_mc_dropout_needs_a_backbone_with_dropout(run, tmp_path):
    plain = tmp_path / "plain"
    tiny_run(plain, f"hdf5:{run['source']}", f"hdf5:{run['target']}", "none", epochs=1,
             max_steps_per_epoch=1, backbone_options={"dropout": 0.0})
    code, text = _classify(plain, run["target"], tmp_path / "o.csv", "--quiet", "--mc-dropout",
                           "4")
    assert code == 1 and "no dropout layer" in text and len(text.strip().splitlines()) == 1


def test_exported_onnx_model_computes_the_score_in_its_graph(run, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["export", str(run["run"]), "--output", str(onnx_file)])
    assert res.exit_code == 0, res.output
    code, text = _classify(onnx_file, run["target"], tmp_path / "onnx.csv", "--quiet")
    assert code == 0, text
    code, text = _classify(run["run"], run["target"], tmp_path / "torch.csv", "--quiet")
    assert code == 0, text
    got, want = _csv(tmp_path / "onnx.csv"), _csv(tmp_path / "torch.csv")
    assert list(got[0]) == list(want[0])
    assert np.array([float(r["shift_score"]) for r in got]) == pytest.approx(
        np.array([float(r["shift_score"]) for r in want]), rel=1e-4)
    # a run without statistics exports without the output; classify says so once
    old = tmp_path / "old"
    shutil.copytree(run["run"], old)
    (old / shift_score.STATS_FILE).unlink()
    res = CliRunner().invoke(cli, ["export", str(old), "--output", str(tmp_path / "old.onnx")])
    assert res.exit_code == 0, res.output
    code, text = _classify(tmp_path / "old.onnx", run["target"], tmp_path / "o.csv")
    assert code == 0 and text.count("exported without shift statistics") == 1
    assert "shift_score" not in _csv(tmp_path / "o.csv")[0]
    code, text = _classify(onnx_file, run["target"], tmp_path / "o.csv", "--mc-dropout", "3")
    assert code == 1 and "ONNX" in text and len(text.strip().splitlines()) == 1


def test_torchscript_export_returns_the_score_and_classify_refuses_it_in_one_line(run, tmp_path):
    ts_file = tmp_path / "m.torchscript.pt"
    res = CliRunner().invoke(cli, ["export", str(run["run"]), "--format", "torchscript",
                                   "--output", str(ts_file)])
    assert res.exit_code == 0, res.output
    code, text = _classify(run["run"], run["target"], tmp_path / "torch.csv", "--quiet")
    assert code == 0, text
    want = _csv(tmp_path / "torch.csv")
    extra = {"galmerge.json": ""}
    module = torch.jit.load(str(ts_file), _extra_files=extra)
    meta = json.loads(extra["galmerge.json"])
    stats, _ = shift_score.load(run["run"], None)
    assert stats is not None
    assert meta["shift"]["threshold"] == pytest.approx(float(stats["threshold"]))
    assert meta["shift"]["stats_sha256"] == stats["meta"]["sha256"]
    assert "shift_score" in meta["outputs"]
    images = read_imageset(run["target"]).images
    with torch.no_grad():
        p, logits, score = module(images)
    assert logits.shape == (len(images), 2)
    assert p.numpy() == pytest.approx(np.array([float(r["p_merger"]) for r in want]), abs=1e-5)
    assert score.numpy() == pytest.approx(np.array([float(r["shift_score"]) for r in want]),
                                          rel=1e-4)
    flag = (score.numpy() > meta["shift"]["threshold"]).astype(int)
    assert flag.tolist() == [int(r["shift_flag"]) for r in want]
    # classify takes run directories, checkpoints and ONNX files, not TorchScript: one line,
    # alone or in an ensemble, and nothing written
    for models in (["--model", str(ts_file)], ["--model", str(run["run"]), "--model",
                                                str(ts_file)]):
        res = CliRunner().invoke(cli, ["classify", str(run["target"]), *models, "--output",
                                       str(tmp_path / "ts.csv"), "--device", "cpu"])
        assert res.exit_code == 1 and "TorchScript export" in res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "ts.csv").exists()
    # a run without statistics: two outputs, no shift metadata
    old = tmp_path / "old"
    shutil.copytree(run["run"], old)
    (old / shift_score.STATS_FILE).unlink()
    res = CliRunner().invoke(cli, ["export", str(old), "--format", "torchscript", "--output",
                                   str(tmp_path / "old.pt")])
    assert res.exit_code == 0, res.output
    extra = {"galmerge.json": ""}
    with torch.no_grad():
        assert len(torch.jit.load(str(tmp_path / "old.pt"), _extra_files=extra)(images)) == 2
    assert "shift" not in json.loads(extra["galmerge.json"])


def test_ensemble_shift_score_is_the_mean_of_each_members_score_over_its_threshold(
        run, tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from astropy.io import fits

    run2 = run["root"] / "run-seed1"
    if not (run2 / "best.pt").is_file():
        tiny_run(run2, f"hdf5:{run['source']}", f"hdf5:{run['target']}", "none", seed=1,
                 epochs=1, max_steps_per_epoch=2)
    singles, thresholds = [], []
    for i, model in enumerate((run["run"], run2)):
        code, text = _classify(model, run["target"], tmp_path / f"m{i}.csv", "--quiet")
        assert code == 0, text
        singles.append(np.array([float(r["shift_score"]) for r in _csv(tmp_path / f"m{i}.csv")]))
        thresholds.append(float(shift_score.load(model, None)[0]["threshold"]))
    assert thresholds[0] != pytest.approx(thresholds[1])  # the members' scales differ
    want = (singles[0] / thresholds[0] + singles[1] / thresholds[1]) / 2

    def ensemble(first: Path, out: Path, second: Path = run2) -> None:
        code, text = _classify(first, run["target"], out, "--quiet", "--model", str(second))
        assert code == 0, text

    # the ensemble takes each member's threshold from that member's classify, never from a
    # second read of the statistics files (which could have changed in between)
    def no_second_read(*args, **kwargs):
        raise AssertionError("the ensemble re-read a member's shift statistics")

    monkeypatch.setattr(shift_score, "load_with_checkpoint", no_second_read)
    ensemble(run["run"], tmp_path / "e.csv")
    rows = _csv(tmp_path / "e.csv")
    assert list(rows[0])[-6:] == ["p_merger", "is_merger", "status", "shift_score",
                                  "shift_flag", "p_merger_std"]
    got = np.array([float(r["shift_score"]) for r in rows])
    assert got == pytest.approx(want, rel=1e-5)
    assert [int(r["shift_flag"]) for r in rows] == (got > 1).astype(int).tolist()
    prov = json.loads((tmp_path / "e.csv.provenance.json").read_text())
    assert prov["shift_threshold"] == 1.0 and "/ that member's threshold" in prov[
        "shift_ensemble_rule"]
    assert [m["threshold"] for m in prov["shift_members"]] == pytest.approx(thresholds)
    # every output format: the same values, the rule in its provenance
    ensemble(run["run"], tmp_path / "e.parquet")
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names[-3:] == ["shift_score", "shift_flag", "p_merger_std"]
    assert table.column("shift_score").to_numpy() == pytest.approx(want, rel=1e-5)
    assert str(table.schema.field("shift_flag").type) == "int8"
    meta = json.loads(table.schema.metadata[b"galmerge_provenance"])
    assert meta["shift_threshold"] == 1.0 and len(meta["shift_members"]) == 2
    assert table.column("p_merger").to_numpy() == pytest.approx(
        [float(r["p_merger"]) for r in rows], abs=2e-6)
    ensemble(run["run"], tmp_path / "e.h5")
    with h5py.File(tmp_path / "e.h5", "r") as f:
        assert f["shift_score"][()] == pytest.approx(want, rel=1e-5)
        assert f.attrs["shift_threshold"] == 1.0
        assert json.loads(f.attrs["galmerge_provenance"])["shift_ensemble_rule"]
    ensemble(run["run"], tmp_path / "e.fits")
    with fits.open(tmp_path / "e.fits") as hdul:
        assert np.asarray(hdul[1].data["shift_score"]) == pytest.approx(want, rel=1e-5)
        assert hdul[1].header["SHIFTTHR"] == 1.0 and hdul[1].header["SHIFTENS"] == 2
    # a first member without statistics: the columns are added, from the other member alone
    old = tmp_path / "old"
    shutil.copytree(run["run"], old)
    (old / shift_score.STATS_FILE).unlink()
    ensemble(old, tmp_path / "o.csv")
    rows = _csv(tmp_path / "o.csv")
    assert list(rows[0])[-3:] == ["shift_score", "shift_flag", "p_merger_std"]
    assert np.array([float(r["shift_score"]) for r in rows]) == pytest.approx(
        singles[1] / thresholds[1], rel=1e-5)
    assert len(json.loads((tmp_path / "o.csv.provenance.json").read_text())["shift_members"]) == 1
    ensemble(old, tmp_path / "o.h5")
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert json.loads(f.attrs["columns"])[-3:] == ["shift_score", "shift_flag",
                                                       "p_merger_std"]
        assert f["shift_flag"].attrs["null"] == -1
    # no member with statistics: no shift columns at all
    old2 = tmp_path / "old2"
    shutil.copytree(run2, old2)
    (old2 / shift_score.STATS_FILE).unlink()
    ensemble(old, tmp_path / "n.csv", old2)
    assert list(_csv(tmp_path / "n.csv")[0])[-2:] == ["status", "p_merger_std"]


def test_calibrating_a_run_keeps_its_shift_scores_and_summary_hash(run, tmp_path):
    # evaluate --calibrate re-hashes best.pt (the hash covers the temperature): the shift
    # statistics were then refused as "fitted for another checkpoint" by classify and export,
    # and summary.json named a best.pt that no longer existed
    from galmerge.models.model import read_checkpoint

    cal = tmp_path / "cal"
    shutil.copytree(run["run"], cal)
    res = CliRunner().invoke(cli, ["evaluate", str(cal), "--calibrate", "--device", "cpu",
                                   "--bootstrap", "10", "--embedding-points", "20"])
    assert res.exit_code == 0, res.output
    best = read_checkpoint(cal / "best.pt")
    assert best["temperature"] != 1.0
    assert json.loads((cal / "summary.json").read_text())["best_sha256"] == best["sha256"]
    code, text = _classify(cal, run["target"], tmp_path / "o.csv")
    assert code == 0 and "fitted for another checkpoint" not in text, text
    assert "shift_score" in _csv(tmp_path / "o.csv")[0]


@pytest.mark.parametrize("killed_at", ["shift_stats.npz", "summary.json"])
def test_calibrating_again_repairs_a_run_killed_between_its_writes(run, tmp_path, monkeypatch,
                                                                   killed_at):
    """evaluate --calibrate writes best.pt, then shift_stats.npz, then summary.json. Killed
    before either of the last two, the run stayed inconsistent for good: the same command fitted
    the same temperature and returned early, so classify dropped the shift score ("fitted for
    another checkpoint") or refused the run ("shift_stats.npz is damaged"). It is repaired now."""
    from galmerge.config import rundir
    from galmerge.models.model import read_checkpoint

    cal = tmp_path / "cal"
    shutil.copytree(run["run"], cal)
    args = ["evaluate", str(cal), "--calibrate", "--device", "cpu", "--bootstrap", "10",
            "--embedding-points", "20", "--quiet"]
    real_save, real_write_json = shift_score.save, rundir.write_json

    def stop_at(path, *a, **k):  # Ctrl-C just before this file is written
        if Path(path).name == killed_at:
            raise KeyboardInterrupt
        return (real_save if Path(path).name == shift_score.STATS_FILE
                else real_write_json)(path, *a, **k)

    monkeypatch.setattr(shift_score, "save", stop_at)
    monkeypatch.setattr(rundir, "write_json", stop_at)
    assert CliRunner().invoke(cli, args).exit_code != 0
    monkeypatch.undo()
    best = read_checkpoint(cal / "best.pt")
    assert best["temperature"] != 1.0  # best.pt was calibrated, the rest not
    res = CliRunner().invoke(cli, args)  # the same command
    assert res.exit_code == 0, res.output
    assert read_checkpoint(cal / "best.pt")["sha256"] == best["sha256"]  # the same temperature
    summary = json.loads((cal / "summary.json").read_text())
    data = (cal / shift_score.STATS_FILE).read_bytes()
    assert summary["best_sha256"] == best["sha256"]
    assert summary[shift_score.SUMMARY_KEY] == hashlib.sha256(data).hexdigest()
    code, text = _classify(cal, run["target"], tmp_path / "o.csv")
    assert code == 0 and "fitted for another checkpoint" not in text, text
    assert "shift_score" in _csv(tmp_path / "o.csv")[0]


def test_a_run_directory_means_best_pt_and_its_last_pt_must_be_asked_for(run, tmp_path):
    """A run directory without best.pt was classified with its last.pt without a word, and
    the only message then said the shift statistics were for 'another checkpoint'."""
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run["run"], unfinished)
    (unfinished / "best.pt").unlink()
    code, text = _classify(unfinished, run["target"], tmp_path / "o.csv")
    assert code == 1 and len(text.strip().splitlines()) == 1, text
    assert "has no best.pt" in text and str(unfinished / "last.pt") in text
    assert "--resume" in text and not (tmp_path / "o.csv").exists()
    # asked for: classified, and the note says why there is no shift score
    code, text = _classify(run["run"] / "last.pt", run["target"], tmp_path / "l.csv")
    assert code == 0, text
    assert "was fitted for the run's best.pt, not" in text and "retrained" not in text, text
    assert "shift_score" not in _csv(tmp_path / "l.csv")[0]


def test_scores_keep_float32_precision_when_the_leading_directions_dwarf_the_rest() -> None:
    """A spectrum of 20 strong directions over a faint tail (as with many near-dead units): the
    float32 score must agree with the same statistics scored in float64."""
    rng = np.random.default_rng(0)
    dim = 120
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.concatenate([np.full(20, 100.0), np.full(dim - 20, 0.01)])

    def draw(m: int) -> np.ndarray:
        return ((rng.standard_normal((m, dim)) * scales) @ basis.T + 50.0).astype(np.float32)

    moments = shift_score.FeatureMoments()
    moments.add(draw(2000), (rng.random(2000) < 0.5).astype(int))
    stats = shift_score.fit(moments)
    query = draw(300)
    f = query.astype(np.float64)
    best = np.full(len(f), np.inf)
    for mu in stats["means"].astype(np.float64):
        diff = f - mu
        proj = diff @ stats["components"].astype(np.float64)
        resid = np.square(diff - proj @ stats["components"].astype(np.float64).T).sum(1)
        d2 = (proj**2 / stats["eigenvalues"]).sum(1) + resid / float(stats["sigma2"])
        best = np.minimum(best, d2)
    exact = np.sqrt(best / dim)
    got = shift_score.score_numpy(stats, query)
    assert np.max(np.abs(got - exact) / exact) < 0.05
