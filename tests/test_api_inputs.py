"""Input checks of the Python API: an ImageSet's band names against its channels (in memory and
in an HDF5 file), and numpy numbers in `evaluate` and `classify` arguments.

Each mistake is one GalmergeError naming the thing and the fix, before any work."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from eval_helpers import tiny_run, write_pair

import galmerge
from galmerge.io import hdf5 as hdf5io


def _imageset(channels: int = 3, **kw: Any) -> galmerge.ImageSet:
    args: dict[str, Any] = dict(images=np.zeros((2, channels, 8, 8), np.float32), labels=[0, 1],
                                ids=np.arange(2), bands=("g", "r", "i"), survey="mine")
    args.update(kw)
    return galmerge.ImageSet(**args)


# ---- 1. one band name per channel -----------------------------------------------------------

@pytest.mark.parametrize("channels, bands, says", [
    (3, ("g", "r"), "ImageSet has 3 channels but 2 bands ('g', 'r'); give one band name per "
                    "channel"),
    (1, ("g", "r"), "ImageSet has 1 channel but 2 bands ('g', 'r')"),
    # a colour image's bands named as one string
    (3, ("gri",), "but 1 band ('gri'); give one band name per channel, e.g. "
                  "bands=('g', 'r', 'i')"),
    # one filter name for five channels is one name, not five letters
    (5, "F814W", "ImageSet has 5 channels but 1 band ('F814W')"),
    (3, "gri", "but 1 band ('gri'); give one band name per channel, e.g. bands=('g', 'r', 'i')"),
    # a set has no order: the channels' names would be recorded in hash order
    (3, {"g", "r", "i"}, "one name per channel, in channel order"),
    (2, (), "ImageSet has 2 channels but 0 bands (); give one band name per channel, e.g. "
            "bands=('ch0', 'ch1')"),
])
def test_an_imageset_needs_one_band_name_per_channel(channels: int, bands: Any,
                                                     says: str) -> None:
    with pytest.raises(galmerge.GalmergeError) as err:
        _imageset(channels, bands=bands)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bands, names", [
    ("g,r,i", ("g", "r", "i")), ("g r i", ("g", "r", "i")), (" g, r ,i ", ("g", "r", "i")),
    (np.array(["g", "r", "i"]), ("g", "r", "i")),
])
def test_band_names_as_text_are_split_at_commas_and_spaces(bands: Any, names: tuple) -> None:
    assert _imageset(bands=bands).bands == names
    assert _imageset(1, bands="F814W").bands == ("F814W",)


def test_a_lazy_imageset_is_checked_against_its_shape(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = np.zeros((2, 4, 8, 8), np.float32)
    with h5py.File(tmp_path / "x.h5", "r") as f, \
            pytest.raises(galmerge.GalmergeError, match="4 channels but 3 bands"):
        _imageset(images=f["images"])


def test_imageset_bands_that_are_no_names_are_a_galmerge_error() -> None:
    with pytest.raises(galmerge.GalmergeError, match=r"bands must be one name per channel, in "
                                                     r"channel order, e\.g\. bands=\('g', 'r', "
                                                     r"'i'\); got None"):
        _imageset(bands=None)


# ---- 2. an HDF5 file's bands attribute -------------------------------------------------------

def _file(path: Path, bands: Any, channels: int = 3) -> Path:
    """An image file as h5py (or an older galmerge) writes it, with this ``bands`` attribute."""
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((4, channels, 8, 8), np.float32)
        f["labels"] = np.array([0, 1, 0, 1], np.int8)
        if bands is not None:
            f.attrs["bands"] = bands
    return path


@pytest.mark.parametrize("bands, fix", [
    ("g,r", "attrs['bands'] = 'ch0,ch1,ch2'"),
    ("gri", "attrs['bands'] = 'g,r,i'"),  # one name for three channels: the fix splits it
])
def test_a_file_whose_bands_disagree_with_its_channels_names_the_file_and_the_fix(
        tmp_path: Path, bands: str, fix: str) -> None:
    path = _file(tmp_path / "old.h5", bands)
    with pytest.raises(galmerge.GalmergeError) as err:
        galmerge.load_imageset(f"hdf5:{path}")
    message = str(err.value)
    assert message.startswith(f"{path}: dataset 'images' has 3 channels but attribute 'bands'")
    assert fix in message and "or delete the attribute" in message and "\n" not in message


def test_an_empty_bands_attribute_declares_no_names(tmp_path: Path) -> None:
    """What galmerge wrote for an ImageSet without band names: the file loads, its channels
    named as in a file without the attribute."""
    path = _file(tmp_path / "unnamed.h5", "")
    assert galmerge.load_imageset(f"hdf5:{path}").bands == ("ch0", "ch1", "ch2")
    hdf5io.validate_imageset_file(path)


def test_the_writer_refuses_bands_that_disagree_with_the_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 bands .* 3 channels"), \
            hdf5io.ImageSetWriter(tmp_path / "w.h5", bands=("g", "r")) as writer:
        writer.append(np.zeros((1, 3, 8, 8), np.float32))


# ---- 3. evaluate and classify: numpy numbers, wrong types -----------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch run (two steps) and its target's image file."""
    root = tmp_path_factory.mktemp("api-inputs")
    source, target = write_pair(root / "data", n=40)
    tiny_run(root / "run", source, target, epochs=1, max_steps_per_epoch=2)
    return root / "run", Path(target.removeprefix("hdf5:"))


def test_evaluate_takes_numpy_numbers(run: tuple[Path, Path]) -> None:
    run_dir, _ = run
    metrics = galmerge.evaluate(run_dir, device="cpu", quiet=True, bootstrap=np.int64(3),
                                seed=np.int64(1), embedding_points=np.int32(8))
    assert metrics["evaluate_seed"] == 1
    written = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert written["evaluate_seed"] == 1


@pytest.mark.parametrize("kw, says", [
    (dict(bootstrap="50"), "bootstrap must be a whole number, got '50'; give the number "
                           "itself, bootstrap=50"),
    (dict(bootstrap=2.5), "bootstrap must be a whole number, got 2.5"),
    (dict(seed=True), "seed must be a whole number, got True"),
    (dict(embedding_points=np.float64(100.0)), "embedding_points must be a whole number"),
    (dict(embedding_points=np.bool_(True)), "embedding_points must be a whole number"),
])
def test_evaluate_refuses_arguments_that_are_no_whole_numbers(
        run: tuple[Path, Path], tmp_path: Path, kw: dict[str, Any], says: str) -> None:
    run_dir, _ = run
    with pytest.raises(galmerge.GalmergeError) as err:
        galmerge.evaluate(run_dir, device="cpu", quiet=True, **kw)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_classify_takes_numpy_numbers(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, images = run
    out = tmp_path / "out.csv"
    summary = galmerge.classify(
        images, run_dir, output=out, device="cpu", quiet=True, batch_size=np.int64(16),
        threshold=np.float32(0.4), workers=np.int64(2), chunk_rows=np.int64(16),
        flush_rows=np.int32(8), prior=np.float64(0.1), mc_dropout=np.int64(3),
        shard_timeout=np.float32(60))
    assert summary.rows == summary.ok == 40
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and "p_merger_std" in rows[0]  # the 3 MC-dropout passes
    assert all((float(r["p_merger"]) >= 0.4) == (r["is_merger"] == "1") for r in rows)


@pytest.mark.parametrize("kw, says", [
    (dict(batch_size="64"), "batch_size must be a whole number, got '64'; give the number "
                            "itself, batch_size=64"),
    (dict(batch_size=2.5), "batch_size must be a whole number, got 2.5"),
    (dict(chunk_rows=16.0), "chunk_rows must be a whole number, got 16.0; give it as an int, "
                            "chunk_rows=16"),
    (dict(workers=True), "workers must be a whole number, got True"),
    (dict(mc_dropout=np.float64(3.5)), "mc_dropout must be a whole number or None"),
    (dict(threshold="0.4"), "threshold must be a number, got '0.4'; give the number itself, "
                            "threshold=0.4"),
    (dict(threshold=np.bool_(True)), "threshold must be a number, got np.True_"),
    (dict(prior=True), "prior must be a number or None, got True"),
])
def test_classify_refuses_arguments_of_the_wrong_type_before_any_work(
        run: tuple[Path, Path], tmp_path: Path, kw: dict[str, Any], says: str) -> None:
    run_dir, images = run
    out = tmp_path / "out.csv"
    with pytest.raises(galmerge.GalmergeError) as err:
        galmerge.classify(images, run_dir, output=out, device="cpu", quiet=True, **kw)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_classify_of_a_file_whose_bands_disagree_names_the_file(
        run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, _ = run
    path = _file(tmp_path / "stamps.h5", "g,r", channels=3)
    with pytest.raises(galmerge.GalmergeError, match=rf"^{re.escape(str(path))}: .*3 channels "
                                                     r"but attribute 'bands' lists 2 .*attrs"):
        galmerge.classify(path, run_dir, output=tmp_path / "out.csv", device="cpu", quiet=True)
    assert not (tmp_path / "out.csv").exists()


def _recorded_as(model: Path, bands: list[str], path: Path) -> Path:
    import torch

    from galmerge.models.model import save_checkpoint

    payload = torch.load(model / "best.pt", weights_only=True)
    for spec in payload["preprocess"].values():
        spec["bands"] = list(bands)
    save_checkpoint(path, payload)
    return path


def test_a_model_whose_record_names_other_bands_than_channels_still_classifies(
        run: tuple[Path, Path], tmp_path: Path) -> None:
    """A run trained before band names were checked may record 3 channels as ('g', 'r'): no
    stamps could match that record, so it is not held against correctly named ones."""
    model, target = run
    old = _recorded_as(model, ["g", "r"], tmp_path / "old.pt")
    out = tmp_path / "out.csv"
    galmerge.classify(target, old, output=out, device="cpu", quiet=True)
    rows = list(csv.DictReader(out.open()))
    assert rows and {r["status"] for r in rows} == {"ok"}


@pytest.mark.parametrize("recorded", [["g", ",", "r", ",", "i"], ["gri"], ["g,r,i"]])
def test_an_old_record_that_meant_its_bands_is_still_held_against_stamps(
        run: tuple[Path, Path], tmp_path: Path, recorded: list[str]) -> None:
    """("g", ",", "r", ",", "i") is "g,r,i" read letter by letter: the model takes g, r, i, and
    stamps in other bands or another order are refused as before."""
    model, target = run
    old = _recorded_as(model, recorded, tmp_path / "old.pt")
    s = galmerge.load_imageset(f"hdf5:{target}")
    galmerge.predict(s, old, device="cpu")  # its own bands, g,r,i
    with pytest.raises(galmerge.GalmergeError, match="the same bands in another order"):
        galmerge.predict(dataclasses.replace(s, bands=("i", "r", "g")), old, device="cpu")


# ---- 4. messages name what the caller typed -------------------------------------------------

@pytest.mark.parametrize("call, cli_args, python_says, cli_says", [
    ("classify", ["--threshold", "2"], "threshold must be in [0, 1]",
     "--threshold must be in [0, 1]"),
    ("classify", ["--prior", "1.5"], "prior=1.5: give auto", "--prior 1.5: give auto"),
    ("classify", ["--prior-rule", "bayes"], "prior_rule='bayes' needs prior=VALUE",
     "--prior-rule bayes needs --prior VALUE"),
    ("classify", ["--device", "gpu"], "unknown device 'gpu'", "unknown --device 'gpu'"),
    ("evaluate", ["--bootstrap", "-1"], "bootstrap=-1: use 0", "--bootstrap -1: use 0"),
])
def test_a_python_call_names_arguments_and_the_command_its_options(
        run: tuple[Path, Path], tmp_path: Path, call: str, cli_args: list[str],
        python_says: str, cli_says: str) -> None:
    """The same check says `threshold` to a notebook and `--threshold` to a shell."""
    from click.testing import CliRunner

    from galmerge.cli import cli

    model, target = run
    python_kw = {cli_args[0][2:].replace("-", "_"): _typed(cli_args[1])}
    first = [str(target), "--model", str(model)] if call == "classify" else [str(model)]
    with pytest.raises(galmerge.GalmergeError) as info:
        if call == "classify":
            galmerge.classify(target, model, output=tmp_path / "o.csv", **python_kw)
        else:
            galmerge.evaluate(model, **python_kw)
    assert python_says in str(info.value) and "--" not in str(info.value)
    result = CliRunner().invoke(cli, [call, *first, *cli_args])
    assert result.exit_code != 0 and cli_says in result.output, result.output


def _typed(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
