"""Merger-fraction estimators on constructed confusion matrices and populations with known
answers, and `galmerge fraction` end to end on a tiny real run."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair

from galmerge.cli import cli
from galmerge.errors import GalmergeError
from galmerge.fractions import estimators as F
from galmerge.fractions import labelled

# --------------------------------------------------------------------------------------------
# estimators


def test_acc_recovers_the_prior_from_exact_rates() -> None:
    tpr, fpr, pi = 0.8, 0.1, 0.2
    q = tpr * pi + fpr * (1 - pi)  # what the naive count converges to: 0.24
    assert F.adjusted_count(q, tpr, fpr) == pytest.approx(pi)
    assert F.adjusted_count(0.05, tpr, fpr) == 0.0  # below fpr: clipped, never negative
    assert np.isnan(F.adjusted_count(0.3, 0.52, 0.5))  # no separation: undefined


def test_a_model_without_skill_gives_no_estimate_and_no_recommendation_of_one() -> None:
    # EM's likelihood is flat then and it ran to a boundary: a confident 0.0, recommended
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    for p in (rng.random(3000), np.full(3000, 0.6)):
        out = F.estimate(p, F.Validation(rng.random(400), labels), n_boot=50)
        for name in ("acc", "em", "bbse"):
            assert out["estimators"][name]["fraction"] is None, (name, out)
            assert out["estimators"][name]["ci95"] is None
        assert out["recommended"] == "naive"


def test_bbse_inverts_a_joint_confusion_matrix() -> None:
    # source balanced, tpr 0.8, fpr 0.1; rows = prediction, columns = class
    joint = np.array([[0.5 * 0.9, 0.5 * 0.2], [0.5 * 0.1, 0.5 * 0.8]])
    target = np.array([0.8, 0.2])
    mu = (joint / joint.sum(0)) @ target  # the target's prediction frequencies
    assert mu == pytest.approx([0.76, 0.24])
    assert F.bbse(mu, joint) == pytest.approx(target)
    # binary hard BBSE is ACC
    assert F.bbse(mu, joint)[1] == pytest.approx(F.adjusted_count(0.24, 0.8, 0.1))
    # three classes with an unbalanced source
    cond = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.1], [0.1, 0.2, 0.8]])  # P(pred | class)
    source = np.array([0.5, 0.3, 0.2])
    target3 = np.array([0.1, 0.1, 0.8])
    assert F.bbse(cond @ target3, cond * source) == pytest.approx(target3)
    with pytest.raises(ValueError, match="singular"):
        F.bbse(np.array([0.5, 0.5]), np.array([[0.25, 0.25], [0.25, 0.25]]))


def test_soft_bbse_equals_bbse_with_the_soft_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, 400), 0, 1)
    joint = np.array([[((1 - p) * (y == j)).mean() for j in (0, 1)],
                      [(p * (y == j)).mean() for j in (0, 1)]])
    mean_target = 0.42
    e1, e0 = p[y == 1].mean(), p[y == 0].mean()
    assert F.soft_bbse(mean_target, e1, e0) == pytest.approx(
        F.bbse(np.array([1 - mean_target, mean_target]), joint)[1])


def _population(pi: float) -> tuple[np.ndarray, np.ndarray]:
    """Five feature values with known class conditionals: the calibrated posterior under a
    balanced source and the target's weights for merger fraction ``pi``."""
    px1 = np.array([0.05, 0.1, 0.15, 0.3, 0.4])  # p(x | merger)
    px0 = np.array([0.4, 0.3, 0.15, 0.1, 0.05])  # p(x | non-merger)
    posterior = px1 / (px1 + px0)  # Bayes with the source prior 0.5
    weights = pi * px1 + (1 - pi) * px0
    return posterior, weights


@pytest.mark.parametrize("pi", [0.02, 0.2, 0.5, 0.9])
def test_em_and_its_bisection_recover_the_prior_of_an_exact_population(pi: float) -> None:
    posterior, weights = _population(pi)
    assert F.em_prior(posterior, 0.5, weights) == pytest.approx(pi, abs=1e-5)
    assert F.ml_prior(posterior, 0.5, weights)[0] == pytest.approx(pi, abs=1e-9)
    # the posterior a classifier trained at prior 0.2 would give: same answer
    at_02 = F.prior_shift(posterior, 0.2, 0.5)
    assert F.ml_prior(at_02, 0.2, weights)[0] == pytest.approx(pi, abs=1e-9)


def test_prior_shift_is_bayes_rule_and_round_trips() -> None:
    posterior, _ = _population(0.1)
    px1 = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
    px0 = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    assert F.prior_shift(posterior, 0.1, 0.5) == pytest.approx(0.1 * px1 / (0.1 * px1 + 0.9 *
                                                                             px0))
    assert F.prior_shift(F.prior_shift(posterior, 0.03, 0.5), 0.5, 0.03) == pytest.approx(
        posterior)


def test_matched_prior_finds_the_offset_a_miscalibrated_model_carries() -> None:
    posterior, weights = _population(0.2)
    rows = np.repeat(posterior, np.rint(weights * 1000).astype(int))  # the exact population
    # calibrated under pure label shift: the prior carried is the training one (Bayes' rule)
    assert F.matched_prior(rows, 0.2) == pytest.approx(0.5, abs=1e-9)
    # a model whose logits on the survey are off by log 4 (it calls too many mergers) carries
    # 0.8; shifting from there gives the calibrated survey posterior, Bayes from 0.5 does not
    off = F.prior_shift(rows, 0.8, 0.5)
    q = F.matched_prior(off, 0.2)
    assert q == pytest.approx(0.8, abs=1e-9)
    truth = F.prior_shift(rows, 0.2, 0.5)
    assert F.prior_shift(off, 0.2, q) == pytest.approx(truth, abs=1e-9)
    assert F.prior_shift(off, 0.2, 0.5).mean() > 0.35  # Bayes' rule keeps the excess mergers
    # p_merger of exactly 0 or 1 (a CSV rounds p > 1 - 5e-7 to 1) is moved from P_EPS: any
    # prior is reached, even where most rows are saturated
    ones = np.array([1.0] * 8 + [0.3, 0.0])
    q = F.matched_prior(ones, 0.2)
    clipped = np.clip(ones, F.P_EPS, 1 - F.P_EPS)
    assert F.prior_shift(clipped, 0.2, q).mean() == pytest.approx(0.2)
    with pytest.raises(ValueError):
        F.matched_prior(np.array([]), 0.2)


def test_platt_fit_recovers_a_logistic_model() -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(0, 3, 20000)
    y = (rng.random(20000) < F.sigmoid(0.4 * s - 0.5)).astype(int)
    a, b = F.platt_fit(s, y)
    assert a[0] == pytest.approx(0.4, abs=0.03)
    assert b[0] == pytest.approx(-0.5, abs=0.06)
    a, b = F.platt_fit(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))  # separable
    assert np.isfinite(a).all() and np.isfinite(b).all()


def _scores(rng: np.random.Generator, n: int, pi: float) -> tuple[np.ndarray, np.ndarray]:
    """An overconfident classifier under pure label shift."""
    y = (rng.random(n) < pi).astype(int)
    s = np.where(y == 1, rng.normal(1.5, 1.2, n), rng.normal(-1.5, 1.2, n))
    return F.sigmoid(2 * s), y


@pytest.mark.parametrize("pi", [0.05, 0.2])
def test_corrected_estimators_beat_naive_under_label_shift(pi: float) -> None:
    rng = np.random.default_rng(7)
    val = F.Validation(*_scores(rng, 4000, 0.5))
    p, y = _scores(rng, 20000, pi)
    out = F.estimate(p, val, n_boot=200, seed=0)
    est = out["estimators"]
    assert set(est) == {"naive", "acc", "em", "bbse"}
    truth = y.mean()
    naive_err = abs(est["naive"]["fraction"] - truth)
    assert naive_err > 0.04  # fpr ~ 0.11 inflates the naive count
    for name in ("acc", "em", "bbse"):
        e = est[name]
        assert abs(e["fraction"] - truth) < naive_err / 3, name
        assert e["ci95"][0] <= truth <= e["ci95"][1], name
        assert e["ci95"][0] <= e["ci68"][0] <= e["fraction"] <= e["ci68"][1] <= e["ci95"][1]
    assert out["recommended"] in F.CORRECTED
    assert out["validation"]["tpr"] == pytest.approx(0.89, abs=0.03)


@pytest.mark.parametrize(("n1", "n0"), [(3, 27), (5, 15), (50, 150)])
def test_em_on_a_survey_drawn_like_the_validation_split_returns_its_fraction(n1: int,
                                                                           n0: int) -> None:
    # no shift at all: every corrected estimator must return the split's own merger fraction;
    # Platt's smoothed targets carry a prior of mean(t), not n1/m, which EM read as label shift
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(n1), np.zeros(n0)].astype(int)
    p = F.sigmoid(2 * y - 1 + rng.normal(0, 1.5, len(y)))
    est = F.estimate(np.tile(p, 50), F.Validation(p, y), n_boot=0)["estimators"]
    for name in ("acc", "em", "bbse"):
        assert est[name]["fraction"] == pytest.approx(n1 / (n1 + n0), abs=1e-6), name


def test_intervals_widen_with_a_smaller_validation_split() -> None:
    rng = np.random.default_rng(3)
    p, _ = _scores(rng, 5000, 0.1)
    big = F.Validation(*_scores(rng, 5000, 0.5))
    small = F.Validation(big.p[:100], big.labels[:100])

    def width(v: F.Validation) -> float:
        ci = F.estimate(p, v, n_boot=300)["estimators"]["acc"]["ci95"]
        return ci[1] - ci[0]

    assert width(small) > 2 * width(big)  # the error rates' own uncertainty is inside


def test_validation_needs_both_classes() -> None:
    with pytest.raises(GalmergeError, match="both classes"):
        F.Validation(np.array([0.2, 0.9]), np.array([1, 1]))


# --------------------------------------------------------------------------------------------
# the command, end to end on a tiny real run


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fraction")
    source, target = write_pair(root / "data", n=80)
    run = root / "run"
    tiny_run(run, source, target, "none", epochs=1, max_steps_per_epoch=2)
    out = {"run": run, "root": root}
    for suffix in ("csv", "h5", "fits", "parquet"):
        out[suffix] = root / f"out.{suffix}"
        res = CliRunner().invoke(cli, ["classify", str(root / "data" / "target.h5"), "--model",
                                       str(run), "--output", str(out[suffix]), "--quiet",
                                       "--device", "cpu"])
        assert res.exit_code == 0, res.output
    return out


def _fraction(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["fraction", *args])
    return res.exit_code, res.output


def test_fraction_json_contract_and_cached_validation(classified) -> None:
    run = classified["run"]
    code, text = _fraction(str(classified["csv"]), "--model", str(run), "--json",
                           "--bootstrap", "50")
    assert code == 0, text
    payload = json.loads(text)
    assert set(payload["estimators"]) == {"naive", "acc", "em", "bbse"}
    assert payload["recommended"] in payload["estimators"]
    assert payload["n"] == 80 and payload["excluded"] == {}
    for e in payload["estimators"].values():
        assert set(e) == {"fraction", "ci68", "ci95"}
        if e["fraction"] is not None:
            assert 0 <= e["fraction"] <= 1
    with open(classified["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    naive = np.mean([float(r["p_merger"]) >= 0.5 for r in rows])
    assert payload["estimators"]["naive"]["fraction"] == pytest.approx(naive)
    import hashlib

    import galmerge

    prov = payload["provenance"]  # what the estimate was made from
    assert prov["galmerge_version"] == galmerge.__version__ and prov["seed"] == 0
    assert prov["results"] == str(classified["csv"]) and prov["model"] == str(run)
    assert prov["results_sha256"] == hashlib.sha256(classified["csv"].read_bytes()).hexdigest()
    assert prov["checkpoint_sha256"] == hashlib.sha256(
        (run / "best.pt").read_bytes()).hexdigest()
    assert prov["created_utc"].endswith("Z")
    cache = run / "validation_predictions.npz"
    with np.load(cache, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        assert len(data["labels"]) == meta["n"] == payload["validation"]["n"]
    stamp = cache.stat().st_mtime_ns
    assert _fraction(str(classified["csv"]), "--model", str(run), "--bootstrap", "20")[0] == 0
    assert cache.stat().st_mtime_ns == stamp  # read, not recomputed
    best = run / "best.pt"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))
    assert _fraction(str(classified["csv"]), "--model", str(run), "--bootstrap", "20")[0] == 0
    assert cache.stat().st_mtime_ns != stamp  # a changed checkpoint: scored again


def test_every_output_format_gives_the_same_fractions(classified) -> None:
    got = []
    for suffix in ("csv", "h5", "fits", "parquet"):
        code, text = _fraction(str(classified[suffix]), "--model", str(classified["run"]),
                               "--json", "--bootstrap", "30")
        assert code == 0, text
        got.append(json.loads(text)["estimators"])
    for other in got[1:]:
        for name in ("naive", "acc", "bbse"):
            a, b = got[0][name]["fraction"], other[name]["fraction"]
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-5)


def test_binned_fractions_and_plot(classified) -> None:
    plot = classified["root"] / "fraction.png"
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]), "--json",
                           "--by", "id", "--bins", "2", "--bootstrap", "20", "--plot", str(plot))
    assert code == 0, text
    payload = json.loads(text)
    assert payload["by"] == "id" and len(payload["bins"]) == 2
    assert sum(b["n"] for b in payload["bins"]) == 80
    assert payload["bins"][0]["hi"] == payload["bins"][1]["lo"]
    assert set(payload["bins"][0]["estimators"]) == {"naive", "acc", "em", "bbse"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]),
                           "--by", "id", "--bins", "0,10,20.5,79", "--bootstrap", "10")
    assert code == 0 and "[20.5, 79]" in text, text


def test_a_column_name_and_plot_path_that_look_like_markup_print_as_given(classified,
                                                                          tmp_path) -> None:
    rows = classified["csv"].read_text().splitlines()
    header = rows[0].split(",")
    header[header.index("id")] = "z[/x]"
    results = tmp_path / "r.csv"
    results.write_text("\n".join([",".join(header), *rows[1:]]) + "\n")
    plot = tmp_path / "f[/x].png"
    code, text = _fraction(str(results), "--model", str(classified["run"]), "--by", "z[/x]",
                           "--bins", "2", "--bootstrap", "0", "--plot", str(plot))
    assert code == 0 and "Traceback" not in text, text
    assert "z[/x]" in text and f"plot: {plot}" in text, text
    assert plot.is_file()


def test_rows_that_are_not_ok_are_excluded_and_counted(classified, tmp_path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("objID,ra,dec,p_merger,is_merger,status\n"
                    "1,10,1,0.9,1,ok\n2,10,2,0.1,0,ok\n3,10,3,,,fetch-failed: HTTP 500\n"
                    "4,400,1,,,bad-coordinates\n5,10,4,0.7,1,ok\n6,10,5,,,no-coverage\n")
    code, text = _fraction(str(path), "--model", str(classified["run"]), "--json",
                           "--bootstrap", "10")
    assert code == 0, text
    payload = json.loads(text)
    assert payload["n"] == 3
    assert payload["excluded"] == {"fetch-failed": 1, "bad-coordinates": 1, "no-coverage": 1}
    assert payload["estimators"]["naive"]["fraction"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: "objID,ra,dec,score\n1,1,1,0.5\n", [], "no p_merger column"),
        (lambda d: "ra,p_merger,status\n1,,fetch-failed\n", [], "no rows with status ok"),
        (None, ["--by", "id", "--bins", "0,1,2,1000,2000"], "has no ok rows"),
        (None, ["--by", "id"], "--by and --bins go together"),
        (None, ["--by", "id", "--bins", "3,1"], "increasing edges"),
        (None, ["--by", "redshift", "--bins", "2"], "no column 'redshift'"),
        (lambda d: "name,p_merger,is_merger,status\nNGC 1,0.2,0,ok\nNGC 2,0.7,1,ok\n",
         ["--by", "name", "--bins", "2"], "--by name is not a numeric column (e.g. 'NGC 1')"),
        (None, ["--plot", "x.txt"], ".png"),
        (None, ["--threshold", "1.5"], "--threshold"),
        (None, ["--bootstrap", "-1"], "--bootstrap"),
        (None, ["--bootstrap", "5"], "at least 10 resamples"),
        (None, ["--seed", "-1"], "--seed -1"),
        (None, ["--by", "id", "--bins", "100000000000000"], "too few for 100000000000000"),
    ],
)
def test_user_errors_are_one_line(classified, tmp_path, make, args, message) -> None:
    results = classified["csv"]
    if make is not None:
        results = tmp_path / "r.csv"
        results.write_text(make(tmp_path))
    args = [a.replace("x.txt", str(tmp_path / "x.txt")) for a in args]
    code, text = _fraction(str(results), "--model", str(classified["run"]), "--bootstrap", "0",
                           *args)
    assert code == 1, text
    assert message in text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text


def test_a_model_without_validation_statistics_is_one_line(classified, tmp_path) -> None:
    code, text = _fraction(str(classified["csv"]), "--model", str(tmp_path))
    assert code == 1 and "not a run directory" in text
    assert len(text.strip().splitlines()) == 1
    code, text = _fraction(str(tmp_path / "missing.csv"), "--model", str(classified["run"]))
    assert code == 1 and "does not exist" in text


# --------------------------------------------------------------------------------------------
# classify --prior


def _classify(classified, output: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(classified["run"]), "--output", str(output),
                                   "--device", "cpu", "--quiet", *extra])
    return res.exit_code, res.output


def _p(path: Path) -> np.ndarray:
    with open(path, newline="") as fh:
        return np.array([float(r["p_merger"]) for r in csv.DictReader(fh)])


@pytest.mark.parametrize("rule", ["match", "bayes"])
def test_prior_value_rescales_by_its_rule_is_recorded_and_undone(classified, tmp_path,
                                                                 rule: str) -> None:
    out = tmp_path / "prior.csv"
    extra = () if rule == "match" else ("--prior-rule", rule)  # match is the default
    code, text = _classify(classified, out, "--prior", "0.1", *extra)
    assert code == 0, text
    record = json.loads((tmp_path / "prior.csv.prior.json").read_text())
    assert record["prior"] == 0.1 and record["prior_from"] == "given"
    assert record["prior_rule"] == rule
    with np.load(classified["run"] / "validation_predictions.npz", allow_pickle=False) as data:
        train_prior = json.loads(str(data["meta"]))["train_prior"]
    assert record["run_training_prior"] == pytest.approx(train_prior)
    plain, p = _p(classified["csv"]), _p(out)
    if rule == "bayes":  # Bayes' rule from the training prior, p_merger as written
        assert record["training_prior"] == pytest.approx(train_prior)
        expected = F.prior_shift(plain, 0.1, train_prior)
    else:  # one offset fitted so that the mean is the given prior, from the clipped p_merger
        assert record["training_prior"] == pytest.approx(F.matched_prior(plain, 0.1), rel=1e-6)
        assert record["matched_rows"] == len(plain)
        res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" /
                                                      "target.h5"), "--model",
                                       str(classified["run"]), "--output",
                                       str(tmp_path / "loud.csv"), "--device", "cpu",
                                       "--prior", "0.1"])
        assert res.exit_code == 0 and "so that its mean is the given 0.1" in res.output
        assert ("matched on" in res.output) == (len(plain) < 100)  # a small sample is named
        with open(tmp_path / "loud.csv", newline="") as fh:  # the count is is_merger's
            flagged = sum(r["is_merger"] == "1" for r in csv.DictReader(fh))
        assert re.search(r"mergers (\d+)", res.output).group(1) == str(flagged)
        assert p.mean() == pytest.approx(0.1, abs=1e-4)  # up to the CSV's rounding
        expected = F.prior_shift(np.clip(plain, F.P_EPS, 1 - F.P_EPS), 0.1,
                                 record["training_prior"])
    assert p == pytest.approx(expected, rel=1e-4, abs=1e-7)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["is_merger"] == str(int(float(r["p_merger"]) >= 0.5)) for r in rows)
    # fraction undoes the rescaling: the same estimates as on the plain output
    a = json.loads(_fraction(str(out), "--model", str(classified["run"]), "--json",
                             "--bootstrap", "0")[1])
    b = json.loads(_fraction(str(classified["csv"]), "--model", str(classified["run"]),
                             "--json", "--bootstrap", "0")[1])
    assert a["estimators"]["naive"]["fraction"] == b["estimators"]["naive"]["fraction"]
    assert a["prior_rescaling_undone"]["prior"] == 0.1
    assert a["prior_rescaling_undone"]["prior_rule"] == rule
    # classify again without --prior: the record of the old rescaling goes
    assert _classify(classified, out)[0] == 0
    assert not (tmp_path / "prior.csv.prior.json").exists()
    assert _p(out) == pytest.approx(plain)


def test_prior_auto_is_the_em_fixed_point_and_hdf5_records_it(classified, tmp_path) -> None:
    out = tmp_path / "auto.h5"
    code, text = _classify(classified, out, "--prior", "auto")
    assert code == 0, text
    with h5py.File(out, "r") as f:
        record = json.loads(f.attrs["galmerge_prior"])
        p = f["p_merger"][()]
    assert record["prior_from"].startswith("auto")
    assert p.mean() == pytest.approx(record["prior"], abs=2e-3)  # Saerens' fixed point


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_prior_on_a_parquet_output_keeps_its_schema_and_provenance(classified, tmp_path,
                                                                   suffix) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / f"prior{suffix}"
    code, text = _classify(classified, out, "--prior", "0.1")
    assert code == 0, text
    table = pq.read_table(out)
    plain = pq.read_table(classified["parquet"])
    assert table.schema.names == plain.schema.names
    assert table.schema.field("p_merger").type == plain.schema.field("p_merger").type
    meta = table.schema.metadata
    assert b"galmerge_provenance" in meta and json.loads(meta[b"galmerge_prior"])["prior"] == 0.1
    record = json.loads((tmp_path / f"prior{suffix}.prior.json").read_text())
    p, before = table.column("p_merger").to_numpy(), plain.column("p_merger").to_numpy()
    assert p == pytest.approx(F.prior_shift(before, 0.1, record["training_prior"]), rel=1e-4,
                              abs=1e-7)
    assert (table.column("is_merger").to_numpy() == (p >= 0.5)).all()
    # fraction reads Parquet and undoes the rescaling
    a = json.loads(_fraction(str(out), "--model", str(classified["run"]), "--json",
                             "--bootstrap", "0")[1])
    b = json.loads(_fraction(str(classified["csv"]), "--model", str(classified["run"]),
                             "--json", "--bootstrap", "0")[1])
    assert a["estimators"]["naive"]["fraction"] == pytest.approx(
        b["estimators"]["naive"]["fraction"])


def test_prior_user_errors_are_one_line(classified, tmp_path) -> None:
    for bad in ("2", "0", "many"):
        code, text = _classify(classified, tmp_path / "x.csv", "--prior", bad)
        assert code == 1 and "--prior" in text and len(text.strip().splitlines()) == 1, text
        assert not (tmp_path / "x.csv").exists()
    for extra in (("--prior", "0.1", "--prior-rule", "exact"), ("--prior-rule", "bayes"),
                  ("--prior", "auto", "--prior-rule", "match")):
        code, text = _classify(classified, tmp_path / "x.csv", *extra)
        assert code == 1 and f"--prior-rule {extra[-1]}" in text, text
        assert len(text.strip().splitlines()) == 1, text
        assert not (tmp_path / "x.csv").exists()


# --------------------------------------------------------------------------------------------
# classify --model A --model B: an ensemble


def test_ensemble_mean_and_spread(classified, tmp_path) -> None:

    run2 = classified["root"] / "run-seed1"
    if not (run2 / "best.pt").is_file():
        tiny_run(run2, f"hdf5:{classified['root'] / 'data' / 'source.h5'}",
                 f"hdf5:{classified['root'] / 'data' / 'target.h5'}", "none", seed=1, epochs=1,
                 max_steps_per_epoch=2)
    single = tmp_path / "b.csv"
    assert _classify({**classified, "run": run2}, single)[0] == 0
    out = tmp_path / "ens.csv"
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(classified["run"]), "--model", str(run2),
                                   "--output", str(out), "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # the ensemble's shift_score/shift_flag (mean of score / threshold), then p_merger_std
    assert list(rows[0])[-6:] == ["p_merger", "is_merger", "status", "shift_score",
                                  "shift_flag", "p_merger_std"]
    both = np.stack([_p(classified["csv"]), _p(single)])
    got = np.array([float(r["p_merger"]) for r in rows])
    assert got == pytest.approx(both.mean(0), abs=2e-6)
    assert np.array([float(r["p_merger_std"]) for r in rows]) == pytest.approx(both.std(0),
                                                                              abs=2e-6)
    assert all(r["is_merger"] == str(int(float(r["p_merger"]) >= 0.5)) for r in rows)
    # the members' temporary outputs and their lock files are gone (the output's own lock
    # file stays, as a one-model run's does)
    assert [p.name for p in tmp_path.glob(".*ens*")] == [".ens.csv.lock"]
    prov = json.loads((tmp_path / "ens.csv.provenance.json").read_text())
    members = [m["checkpoint_sha256"] for m in prov["ensemble"]]
    assert len(members) == 2 and all(len(s) == 64 for s in members) and members[0] != members[1]
    h5 = tmp_path / "ens.h5"
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(classified["run"]), "--model", str(run2),
                                   "--output", str(h5), "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    with h5py.File(h5, "r") as f:
        assert json.loads(f.attrs["columns"])[-1] == "p_merger_std"
        assert f["p_merger"][()] == pytest.approx(got, abs=2e-6)
    # fraction reads an ensemble output like any other
    code, text = _fraction(str(out), "--model", str(classified["run"]), "--bootstrap", "0")
    assert code == 0, text
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(run2), "--model", str(run2), "--output",
                                   str(tmp_path / "dup.csv"), "--device", "cpu", "--quiet"])
    assert res.exit_code == 1 and "same run" in res.output
    # --prior on an ensemble: the combined p_merger is matched to the given fraction
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(classified["run"]), "--model", str(run2),
                                   "--output", str(tmp_path / "ensp.csv"), "--device", "cpu",
                                   "--quiet", "--prior", "0.2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ensp.csv.prior.json").read_text())["prior_rule"] == "match"
    assert _p(tmp_path / "ensp.csv").mean() == pytest.approx(0.2, abs=1e-4)


def test_label_shift_check_flags_domain_shift_only() -> None:
    rng = np.random.default_rng(11)
    val = F.Validation(*_scores(rng, 400, 0.5))
    p, _ = _scores(rng, 2000, 0.05)
    assert F.label_shift_test(p, val, n_sim=100)["p_value"] > 0.05
    # non-mergers whose scores moved up by one sigma: no mixture of the source classes
    y = (rng.random(2000) < 0.05).astype(int)
    s = np.where(y == 1, rng.normal(1.5, 1.2, 2000), rng.normal(-0.3, 1.2, 2000))
    shifted = F.label_shift_test(F.sigmoid(2 * s), val, n_sim=100)
    assert shifted["p_value"] < 0.02
    assert 0 <= shifted["fraction_min_distance"] <= 1


@pytest.mark.parametrize("rule", ["bayes", "match"])
def test_prior_on_parquet_leaves_rows_without_p_merger_as_they_are(tmp_path, rule: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from galmerge.fractions.prior import apply_prior

    out = tmp_path / "o.parquet"
    pq.write_table(pa.table({
        "id": [1, 2, 3], "p_merger": pa.array([0.4, None, 0.9], pa.float64()),
        "is_merger": pa.array([0, None, 1], pa.int8()), "status": ["ok", "fetch-failed", "ok"]}),
        out)
    record = apply_prior(out, "", 0.9, 0.5, training=(0.5, "given"), rule=rule)
    got = pq.read_table(out).to_pydict()
    assert got["p_merger"][1] is None and got["is_merger"][1] is None
    old = 0.5 if rule == "bayes" else F.matched_prior(np.array([0.4, 0.9]), 0.9)
    assert record["training_prior"] == pytest.approx(old)
    assert got["p_merger"][0] == pytest.approx(F.prior_shift(0.4, 0.9, old))
    assert got["is_merger"] == [1, None, 1] and got["status"][1] == "fetch-failed"
    if rule == "match":  # matched on the two rows with a p_merger
        assert record["matched_rows"] == 2
        assert (got["p_merger"][0] + got["p_merger"][2]) / 2 == pytest.approx(0.9)


# --------------------------------------------------------------------------------------------
# adaptation check: a model adapted to a target pulls every estimate toward the source fraction


def test_an_adapted_model_is_named_and_the_direction_of_its_bias_given(classified,
                                                                       tmp_path) -> None:
    from galmerge.fractions.adaptation import adaptation_check

    # the source-only run of the fixture: nothing to say
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]), "--json",
                           "--bootstrap", "0")
    assert code == 0, text
    assert json.loads(text)["adaptation_check"] is None
    # a real (tiny) adabn run, classified and counted through the CLI
    run = tmp_path / "adabn"
    data = classified["root"] / "data"
    tiny_run(run, f"hdf5:{data / 'source.h5'}", f"hdf5:{data / 'target.h5'}", "adabn",
             epochs=1, max_steps_per_epoch=2)
    out = tmp_path / "adabn.csv"
    res = CliRunner().invoke(cli, ["classify", str(data / "target.h5"), "--model", str(run),
                                   "--output", str(out), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    code, text = _fraction(str(out), "--model", str(run), "--json", "--bootstrap", "0")
    assert code == 0, text
    payload = json.loads(text)
    check = payload["adaptation_check"]
    assert check["strategies"] == ["adabn"]
    rec = payload["estimators"][payload["recommended"]]["fraction"]
    assert check["estimate"] == pytest.approx(rec)
    with np.load(run / "validation_predictions.npz", allow_pickle=False) as cached:
        train_prior = json.loads(str(cached["meta"]))["train_prior"]
    assert check["source_fraction"] == pytest.approx(train_prior)
    assert check["warning"] == (abs(rec - check["source_fraction"]) > 0.05)
    code, text = _fraction(str(out), "--model", str(run), "--bootstrap", "0")
    assert code == 0 and ("WARNING: the model was adapted" in text
                          or "note: the model was adapted" in text), text
    assert "fraction --labels FILE" in check["message"]
    # with a labelled sample the check still reads the label-free estimate, and says ppi stands
    truth = _target_labels(classified)
    with open(out, newline="") as fh:
        ids = [r["id"] for r in csv.DictReader(fh)]
    labels = tmp_path / "eye.csv"
    labels.write_text("id,merger\n" + "".join(f"{ids[i]},{int(truth[i])}\n"
                                              for i in range(0, 80, 4)))
    code, text = _fraction(str(out), "--model", str(run), "--json", "--bootstrap", "0",
                           "--labels", str(labels))
    assert code == 0, text
    payload = json.loads(text)
    assert payload["recommended"] == "ppi"
    assert payload["adaptation_check"]["estimate"] == pytest.approx(rec)
    assert "ppi estimate of your labelled sample" in payload["adaptation_check"]["message"]
    # adabn overshoots (fraction_sim_real_adabn.md): no direction is claimed for it
    far = adaptation_check(run, 0.5, 0.9)
    assert far["warning"] and "either direction" in far["message"]
    assert "further" not in far["message"]
    # dann pulls toward the source's fraction: an estimate below it means the truth is lower
    dann = tmp_path / "dann-config"
    dann.mkdir()
    (dann / "config.toml").write_text("[strategies.dann]\n")
    low = adaptation_check(dann, 0.5, 0.2)
    assert low["warning"] and "further below" in low["message"]
    assert "further above" in adaptation_check(dann, 0.5, 0.8)["message"]
    assert not adaptation_check(dann, 0.5, 0.53)["warning"]
    assert not adaptation_check(dann, 0.5, None)["warning"]  # binned: no single estimate
    # so do mmd and entropy with their defaults (fraction_mmd_seed1.md, fraction_entropy_seed1.md)
    for name in ("mmd", "entropy"):
        run_config = tmp_path / f"{name}-config"
        run_config.mkdir()
        (run_config / "config.toml").write_text(f"[strategies.{name}]\n")
        assert "further below" in adaptation_check(run_config, 0.5, 0.3)["message"]
    mixed = tmp_path / "mixed-config"
    mixed.mkdir()
    (mixed / "config.toml").write_text("[strategies.dann]\n[strategies.coral]\n")
    assert "either direction" in adaptation_check(mixed, 0.5, 0.2)["message"]
    # --prior auto records the check beside its EM estimate
    auto = tmp_path / "auto.csv"
    res = CliRunner().invoke(cli, ["classify", str(data / "target.h5"), "--model", str(run),
                                   "--output", str(auto), "--device", "cpu", "--prior", "auto"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "auto.csv.prior.json").read_text())
    assert record["adaptation_check"]["strategies"] == ["adabn"]
    assert record["adaptation_check"]["estimate"] == pytest.approx(record["prior"])
    # and so does an ensemble's (it gave the first member's training prior, but no check)
    ens = tmp_path / "ens-auto.csv"
    res = CliRunner().invoke(cli, ["classify", str(data / "target.h5"), "--model", str(run),
                                   "--model", str(classified["run"]), "--output", str(ens),
                                   "--device", "cpu", "--prior", "auto"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "ens-auto.csv.prior.json").read_text())
    assert record["adaptation_check"]["strategies"] == ["adabn"]


def test_a_run_given_the_target_fraction_is_not_flagged(tmp_path) -> None:
    from galmerge.fractions.adaptation import adapted_strategies

    def run(text: str) -> Path:
        folder = tmp_path / str(abs(hash(text)))
        folder.mkdir()
        (folder / "config.toml").write_text(text)
        return folder

    assert adapted_strategies(run('[strategies.mmd]\nclass_weights = "given"\n')) == []
    assert adapted_strategies(run('[strategies.mmd]\nclass_weights = "estimated"\n')) == ["mmd"]
    assert adapted_strategies(run('[strategies.dann]\nclass_weights = "given"\n')) == []
    assert adapted_strategies(run('[strategies.dann]\nclass_weights = "bbse"\n')) == ["dann"]
    # fisher reads source features only
    assert adapted_strategies(run("[strategies.dann]\n[strategies.fisher]\n")) == ["dann"]
    assert adapted_strategies(run("[strategies.none]\n")) == []
    assert adapted_strategies(run("[strategies.someone_elses]\n")) == ["someone_elses"]
    assert adapted_strategies(tmp_path / "missing") == []


# --------------------------------------------------------------------------------------------
# a labelled sample of the survey: prediction-powered inference (ppi)


def test_ppi_point_estimate_is_the_power_tuned_formula() -> None:
    p_lab = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.7, 0.4, 0.5, 0.35, 0.95, 0.05])
    y_lab = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0])
    n_all, pbar_all = 1000, 0.62
    lam = np.cov(p_lab, y_lab, ddof=1)[0, 1] / ((1 + 12 / 1000) * p_lab.var(ddof=1))
    assert 0 < lam < 1
    want = y_lab.mean() + lam * (pbar_all - p_lab.mean())
    got = F.ppi_fraction(np.array([pbar_all]), p_lab[None], y_lab[None], n_all)
    assert got[0] == pytest.approx(want)
    assert F.power_tuning(p_lab, y_lab, n_all) == pytest.approx(lam)
    # a classifier that says the same for every labelled galaxy carries no information: the
    # labelled fraction alone (lambda 0)
    flat = F.ppi_fraction(np.array([0.9]), np.full((1, 12), 0.4), y_lab[None], n_all)
    assert flat[0] == pytest.approx(y_lab.mean())


def _shifted_survey(rng: np.random.Generator, pi: float, n: int = 3000) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """A survey the classifier over-calls (domain shift): its non-mergers score ~0.45."""
    y = (rng.random(n) < pi).astype(np.int64)
    return np.clip(0.45 + 0.35 * y + rng.normal(0, 0.15, n), 0.01, 0.99), y


def test_ppi_is_unbiased_and_covers_under_domain_shift_where_the_others_are_not() -> None:
    rng = np.random.default_rng(3)
    vy = rng.integers(0, 2, 300)
    vp = np.clip(0.2 + 0.6 * vy + rng.normal(0, 0.15, 300), 0.01, 0.99)  # the source
    val = F.Validation(vp, vy, 0.5)
    errors: dict[str, list[float]] = {"naive": [], "em": [], "ppi": []}
    covered = []
    for r in range(40):
        p, y = _shifted_survey(rng, 0.05)
        lab = rng.choice(len(p), 200, replace=False)
        out = F.estimate(p, val, n_boot=200, seed=r, labelled=(p[lab], y[lab]))
        assert out["recommended"] == "ppi" and out["labelled"]["n"] == 200
        truth = y.mean()
        for k in errors:
            errors[k].append(abs(out["estimators"][k]["fraction"] - truth))
        lo, hi = out["estimators"]["ppi"]["ci95"]
        covered.append(lo <= truth <= hi)
    assert np.mean(errors["naive"]) > 0.3 and np.mean(errors["em"]) > 0.1  # biased by the shift
    assert np.mean(errors["ppi"]) < np.mean(errors["naive"]) / 10
    assert np.mean(covered) >= 0.85


def test_ppi_leaves_the_other_estimators_as_they_were_and_needs_enough_labels() -> None:
    rng = np.random.default_rng(4)
    vy = rng.integers(0, 2, 200)
    val = F.Validation(np.clip(0.3 + 0.4 * vy + rng.normal(0, 0.1, 200), 0, 1), vy, 0.5)
    p, y = _shifted_survey(rng, 0.2, 1000)
    plain = F.estimate(p, val, n_boot=100, seed=7)
    with_labels = F.estimate(p, val, n_boot=100, seed=7, labelled=(p[:50], y[:50]))
    for k in F.ESTIMATORS:
        assert with_labels["estimators"][k] == plain["estimators"][k]
    few = F.estimate(p, val, n_boot=100, seed=7, labelled=(p[: F.MIN_LABELLED - 1],
                                                          y[: F.MIN_LABELLED - 1]))
    assert few["estimators"]["ppi"] == {"fraction": None, "ci68": None, "ci95": None}
    assert few["recommended"] == plain["recommended"]


def _target_labels(classified) -> np.ndarray:

    with h5py.File(classified["root"] / "data" / "target.h5", "r") as f:
        return np.asarray(f["labels"][()])


def test_fraction_with_a_labelled_sample_end_to_end(classified, tmp_path) -> None:
    truth = _target_labels(classified)
    with open(classified["csv"], newline="") as fh:
        ids = [r["id"] for r in csv.DictReader(fh)]
    labels = tmp_path / "visual.csv"
    picked = list(range(0, 80, 2))  # 40 labelled galaxies, and two that are not in the survey
    labels.write_text("id,merger\n" + "".join(f"{ids[i]},{int(truth[i])}\n" for i in picked)
                      + "9999,1\n9998,0\n1,\n")  # a blank label: not labelled
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]), "--json",
                           "--bootstrap", "50", "--labels", str(labels))
    assert code == 0, text
    payload = json.loads(text)
    assert set(payload["estimators"]) == {"naive", "acc", "em", "bbse", "ppi"}
    assert payload["recommended"] == "ppi"
    assert payload["labels"] == {"file": str(labels), "id_column": "id", "label_column": "merger",
                                 "rows": 40, "unmatched": 2}
    ppi = payload["estimators"]["ppi"]
    assert 0 <= ppi["ci95"][0] <= ppi["fraction"] <= ppi["ci95"][1] <= 1
    assert payload["labelled"]["merger_fraction"] == pytest.approx(truth[picked].mean())
    with open(classified["csv"], newline="") as fh:
        p_rows = np.array([float(r["p_merger"]) for r in csv.DictReader(fh)])
    cut = payload["labelled_threshold"]
    assert cut == labelled.decision_threshold(p_rows[picked], truth[picked])
    assert cut["n"] == 40 and cut["mergers"] == int(truth[picked].sum())
    # every format of the same output, a Parquet labels file, and the table
    pq_labels = tmp_path / "visual.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"ID": [int(ids[i]) for i in picked],
                             "is_merger_eye": [bool(truth[i]) for i in picked]}), pq_labels)
    code, text = _fraction(str(classified["h5"]), "--model", str(classified["run"]), "--json",
                           "--bootstrap", "50", "--labels", str(pq_labels), "--id-col", "id",
                           "--label-col", "is_merger_eye")
    assert code == 0, text  # names match case-insensitively: ID in the labels, id in the output
    code, text = _fraction(str(classified["h5"]), "--model", str(classified["run"]), "--json",
                           "--bootstrap", "50", "--labels", str(pq_labels),
                           "--label-col", "is_merger_eye")
    assert code == 0, text
    assert json.loads(text)["estimators"]["ppi"]["fraction"] == pytest.approx(ppi["fraction"])
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]),
                           "--bootstrap", "20", "--labels", str(labels))
    assert code == 0 and "ppi" in text and "labelled sample: 40 ok rows" in text, text
    assert "decision threshold from the labelled sample (Platt fit on 40 rows" in text
    # per bin: each bin's own labelled rows; the plot gains a ppi row
    plot = tmp_path / "f.png"
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]), "--json",
                           "--bootstrap", "20", "--labels", str(labels), "--by", "id",
                           "--bins", "2", "--plot", str(plot))
    assert code == 0, text
    bins = json.loads(text)["bins"]
    assert [b["labelled"]["n"] for b in bins] == [20, 20]
    assert all(b["recommended"] == "ppi" for b in bins)
    assert plot.is_file()


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "no such file"),
        ("id,vote\n1,1\n", [], "no label column 'merger'"),
        ("id,merger\n1,maybe\n", [], "labels must be 0/1"),
        ("id,merger\n1,1\n1,0\n", [], "labelled both 0 and 1"),
        ("galaxy,merger\n1,1\n", [], "share no identifier column"),
        ("id,merger\n1,1\n", ["--id-col", "objid"], "--id-col objid: no such column"),
        ("id,merger\n5000,1\n", [], "none of its 1 labelled identifiers"),
        ("id,merger\n1,\n", [], "no row has both an identifier and a 0/1 label"),
    ],
)
def test_labelled_sample_errors_are_one_line(classified, tmp_path, content, args,
                                             message) -> None:
    labels = tmp_path / "labels.csv"
    if content is not None:
        labels.write_text(content)
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]),
                           "--bootstrap", "0", "--labels", str(labels), *args)
    assert code == 1, text
    assert message in text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text


def test_label_columns_without_labels_is_one_line(classified) -> None:
    code, text = _fraction(str(classified["csv"]), "--model", str(classified["run"]),
                           "--label-col", "merger")
    assert code == 1 and "pass the labelled sample too" in text
    assert len(text.strip().splitlines()) == 1


def test_eighteen_digit_ids_match_exactly_across_formats(classified, tmp_path) -> None:
    # SDSS objids are ~1.2e18: as float64, 256 neighbouring ids would read the same
    base = 1237648720693755918
    results = tmp_path / "sdss.csv"
    results.write_text("objID,ra,dec,p_merger,is_merger,status\n" + "".join(
        f"{base + i},10,{i},{0.8 if i % 3 == 0 else 0.2},{int(i % 3 == 0)},ok\n"
        for i in range(30)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = tmp_path / "eye.parquet"
    pq.write_table(pa.table({"objid": pa.array([base + i for i in range(0, 30, 2)], pa.int64()),
                             "merger": [int(i % 3 == 0) for i in range(0, 30, 2)]}), labels)
    code, text = _fraction(str(results), "--model", str(classified["run"]), "--json",
                           "--bootstrap", "20", "--labels", str(labels))
    assert code == 0, text
    payload = json.loads(text)
    assert payload["labels"]["rows"] == 15 and payload["labels"]["unmatched"] == 0
    assert payload["labels"]["id_column"] == "objid"
    assert payload["labelled"]["merger_fraction"] == pytest.approx(5 / 15)


def test_ppi_interval_of_a_one_class_sample_is_the_exact_binomial_one() -> None:
    # 50 labelled galaxies of a 5% survey often hold no merger: every bootstrap resample then
    # reads 0, and only the exact (Clopper-Pearson) bound says how high the fraction may be
    rng = np.random.default_rng(5)
    vy = rng.integers(0, 2, 200)
    val = F.Validation(np.clip(0.3 + 0.4 * vy + rng.normal(0, 0.1, 200), 0, 1), vy, 0.5)
    p, _ = _shifted_survey(rng, 0.05, 2000)
    none_merging = F.estimate(p, val, n_boot=200, seed=0, labelled=(p[:50], np.zeros(50)))
    ppi = none_merging["estimators"]["ppi"]
    assert ppi["fraction"] == pytest.approx(0.0, abs=1e-12)
    assert ppi["ci95"] == [0.0, pytest.approx(1 - 0.025 ** (1 / 50))]  # 0.071: covers 5%
    assert ppi["ci68"][1] == pytest.approx(1 - 0.16 ** (1 / 50))
    all_merging = F.estimate(p, val, n_boot=200, seed=0, labelled=(p[:50], np.ones(50)))
    assert all_merging["estimators"]["ppi"]["ci95"] == [pytest.approx(0.025 ** (1 / 50)), 1.0]
    y = np.zeros(50)
    y[:3] = 1  # both classes: the bootstrap interval as it is
    entry = {"fraction": 0.06, "ci68": [0.03, 0.09], "ci95": [0.01, 0.12]}
    F._widen_for_one_class(entry, y)
    assert entry == {"fraction": 0.06, "ci68": [0.03, 0.09], "ci95": [0.01, 0.12]}


def test_decision_threshold_recovers_the_surveys_own_calibration() -> None:
    """A model whose p_merger is too high on the survey by a known logit offset and scale:
    the Platt fit on a labelled sample finds the threshold where the survey's own probability
    is 0.5, and refuses what cannot give one."""
    rng = np.random.default_rng(3)
    s = rng.normal(0.0, 3.0, 20000)  # the model's logit(p_merger)
    y = (rng.random(len(s)) < 1 / (1 + np.exp(-(0.8 * s - 2.0)))).astype(int)
    p = 1 / (1 + np.exp(-s))
    cut = labelled.decision_threshold(p, y)
    assert cut["a"] == pytest.approx(0.8, abs=0.05) and cut["b"] == pytest.approx(-2.0, abs=0.1)
    assert cut["threshold"] == pytest.approx(1 / (1 + np.exp(-2.5)), abs=0.01)
    called = p >= cut["threshold"]
    assert (called == y).mean() > ((p >= 0.5) == y).mean()  # the survey-calibrated cut wins
    assert labelled.decision_threshold(p[:5], y[:5])["threshold"] is None
    assert "both classes" in labelled.decision_threshold(p[:50], np.zeros(50, int))["reason"]
    flipped = labelled.decision_threshold(p, 1 - y)
    assert flipped["threshold"] is None and "does not rise" in flipped["reason"]



def test_results_of_another_model_are_refused_in_every_format(classified, tmp_path) -> None:
    """The error rates must come from the checkpoint that wrote p_merger: an output classified
    by run A and estimated with run B's validation split is a one-line error."""
    other = tmp_path / "other"
    tiny_run(other, f"hdf5:{classified['root'] / 'data' / 'source.h5'}",
             f"hdf5:{classified['root'] / 'data' / 'target.h5'}", "none", epochs=1,
             max_steps_per_epoch=2, seed=7)
    for suffix in ("csv", "h5", "fits", "parquet"):
        code, text = _fraction(str(classified[suffix]), "--model", str(other), "--bootstrap",
                               "0")
        assert code == 1 and "pass that run as --model" in text, (suffix, text)
        assert len(text.strip().splitlines()) == 1
        assert _fraction(str(classified[suffix]), "--model", str(classified["run"]),
                         "--bootstrap", "0")[0] == 0


def test_an_hdf5_output_whose_column_lives_in_another_file_is_refused(classified,
                                                                      tmp_path) -> None:
    path = tmp_path / "shared.h5"
    shutil.copyfile(classified["h5"], path)
    with h5py.File(path, "a") as f:
        where = dict(zip(json.loads(f.attrs["columns"]), json.loads(f.attrs["datasets"]),
                         strict=True))["p_merger"]
        values = f[where][()]
        del f[where]
        raw = tmp_path / "elsewhere.bin"
        values.tofile(raw)
        f.create_dataset(where, shape=values.shape, dtype=values.dtype,
                         external=[(str(raw), 0, values.nbytes)])
    code, text = _fraction(str(path), "--model", str(classified["run"]), "--bootstrap", "0")
    assert code != 0 and "is external storage in" in text and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize("suffix", ["h5", "parquet", "fits"])
def test_a_rescaled_output_copied_without_its_sidecar_is_still_undone(classified, tmp_path,
                                                                      suffix) -> None:
    # the record travels inside HDF5, Parquet and FITS outputs; without reading it, fraction
    # estimated on the rescaled probabilities
    out = tmp_path / f"prior.{suffix}"
    assert _classify(classified, out, "--prior", "0.1")[0] == 0
    moved = tmp_path / "elsewhere" / out.name
    moved.parent.mkdir()
    shutil.copyfile(out, moved)
    copies = [moved]
    if suffix == "fits":  # read as FITS by its first card or gzipped: so is its record
        renamed = moved.with_name("prior_copy.tbl")
        shutil.copyfile(out, renamed)
        zipped = moved.with_name("prior.fits.gz")
        zipped.write_bytes(gzip.compress(out.read_bytes()))
        copies += [renamed, zipped]
    plain = json.loads(_fraction(str(classified[suffix]), "--model", str(classified["run"]),
                                 "--json", "--bootstrap", "0")[1])
    for copy in copies:
        code, text = _fraction(str(copy), "--model", str(classified["run"]), "--json",
                               "--bootstrap", "0")
        assert code == 0, text
        got = json.loads(text)
        assert got["prior_rescaling_undone"]["prior"] == pytest.approx(0.1), copy
        for name in ("naive", "acc", "em"):
            a, b = got["estimators"][name]["fraction"], plain["estimators"][name]["fraction"]
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6), (copy, name)


def test_a_sidecar_left_from_another_version_of_the_file_is_refused(classified,
                                                                    tmp_path) -> None:
    out = tmp_path / "prior.csv"
    assert _classify(classified, out, "--prior", "0.1")[0] == 0
    shutil.copyfile(classified["csv"], out)  # the plain output put back by hand
    code, text = _fraction(str(out), "--model", str(classified["run"]), "--bootstrap", "0")
    assert code == 1 and "describes another version of prior.csv" in text, text
    assert len(text.strip().splitlines()) == 1


def test_a_large_rescaling_of_a_csv_output_is_undone_exactly(classified, tmp_path) -> None:
    # at 6 digits, p pushed near 1 was written as 1 and came back as 1, not as the model's p
    out = tmp_path / "prior.csv"
    assert _classify(classified, out, "--prior", "0.999999", "--prior-rule", "bayes")[0] == 0
    got = json.loads(_fraction(str(out), "--model", str(classified["run"]), "--json",
                               "--bootstrap", "0")[1])
    plain = json.loads(_fraction(str(classified["csv"]), "--model", str(classified["run"]),
                                 "--json", "--bootstrap", "0")[1])
    for name in ("naive", "em"):
        a, b = got["estimators"][name]["fraction"], plain["estimators"][name]["fraction"]
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6), name


def test_an_ensembles_members_are_checked_in_every_format(classified, tmp_path) -> None:
    # any member's checkpoint is accepted, another model's is refused; FITS once recorded the
    # members' count only, so its check was skipped
    data = classified["root"] / "data"
    run2, other = tmp_path / "member2", tmp_path / "other"
    for run, seed in ((run2, 1), (other, 7)):
        tiny_run(run, f"hdf5:{data / 'source.h5'}", f"hdf5:{data / 'target.h5'}", "none",
                 epochs=1, max_steps_per_epoch=2, seed=seed)
    for suffix in ("h5", "parquet", "fits"):
        out = tmp_path / f"ens.{suffix}"
        res = CliRunner().invoke(cli, ["classify", str(data / "target.h5"), "--model",
                                       str(classified["run"]), "--model", str(run2), "--output",
                                       str(out), "--device", "cpu", "--quiet"])
        assert res.exit_code == 0, res.output
        code, text = _fraction(str(out), "--model", str(other), "--bootstrap", "0")
        assert code == 1 and "pass that run as --model" in text, (suffix, text)
        for member in (classified["run"], run2):
            assert _fraction(str(out), "--model", str(member), "--bootstrap", "0")[0] == 0


def test_a_run_without_best_pt_is_refused_as_by_classify_and_its_last_pt_is_taken(
        classified, tmp_path) -> None:
    """`fraction --model RUN_DIR` means best.pt, as `classify --model RUN_DIR` does: a run
    stopped before it kept one is a one-line error naming RUN_DIR/last.pt, never last.pt's
    error rates unasked; `--model RUN_DIR/last.pt` (what classify was then given) works."""
    import hashlib

    run = tmp_path / "unfinished"
    shutil.copytree(classified["run"], run)
    (run / "best.pt").unlink()
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(run), "--output", str(out), "--quiet",
                                   "--device", "cpu"])
    assert res.exit_code == 1 and "no best.pt" in res.output  # classify's rule
    code, text = _fraction(str(classified["csv"]), "--model", str(run), "--bootstrap", "0")
    assert code == 1, text
    assert "no best.pt" in text and str(run / "last.pt") in text and "--resume" in text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(run / "last.pt"), "--output", str(out),
                                   "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    code, text = _fraction(str(out), "--model", str(run / "last.pt"), "--json", "--bootstrap",
                           "0")
    assert code == 0, text
    payload = json.loads(text)
    assert payload["provenance"]["checkpoint_sha256"] == hashlib.sha256(
        (run / "last.pt").read_bytes()).hexdigest()
    with np.load(run / "validation_predictions.npz", allow_pickle=False) as data:
        assert json.loads(str(data["meta"]))["checkpoint"] == "last.pt"
    # classify --prior bayes with that last.pt still finds the run's training prior
    res = CliRunner().invoke(cli, ["classify", str(classified["root"] / "data" / "target.h5"),
                                   "--model", str(run / "last.pt"), "--output",
                                   str(tmp_path / "prior.csv"), "--quiet", "--device", "cpu",
                                   "--prior", "0.3", "--prior-rule", "bayes"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "prior.csv.prior.json").read_text())
    assert record["run_training_prior_from"] == "source training split of the run"
    # output of last.pt, fraction given the finished run: the line names the checkpoint to pass
    code, text = _fraction(str(out), "--model", str(classified["run"]), "--bootstrap", "0")
    assert code == 1 and len(text.strip().splitlines()) == 1, text
    assert f"pass --model {classified['run'] / 'last.pt'}" in text, text
