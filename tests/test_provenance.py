"""Every classify output records what produced it: Parquet metadata, FITS keywords, HDF5
attributes, a CSV sidecar."""

from __future__ import annotations

import hashlib
import json
import time

import h5py
import pytest
from test_classify import CASJOBS, StampsSurvey, make_checkpoint, run_cli

import galmerge
from galmerge.io.provenance import config_hash


@pytest.fixture
def env(tmp_path, register_plugin, monkeypatch):
    register_plugin(StampsSurvey(), "stamps-test")
    monkeypatch.setenv("GALMERGE_TEST_FETCH_LOG", str(tmp_path / "fetch.log"))
    monkeypatch.chdir(tmp_path)
    return tmp_path, make_checkpoint(tmp_path / "run" / "best.pt")


def _provenance(path):
    from astropy.io import fits

    name = path.name
    if name.endswith(".csv"):
        return json.loads(path.with_name(name + ".provenance.json").read_text())
    if name.endswith(".h5"):
        with h5py.File(path) as f:
            prov = json.loads(f.attrs["galmerge_provenance"])
            assert f.attrs["checkpoint_sha256"] == prov["checkpoint_sha256"]
            return prov
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return json.loads(pq.read_schema(path).metadata[b"galmerge_provenance"])
    with fits.open(path) as hdul:
        h = hdul[1].header
        return {"galmerge_version": h["GMVERSN"], "checkpoint_sha256": h["CKPTSHA"],
                "config_sha256": h["CFGSHA"], "survey": h["SURVEY"], "data_release": h["DATAREL"],
                "threshold": h["THRESH"], "selection_score": h["SELECTBY"],
                "created_utc": h["DATE"], "preprocessing": h["PREPROC"],
                "domain": h["DOMAIN"], "cutout_kind": h["CUTKIND"], "checkpoint": h["CKPTFILE"],
                "input": h["INPUT"], "input_sha256": h["INPUTSHA"]}


@pytest.mark.parametrize("suffix", [".csv", ".h5", ".fits", ".parquet"])
def test_every_output_format_records_its_provenance(env, suffix):
    import torch

    tmp, ckpt = env
    (tmp / "cat.csv").write_text(CASJOBS)
    out = tmp / f"out{suffix}"
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # paths as typed, relative to the current folder (tmp): recorded absolute
    res = run_cli("classify", "cat.csv", "--model", "run", "--survey",
                  "stamps?data_release=7", "--quiet", "--threshold", "0.4", "--output", str(out),
                  "--cache", str(tmp / "c.h5"))
    assert res.exit_code == 0, res.output
    prov = _provenance(out)
    payload = torch.load(ckpt, weights_only=True)
    assert prov["galmerge_version"] == galmerge.__version__
    assert prov["checkpoint"] == str(ckpt)  # the checkpoint, from any folder
    assert prov["input"] == str(tmp / "cat.csv")  # the catalog classified, and its content
    assert prov["input_sha256"] == hashlib.sha256((tmp / "cat.csv").read_bytes()).hexdigest()
    assert prov["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert prov["config_sha256"] == config_hash(payload["config"])
    assert prov["survey"] == "stamps?data_release=7" and prov["data_release"] == "dr7"
    assert prov["cutout_kind"] == "stamps:g,r,i:16px:0.396" and prov["domain"] == "target"
    assert json.loads(prov["preprocessing"]) == json.loads(json.dumps(
        payload["preprocess"]["target"]))
    assert prov["threshold"] == 0.4 and prov["selection_score"] == "source_val_loss"
    assert before <= prov["created_utc"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def test_fits_provenance_keywords_are_valid_fits(env):
    from astropy.io import fits

    tmp, ckpt = env
    (tmp / "cat.csv").write_text(CASJOBS)
    out = tmp / "dir-é" / "out.fits"  # a non-ASCII path still makes an ASCII header
    res = run_cli("classify", str(tmp / "cat.csv"), "--model", str(ckpt), "--survey", "stamps",
                  "--quiet", "--output", str(out), "--cache", str(tmp / "c.h5"))
    assert res.exit_code == 0, res.output
    with fits.open(out) as hdul:
        hdul.verify("exception")
        assert len(hdul[1].header["CKPTSHA"]) == 64 and hdul[1].header["DATAREL"] == ""


def test_cache_keepbits_changes_p_merger_by_less_than_1e4_and_repeats_exactly(env):
    """Stamps rounded to 12 mantissa bits: p within 1e-4 of the exact run (this test model's
    head is scaled x20 to make it steep); a second run from the rounded cache gives the same
    output byte for byte, and the provenance names the rounded stamp kind."""
    import csv

    tmp, ckpt = env
    (tmp / "cat.csv").write_text(CASJOBS)
    base = ["classify", str(tmp / "cat.csv"), "--model", str(ckpt), "--survey", "stamps",
            "--quiet"]
    assert run_cli(*base, "--output", str(tmp / "exact.csv"), "--cache",
                   str(tmp / "exact.h5")).exit_code == 0
    lossy = [*base, "--output", str(tmp / "lossy.csv"), "--cache-keepbits", "12", "--cache",
             str(tmp / "lossy.h5")]
    assert run_cli(*lossy).exit_code == 0
    first = (tmp / "lossy.csv").read_bytes()
    assert run_cli(*lossy).exit_code == 0
    assert (tmp / "lossy.csv").read_bytes() == first
    rows = {name: list(csv.reader((tmp / name).read_text().splitlines()))[1:]
            for name in ("exact.csv", "lossy.csv")}
    ps = [(float(a[-3]), float(b[-3])) for a, b in zip(rows["exact.csv"], rows["lossy.csv"],
                                                        strict=True) if a[-1] == "ok"]
    assert len(ps) == 4 and max(abs(a - b) for a, b in ps) < 1e-4
    prov = _provenance(tmp / "lossy.csv")
    assert prov["cutout_kind"].endswith(":keepbits12")
    assert run_cli(*base, "--cache-keepbits", "0").exit_code != 0
