"""The `illustris` and `sdss` surveys on small files in the real DeepMerge formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from astropy.io import fits

from galmerge.data.datasets import load_imageset
from galmerge.errors import GalmergeError
from galmerge.surveys.deepmerge import data as deepmerge_data


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path))
    path = tmp_path / "deepmerge"
    path.mkdir()
    return path


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 75, 75)).astype(np.float32)


def _save_pair(folder, key: tuple[str, str], x: np.ndarray, y: np.ndarray) -> None:
    x_name, y_name = deepmerge_data.SETS[key].files
    np.save(folder / x_name, x)
    np.save(folder / y_name, y)


@pytest.mark.parametrize(
    ("spec", "fetch", "offline"),
    [
        ("illustris", "galmerge fetch illustris", "synthetic:illustris"),
        ("illustris:noisy", "galmerge fetch illustris", "synthetic:noisy"),
        ("sdss", "galmerge fetch sdss", "synthetic:sdss"),
        ("illustris:deepmerge1-pristine", "galmerge fetch deepmerge1", "synthetic:pristine"),
    ],
)
def test_missing_files_say_what_to_run(folder, spec, fetch, offline):
    with pytest.raises(GalmergeError) as info:
        load_imageset(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "missing" in message and f"`{fetch}`" in message and offline in message
    assert str(folder) in message


@pytest.mark.parametrize(
    "labels",
    [
        np.array([1.0, 0.0, 1.0, 0.0]),  # floats, as the release stores them
        np.array([[1], [0], [1], [0]], dtype=np.int64),  # a column
        np.eye(2)[[1, 0, 1, 0]],  # one-hot, columns [non-merger, merger]
    ],
)
def test_label_layouts_read_as_merger_is_one(folder, labels):
    _save_pair(folder, ("illustris", "sim-real"), _images(4), labels)
    s = load_imageset("illustris:sim-real")
    assert s.labels.tolist() == [1, 0, 1, 0]
    assert s.labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.array([0, 1, 2, 0]), "label value [2] is not 0 or 1"),
        (np.array([0, 1, 1]), "labels have shape (3,); expected (4,)"),
    ],
)
def test_bad_labels_are_one_line(folder, labels, expected):
    _save_pair(folder, ("illustris", "pristine"), _images(4), labels)
    with pytest.raises(GalmergeError) as info:
        load_imageset("illustris:pristine")
    assert expected in str(info.value) and "SimSim_SOURCE_y_Illustris2_pristine.npy" in str(
        info.value
    )


def test_non_finite_pixels_are_reported_unless_disabled(folder):
    x = _images(5)
    x[3, 2, 10, 10] = np.inf
    _save_pair(folder, ("illustris", "noisy"), x, np.zeros(5))
    with pytest.raises(GalmergeError, match="non-finite pixels in image 3"):
        load_imageset("illustris:noisy")
    assert len(load_imageset("illustris:noisy?check_finite=false")) == 5


def test_lazy_and_in_memory_reads_agree(folder):
    x = _images(9, seed=4)
    _save_pair(folder, ("illustris", "sim-real"), x, np.arange(9) % 2)
    eager = load_imageset("illustris")
    lazy = load_imageset("illustris?memory_limit_mb=0")
    assert eager.in_memory and not lazy.in_memory
    np.testing.assert_array_equal(eager.images.numpy(), x)
    idx = [8, 2, 2, 5]
    assert torch.equal(lazy.batch(idx), eager.batch(idx))
    clone = pickle.loads(pickle.dumps(lazy.images))
    np.testing.assert_array_equal(clone[np.array([1, 7])], x[[1, 7]])
    eager.images[0, 0, 0, 0] = 123.0  # an in-memory set owns its pixels
    assert np.load(folder / "SimReal_SOURCE_X_Illustris0.npy", mmap_mode="r")[0, 0, 0, 0] != 123.0


def test_channels_last_copy_and_lowercase_x_name(folder):
    x = _images(3)
    np.save(folder / "SimReal_TARGET_x_postmergers_SDSS.npy", np.moveaxis(x, 1, -1))
    np.save(folder / "SimReal_TARGET_y_postmergers_SDSS.npy", np.array([0, 1, 0]))
    s = load_imageset("sdss")
    np.testing.assert_array_equal(s.images.numpy(), x)
    assert s.image_source == "jpeg" and s.stretch == "none"
    assert s.survey == "sdss:postmergers"


def test_wrong_channel_count_and_unreadable_file(folder):
    _save_pair(folder, ("illustris", "sim-real"), _images(2)[:, :2], np.zeros(2))
    with pytest.raises(GalmergeError, match="has 2 channels; expected 3"):
        load_imageset("illustris")
    x_name = deepmerge_data.SETS[("illustris", "sim-real")].files[0]
    (folder / x_name).write_bytes((folder / x_name).read_bytes()[:20])
    with pytest.raises(GalmergeError, match="unreadable.*fetch illustris --force"):
        load_imageset("illustris")


def _write_fits(path, images, labels_hdu) -> None:
    fits.HDUList([fits.PrimaryHDU(images.astype(">f4")), labels_hdu]).writeto(path)


def test_deepmerge1_fits_with_image_or_table_labels(folder):
    x = _images(4, seed=9)
    name = deepmerge_data.SETS[("illustris", "deepmerge1-pristine")].files[0]
    _write_fits(folder / name, x, fits.ImageHDU(np.array([0, 0, 1, 1], dtype=">i2")))
    s = load_imageset("illustris:deepmerge1-pristine")
    np.testing.assert_allclose(s.images.numpy(), x)
    assert s.labels.tolist() == [0, 0, 1, 1]
    assert s.meta["release"].startswith("DeepMerge I ")
    noisy = deepmerge_data.SETS[("illustris", "deepmerge1-noisy")].files[0]
    table = fits.BinTableHDU.from_columns([fits.Column(name="y", format="E", array=[1, 0, 1, 0])])
    _write_fits(folder / noisy, x, table)
    lazy = load_imageset("illustris:dm1-noisy?in_memory=false")
    assert lazy.labels.tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(lazy.batch([3, 0]).numpy(), x[[3, 0]])


def test_fits_without_labels_hdu(folder):
    name = deepmerge_data.SETS[("illustris", "deepmerge1-noisy")].files[0]
    fits.HDUList([fits.PrimaryHDU(_images(2).astype(">f4"))]).writeto(folder / name)
    with pytest.raises(GalmergeError, match="HDU1 \\(labels\\) is missing"):
        load_imageset("illustris:deepmerge1-noisy")


def test_unknown_set_option_and_arcsinh_stretch(folder):
    with pytest.raises(GalmergeError, match="choose one of sim-real, pristine, noisy"):
        load_imageset("illustris:z0")
    with pytest.raises(GalmergeError, match="unknown option 'lazy'"):
        load_imageset("sdss?lazy=true")
    _save_pair(folder, ("illustris", "sim-real"), 0.2 * _images(4), np.zeros(4))
    s = load_imageset("illustris?stretch=arcsinh")
    assert s.stretch == "arcsinh"
    assert s.stretch_scale == pytest.approx(0.2, rel=0.15)


@pytest.mark.parametrize(("option", "words"), [
    ("memory_limit_mb=abc", "option 'memory_limit_mb' of illustris must be float, got 'abc'"),
    ("memory_limit_mb=nan", "option memory_limit_mb must be >= 0, got nan"),
    ("memory_limit_mb=1e999", "option memory_limit_mb must be >= 0, got inf"),
    ("memory_limit_mb=-1", "option memory_limit_mb must be >= 0, got -1.0"),
    ("in_memory=no", "option 'in_memory' of illustris must be bool, got 'no'"),
    ("check_finite=no", "option 'check_finite' of illustris must be bool, got 'no'"),
    ("stretch=log", "stretch must be"),  # was one line already (deepmerge_data's own check)
])
def test_bad_option_values_are_one_line_errors(folder, tmp_path, option, words):
    """Through the CLI: one line naming the option and what it takes, not a traceback, and
    nothing written."""
    from click.testing import CliRunner

    from galmerge.cli import cli

    _save_pair(folder, ("illustris", "sim-real"), _images(4), np.arange(4) % 2)
    out = tmp_path / "preview.png"
    result = CliRunner().invoke(cli, ["preview", f"illustris?{option}", "--n", "2", "-o",
                                      str(out)], catch_exceptions=False)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.output
    assert not out.exists()


def test_false_means_false_for_in_memory_and_check_finite(folder):
    """Typed, the options still take true/false: in_memory=false reads lazily and
    check_finite=false skips the scan."""
    x = _images(5)
    x[3, 2, 10, 10] = np.nan
    _save_pair(folder, ("illustris", "sim-real"), x, np.arange(5) % 2)
    s = load_imageset("illustris?in_memory=false&check_finite=false")
    assert not s.in_memory and len(s) == 5
    assert load_imageset("illustris?in_memory=true&check_finite=false").in_memory
