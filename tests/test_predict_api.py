"""`galmerge.predict`: images in memory in, an astropy Table out, with the values that
`galmerge classify` writes for the same images in an HDF5 file (one model, an ensemble, a
prior, MC-dropout), and one-line errors for what is not a stack of the model's stamps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from eval_helpers import tiny_run, write_pair

import galmerge
from galmerge.io.hdf5 import read_imageset, write_imageset


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two tiny runs on the same data (the first with dropout, the second without) and the
    target set, in memory and as an HDF5 image file."""
    root = tmp_path_factory.mktemp("predict")
    source, target = write_pair(root / "data", n=40)
    a = root / "a"
    b = root / "b"
    tiny_run(a, source, target, epochs=1, backbone_options={"dropout": 0.2})
    tiny_run(b, source, target, epochs=1, seed=1, backbone_options={"dropout": 0})
    path = Path(target.removeprefix("hdf5:"))
    # the same stamps named as other bands at another pixel scale: a model of other images
    other = root / "other"
    for name in ("source", "target"):
        s = read_imageset(root / "data" / f"{name}.h5")
        write_imageset(other / f"{name}.h5", dataclasses.replace(
            s, bands=("u", "g", "r"), pixel_scale_arcsec=0.2))
    tiny_run(root / "ugr", f"hdf5:{other / 'source.h5'}", f"hdf5:{other / 'target.h5'}",
             epochs=1)
    return {"a": a, "b": b, "ugr": root / "ugr", "file": path, "set": read_imageset(path)}


def _classified(runs: dict[str, Any], tmp_path: Path, model: Any, **kw: Any) -> dict[str, Any]:
    out = tmp_path / "out.parquet"
    galmerge.classify(runs["file"], model, output=out, device="cpu", quiet=True, **kw)
    return pq.read_table(out).to_pydict()


def _same(table: Any, written: dict[str, Any], columns: list[str]) -> None:
    assert [c for c in written if c in columns] == [c for c in table.colnames if c in columns]
    for name in columns:
        np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(written[name]),
                                      err_msg=name)


def test_one_model_gives_classifys_values_and_provenance(runs: dict[str, Any],
                                                         tmp_path: Path) -> None:
    table = galmerge.predict(runs["set"], runs["a"], device="cpu")
    written = _classified(runs, tmp_path, runs["a"])
    assert "shift_score" in table.colnames  # the run has shift statistics
    _same(table, written, ["id", "label", "p_merger", "is_merger", "status", "shift_score",
                           "shift_flag"])
    assert list(table.colnames) == [c for c in written if c in table.colnames]
    meta = table.meta["galmerge"]
    side = json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"galmerge_provenance"])
    for key in ("checkpoint", "checkpoint_sha256", "config_sha256", "preprocessing",
                "temperature", "domain", "shift_threshold", "shift_stats_sha256"):
        assert meta[key] == side[key], key
    pixels = runs["set"].images.numpy().astype(np.float32)
    assert meta["input_sha256"] == hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def test_an_array_and_a_tensor_give_the_imagesets_probabilities(runs: dict[str, Any]) -> None:
    images = runs["set"].images
    from_set = galmerge.predict(runs["set"], runs["a"], device="cpu")
    from_array = galmerge.predict(images.numpy(), runs["a"], device="cpu", ids=runs["set"].ids)
    from_tensor = galmerge.predict(images, runs["a"], device="cpu", batch_size=7)
    for table in (from_array, from_tensor):
        np.testing.assert_array_equal(table["p_merger"], from_set["p_merger"])
    assert list(from_array["id"]) == list(runs["set"].ids)
    assert list(from_tensor["id"]) == list(range(len(images)))
    assert "label" not in from_array.colnames  # an array carries no labels


def test_an_ensemble_gives_classifys_mean_spread_and_shift(runs: dict[str, Any],
                                                           tmp_path: Path) -> None:
    table = galmerge.predict(runs["set"], [runs["a"], runs["b"]], device="cpu")
    written = _classified(runs, tmp_path, [str(runs["a"]), str(runs["b"])])
    _same(table, written, ["p_merger", "is_merger", "status", "shift_score", "shift_flag",
                           "p_merger_std"])
    assert table.meta["galmerge"]["shift_threshold"] == 1.0
    assert [m["model"] for m in table.meta["galmerge"]["ensemble"]] == [str(runs["a"]),
                                                                         str(runs["b"])]


@pytest.mark.parametrize("prior, rule", [(0.2, None), (0.2, "bayes"), ("auto", None)])
def test_a_prior_rescales_as_classify_does(runs: dict[str, Any], tmp_path: Path, prior: Any,
                                           rule: Any) -> None:
    table = galmerge.predict(runs["set"], runs["a"], device="cpu", prior=prior,
                             prior_rule=rule)
    written = _classified(runs, tmp_path, runs["a"], prior=prior, prior_rule=rule)
    _same(table, written, ["p_merger", "is_merger"])
    plain = galmerge.predict(runs["set"], runs["a"], device="cpu")
    assert not np.array_equal(table["p_merger"], plain["p_merger"])
    record = table.meta["galmerge"]["prior"]
    assert record["prior_rule"] == {None: "match", "bayes": "bayes"}.get(rule, "em") \
        if prior != "auto" else record["prior_rule"] == "em"
    if rule is None and prior != "auto":  # the match rule: the mean is the given fraction
        assert float(np.mean(table["p_merger"])) == pytest.approx(0.2, abs=1e-3)


def test_mc_dropout_gives_classifys_passes(runs: dict[str, Any], tmp_path: Path) -> None:
    table = galmerge.predict(runs["set"], runs["a"], device="cpu", mc_dropout=np.int64(3))
    written = _classified(runs, tmp_path, runs["a"], mc_dropout=3)
    _same(table, written, ["p_merger", "p_merger_std"])
    assert float(np.max(table["p_merger_std"])) > 0


def test_a_stamp_with_nan_pixels_gets_its_status_and_the_others_their_values(
        runs: dict[str, Any]) -> None:
    images = runs["set"].images.numpy().copy()
    images[3, 1, 2, 2] = np.nan
    table = galmerge.predict(images, runs["a"], device="cpu")
    clean = galmerge.predict(runs["set"].images.numpy(), runs["a"], device="cpu")
    assert table["status"][3] == "bad-image: non-finite pixels"
    assert np.isnan(table["p_merger"][3]) and table["is_merger"][3] == -1
    keep = np.arange(len(images)) != 3
    np.testing.assert_array_equal(np.asarray(table["p_merger"])[keep],
                                  np.asarray(clean["p_merger"])[keep])
    assert set(np.asarray(table["status"])[keep]) == {"ok"}


def _wrong_bands(runs: dict[str, Any]) -> galmerge.ImageSet:
    s = runs["set"]
    return galmerge.ImageSet(images=s.images, labels=s.labels, ids=s.ids,
                             bands=tuple(reversed(s.bands)), survey="mine")


@pytest.mark.parametrize("images, kw, says", [
    (lambda r: np.zeros((3, 16, 16), np.float32), {}, r"shape \(N, C, H, W\).*images\[None\]"),
    (lambda r: np.zeros((2, 1, 16, 16), np.float32), {}, "images are 1x16x16 .* takes 3x16x16"),
    (lambda r: [[1, 2]], {}, "give a galmerge.ImageSet or an array"),
    (lambda r: np.zeros((0, 3, 16, 16), np.float32), {}, "no images"),
    (lambda r: np.zeros((2, 3, 16, 16), np.float32), {"ids": [1, 2, 3]}, "one identifier per"),
    (lambda r: np.zeros((2, 3, 16, 16), np.float32), {"batch_size": 0}, "batch_size must be"),
    (lambda r: np.zeros((2, 3, 16, 16), np.float32), {"batch_size": "8"}, "batch_size must be"),
    (lambda r: np.zeros((2, 3, 16, 16), np.float32), {"threshold": 2}, r"threshold must be in"),
    (lambda r: np.zeros((2, 3, 16, 16), np.float32), {"domain": "sdss"}, "domain must be"),
    (lambda r: np.zeros((2, 3, 16, 16), np.float32), {"prior": 1.5}, "prior=1.5: give auto"),
    (lambda r: np.zeros((2, 3, 16, 16), np.float32), {"mc_dropout": 1}, "mc_dropout must be"),
    (_wrong_bands, {}, "the same bands in another order"),
])
def test_what_is_not_a_stack_of_the_models_stamps_is_one_line(
        runs: dict[str, Any], images: Any, kw: dict[str, Any], says: str) -> None:
    with pytest.raises(galmerge.GalmergeError, match=says) as info:
        galmerge.predict(images(runs), runs["a"], device="cpu", **kw)
    assert "\n" not in str(info.value)


def test_model_mistakes_are_one_line(runs: dict[str, Any], tmp_path: Path) -> None:
    images = np.zeros((2, 3, 16, 16), np.float32)
    cases = [
        ([runs["a"], runs["a"]], {}, "the same run given twice"),
        ([runs["a"], runs["b"]], {"mc_dropout": 3}, "mc_dropout with several models"),
        ([], {}, "give a run directory"),
        (tmp_path / "nosuch", {}, "nosuch"),
        (runs["b"], {"mc_dropout": 3}, "no dropout layer"),
    ]
    for model, kw, says in cases:
        with pytest.raises(galmerge.GalmergeError, match=says) as info:
            galmerge.predict(images, model, device="cpu", **kw)
        assert "\n" not in str(info.value)


def test_an_onnx_export_predicts_as_its_checkpoint(runs: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = galmerge.export_model(runs["a"], "onnx", tmp_path / "model.onnx")
    table = galmerge.predict(runs["set"], onnx)
    ckpt = galmerge.predict(runs["set"], runs["a"], device="cpu")
    np.testing.assert_allclose(table["p_merger"], ckpt["p_merger"], rtol=0, atol=1e-5)
    assert table.meta["galmerge"]["exported_from_checkpoint_sha256"] == \
        ckpt.meta["galmerge"]["checkpoint_sha256"]


def test_the_table_writes_to_fits_and_ecsv(runs: dict[str, Any], tmp_path: Path) -> None:
    """An astronomer's next step: the Table, its provenance included, written and read back."""
    from astropy.table import Table

    table = galmerge.predict(runs["set"], runs["a"], device="cpu")
    table.write(tmp_path / "p.ecsv")
    back = Table.read(tmp_path / "p.ecsv")
    np.testing.assert_array_equal(back["p_merger"], table["p_merger"])
    assert back.meta["galmerge"]["checkpoint_sha256"] == \
        table.meta["galmerge"]["checkpoint_sha256"]
    from astropy.utils.exceptions import AstropyUserWarning

    with pytest.warns(AstropyUserWarning, match="galmerge"):  # a header takes no nested record
        table.write(tmp_path / "p.fits")
    np.testing.assert_array_equal(Table.read(tmp_path / "p.fits")["status"], table["status"])


def test_stamps_any_model_of_the_ensemble_refuses_are_refused_before_any_work(
        runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Members taking other bands, and stamps classify refuses in a file (another image
    source, 8-bit pixels for a model of fluxes), are one line before a model classifies."""
    from galmerge.classification import pipeline

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("classified before the refusal")

    monkeypatch.setattr(pipeline, "classify_stamps", never)
    s = runs["set"]
    cases = [
        (s.images.numpy(), [runs["a"], runs["ugr"]], "take different stamps"),
        (s, [runs["a"], runs["ugr"]], "bands g,r,i but the model takes u,g,r"),
        (dataclasses.replace(s, image_source="jpeg"), runs["a"], "image_source 'jpeg'"),
        (np.zeros((2, 3, 16, 16), np.uint8), runs["a"], "8-bit pixels"),
        (np.zeros((2, 3, 16, 16), np.complex64), runs["a"], "dtype complex64"),
        (torch.zeros((2, 3, 16, 16), dtype=torch.bool), runs["a"], "dtype bool"),
        (np.zeros((2, 16, 16, 3), np.float32), runs["a"], r"numpy.moveaxis\(images, -1, 1\)"),
        ([np.zeros((3, 16, 16))], runs["a"], r"numpy.stack\(images\)"),
    ]
    for images, model, says in cases:
        with pytest.raises(galmerge.GalmergeError, match=says) as info:
            galmerge.predict(images, model, device="cpu")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("model", [None, 3, {"run": 1}])
def test_a_model_that_is_no_path_is_one_line(runs: dict[str, Any], model: Any) -> None:
    with pytest.raises(galmerge.GalmergeError, match="give a run directory") as info:
        galmerge.predict(np.zeros((2, 3, 16, 16), np.float32), model)
    assert "\n" not in str(info.value)


def test_any_float_tensor_is_classified_as_float32(runs: dict[str, Any]) -> None:
    """bfloat16 (no numpy type), a tensor that needs its gradient, ids from a generator."""
    pixels = runs["set"].images
    expected = galmerge.predict(pixels.to(torch.bfloat16).float(), runs["a"], device="cpu")
    got = galmerge.predict(pixels.to(torch.bfloat16), runs["a"], device="cpu")
    np.testing.assert_array_equal(got["p_merger"], expected["p_merger"])
    grad = pixels.clone().requires_grad_(True)
    table = galmerge.predict(grad, runs["a"], device="cpu", ids=(f"g{i}" for i in
                                                                   range(len(pixels))))
    np.testing.assert_array_equal(
        table["p_merger"], galmerge.predict(pixels, runs["a"], device="cpu")["p_merger"])
    assert table["id"][0] == "g0"


def test_classifys_notes_are_printed_and_recorded(runs: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A run without shift statistics, and an export whose checkpoint changed since: what
    classify prints goes to stderr and into the record."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(runs["b"], bare)
    (bare / "shift_stats.npz").unlink()
    table = galmerge.predict(runs["set"], bare, device="cpu")
    err = capsys.readouterr().err
    assert "shift" in err and "shift_score" not in table.colnames
    assert table.meta["galmerge"]["notes"] == [err.strip().removeprefix("galmerge: ")]
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(runs["a"], run)
    onnx = galmerge.export_model(run, "onnx", tmp_path / "m.onnx")
    galmerge.predict(runs["set"], onnx, device="cuda")  # ONNX Runtime runs on the CPU
    assert "--device cuda is not used" in capsys.readouterr().err
    shutil.copyfile(runs["b"] / "best.pt", run / "best.pt")  # best.pt changed since the export
    galmerge.predict(runs["set"], onnx)
    assert "export it again" in capsys.readouterr().err
