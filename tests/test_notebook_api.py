"""`import galmerge` from a notebook or script: arrays, numpy numbers, wrong argument types,
the caller's random generators, plugin cells run again, Jupyter progress, in-memory runs.

Each mistake is one GalmergeError naming the argument and the fix, before any training."""

from __future__ import annotations

import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from eval_helpers import tiny_run, write_pair
from train_toys import toy_sets

import galmerge
from galmerge.plugin.manager import get_plugin_manager

FAST: dict[str, Any] = dict(backbone="deepmerge", epochs=1, batch_size=8, device="cpu",
                            quiet=True, max_steps_per_epoch=2, strategy="none")


def _sets() -> tuple[galmerge.ImageSet, galmerge.ImageSet]:
    return toy_sets(n_source=40, n_target=40, channels=3, size=16)


def _imageset(**kw: Any) -> galmerge.ImageSet:
    args: dict[str, Any] = dict(images=np.zeros((3, 3, 16, 16), np.float32), labels=[0, 1, -1],
                                ids=np.arange(3), bands=("g", "r", "i"), survey="mine")
    args.update(kw)
    return galmerge.ImageSet(**args)


# ---- 1. labels ------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, says", [
    ([0.7, np.nan, 1.9], "label 0 is 0.7"),
    (np.array([0.0, np.nan, 1.0]), "label 1 is nan"),
    ([0, 2, 1], "label 1 is 2"),
    (["merger", "non", "merger"], "must be numbers"),
    ([None, 1, 0], "must be numbers"),
    (np.zeros((3, 1)), "shape (N,)"),
])
def test_imageset_refuses_labels_other_than_1_0_and_minus_1(labels: Any, says: str) -> None:
    with pytest.raises(galmerge.GalmergeError, match="ImageSet labels") as err:
        _imageset(labels=labels)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_imageset_takes_whole_float_and_bool_labels_as_classes() -> None:
    assert _imageset(labels=[0.0, 1.0, -1.0]).labels.tolist() == [0, 1, -1]
    assert _imageset(labels=np.array([True, False, True])).labels.tolist() == [1, 0, 1]
    assert _imageset(labels=torch.tensor([1, 0, -1])).labels.dtype == torch.int64


def test_imageset_sizes_disagreeing_is_a_galmerge_error() -> None:
    with pytest.raises(galmerge.GalmergeError, match="3 images, 2 labels.*one label"):
        _imageset(labels=[0, 1])


# ---- 2. image shapes ------------------------------------------------------------------------

@pytest.mark.parametrize("images, says", [
    (np.zeros((3, 16, 16), np.float32), r"images\[:, None\]"),
    (np.zeros((3, 3, 16, 24), np.float32), "square stamps"),
    (np.zeros((3, 16, 16, 3), np.float32), "channels-last"),
    ([[0.0]] * 3, "numpy.stack"),
])
def test_imageset_refuses_images_that_are_not_square_nchw(images: Any, says: str) -> None:
    with pytest.raises(galmerge.GalmergeError, match="ImageSet images") as err:
        _imageset(images=images)
    assert says.replace("\\", "") in str(err.value)


# ---- 3. numpy numbers -----------------------------------------------------------------------

def test_numpy_numbers_are_numbers_and_config_toml_holds_plain_ones(tmp_path: Path) -> None:
    source, target = _sets()
    args = dict(FAST, epochs=np.int64(1), lr=np.float32(1e-3), batch_size=np.int32(8),
                max_steps_per_epoch=np.int64(2))
    galmerge.train(source, target, run_dir=tmp_path / "run", **args)
    text = (tmp_path / "run" / "config.toml").read_text()
    assert "epochs = 1\n" in text and "batch_size = 8\n" in text


def test_load_imageset_takes_numpy_options() -> None:
    imageset = galmerge.load_imageset("synthetic:sdss?size=16&cache=false", n=np.int64(6))
    assert len(imageset) == 6


# ---- 4. wrong argument types ----------------------------------------------------------------

@pytest.mark.parametrize("kw, says", [
    (dict(strategy="none", strategy_options={"weight": 0.5}), "{'none': {'weight': 0.5}}"),
    (dict(sets="domain_batchnorm=joint"), "sets=['domain_batchnorm=joint']"),
    (dict(on_epoch=5), "on_epoch must be a function"),
])
def test_train_arguments_of_the_wrong_shape_fail_before_training(
        tmp_path: Path, kw: dict[str, Any], says: str) -> None:
    source, target = _sets()
    with pytest.raises(galmerge.GalmergeError) as err:
        galmerge.train(source, target, run_dir=tmp_path / "run", **{**FAST, **kw})
    assert says in str(err.value)
    assert not (tmp_path / "run").exists()


def test_train_with_an_array_as_source_says_to_build_an_imageset(tmp_path: Path) -> None:
    _, target = _sets()
    with pytest.raises(galmerge.GalmergeError, match=r"source must be .*galmerge\.ImageSet\("):
        galmerge.train(np.zeros((4, 3, 16, 16), np.float32), target,
                       run_dir=tmp_path / "run", **FAST)


def test_a_path_to_an_hdf5_file_is_its_hdf5_spec(tmp_path: Path) -> None:
    source, _ = write_pair(tmp_path / "data", n=20)
    path = Path(source.removeprefix("hdf5:"))
    assert len(galmerge.load_imageset(path)) == 20
    with pytest.raises(galmerge.GalmergeError, match="a path is no survey spec"):
        galmerge.load_imageset(tmp_path / "data")


# ---- 5. the caller's random generators ------------------------------------------------------

def test_train_and_evaluate_leave_the_callers_random_generators_as_they_were(
        tmp_path: Path) -> None:
    source, target = _sets()

    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draw()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    galmerge.train(source, target, run_dir=tmp_path / "run", **FAST)
    assert draw() == expected
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    galmerge.evaluate(tmp_path / "run", source=source, target=target, device="cpu",
                      bootstrap=2, embedding_points=10, quiet=True)
    assert draw() == expected


def test_a_run_trains_the_same_whatever_the_caller_drew_before(tmp_path: Path) -> None:
    src, tgt = write_pair(tmp_path / "data", n=40)
    first = tiny_run(tmp_path / "a", src, tgt, epochs=1)
    random.random(), np.random.rand(), torch.rand(3)
    second = tiny_run(tmp_path / "b", src, tgt, epochs=1)
    assert first["metrics"] == second["metrics"]


# ---- 6. register_plugin run again -----------------------------------------------------------

def _plugin(description: str) -> object:
    class Plugin:
        @galmerge.hookimpl
        def register_strategies(self):
            return [galmerge.Strategy(name="cellstrategy", description=description,
                                      build=print)]

    return Plugin()


def test_registering_a_plugin_name_again_replaces_the_plugin() -> None:
    galmerge.register_plugin(_plugin("first"), name="notebook-cell")
    galmerge.register_plugin(_plugin("first"), name="notebook-cell")  # the cell run again
    galmerge.register_plugin(_plugin("edited"), name="notebook-cell")  # ... after an edit
    pm = get_plugin_manager()
    assert pm.get("strategies", "cellstrategy").description == "edited"


def test_a_built_in_plugin_name_is_not_replaced() -> None:
    pm = get_plugin_manager()
    builtin = next(i.name for i in pm.plugin_infos() if i.builtin)
    with pytest.raises(galmerge.GalmergeError, match="built-in"):
        galmerge.register_plugin(_plugin("mine"), name=builtin)
    assert "cellstrategy" not in pm.components("strategies")


# ---- 7. progress in Jupyter without ipywidgets ----------------------------------------------

def test_progress_in_jupyter_without_ipywidgets_prints_epoch_lines_and_no_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rich.console
    import rich.jupyter

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)  # what rich checks
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed (not a dependency)
    shown: list[str] = []  # what a notebook cell would show
    monkeypatch.setattr(rich.jupyter, "display", lambda segments, text: shown.append(text))
    source, target = _sets()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rich's 'install "ipywidgets"' UserWarning fails it
        galmerge.train(source, target, run_dir=tmp_path / "run",
                       **{**FAST, "quiet": False, "epochs": 2})
    assert any("epoch 2/2" in text for text in shown)


# ---- 8. non-finite pixels -------------------------------------------------------------------

def test_a_nan_or_inf_pixel_in_an_imageset_is_named_before_training(tmp_path: Path) -> None:
    source, target = _sets()
    source.images[3, 0, 0, 0] = float("nan")
    source.images[5, 1, 2, 2] = float("inf")
    with pytest.raises(galmerge.GalmergeError,
                       match=r"source ImageSet 'toy-source' .*NaN/inf\) in 2 of 40 images"):
        galmerge.train(source, target, run_dir=tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()


def test_a_set_that_stays_on_disk_is_not_read_again_for_nan(tmp_path: Path, monkeypatch) -> None:
    """A survey's lazy HDF5 set (too big for memory, or `in_memory=false`) is checked by the
    survey on loading, and `check_finite=false` skips that for huge files: `train` given such
    a set in Python must not read the whole file again for the same check (training reads
    batches and splits, never all 40 images at once)."""
    from eval_helpers import write_pair

    from galmerge.plugin.imageset import ImageSet

    src, tgt = write_pair(tmp_path / "data", n=40)
    source = galmerge.load_imageset(src + "?in_memory=false&check_finite=false")
    target = galmerge.load_imageset(tgt + "?in_memory=false&check_finite=false")
    assert not source.in_memory and not target.in_memory
    reads = []
    real = ImageSet.batch

    def counting(self, idx):
        reads.append(len(idx))
        return real(self, idx)

    monkeypatch.setattr(ImageSet, "batch", counting)
    galmerge.train(source, target, run_dir=tmp_path / "run", **FAST)
    assert reads and max(reads) < 40, reads


# ---- 9. runs trained on in-memory sets ------------------------------------------------------

def test_reusing_an_in_memory_run_without_its_sets_says_to_pass_them(tmp_path: Path) -> None:
    source, target = _sets()
    with pytest.raises(_Stop):  # a resumable run: its last.pt after epoch 1
        galmerge.train(source, target, run_dir=tmp_path / "run", **{**FAST, "epochs": 2},
                       on_epoch=_stop_after_first)
    with pytest.raises(galmerge.GalmergeError, match="pass source=/target= ImageSets"):
        galmerge.train(resume=tmp_path / "run", quiet=True)
    with pytest.raises(galmerge.GalmergeError, match="pass source=/target= ImageSets"):
        galmerge.evaluate(tmp_path / "run", checkpoint="last", device="cpu", quiet=True)
    summary = galmerge.train(source, target, resume=tmp_path / "run", quiet=True)
    assert summary["epochs_run"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_run"] == 2


class _Stop(Exception):
    pass


def _stop_after_first(row: dict[str, Any]) -> None:
    if row["epoch"] == 1:
        raise _Stop
